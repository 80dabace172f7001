"""T5X-style gin command-line handling shared by the commands, and their argument parser.

Flags: `--gin_file` (repeatable), `--gin_bindings` (repeatable), `--gin.MACRO=value` (repeatable, becomes
the binding `MACRO = value`) and `--gin_search_paths` (comma-separated folders searched for relative gin
file names and includes; the package's own gin_configs folder is always searched last). Parsing always
finalises the config, so a macro left at `%gin.REQUIRED` is an error naming it, not a sentinel passed on.

Errors are GinConfigError (the commands exit 2): a parse error names the file and line (also a syntax
error at the end of a file, such as an unclosed bracket), and a `--gin.NAME=` macro that no loaded file or
binding references names the closest macro that is referenced (a typo would otherwise train with the
default silently).

T5X's macro names, as our run configs use them (runs/*.gin):
- MIXTURE_OR_TASK_NAME, MODEL_DIR, BATCH_SIZE (global rows per step): as in T5X.
- TASK_FEATURE_LENGTHS: {'inputs': n, 'targets': m}, as in T5X; by default built from INPUT_LENGTH and
  TARGET_LENGTH, so either form works (prompts are built to fit the inputs length).
- INITIAL_CHECKPOINT_PATH: the weights to start from: an HF checkpoint directory, one of our native ones, or
  an Orbax training dir (`<dir>` or `<dir>/<step>`; not a T5X checkpoint); only the parameters are read,
  the optimizer starts fresh.
- TRAIN_STEPS: the number of updates the run makes in MODEL_DIR, counted from 0 -- unlike T5X, whose
  TRAIN_STEPS is a total that includes the initial checkpoint's steps (T5X fine-tuning from a 1M-step
  checkpoint sets 1_000_000 + N; here N). Resuming from MODEL_DIR's own checkpoints continues the count,
  so a restarted run stops at the same step.
- USE_CACHED_TASKS, MIXTURE_OR_TASK_MODULE: refused with what to do instead (T5X_EQUIVALENTS).
"""
from __future__ import annotations

import argparse
import difflib
import io
import logging
import os
import pathlib
import re
import sys
import tokenize
from typing import Any, Callable, Mapping, Sequence

import gin
import gin.resource_reader

GIN_MACRO_PREFIX = "--gin."
# T5X macro names our configs do not use, with what to use instead.
T5X_EQUIVALENTS = {
    "USE_CACHED_TASKS": "symbol_tuning has no SeqIO cache: prompts are built on the fly from the registry "
                        "(nothing to cache), so drop the flag",
    "MIXTURE_OR_TASK_MODULE": "import the module that registers your tasks with an `import my_tasks` line in a "
                              "gin file (gin imports it before binding)",
    "EVAL_PERIOD": "train.eval_every (with train.eval_fn)",
    "INIT_CHECKPOINT": "INITIAL_CHECKPOINT_PATH",
}
_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def _package_path_exists(path: str) -> bool:
    """gin's package-resource existence check, made total: a folder such as ./runs (the demo's default
    output) is importable as a namespace package without a file origin, and gin's own check then raises
    TypeError for `include 'runs/symbol_tune.gin'` instead of moving on to the search paths."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)  # gin logs "ERROR Path not found" for every include found on a search path
    try:
        return gin.resource_reader.system_path_file_exists(path)
    except (TypeError, ValueError, ImportError):
        return False
    finally:
        logging.disable(previous)


_OPENED: list[str] = []  # gin files opened while parsing, includes too (to place errors without a location)


def _recording(read: Callable) -> Callable:
    if getattr(read, "_records", False):
        return read

    def recording_read(path, *args, **kwargs):
        _OPENED.append(str(path))
        return read(path, *args, **kwargs)
    recording_read._records = True
    return recording_read


def _install_safe_package_reader() -> None:
    readers = gin.config._FILE_READERS  # noqa: SLF001 -- gin exposes no way to replace a registered reader
    readers[:] = [(_recording(read),
                   _package_path_exists if exists is gin.resource_reader.system_path_file_exists else exists)
                  for read, exists in readers]


def _where(error: BaseException, top_file: str | None) -> str:
    """'FILE, line N' for a gin parse error: gin's own location when it has one, else the (included) file
    Python's tokenizer also fails on (gin tokenizes with it; e.g. an unclosed bracket at the end)."""
    location = next((a for a in getattr(error, "args", ())[1:2] if hasattr(a, "line_num")), None)
    if location is not None:
        return f"{location.filename}, line {location.line_num}"
    if isinstance(error, SyntaxError) and error.filename:
        return f"{error.filename}, line {error.lineno}"
    if _at_eof(error):  # the tokenizer's error: find the (included) file that ends inside a bracket
        for path in reversed(_OPENED):
            found = _unclosed_bracket(path)
            if found is not None:
                return f"{path}, line {found[1]} (this {found[0]!r} is never closed)"
    named = re.search(r'In file "([^"]+)", line (\d+)', str(error))  # gin's note on binding errors
    if named:
        return f"{named.group(1)}, line {named.group(2)}"
    return str(top_file) if top_file else "binding"


def _at_eof(error: BaseException) -> bool:
    return isinstance(error, tokenize.TokenError) or "EOF in multi-line" in str(error)


def _unclosed_bracket(path: str) -> tuple[str, int] | None:
    """(bracket, line) of the bracket left open when Python's tokenizer hits the end of `path`, else None."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    stack: list[tuple[str, int]] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.OP and tok.string in "([{":
                stack.append((tok.string, tok.start[0]))
            elif tok.type == tokenize.OP and tok.string in ")]}" and stack:
                stack.pop()
    except tokenize.TokenError as e:
        return stack[0] if stack else ("", e.args[1][0] if len(e.args) > 1 else 0)
    except SyntaxError:
        return None
    return None


def _message(error: BaseException) -> str:
    if _at_eof(error):
        return "the text ends inside an unclosed bracket"
    text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _macro_refs(value: Any, out: set[str]) -> None:
    if isinstance(value, gin.config.ConfigurableReference):
        if value.configurable.name == "macro":
            out.update(value.scopes[-1:])
        return
    if isinstance(value, Mapping):
        for v in value.values():
            _macro_refs(v, out)
    elif isinstance(value, (list, tuple, set)):
        for v in value:
            _macro_refs(v, out)


def referenced_macros() -> set[str]:
    """Macro names some binding of the parsed config refers to (%NAME), includes and macros of macros too."""
    out: set[str] = set()
    for params in gin.config._CONFIG.values():  # noqa: SLF001 -- gin has no public view of the bindings
        for value in params.values():
            _macro_refs(value, out)
    return out


def check_macro_flags(names: Sequence[str]) -> None:
    """GinConfigError for a `--gin.NAME=` macro nothing parsed refers to, naming the closest referenced one."""
    known = referenced_macros()
    for name in names:
        if name in known:
            continue
        hint = T5X_EQUIVALENTS.get(name)
        if hint is None:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.4)
            hint = f"did you mean {close[0]}?" if close else f"the configs use: {', '.join(sorted(known)) or 'none'}"
        raise GinConfigError(f"--gin.{name}: no loaded gin file or binding uses macro {name} ({hint})")


class GinConfigError(ValueError):
    """A gin flag, file or binding that cannot be used (named in the message)."""


class FlagParser(argparse.ArgumentParser):
    """The commands' argument parser: a bad flag exits 2 with the usage and the flag named, never a traceback."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def default_search_paths() -> list[str]:
    """Folders holding our gin configs: `gin_configs/` beside the package in a repo checkout, then the
    copies an installed package carries (`symbol_tuning/gin_configs`, `symbol_tuning/gin`)."""
    candidates = [_PACKAGE_DIR.parent / "gin_configs", _PACKAGE_DIR / "gin_configs", _PACKAGE_DIR / "gin"]
    return [str(p) for p in candidates if p.is_dir()]


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
    """Add --gin_file, --gin_bindings and --gin_search_paths to `parser` (--gin.MACRO is split off first)."""
    parser.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                        help="gin config file (repeatable; relative names are looked up in the search paths)")
    parser.add_argument("--gin_bindings", action="append", default=[], metavar="BINDING",
                        help="a gin binding such as 'train.seed = 3' (repeatable)")
    parser.add_argument("--gin_search_paths", default="", metavar="DIRS",
                        help="comma-separated folders searched for gin files (the package's gin_configs "
                             "folder is always appended)")


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """--verbose: keep Orbax's and absl's INFO logs (off by default: dozens of lines per checkpoint)."""
    parser.add_argument("--verbose", action="store_true", help="show Orbax's and absl's INFO logs")


def split_macro_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(other args, bindings): each `--gin.MACRO=value` or `--gin.MACRO value` becomes 'MACRO = value'."""
    rest: list[str] = []
    bindings: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith(GIN_MACRO_PREFIX):
            name, eq, value = arg[len(GIN_MACRO_PREFIX):].partition("=")
            if not eq:
                if i + 1 >= len(args):
                    raise GinConfigError(f"flag {arg}: no value (use {arg}=VALUE)")
                i += 1
                value = args[i]
            if not name.replace(".", "_").replace("/", "_").isidentifier():
                raise GinConfigError(f"flag {arg}: {name!r} is not a gin macro or parameter name")
            bindings.append(f"{name} = {value}")
        else:
            rest.append(arg)
        i += 1
    return rest, bindings


def _resolve_file(name: str, search_paths: Sequence[str]) -> str:
    """The path of gin file `name`: as given if it exists, else the first match in the search paths."""
    if os.path.isfile(name):
        return name
    if not os.path.isabs(name):
        for folder in search_paths:
            candidate = os.path.join(folder, name)
            if os.path.isfile(candidate):
                return candidate
    raise GinConfigError(f"--gin_file {name}: not found (searched {', '.join(search_paths) or 'no paths'})")


def parse_gin(*, gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = (),
              search_paths: Sequence[str] | str = (), finalize: bool = True,
              macro_flags: Sequence[str] = ()) -> list[str]:
    """Clear gin, then parse files and bindings (bindings win) and finalise; returns the search paths used.

    Errors name the file (and line) or binding at fault; a macro still %gin.REQUIRED fails here, naming it;
    each name in `macro_flags` (the command line's --gin.NAME macros) must be referenced by the config.
    """
    if isinstance(search_paths, str):
        search_paths = [p for p in search_paths.split(",") if p]
    paths = [os.path.abspath(p) for p in search_paths]
    for p in paths:
        if not os.path.isdir(p):
            raise GinConfigError(f"--gin_search_paths: {p} is not a folder")
    paths += [p for p in default_search_paths() if p not in paths]
    _install_safe_package_reader()
    gin.clear_config()
    for p in paths:
        gin.add_config_file_search_path(p)
    files = [_resolve_file(f, paths) for f in gin_files]
    for path in files:
        _OPENED.clear()
        try:
            gin.parse_config_file(path)
        except ImportError as e:  # an `import` line: name the module, which the user must make importable
            raise GinConfigError(f"gin file {path}: {e}") from e
        except (ValueError, SyntaxError, KeyError, IOError, tokenize.TokenError, TypeError) as e:
            raise GinConfigError(f"gin file {_where(e, path)}: {_message(e)}") from e
    for binding in gin_bindings:
        try:
            gin.parse_config(binding)
        except (ValueError, SyntaxError, KeyError, ImportError, tokenize.TokenError, TypeError) as e:
            raise GinConfigError(f"gin binding {binding!r}: {_message(e)}") from e
    check_macro_flags(macro_flags)
    if finalize:
        try:
            gin.finalize()  # fails naming any macro still %gin.REQUIRED
        except ValueError as e:
            raise GinConfigError(f"gin: {e}") from e
    return paths


def parse_gin_flags(args: argparse.Namespace, macro_bindings: Sequence[str] = (), *,
                    finalize: bool = True) -> list[str]:
    """parse_gin from flags added by add_gin_flags plus bindings split off by split_macro_flags."""
    return parse_gin(gin_files=args.gin_file, gin_bindings=list(args.gin_bindings) + list(macro_bindings),
                     search_paths=args.gin_search_paths, finalize=finalize, macro_flags=macro_names(macro_bindings))


def macro_names(macro_bindings: Sequence[str]) -> list[str]:
    """The macro names among split_macro_flags' bindings ('NAME = v'; dotted parameter bindings are not
    macros: gin itself refuses an unknown configurable)."""
    names = [b.partition(" = ")[0].strip() for b in macro_bindings]
    return [n for n in names if "." not in n and "/" not in n]


def parse_args_with_gin(parser: argparse.ArgumentParser, argv: Sequence[str],
                        defaults_fn: Callable[[], Mapping[str, Any]]) -> argparse.Namespace:
    """Parse `argv` where gin files and bindings may supply the flags' values.

    --gin_file / --gin_bindings / --gin.MACRO=... are parsed first; `defaults_fn` (a gin configurable
    returning {flag: value} for what the config binds) then sets the parser's defaults, so a value
    written on the command line still wins. Without gin flags this is plain `parser.parse_args`.
    """
    rest, macros = split_macro_flags(argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_gin_flags(pre)
    gin_args, rest = pre.parse_known_args(rest)
    if gin_args.gin_file or gin_args.gin_bindings or macros:
        parse_gin_flags(gin_args, macros)
        parser.set_defaults(**dict(defaults_fn()))
    return parser.parse_args(rest)

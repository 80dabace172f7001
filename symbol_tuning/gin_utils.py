"""T5X-style gin command-line handling shared by the commands, and their argument parser.

Flags: `--gin_file` (repeatable), `--gin_bindings` (repeatable), `--gin.MACRO=value` (repeatable, becomes
the binding `MACRO = value`) and `--gin_search_paths` (comma-separated folders searched for relative gin
file names and includes; the package's own gin_configs folder is always searched last). Parsing always
finalises the config, so a macro left at `%gin.REQUIRED` is an error naming it, not a sentinel passed on.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Any, Callable, Mapping, Sequence

import gin
import gin.resource_reader

GIN_MACRO_PREFIX = "--gin."
_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def _package_path_exists(path: str) -> bool:
    """gin's package-resource existence check, made total: a folder such as ./runs (the demo's default
    output) is importable as a namespace package without a file origin, and gin's own check then raises
    TypeError for `include 'runs/symbol_tune.gin'` instead of moving on to the search paths."""
    try:
        return gin.resource_reader.system_path_file_exists(path)
    except (TypeError, ValueError, ImportError):
        return False


def _install_safe_package_reader() -> None:
    readers = gin.config._FILE_READERS  # noqa: SLF001 -- gin exposes no way to replace a registered reader
    readers[:] = [(read, _package_path_exists if exists is gin.resource_reader.system_path_file_exists else exists)
                  for read, exists in readers]


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
              search_paths: Sequence[str] | str = (), finalize: bool = True) -> list[str]:
    """Clear gin, then parse files and bindings (bindings win) and finalise; returns the search paths used.

    Errors name the file or binding at fault; a macro still %gin.REQUIRED fails here, naming it.
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
        try:
            gin.parse_config_file(path)
        except (ValueError, SyntaxError, KeyError, ImportError, IOError) as e:
            raise GinConfigError(f"gin file {path}: {e}") from e
    for binding in gin_bindings:
        try:
            gin.parse_config(binding)
        except (ValueError, SyntaxError, KeyError, ImportError) as e:
            raise GinConfigError(f"gin binding {binding!r}: {e}") from e
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
                     search_paths=args.gin_search_paths, finalize=finalize)


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

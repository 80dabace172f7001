"""BIG-Bench task.json files as generative tasks (list_functions, simp_turing_concept).

The paper evaluates symbol tuning on algorithmic reasoning with BIG-Bench list_functions (concept
subtasks c001..c250, 32 input/target pairs each; the NN_shot_baseline subtasks are pre-built prompts
and are skipped) and simple_turing_concept (directory `simp_turing_concept`: subsets witness_set,
additional_set_1, additional_set_2, whose inputs already embed Input/Output exemplars).

Simple Turing concepts: each example's `comment` field is a Python literal `[program, instructions, shown]`,
e.g. "['+o', 2, 6]": the P3 program the exemplars come from, its number of instructions (one per character
of the program) and the number of exemplar pairs in the input. Every subset holds the same 426 programs,
5 examples each (2130); the paper evaluates the AS II subset (additional_set_2) restricted to programs of
at most 3 instructions, which the files turn into 17 programs / 85 examples per subset
(`max_instructions=TURING_MAX_INSTRUCTIONS`).

Human accuracy: the paper keeps "the 20 concepts with the highest human accuracy". The staged task.json
files (bigbench==1.0.0 sdist) carry no human-accuracy field: each concept file has only canary, name,
description (which states the target function, e.g. 'The target function is "remove all but element
3".'), keywords, metrics, task_prefix, output_regex and examples; the top-level task.json is an index
without scores. The human data live in the original list-functions study (Rule et al.), not in these
files, so `list_functions_tasks` takes the concept ids to keep (`concepts=`) and
`list_functions_descriptions` exposes each concept's stated function instead.
"""
from __future__ import annotations

import ast
import json
import os
import re
from typing import Any, Sequence

from symbol_tuning.data.examples import GenerativeData, TextPair
from symbol_tuning.data.rows import DataError

_CONCEPT = re.compile(r"^c\d{3}$")
TURING_SUBSETS = ("witness_set", "additional_set_1", "additional_set_2")
# The paper keeps the simple Turing concepts whose programs have at most 3 instructions.
TURING_MAX_INSTRUCTIONS = 3


def _read_task(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"BIG-Bench task file {path} does not exist")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        task = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(task, dict):
        raise DataError(f"{path}: a BIG-Bench task.json must hold an object, got {type(task).__name__}")
    return task


def _target(example: dict[str, Any], where: str) -> str:
    if "target" in example:
        target = example["target"]
        if isinstance(target, list):
            if not target or not isinstance(target[0], str):
                raise DataError(f"{where}: 'target' list must start with a string, got {target!r:.80}")
            return target[0]
        if not isinstance(target, str):
            raise DataError(f"{where}: 'target' must be a string or a list of strings, got "
                            f"{type(target).__name__}")
        return target
    scores = example.get("target_scores")
    if isinstance(scores, dict) and scores:
        if not all(isinstance(v, (int, float)) for v in scores.values()):
            raise DataError(f"{where}: 'target_scores' values must be numbers")
        return max(scores, key=lambda k: scores[k])
    raise DataError(f"{where}: example has neither 'target' nor a non-empty 'target_scores' object")


def _examples(task: dict[str, Any], path: str) -> list[dict[str, Any]]:
    examples = task.get("examples")
    if not isinstance(examples, list) or not examples:
        raise DataError(f"{path}: task has no 'examples' list (a subtask index? read its subdirectories)")
    for i, example in enumerate(examples):
        if not isinstance(example, dict):
            raise DataError(f"{path}: example {i}: expected an object, got {type(example).__name__}")
    return examples


def _pair(example: dict[str, Any], where: str) -> TextPair:
    inputs = example.get("input")
    if not isinstance(inputs, str) or not inputs.strip():
        raise DataError(f"{where}: 'input' must be a non-empty string, got {inputs!r:.80}")
    return TextPair(inputs=inputs, targets=_target(example, where))


def _task_name(task: dict[str, Any], path: str, name: str | None) -> str:
    return name or str(task.get("name") or os.path.basename(os.path.dirname(path)))


def load_bigbench_task(path: str, *, name: str | None = None) -> GenerativeData:
    """A BIG-Bench task.json as GenerativeData (split "eval"); the target is the first of a target list,
    or the best-scored option of target_scores. A malformed entry raises DataError naming file and index."""
    task = _read_task(path)
    pairs = [_pair(example, f"{path}: example {i}") for i, example in enumerate(_examples(task, path))]
    return GenerativeData(name=_task_name(task, path, name), split="eval", examples=tuple(pairs))


def turing_program(example: dict[str, Any], where: str) -> tuple[str, int]:
    """(program, number of instructions) from a simp_turing_concept example's `comment`, a Python literal
    such as "['+o', 2, 6]"; a missing or malformed comment raises DataError naming `where`."""
    comment = example.get("comment")
    if not isinstance(comment, str):
        raise DataError(f"{where}: 'comment' must be a string like \"['+o', 2, 6]\" (program, number of "
                        f"instructions, ...), got {comment!r:.80}")
    try:
        value = ast.literal_eval(comment)
    except (ValueError, SyntaxError):
        value = None
    if (not isinstance(value, (list, tuple)) or len(value) < 2 or not isinstance(value[0], str)
            or not isinstance(value[1], int) or isinstance(value[1], bool) or value[1] < 1):
        raise DataError(f"{where}: 'comment' {comment!r:.80} is not [program, number of instructions >= 1, ...]")
    return value[0], value[1]


def load_turing_task(path: str, *, name: str | None = None,
                     max_instructions: int | None = TURING_MAX_INSTRUCTIONS) -> tuple[GenerativeData, tuple[str, ...]]:
    """A simp_turing_concept task.json restricted to programs of at most `max_instructions` instructions
    (None: all), and the program of each kept example. Every example's comment is checked, kept or not."""
    if max_instructions is not None and max_instructions < 1:
        raise ValueError(f"simple_turing_concept: max_instructions must be >= 1 or None, got {max_instructions}")
    task = _read_task(path)
    pairs, programs = [], []
    for i, example in enumerate(_examples(task, path)):
        where = f"{path}: example {i}"
        program, count = turing_program(example, where)
        pair = _pair(example, where)
        if max_instructions is None or count <= max_instructions:
            pairs.append(pair)
            programs.append(program)
    if not pairs:
        raise DataError(f"{path}: no example has a program of at most {max_instructions} instructions")
    return (GenerativeData(name=_task_name(task, path, name), split="eval", examples=tuple(pairs)),
            tuple(programs))


def _concept_dirs(root: str) -> list[str]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"list_functions: directory {root} does not exist")
    found = sorted(d for d in os.listdir(root) if _CONCEPT.match(d) and os.path.isdir(os.path.join(root, d)))
    if not found:
        raise FileNotFoundError(f"list_functions: no concept subdirectories c001..c250 under {root}")
    return found


def list_functions_tasks(root: str, *, concepts: Sequence[str] | None = None) -> list[GenerativeData]:
    """One GenerativeData per list_functions concept (c001..c250), named "list_functions/cNNN".

    concepts: the concept ids to keep (e.g. the paper's 20 with the highest human accuracy, which the
    files do not record; see the module docstring); unknown ids raise KeyError listing the known ones.
    """
    available = _concept_dirs(root)
    wanted = available if concepts is None else list(concepts)
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise KeyError(f"list_functions: unknown concepts {unknown} under {root}; known: c001..c250 "
                       f"({len(available)} found)")
    return [load_bigbench_task(os.path.join(root, c, "task.json"), name=f"list_functions/{c}") for c in wanted]


def list_functions_descriptions(root: str) -> dict[str, str]:
    """Concept id -> the target function stated in its task.json description."""
    out = {}
    for c in _concept_dirs(root):
        desc = str(_read_task(os.path.join(root, c, "task.json")).get("description", ""))
        m = re.search(r'The target function is "(.*)"', desc)
        out[c] = m.group(1) if m else desc
    return out


def simple_turing_concept_tasks(root: str, *, subsets: Sequence[str] = TURING_SUBSETS,
                                max_instructions: int | None = TURING_MAX_INSTRUCTIONS) -> list[GenerativeData]:
    """One GenerativeData per simp_turing_concept subset, named "simple_turing_concept/<subset>", holding the
    programs of at most `max_instructions` instructions (the paper's 3 by default; None keeps all 2130)."""
    out = []
    for subset in subsets:
        path = os.path.join(root, subset, "task.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"simple_turing_concept: subset {subset!r} file {path} does not exist "
                                    f"(known subsets: {TURING_SUBSETS})")
        data, _ = load_turing_task(path, name=f"simple_turing_concept/{subset}", max_instructions=max_instructions)
        out.append(data)
    return out

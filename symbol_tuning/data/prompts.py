"""Prompt builders: in-context classification prompts as pure functions of (seed, dataset, index).

`build_tuning_prompt` makes the paper's symbol-tuning prompts (one k in 2-10 drawn per prompt and shown for
every class, labels remapped to tuning-pool symbols, no instruction, random format; a prompt that cannot keep
2 per class within the length budget is refused, never cut further); `build_eval_prompt` makes the four
evaluation settings (instructions yes/no x natural labels / evaluation-pool symbols, optionally with
flipped labels); `build_generative_prompt` makes few-shot prompts for open-ended tasks.

Every random choice comes from numpy Generators seeded with
`SeedSequence([seed, stable_hash(dataset), index, purpose])`, so the same inputs give the same bytes
in any process. Evaluation prompts draw their exemplars and format from one stream and their
symbols from another, so the four settings of one (seed, index) show the same exemplars.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Callable

import numpy as np

from symbol_tuning.data.examples import ClassificationData, GenerativeData
from symbol_tuning.data.formats import BLOCK_SEPARATOR, FORMATS, PromptFormat, get_format
from symbol_tuning.data.symbols import SymbolPools, sample_label_symbols, symbols_from_uniforms

SETTINGS = ("instr_labels", "labels_only", "instr_only", "neither")
# Where an evaluation prompt's instruction goes: once before the exemplars, or before every exemplar and the
# query (the paper's Figure 1).
INSTRUCTION_PLACEMENTS = ("header", "every_exemplar")
INSTRUCTION_SETTINGS = ("instr_labels", "instr_only")
LABEL_SETTINGS = ("instr_labels", "labels_only")
TUNING_SETTING = "symbol_tuning"
GENERATIVE_SETTING = "generative"

_PURPOSE_ORDER = 0
_PURPOSE_TUNING = 1
_PURPOSE_EVAL = 2
_PURPOSE_EVAL_SYMBOLS = 3
_PURPOSE_GENERATIVE = 4
_CACHE_SIZE = 64


class PromptTooLongError(ValueError):
    """A prompt does not fit max_input_length even with the fewest exemplars allowed."""


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One built prompt.

    `options` are the candidate targets in label order, written exactly as a target (with the
    leading space); `targets == options[answer]`. The recorded structure (`exemplar_labels`: the
    option index each exemplar shows, `exemplar_indices`: their positions in the source examples,
    `query_index`, `short_classes`: classes with fewer usable examples than the minimum, `dropped`:
    exemplars removed to fit the length budget) lets tests and decontamination checks look inside.
    """

    inputs: str
    targets: str
    options: tuple[str, ...]
    answer: int
    dataset: str
    index: int
    setting: str
    num_exemplars: int
    format_name: str = ""
    flipped: bool = False
    query_index: int = -1
    exemplar_labels: tuple[int, ...] = ()
    exemplar_indices: tuple[int, ...] = ()
    short_classes: tuple[int, ...] = ()
    dropped: int = 0

    def __post_init__(self):
        if not 0 <= self.answer < len(self.options) or self.targets != self.options[self.answer]:
            raise ValueError(f"dataset {self.dataset!r} index {self.index}: targets {self.targets!r} is not "
                             f"options[{self.answer}] of {self.options!r}")
        if len(set(self.options)) != len(self.options):
            raise ValueError(f"dataset {self.dataset!r} index {self.index}: options are not distinct: "
                             f"{self.options!r}")


def utf8_length(text: str) -> int:
    """Length of `text` in UTF-8 bytes (the byte vocabulary's token count)."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def stable_hash(name: str) -> int:
    """A process-independent 32-bit hash of a dataset name (never Python's salted `hash`)."""
    return zlib.crc32(name.encode("utf-8"))


def prompt_rng(seed: int, dataset: str, index: int, purpose: int) -> np.random.Generator:
    """The Generator for one (seed, dataset, index, purpose)."""
    if seed < 0 or index < 0:
        raise ValueError(f"dataset {dataset!r}: seed and index must be >= 0, got seed={seed} index={index}")
    return np.random.default_rng(np.random.SeedSequence([seed, stable_hash(dataset), index, purpose]))


class _Uniforms:
    """Uniform [0, 1) floats from one Generator, drawn in batches (one numpy call for a whole prompt)."""

    def __init__(self, rng: np.random.Generator, size: int = 64):
        self.rng = rng
        self._buffer: list[float] = rng.random(size).tolist()
        self._next = 0

    def take(self, k: int) -> list[float]:
        """The next k floats, in stream order."""
        start, stop = self._next, self._next + k
        if stop > len(self._buffer):
            self._buffer = self._buffer[start:] + self.rng.random(max(64, k)).tolist()
            start, stop = 0, k
        self._next = stop
        return self._buffer[start:stop]

    def __call__(self) -> float:
        i = self._next
        if i < len(self._buffer):
            self._next = i + 1
            return self._buffer[i]
        return self.take(1)[0]

    def below(self, n: int) -> int:
        """A uniform integer in [0, n)."""
        return int(self() * n)

    def shuffle(self, items: list) -> list:
        """A uniformly shuffled copy of `items` (sorted by one random key each)."""
        keys = self.take(len(items))
        return [items[i] for i in sorted(range(len(items)), key=keys.__getitem__)]

    def sample(self, n: int, k: int, exclude: int = -1) -> list[int]:
        """k distinct integers from [0, n) without `exclude`, in random order; all of them if k is too big.

        Draws k at once and keeps them when distinct (the usual case when k << n); otherwise falls
        back to Floyd's algorithm. Both are O(k), independent of n.
        """
        excluded = 0 <= exclude < n
        available = n - excluded
        if k >= available:
            picked = list(range(available))
        else:
            picked = [int(f * available) for f in self.take(k)]
            if len(set(picked)) < k:
                chosen: set[int] = set()
                for j, f in zip(range(available - k, available), self.take(k)):
                    t = int(f * (j + 1))
                    chosen.add(j if t in chosen else t)
                picked = sorted(chosen)
        if excluded:
            return [v + 1 if v >= exclude else v for v in picked]
        return picked


@dataclasses.dataclass(frozen=True)
class _Groups:
    """Per-dataset cache: example indices by label and each example's position in its group."""

    data: object
    groups: tuple[tuple[int, ...], ...]
    position: tuple[int, ...]


_groups_cache: dict[int, _Groups] = {}
_order_cache: dict[tuple[int, int], tuple[object, list[int]]] = {}


def _remember(cache: dict, key, value) -> None:
    if len(cache) >= _CACHE_SIZE:
        cache.pop(next(iter(cache)))
    cache[key] = value


def _label_groups(data: ClassificationData) -> _Groups:
    entry = _groups_cache.get(id(data))
    if entry is None or entry.data is not data:
        groups = tuple(tuple(g) for g in data.by_label())
        position = [0] * len(data.examples)
        for group in groups:
            for pos, i in enumerate(group):
                position[i] = pos
        entry = _Groups(data=data, groups=groups, position=tuple(position))
        _remember(_groups_cache, id(data), entry)
    return entry


def _visit_order(data: ClassificationData, seed: int) -> list[int]:
    key = (id(data), seed)
    entry = _order_cache.get(key)
    if entry is None or entry[0] is not data:
        rng = prompt_rng(seed, data.name, 0, _PURPOSE_ORDER)
        entry = (data, rng.permutation(len(data.examples)).tolist())
        _remember(_order_cache, key, entry)
    return entry[1]


def _label_texts(data: ClassificationData) -> tuple[str, ...]:
    """Natural label names as shown in prompts: whitespace collapsed (a newline would break the format).

    If collapsing would merge two names ("very good" / "very  good"), the names are kept verbatim,
    so rank classification always has one distinct option per class.
    """
    texts = tuple(" ".join(name.split()) for name in data.label_names)
    for c, text in enumerate(texts):
        if not text:
            raise ValueError(f"dataset {data.name!r}: label {c} has an empty name {data.label_names[c]!r}")
    if len(set(texts)) != len(texts):
        return tuple(data.label_names)
    return texts


def _fit_budget(*, header: str, blocks: list[tuple[int, str, int]], query: str, min_per_class: int,
                max_input_length: int, length_fn: Callable[[str], int], uniforms: _Uniforms,
                dataset: str, index: int) -> tuple[str, list[tuple[int, str, int]], int]:
    """Assemble header + blocks + query, dropping exemplars until `length_fn` fits the budget.

    `blocks` are (class, text, source index). Drops come from the class with most exemplars (random
    among ties and within the class), keeping `min_per_class` of each; the query is never touched.
    Each piece is measured once; drops follow the sum of piece lengths scaled to the measured total,
    and the assembled string is re-measured after each round (tokenizers are not exactly additive).
    """
    def assemble(kept: list[tuple[int, str, int]]) -> str:
        return header + BLOCK_SEPARATOR.join([b[1] for b in kept] + [query])

    inputs = assemble(blocks)
    total = length_fn(inputs)
    if total <= max_input_length:
        return inputs, blocks, 0
    sep_len = length_fn(BLOCK_SEPARATOR)
    lengths = [length_fn(b[1]) + sep_len for b in blocks]
    estimate = (length_fn(header) if header else 0) + length_fn(query) + sum(lengths)
    scale = total / max(estimate, 1)
    members: dict[int, list[int]] = {}
    for i, block in enumerate(blocks):
        members.setdefault(block[0], []).append(i)
    removed: set[int] = set()
    while True:
        most = max(map(len, members.values()), default=0)
        while estimate * scale > max_input_length and most > min_per_class:
            tied = [c for c, m in sorted(members.items()) if len(m) == most]
            group = members[tied[uniforms.below(len(tied))]]
            victim = group.pop(uniforms.below(len(group)))
            removed.add(victim)
            estimate -= lengths[victim]
            most = max(map(len, members.values()))
        kept = [b for i, b in enumerate(blocks) if i not in removed]
        inputs = assemble(kept)
        total = length_fn(inputs)
        if total <= max_input_length:
            return inputs, kept, len(removed)
        if most <= min_per_class:
            raise PromptTooLongError(
                f"dataset {dataset!r} index {index}: prompt is {total} long with the fewest exemplars allowed "
                f"({len(kept)}; fitting keeps {min_per_class} per class), over max_input_length={max_input_length}")
        scale = total / max(estimate, 1)


def _finish(*, header: str, blocks: list[tuple[int, str, int]], query: str, min_per_class: int,
            max_input_length: int, length_fn: Callable[[str], int], uniforms: _Uniforms, dataset: str,
            index: int, **fields) -> Prompt:
    inputs, kept, dropped = _fit_budget(
        header=header, blocks=blocks, query=query, min_per_class=min_per_class,
        max_input_length=max_input_length, length_fn=length_fn, uniforms=uniforms, dataset=dataset, index=index)
    return Prompt(inputs=inputs, dataset=dataset, index=index, num_exemplars=len(kept), dropped=dropped,
                  exemplar_labels=tuple(b[0] for b in kept), exemplar_indices=tuple(b[2] for b in kept),
                  **fields)


def _tuning_rng(seed: int, dataset: str, index: int, attempt: int) -> np.random.Generator:
    """A tuning prompt's Generator; a redraw of a dropped prompt (attempt > 0) gets a stream of its own."""
    if attempt < 0:
        raise ValueError(f"dataset {dataset!r}: attempt must be >= 0, got {attempt}")
    rng = prompt_rng(seed, dataset, index, _PURPOSE_TUNING)  # also checks seed and index
    if attempt == 0:
        return rng
    return np.random.default_rng(np.random.SeedSequence([seed, stable_hash(dataset), index, _PURPOSE_TUNING,
                                                         attempt]))


def build_tuning_prompt(data: ClassificationData, *, seed: int, index: int, max_input_length: int = 2048,
                        length_fn: Callable[[str], int] = utf8_length, min_per_class: int = 2,
                        max_per_class: int = 10, pools: SymbolPools | None = None, attempt: int = 0) -> Prompt:
    """A symbol-tuning prompt: k exemplars of every class (one k drawn from [min_per_class, max_per_class] per
    prompt, as the paper does), labels remapped to tuning symbols, no instruction.

    The query is `data.examples[order[(index + attempt) % N]]` for a seeded permutation `order`, so indices
    0..N-1 visit every example once. Length fitting drops exemplars down to `min_per_class` per class and
    raises PromptTooLongError if that does not fit: the caller drops the prompt (task_builders.symbol_task
    counts it and redraws with `attempt + 1`: the next query in visit order with fresh exemplars and k).
    A class with fewer usable examples than k shows all it has (`short_classes`: fewer than min_per_class).
    """
    if not 1 <= min_per_class <= max_per_class:
        raise ValueError(f"dataset {data.name!r}: need 1 <= min_per_class <= max_per_class, got "
                         f"{min_per_class}, {max_per_class}")
    if not data.examples:
        raise ValueError(f"dataset {data.name!r} split {data.split!r} has no examples")
    order = _visit_order(data, seed)
    cache = _label_groups(data)
    num_classes = data.num_classes
    uniforms = _Uniforms(_tuning_rng(seed, data.name, index, attempt),
                         size=4 + num_classes * (2 * max_per_class + 4))
    query_index = order[(index + attempt) % len(order)]
    query = data.examples[query_index]
    fmt = FORMATS[uniforms.below(len(FORMATS))]
    symbols = symbols_from_uniforms(uniforms, num_classes, pool="tuning", pools=pools)
    examples = data.examples
    head = fmt.input_prefix
    blocks: list[tuple[int, str, int]] = []
    short: list[int] = []
    k = min_per_class + uniforms.below(max_per_class - min_per_class + 1)  # one k for every class
    for label, group in enumerate(cache.groups):
        exclude = cache.position[query_index] if label == query.label else -1
        available = len(group) - (exclude >= 0)
        if available == 0:
            raise ValueError(f"dataset {data.name!r} split {data.split!r}: class {label} "
                             f"({data.label_names[label]!r}) has no example to show besides the query, so the "
                             f"prompt cannot show its label mapping")
        if available < min_per_class:
            short.append(label)
        tail = fmt.joiner + fmt.output_prefix + fmt.target(symbols[label])
        for pos in uniforms.sample(len(group), k, exclude):
            i = group[pos]
            blocks.append((label, head + examples[i].text + tail, i))
    blocks = uniforms.shuffle(blocks)
    header = ""
    assert not header, "symbol-tuning prompts never carry an instruction"
    options = tuple(fmt.target(s) for s in symbols)
    return _finish(header=header, blocks=blocks, query=fmt.query(query.text), min_per_class=min_per_class,
                   max_input_length=max_input_length, length_fn=length_fn, uniforms=uniforms,
                   dataset=data.name, index=index, targets=options[query.label], options=options,
                   answer=query.label, setting=TUNING_SETTING, format_name=fmt.name, query_index=query_index,
                   short_classes=tuple(short))


def check_instruction_placement(placement: str, *, what: str = "instruction_placement") -> str:
    """`placement` if it is one of INSTRUCTION_PLACEMENTS, else ValueError naming `what` and the allowed values."""
    if placement not in INSTRUCTION_PLACEMENTS:
        raise ValueError(f"{what}: unknown instruction placement {placement!r}; allowed: "
                         f"{', '.join(INSTRUCTION_PLACEMENTS)}")
    return placement


def build_eval_prompt(query_data: ClassificationData, exemplar_data: ClassificationData, *, setting: str,
                      seed: int, index: int, k_per_class: int = 4, flipped: bool = False,
                      max_input_length: int = 2048, length_fn: Callable[[str], int] = utf8_length,
                      pools: SymbolPools | None = None, instruction_placement: str = "header") -> Prompt:
    """An evaluation prompt in one of SETTINGS: optional instruction, k exemplars per class, then the query.

    Label settings show the natural label names; the others show evaluation-pool symbols. With
    `flipped` (binary tasks) labels 0 and 1 swap for the exemplars and the query alike. The instruction
    (instruction settings only) comes once before the exemplars (`instruction_placement="header"`), or on
    its own line before every exemplar and before the query ("every_exemplar", the paper's Figure 1); the
    exemplars, format and symbols are the same either way.
    """
    name = query_data.name
    check_instruction_placement(instruction_placement)
    if setting not in SETTINGS:
        raise ValueError(f"dataset {name!r}: unknown evaluation setting {setting!r}; expected one of {SETTINGS}")
    use_instruction = setting in INSTRUCTION_SETTINGS
    if use_instruction and not (query_data.instruction or "").strip():
        raise ValueError(f"dataset {name!r}: setting {setting!r} needs an instruction but the dataset has none")
    if query_data.label_names != exemplar_data.label_names:
        raise ValueError(f"dataset {name!r}: query labels {query_data.label_names!r} differ from exemplar "
                         f"dataset {exemplar_data.name!r} labels {exemplar_data.label_names!r}")
    if flipped and query_data.num_classes != 2:
        raise ValueError(f"dataset {name!r}: flipped labels need a binary task, it has "
                         f"{query_data.num_classes} classes")
    if k_per_class < 1:
        raise ValueError(f"dataset {name!r}: k_per_class must be >= 1, got {k_per_class}")
    if not 0 <= index < len(query_data.examples):
        raise IndexError(f"dataset {name!r} split {query_data.split!r}: index {index} out of range for "
                         f"{len(query_data.examples)} examples")
    query = query_data.examples[index]
    cache = _label_groups(exemplar_data)
    uniforms = _Uniforms(prompt_rng(seed, name, index, _PURPOSE_EVAL))
    fmt = FORMATS[uniforms.below(len(FORMATS))]
    if setting in LABEL_SETTINGS:
        labels = _label_texts(query_data)
    else:
        labels = sample_label_symbols(prompt_rng(seed, name, index, _PURPOSE_EVAL_SYMBOLS),
                                      query_data.num_classes, pool="evaluation", pools=pools)
    options = tuple(fmt.target(text) for text in labels)
    shown = (lambda c: 1 - c) if flipped else (lambda c: c)
    blocks: list[tuple[int, str, int]] = []
    short: list[int] = []
    for label, group in enumerate(cache.groups):
        exclude = cache.position[index] if exemplar_data is query_data and label == query.label else -1
        available = len(group) - (exclude >= 0)
        if available == 0:
            raise ValueError(f"dataset {exemplar_data.name!r} split {exemplar_data.split!r}: class {label} "
                             f"({exemplar_data.label_names[label]!r}) has no exemplar to show")
        if available < k_per_class:
            short.append(label)
        for pos in uniforms.sample(len(group), k_per_class, exclude):
            i = group[pos]
            blocks.append((shown(label), fmt.exemplar(exemplar_data.examples[i].text, labels[shown(label)]), i))
    blocks = uniforms.shuffle(blocks)
    header, query_text = "", fmt.query(query.text)
    if use_instruction and instruction_placement == "header":
        header = query_data.instruction.strip() + BLOCK_SEPARATOR
    elif use_instruction:
        line = query_data.instruction.strip() + "\n"
        blocks = [(c, line + text, i) for c, text, i in blocks]
        query_text = line + query_text
    answer = shown(query.label)
    return _finish(header=header, blocks=blocks, query=query_text, min_per_class=1,
                   max_input_length=max_input_length, length_fn=length_fn, uniforms=uniforms, dataset=name,
                   index=index, targets=options[answer], options=options, answer=answer, setting=setting,
                   format_name=fmt.name, flipped=flipped, query_index=index, short_classes=tuple(short))


def build_generative_prompt(data: GenerativeData, *, seed: int, index: int, shots: int = 4,
                            max_input_length: int = 2048, length_fn: Callable[[str], int] = utf8_length,
                            fmt: str | None = "Input:/Output:") -> Prompt:
    """A few-shot prompt for an open-ended task: `shots` other examples, then the query; one option.

    `fmt` names a format from `symbol_tuning.data.formats.FORMAT_NAMES`; None draws one per prompt.
    """
    if not 0 <= index < len(data.examples):
        raise IndexError(f"dataset {data.name!r} split {data.split!r}: index {index} out of range for "
                         f"{len(data.examples)} examples")
    if shots < 0:
        raise ValueError(f"dataset {data.name!r}: shots must be >= 0, got {shots}")
    uniforms = _Uniforms(prompt_rng(seed, data.name, index, _PURPOSE_GENERATIVE))
    form: PromptFormat = FORMATS[uniforms.below(len(FORMATS))] if fmt is None else get_format(fmt)
    blocks = [(0, form.exemplar(data.examples[i].inputs, data.examples[i].targets), i)
              for i in uniforms.sample(len(data.examples), shots, index)]
    blocks = uniforms.shuffle(blocks)
    query = data.examples[index]
    target = form.target(query.targets)
    return _finish(header="", blocks=blocks, query=form.query(query.inputs), min_per_class=0,
                   max_input_length=max_input_length, length_fn=length_fn, uniforms=uniforms,
                   dataset=data.name, index=index, targets=target, options=(target,), answer=0,
                   setting=GENERATIVE_SETTING, format_name=form.name, query_index=index,
                   short_classes=(0,) if len(data.examples) - 1 < shots else ())


"""Our task and mixture registry: named, deterministic prompt functions and their sampling rates.

A task maps (index, seed) to one example dict {"inputs", "targets", "options", "answer", "dataset",
"index"}; it never reads data until first used, so registering the paper's tasks costs nothing.
A mixture lists (task or mixture name, rate); rates are sampling probabilities after
normalisation. `register_mixture` is the one-call helper that builds a symbol-tuning mixture from
datasets and an instruction task, refusing evaluation data. No TensorFlow here: the SeqIO bridge
listens to this registry (`add_listener`) and mirrors what is registered.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import threading
from typing import Any, Callable, Sequence

from symbol_tuning.examples import ClassificationData, GenerativeData

KINDS = ("symbol", "instruction", "eval")
# Symbol-tuning prompts leave room for EOS (and BOS for decoder-only vocabularies) in a 2048 row.
DEFAULT_MAX_INPUT_LENGTH = 2046


@dataclasses.dataclass(frozen=True)
class PromptBudget:
    """How long a prompt's inputs may be, in the tokens of the vocabulary that will encode them.

    A batch stream derives it from its feature lengths and vocabulary, so prompts built for a
    512-token model drop exemplars to fit 512 tokens instead of failing or being truncated.
    """

    max_input_length: int
    length_fn: Callable[[str], int] | None = None


ExampleFn = Callable[[int, int, "PromptBudget | None"], dict]


@dataclasses.dataclass(frozen=True)
class PromptTask:
    """A named deterministic function `fn(index, seed, budget) -> example dict`.

    `num_examples` is one epoch's length (None: unbounded or not known before loading; then
    `size_fn`, if given, loads and tells). Tasks accept any index >= 0 and wrap it themselves.
    """

    name: str
    num_examples: int | None
    fn: ExampleFn = dataclasses.field(repr=False, compare=False)
    kind: str = "symbol"
    size_fn: Callable[[], int] | None = dataclasses.field(default=None, repr=False, compare=False)
    metadata: dict = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.num_examples is not None and self.num_examples <= 0:
            raise ValueError(f"task {self.name!r}: num_examples must be positive or None, got {self.num_examples}")

    def size(self) -> int | None:
        """Examples in one epoch (loads lazily registered data when needed)."""
        if self.num_examples is not None:
            return self.num_examples
        return self.size_fn() if self.size_fn is not None else None

    def example(self, index: int, seed: int = 0, budget: PromptBudget | None = None) -> dict:
        """The example at `index` for prompt seed `seed` (within `budget` when given), tagged with the task name."""
        if index < 0:
            raise IndexError(f"task {self.name!r}: index must be >= 0, got {index}")
        out = dict(self.fn(index, seed, budget))
        out.setdefault("task", self.name)
        return out


@dataclasses.dataclass(frozen=True)
class Mixture:
    """A named list of (task or mixture name, rate) with rates >= 0 and a positive sum."""

    name: str
    entries: tuple[tuple[str, float], ...]

    def __post_init__(self):
        if not self.entries:
            raise ValueError(f"mixture {self.name!r} lists no tasks")
        for task, rate in self.entries:
            if not rate >= 0:
                raise ValueError(f"mixture {self.name!r}: rate of {task!r} must be >= 0, got {rate}")
        if sum(rate for _, rate in self.entries) <= 0:
            raise ValueError(f"mixture {self.name!r}: rates sum to 0")

    def leaf_rates(self) -> list[tuple[PromptTask, float]]:
        """Tasks with their normalised sampling probabilities (sub-mixtures flattened, zero rates dropped)."""
        total = sum(rate for _, rate in self.entries)
        out: dict[str, list] = {}
        for name, rate in self.entries:
            if rate == 0:
                continue
            item = get_task_or_mixture(name)
            parts = item.leaf_rates() if isinstance(item, Mixture) else [(item, 1.0)]
            for task, sub in parts:
                out.setdefault(task.name, [task, 0.0])[1] += rate / total * sub
        return [(task, p) for task, p in out.values()]


_TASKS: dict[str, PromptTask] = {}
_MIXTURES: dict[str, Mixture] = {}
_LISTENERS: list[Callable[[PromptTask | Mixture], None]] = []
_EVAL_DATA: dict[str, ClassificationData] = {}
_LOCK = threading.Lock()


def add_listener(fn: Callable[[PromptTask | Mixture], None]) -> None:
    """Call `fn` for every task and mixture registered from now on (the SeqIO bridge uses this)."""
    _LISTENERS.append(fn)


def _notify(item: PromptTask | Mixture) -> None:
    for fn in _LISTENERS:
        fn(item)


def _unknown(kind: str, name: str, known: Sequence[str]) -> KeyError:
    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    hint = f"; close names: {', '.join(close)}" if close else f"; {len(known)} are registered"
    return KeyError(f"unknown {kind} {name!r}{hint}")


class TaskRegistry:
    """Registered prompt tasks by name (SeqIO's TaskRegistry in spirit)."""

    @staticmethod
    def add(task: PromptTask, *, overwrite: bool = False) -> PromptTask:
        with _LOCK:
            if not overwrite and (task.name in _TASKS or task.name in _MIXTURES):
                raise ValueError(f"task {task.name!r} is already registered (pass overwrite=True to replace it)")
            _TASKS[task.name] = task
        _notify(task)
        return task

    @staticmethod
    def get(name: str) -> PromptTask:
        if name not in _TASKS:
            raise _unknown("task", name, list(_TASKS))
        return _TASKS[name]

    @staticmethod
    def names() -> list[str]:
        return sorted(_TASKS)

    @staticmethod
    def remove(name: str) -> None:
        _TASKS.pop(name, None)


class MixtureRegistry:
    """Registered mixtures by name."""

    @staticmethod
    def add(name: str, entries: Sequence[tuple[str, float]], *, overwrite: bool = False) -> Mixture:
        mixture = Mixture(name, tuple((str(t), float(r)) for t, r in entries))
        for task, _ in mixture.entries:
            if task not in _TASKS and task not in _MIXTURES:
                raise _unknown("task or mixture", task, list(_TASKS) + list(_MIXTURES))
        with _LOCK:
            if not overwrite and (name in _MIXTURES or name in _TASKS):
                raise ValueError(f"mixture {name!r} is already registered (pass overwrite=True to replace it)")
            _MIXTURES[name] = mixture
        _notify(mixture)
        return mixture

    @staticmethod
    def get(name: str) -> Mixture:
        if name not in _MIXTURES:
            raise _unknown("mixture", name, list(_MIXTURES))
        return _MIXTURES[name]

    @staticmethod
    def names() -> list[str]:
        return sorted(_MIXTURES)

    @staticmethod
    def remove(name: str) -> None:
        _MIXTURES.pop(name, None)


def get_task_or_mixture(name: str) -> PromptTask | Mixture:
    """The registered task or mixture called `name`; KeyError listing close names otherwise."""
    if name in _TASKS:
        return _TASKS[name]
    if name in _MIXTURES:
        return _MIXTURES[name]
    raise _unknown("task or mixture", name, list(_TASKS) + list(_MIXTURES))


def register_eval_data(data: ClassificationData) -> None:
    """Remember in-memory evaluation data so tuning data can be checked against its texts."""
    _EVAL_DATA[data.name] = data


def registered_eval_data() -> list[ClassificationData]:
    return list(_EVAL_DATA.values())


def _prompt_dict(prompt) -> dict[str, Any]:
    return {"inputs": prompt.inputs, "targets": prompt.targets, "options": tuple(prompt.options),
            "answer": int(prompt.answer), "dataset": prompt.dataset, "index": int(prompt.index)}


def _limits(budget: PromptBudget | None, default_max: int) -> dict[str, Any]:
    """Prompt-builder keywords for a budget (the task's own default length when none is given)."""
    if budget is None:
        return {"max_input_length": default_max}
    out: dict[str, Any] = {"max_input_length": budget.max_input_length}
    if budget.length_fn is not None:
        out["length_fn"] = budget.length_fn
    return out


def symbol_task(name: str, loader: Callable[[], ClassificationData], *, num_examples: int | None = None,
                max_input_length: int = DEFAULT_MAX_INPUT_LENGTH, check_eval: bool = True) -> PromptTask:
    """A symbol-tuning task over the data `loader` returns (called once, on first use)."""
    from symbol_tuning.prompts import build_tuning_prompt

    @functools.lru_cache(maxsize=1)
    def data() -> ClassificationData:
        loaded = loader()
        if check_eval:
            from symbol_tuning.decontamination import check_no_overlap
            check_no_overlap([loaded], registered_eval_data())
        return loaded

    def fn(index: int, seed: int, budget: PromptBudget | None = None) -> dict:
        return _prompt_dict(build_tuning_prompt(data(), seed=seed, index=index, **_limits(budget, max_input_length)))

    return PromptTask(name, num_examples, fn, "symbol", size_fn=lambda: len(data().examples))


def eval_task(name: str, query_loader: Callable[[], ClassificationData],
              exemplar_loader: Callable[[], ClassificationData], *, setting: str, flipped: bool = False,
              k_per_class: int = 4, num_examples: int | None = None,
              max_input_length: int = DEFAULT_MAX_INPUT_LENGTH) -> PromptTask:
    """An evaluation task: query example `index` (no wrapping past one epoch) in one of prompts.SETTINGS."""
    from symbol_tuning.prompts import build_eval_prompt

    query = functools.lru_cache(maxsize=1)(query_loader)
    exemplars = functools.lru_cache(maxsize=1)(exemplar_loader)

    def fn(index: int, seed: int, budget: PromptBudget | None = None) -> dict:
        size = len(query().examples)
        if index >= size:
            raise IndexError(f"eval task {name!r}: index {index} is past its {size} examples")
        out = _prompt_dict(build_eval_prompt(query(), exemplars(), setting=setting, seed=seed, index=index,
                                             k_per_class=k_per_class, flipped=flipped,
                                             **_limits(budget, max_input_length)))
        out["setting"] = setting + (":flipped" if flipped else "")
        return out

    return PromptTask(name, num_examples, fn, "eval", size_fn=lambda: len(query().examples),
                      metadata={"setting": setting, "flipped": flipped})


def instruction_task(name: str, loader: Callable[[], GenerativeData], *, num_examples: int | None = None
                     ) -> PromptTask:
    """An instruction-tuning task: example `index % N` of the data `loader` returns, as is."""
    data = functools.lru_cache(maxsize=1)(loader)

    def fn(index: int, seed: int, budget: PromptBudget | None = None) -> dict:
        examples = data().examples
        pair = examples[index % len(examples)]
        return {"inputs": pair.inputs, "targets": pair.targets, "options": (pair.targets,), "answer": 0,
                "dataset": data().name, "index": int(index)}

    return PromptTask(name, num_examples, fn, "instruction", size_fn=lambda: len(data().examples))


def register_mixture(name: str, *, datasets: Sequence[str | ClassificationData], symbol_rate: float,
                     instruction_task: str | None, split: str = "train", source: str = "hf",
                     max_input_length: int = DEFAULT_MAX_INPUT_LENGTH, overwrite: bool = False,
                     to_seqio: bool = False) -> Mixture:
    """Register a symbol-tuning mixture: one symbol task per dataset (equal rates) mixed with the
    instruction task so that symbol data is `symbol_rate` of the stream.

    Dataset names are tuning specs loaded lazily with `hub_sources.load_classification(split,
    source)`; ClassificationData is used as is. Evaluation datasets are refused by name and, for
    in-memory data, by text overlap with registered evaluation data. The mixture also appears in
    SeqIO once `symbol_tuning.seqio_bridge` is imported (it mirrors our registry); `to_seqio=True`
    imports it now (TensorFlow import: seconds).
    """
    from symbol_tuning.decontamination import assert_tuning_names_allowed, check_no_overlap

    if not 0 <= symbol_rate <= 1:
        raise ValueError(f"mixture {name!r}: symbol_rate must be in [0, 1], got {symbol_rate}")
    if symbol_rate > 0 and not datasets:
        raise ValueError(f"mixture {name!r}: symbol_rate {symbol_rate} needs at least one dataset")
    if symbol_rate < 1 and instruction_task is None:
        raise ValueError(f"mixture {name!r}: symbol_rate {symbol_rate} < 1 needs an instruction_task")
    if instruction_task is not None and symbol_rate < 1:
        TaskRegistry.get(instruction_task)
    if not overwrite and name in _MIXTURES:
        raise ValueError(f"mixture {name!r} is already registered (pass overwrite=True to replace it)")
    names = [d if isinstance(d, str) else d.name for d in datasets]
    assert_tuning_names_allowed(names)
    in_memory = [d for d in datasets if isinstance(d, ClassificationData)]
    if in_memory:
        check_no_overlap(in_memory, registered_eval_data())
    entries: list[tuple[str, float]] = []
    for d in datasets:
        task_name = f"symbol_tuning:{d if isinstance(d, str) else d.name}"
        if task_name not in _TASKS:
            if isinstance(d, str):
                TaskRegistry.add(symbol_task(task_name, functools.partial(_load_spec, d, split, source),
                                             max_input_length=max_input_length))
            else:
                TaskRegistry.add(symbol_task(task_name, functools.partial(lambda x: x, d),
                                             num_examples=len(d.examples), max_input_length=max_input_length,
                                             check_eval=False))
        if symbol_rate > 0:
            entries.append((task_name, symbol_rate / len(datasets)))
    if instruction_task is not None and symbol_rate < 1:
        entries.append((instruction_task, 1.0 - symbol_rate))
    mixture = MixtureRegistry.add(name, entries, overwrite=overwrite)
    if to_seqio:
        import symbol_tuning.seqio_bridge  # noqa: F401  (mirrors the registry into SeqIO)
    return mixture


def _load_spec(name: str, split: str, source: str) -> ClassificationData:
    from symbol_tuning.hub_sources import load_classification
    return load_classification(name, split, source=source)

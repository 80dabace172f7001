"""Our task and mixture registry: named, deterministic prompt functions and their sampling rates.

A task maps (index, seed) to one example dict {"inputs", "targets", "options", "answer", "dataset",
"index"}; it never reads data until first used, so registering the paper's tasks costs nothing.
A mixture lists (task or mixture name, rate); rates are sampling probabilities after
normalisation. The tasks and mixtures themselves are built in task_builders. No TensorFlow here: the
SeqIO bridge listens to this registry (`add_listener`) and mirrors what is registered under the same name,
so names must be valid SeqIO names (letters, digits, "_", ".", ":", "#"; see `check_name`).

Why two registries at all: this one is TensorFlow-free (models/ and training/ import without TF, and
`symbol-tuning train` on our names starts in about a second instead of importing TF), and its tasks take a
prompt budget, which our deterministic O(1)-resumable batch stream needs. SeqIO's registry is the one a
user adds to: importing `symbol_tuning.data.seqio_bridge` puts every name of ours there, and `train`
accepts any name registered in SeqIO (seqio_bridge.adopt), so a user needs to learn only SeqIO's API.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import threading
from typing import Callable, Sequence

from symbol_tuning.data.examples import ClassificationData

KINDS = ("symbol", "instruction", "eval")
# SeqIO's task-name rule (seqio.dataset_providers), so every name of ours is usable unchanged in SeqIO.
_VALID_NAME = re.compile(r"^[\w.:#]+$")


def check_name(name: str) -> str:
    """`name` if SeqIO accepts it as a task or mixture name, else ValueError naming the bad characters."""
    if not isinstance(name, str) or not _VALID_NAME.match(name):
        bad = sorted(set(re.sub(r"[\w.:#]", "", str(name)))) or ["(empty)"]
        raise ValueError(f"task or mixture name {name!r}: SeqIO allows only letters, digits, '_', '.', ':' and "
                         f"'#' (bad: {' '.join(bad)}); use registry_name() for dataset names")
    return name


def registry_name(text: str) -> str:
    """A dataset name made into a valid task-name part: each character SeqIO refuses ("/", "-", ...) becomes
    "." (the one renaming between a dataset's name and its task's name, e.g. gen/x -> symbol_tuning:gen.x)."""
    return re.sub(r"[^\w.:#]", ".", text)


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
    `validation` is the same task over the source's validation split, where the source has one (SeqIO's
    "validation" split of the bridged task); evaluation tasks are themselves evaluation data.
    """

    name: str
    num_examples: int | None
    fn: ExampleFn = dataclasses.field(repr=False, compare=False)
    kind: str = "symbol"
    size_fn: Callable[[], int] | None = dataclasses.field(default=None, repr=False, compare=False)
    metadata: dict = dataclasses.field(default_factory=dict, compare=False)
    validation: "PromptTask | None" = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        check_name(self.name)
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
        check_name(self.name)
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
_CHECKS: list[Callable[[str, bool], None]] = []
_EVAL_DATA: dict[str, ClassificationData] = {}
_LOCK = threading.Lock()


def add_listener(fn: Callable[[PromptTask | Mixture], None], check: Callable[[str, bool], None] | None = None
                 ) -> None:
    """Call `fn` for every task and mixture registered from now on, and `check(name, overwrite)` before each
    registration (it raises to refuse one; the SeqIO bridge uses both)."""
    _LISTENERS.append(fn)
    if check is not None:
        _CHECKS.append(check)


def _refuse_clash(kind: str, name: str, overwrite: bool) -> None:
    """ValueError naming the registered item and the new one, unless `overwrite` (then checks only)."""
    if not overwrite:
        old = _TASKS.get(name) or _MIXTURES.get(name)
        if old is not None:
            raise ValueError(f"{kind} {name!r} is already registered as {_describe(old)}; pass overwrite=True "
                             "to replace it, or choose another name")
    for check in _CHECKS:
        check(name, overwrite)


def _describe(item: "PromptTask | Mixture") -> str:
    if isinstance(item, Mixture):
        return f"a mixture of {len(item.entries)} entries"
    origin = item.metadata.get("origin")
    return f"a {item.kind} task" + (f" ({origin})" if origin else "")


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
            _refuse_clash("task", task.name, overwrite)
            _MIXTURES.pop(task.name, None)
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
            _refuse_clash("mixture", name, overwrite)
            _TASKS.pop(name, None)
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


def is_registered(name: str) -> bool:
    """Whether `name` is one of our tasks or mixtures."""
    return name in _TASKS or name in _MIXTURES


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

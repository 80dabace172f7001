"""The tasks and mixtures the project builds on the registry: symbol-tuning, evaluation and instruction
tasks over datasets, and `register_mixture`, the one-call helper that builds a symbol-tuning mixture from
datasets and an instruction task, refusing evaluation data."""
from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Callable, Sequence

from symbol_tuning.data.examples import ClassificationData, GenerativeData
from symbol_tuning.data.symbols import SymbolPools
from symbol_tuning.data.task_registry import (
    Mixture,
    MixtureRegistry,
    PromptBudget,
    PromptTask,
    TaskRegistry,
    registered_eval_data,
    registry_name,
)

log = logging.getLogger(__name__)

# Symbol-tuning prompts leave room for EOS (and BOS for decoder-only vocabularies) in a 2048 row.
DEFAULT_MAX_INPUT_LENGTH = 2046
# The paper's k range: one k per prompt, shown for every class (prompts.build_tuning_prompt).
MIN_PER_CLASS, MAX_PER_CLASS = 2, 10
# Redraws tried for a dropped symbol-tuning prompt before the task gives up with PromptTooLongError.
MAX_REDRAWS = 16


class PromptDrops:
    """Symbol-tuning prompts of one task dropped by length fitting in this process (they could not keep
    `min_per_class` exemplars per class within the budget; each was replaced by a redraw), and prompts built.

    A warning at the 1st, 10th, 100th, ... drop gives the count and the dataset, never one per prompt; the
    run-start check (data.validation) counts the drops of the first prompts into data_validation.json."""

    def __init__(self, task: str, min_per_class: int):
        self.task, self.min_per_class = task, min_per_class
        self.dropped = self.built = 0
        self.first = ""
        self._lock = threading.Lock()

    def add_built(self) -> None:
        with self._lock:
            self.built += 1

    def add_dropped(self, dataset: str, error: Exception) -> None:
        with self._lock:
            self.dropped += 1
            self.first = self.first or str(error)
            count, built, first = self.dropped, self.built, self.first
        if _is_milestone(count):
            log.warning("%s (dataset %s): %d symbol-tuning prompts dropped so far in this process (%d built): they "
                        "cannot keep %d exemplars per class within the length budget, each is redrawn; first: %s",
                        self.task, dataset, count, built, self.min_per_class, first)

    def snapshot(self) -> tuple[int, int]:
        """(dropped, built) so far."""
        with self._lock:
            return self.dropped, self.built

    def reset(self) -> None:
        with self._lock:
            self.dropped = self.built = 0
            self.first = ""


def _is_milestone(count: int) -> bool:
    while count % 10 == 0:
        count //= 10
    return count == 1


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
                max_input_length: int = DEFAULT_MAX_INPUT_LENGTH, check_eval: bool = True,
                validation_loader: Callable[[], ClassificationData] | None = None,
                origin: str | None = None, min_per_class: int = MIN_PER_CLASS,
                max_per_class: int = MAX_PER_CLASS,
                pools: SymbolPools | Callable[[], SymbolPools] | None = None) -> PromptTask:
    """A symbol-tuning task over the data `loader` returns (called once, on first use); with
    `validation_loader`, the same prompts over the source's validation split form `task.validation`.
    `origin` says where the data come from (shown when another registration clashes with the name);
    `pools` (default: the real pools; a function returning them is called on first use, so registering reads
    nothing) goes to prompts.build_tuning_prompt.

    Each prompt draws one k in [min_per_class, max_per_class] for every class. A prompt that cannot keep
    min_per_class per class within the budget is dropped, counted (`metadata["prompt_drops"]`, PromptDrops)
    and redrawn (the next query in visit order, fresh exemplars); after MAX_REDRAWS redraws in a row the task
    raises PromptTooLongError: the budget is too small for this dataset."""
    from symbol_tuning.data.prompts import PromptTooLongError, build_tuning_prompt

    if not 1 <= min_per_class <= max_per_class:
        raise ValueError(f"symbol task {name!r}: need 1 <= min_per_class <= max_per_class, got "
                         f"{min_per_class}, {max_per_class}")
    validation = None
    if validation_loader is not None:
        validation = symbol_task(name, validation_loader, max_input_length=max_input_length,
                                 check_eval=check_eval, origin=origin, min_per_class=min_per_class,
                                 max_per_class=max_per_class, pools=pools)
    drops = PromptDrops(name, min_per_class)
    symbol_pools = functools.lru_cache(maxsize=1)(pools if callable(pools) else lambda: pools)

    @functools.lru_cache(maxsize=1)
    def data() -> ClassificationData:
        loaded = loader()
        if check_eval:
            from symbol_tuning.data.decontamination import check_no_overlap
            check_no_overlap([loaded], registered_eval_data())
        return loaded

    def fn(index: int, seed: int, budget: PromptBudget | None = None) -> dict:
        source, limits = data(), _limits(budget, max_input_length)
        for attempt in range(MAX_REDRAWS + 1):
            try:
                prompt = build_tuning_prompt(source, seed=seed, index=index, min_per_class=min_per_class,
                                             max_per_class=max_per_class, pools=symbol_pools(), attempt=attempt,
                                             **limits)
            except PromptTooLongError as e:
                drops.add_dropped(source.name, e)
                last = e
                continue
            drops.add_built()
            return _prompt_dict(prompt)
        raise PromptTooLongError(f"symbol task {name!r}: the prompt at index {index} and its {MAX_REDRAWS} redraws "
                                 f"were all dropped, so the length budget is too small for dataset "
                                 f"{source.name!r}; last: {last}")

    metadata = {"min_per_class": min_per_class, "max_per_class": max_per_class, "prompt_drops": drops}
    if origin:
        metadata["origin"] = origin
    return PromptTask(name, num_examples, fn, "symbol", size_fn=lambda: len(data().examples),
                      metadata=metadata, validation=validation)


def eval_task(name: str, query_loader: Callable[[], ClassificationData],
              exemplar_loader: Callable[[], ClassificationData], *, setting: str, flipped: bool = False,
              k_per_class: int = 4, num_examples: int | None = None,
              max_input_length: int = DEFAULT_MAX_INPUT_LENGTH) -> PromptTask:
    """An evaluation task: query example `index` (no wrapping past one epoch) in one of prompts.SETTINGS."""
    from symbol_tuning.data.prompts import build_eval_prompt

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
                     to_seqio: bool = False, min_per_class: int = MIN_PER_CLASS,
                     max_per_class: int = MAX_PER_CLASS) -> Mixture:
    """Register a symbol-tuning mixture: one symbol task per dataset (equal rates) mixed with the
    instruction task so that symbol data is `symbol_rate` of the stream.

    Dataset names are tuning specs loaded lazily with `sources.hub.load_classification(split,
    source)`; ClassificationData is used as is. Each dataset becomes task "symbol_tuning:<name>" (characters
    SeqIO refuses in <name>, such as "/", become "."); in-memory data whose task name is taken (a user's own
    "trec" vs the paper's hub-backed task) is refused naming both, unless `overwrite=True` replaces it.
    Evaluation datasets are refused by name and, for in-memory data, by text overlap with registered
    evaluation data. The mixture also appears in SeqIO once `symbol_tuning.data.seqio_bridge` is
    imported (it mirrors our registry); `to_seqio=True` imports it now (TensorFlow import: seconds).
    `min_per_class`/`max_per_class`: the range of the one k each prompt draws (symbol_task).
    """
    from symbol_tuning.data.decontamination import assert_tuning_names_allowed, check_no_overlap

    if not 0 <= symbol_rate <= 1:
        raise ValueError(f"mixture {name!r}: symbol_rate must be in [0, 1], got {symbol_rate}")
    if symbol_rate > 0 and not datasets:
        raise ValueError(f"mixture {name!r}: symbol_rate {symbol_rate} needs at least one dataset")
    if symbol_rate < 1 and instruction_task is None:
        raise ValueError(f"mixture {name!r}: symbol_rate {symbol_rate} < 1 needs an instruction_task")
    if instruction_task is not None and symbol_rate < 1:
        TaskRegistry.get(instruction_task)
    if not overwrite and name in MixtureRegistry.names():
        raise ValueError(f"mixture {name!r} is already registered (pass overwrite=True to replace it)")
    planned = [(d, f"symbol_tuning:{registry_name(d if isinstance(d, str) else d.name)}") for d in datasets]
    for d, task_name in planned:
        if isinstance(d, ClassificationData) and task_name in TaskRegistry.names() and not overwrite:
            raise ValueError(
                f"mixture {name!r}: in-memory dataset {d.name!r} ({len(d.examples)} examples) would be task "
                f"{task_name!r}, but that name is already a {TaskRegistry.get(task_name).kind} task over "
                f"{TaskRegistry.get(task_name).metadata.get('origin', 'data registered earlier')}; rename the data "
                "or pass overwrite=True to replace that task")
    names = [d if isinstance(d, str) else d.name for d in datasets]
    assert_tuning_names_allowed(names)
    in_memory = [d for d in datasets if isinstance(d, ClassificationData)]
    if in_memory:
        check_no_overlap(in_memory, registered_eval_data())
    entries: list[tuple[str, float]] = []
    per_class = {"min_per_class": min_per_class, "max_per_class": max_per_class}
    for d, task_name in planned:
        if isinstance(d, str):
            if task_name not in TaskRegistry.names():
                TaskRegistry.add(symbol_task(task_name, functools.partial(_load_spec, d, split, source),
                                             max_input_length=max_input_length, origin=f"{source} dataset {d!r}",
                                             **per_class))
        else:
            TaskRegistry.add(symbol_task(task_name, functools.partial(lambda x: x, d), num_examples=len(d.examples),
                                         max_input_length=max_input_length, check_eval=False,
                                         origin=f"in-memory data {d.name!r}", **per_class), overwrite=overwrite)
        if symbol_rate > 0:
            entries.append((task_name, symbol_rate / len(datasets)))
    if instruction_task is not None and symbol_rate < 1:
        entries.append((instruction_task, 1.0 - symbol_rate))
    mixture = MixtureRegistry.add(name, entries, overwrite=overwrite)
    if to_seqio:
        import symbol_tuning.data.seqio_bridge  # noqa: F401  (mirrors the registry into SeqIO)
    return mixture


def _load_spec(name: str, split: str, source: str) -> ClassificationData:
    from symbol_tuning.data.sources.hub import load_classification
    return load_classification(name, split, source=source)

"""Evaluation suites: which query / exemplar datasets and generative tasks an evaluation covers.

Built-in suites:
- "paper": the paper's 11 held-out datasets (specs.EVAL_DATASETS), from the raw files under a data root
  (`source="local"`, layouts in data.sources.layouts), from local HF copies or the HF hub (`source="hf"`).
  Queries are split "eval" (at most 100 each): the validation split where the dataset has one, as the
  paper does (TweetEval hate and stances), else test (SUBJ on the hub) or the eval part of a partitioned
  pool (SUBJ and RAFT files); each dataset's `sample` records that split and the files read. Exemplars
  are split "train".
- "embedded": the held-out families of our generated data (symbol_tuning.data.embedded.datasets.EVAL_FAMILIES).
- "reproduction": the embedded reproduction's held-out word-level families
  (symbol_tuning.data.embedded.lexicons.EVAL_FAMILIES) with the reproduction's symbol pools.
- "bigbench": BIG-Bench list_functions (LIST_FUNCTIONS_CONCEPTS, 4-shot) and simp_turing_concept
  (the subset in TURING_SUBSETS, whose inputs already hold their exemplars, restricted to programs of at
  most `turing_max_instructions` instructions: the paper's 3, 17 programs / 85 examples), scored by exact
  match.

Names are checked before any data is read, so a typo fails fast with the valid names listed.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import numpy as np

from symbol_tuning.data.bigbench import TURING_MAX_INSTRUCTIONS
from symbol_tuning.data.examples import ClassificationData, GenerativeData
from symbol_tuning.data.specs import EVAL_DATASETS, EVAL_MAX_EXAMPLES, get_spec
from symbol_tuning.data.symbols import SymbolPools

SUITES = ("paper", "embedded", "reproduction", "bigbench")
PAPER_SOURCES = ("local", "hf", "tfds")

# The paper keeps the 20 list_functions concepts with the highest human accuracy, but the staged task.json
# files carry no human scores (see symbol_tuning.data.bigbench), so the exact list is not in the data. We chose
# the 20 single-step, unconditional functions (fixed appends / prepends, one-element picks, reversal, sum,
# max, length, ...): in the list-functions human study such simple rules are the ones people solve best.
# Pass `concepts=` to use another list.
LIST_FUNCTIONS_CONCEPTS = ("c029", "c037", "c038", "c041", "c042", "c045", "c046", "c048", "c049", "c061",
                           "c062", "c065", "c066", "c067", "c070", "c071", "c077", "c078", "c079", "c080")
# The paper's simple Turing concepts use the "AS II" subset: additional_set_2 of simp_turing_concept, and
# only its programs of at most 3 instructions (symbol_tuning.data.bigbench.TURING_MAX_INSTRUCTIONS).
TURING_SUBSETS = ("additional_set_2",)
LIST_FUNCTIONS_SHOTS = 4


@dataclasses.dataclass(frozen=True)
class EvalDataset:
    """One classification dataset of a suite: queries, the pool its exemplars come from, and its instruction."""

    name: str
    queries: ClassificationData
    exemplars: ClassificationData
    # where `queries` come from (paper suite: "split", "files") and how they were drawn (max_queries), for the
    # results (summary["query_samples"])
    sample: dict | None = None
    pools: SymbolPools | None = None  # symbols of the symbol settings (None: the real evaluation pool)

    @property
    def num_classes(self) -> int:
        return self.queries.num_classes

    @property
    def is_binary(self) -> bool:
        return self.queries.num_classes == 2

    @property
    def instruction(self) -> str | None:
        return self.queries.instruction


@dataclasses.dataclass(frozen=True)
class GenerativeTask:
    """One open-ended task: `shots` exemplars from the same data before each query (0: inputs used as is)."""

    name: str
    data: GenerativeData
    shots: int = LIST_FUNCTIONS_SHOTS


@dataclasses.dataclass(frozen=True)
class EvalSuite:
    """A named list of classification datasets and generative tasks."""

    name: str
    datasets: tuple[EvalDataset, ...] = ()
    generative: tuple[GenerativeTask, ...] = ()

    def dataset_names(self) -> list[str]:
        return [d.name for d in self.datasets] + [g.name for g in self.generative]


def chance_accuracy(datasets: Sequence[EvalDataset] | Sequence[int]) -> float:
    """Mean over datasets of 1 / num_classes (the paper's "random guessing" row)."""
    counts = [d if isinstance(d, int) else d.num_classes for d in datasets]
    if not counts:
        raise ValueError("chance_accuracy: no datasets")
    return sum(1.0 / c for c in counts) / len(counts)


def _pick(requested: Sequence[str] | None, known: Sequence[str], suite: str) -> list[str]:
    if requested is None:
        return list(known)
    unknown = [n for n in requested if n not in known]
    if unknown:
        raise ValueError(f"suite {suite!r}: unknown datasets {unknown}; valid: {', '.join(known)}")
    return list(requested)


def balanced_sample(data: ClassificationData, max_queries: int, seed: int) -> tuple[ClassificationData, dict]:
    """At most `max_queries` queries, as equal per class as the data allow, drawn at random with `seed`
    (each class shuffled by a generator seeded from seed and the dataset's name; classes take turns), kept in
    file order; and the record of the draw. The first N rows of a file sorted by label (SUBJ) would be one
    class, where a constant model scores 100% or 0%."""
    from symbol_tuning.data.prompts import stable_hash

    by_class: dict[int, list[int]] = {}
    for i, ex in enumerate(data.examples):
        by_class.setdefault(int(ex.label), []).append(i)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, stable_hash(data.name) & 0xFFFFFFFF])
    queues = {label: list(rng.permutation(idx)) for label, idx in sorted(by_class.items())}
    chosen: list[int] = []
    while len(chosen) < min(max_queries, len(data.examples)):
        for label in sorted(queues):
            if queues[label] and len(chosen) < max_queries:
                chosen.append(int(queues[label].pop(0)))
    chosen.sort()
    counts: dict[str, int] = {}
    for i in chosen:
        name = data.label_names[data.examples[i].label]
        counts[name] = counts.get(name, 0) + 1
    record = {"max_queries": int(max_queries), "seed": int(seed), "from": len(data.examples),
              "drawn": len(chosen), "per_class": counts, "method": "seeded, class-balanced"}
    return dataclasses.replace(data, examples=tuple(data.examples[i] for i in chosen)), record


def _cap(data: ClassificationData, max_queries: int | None, seed: int) -> tuple[ClassificationData, dict | None]:
    if max_queries is None:
        return data, None
    return balanced_sample(data, max_queries, seed)


def paper_dataset_names() -> list[str]:
    return list(EVAL_DATASETS)


def _local_origin(name: str, source, data_root: str) -> dict:
    """Where a local dataset's queries come from: the source split its spec names (validation where the
    dataset has one, as the paper does) or the eval part of a partitioned pool, and the files read."""
    files = source.files
    paths = list(files.values()) if isinstance(files, Mapping) else list(files) if isinstance(files, tuple) else [files]
    split = (f"eval part of a stratified partition ({1 - source.train_fraction:.0%} of each label)"
             if source.part else get_spec(name).source_split("eval"))
    return {"split": split, "files": [os.path.relpath(p, data_root) for p in paths]}


def _paper(*, data_root: str | None, source: str, datasets: Sequence[str] | None, max_queries: int | None,
           seed: int) -> EvalSuite:
    names = _pick(datasets, paper_dataset_names(), "paper")
    if source not in PAPER_SOURCES:
        raise ValueError(f"suite 'paper': unknown source {source!r}; valid: {PAPER_SOURCES}")
    if source == "local" and not data_root:
        raise ValueError("suite 'paper' with source 'local' needs data_root (the raw data directory)")
    if source == "local" and not os.path.isdir(data_root):
        raise FileNotFoundError(f"suite 'paper': data_root {data_root} is not a directory")
    out = []
    for name in names:
        if source == "local":
            from symbol_tuning.data.sources.layouts import local_source
            from symbol_tuning.data.sources.local_files import load_local

            query_source = local_source(name, data_root, "eval")
            queries = load_local(source=query_source, split="eval", max_examples=EVAL_MAX_EXAMPLES, seed=seed)
            exemplars = load_local(source=local_source(name, data_root, "train"), split="train")
            origin = _local_origin(name, query_source, data_root)
        else:
            from symbol_tuning.data.sources.hub import load_classification

            path = os.path.join(data_root, name) if data_root else None
            kwargs = {"path": path} if source == "hf" else {"data_dir": data_root}
            queries = load_classification(name, "eval", source=source, seed=seed, **kwargs)
            exemplars = load_classification(name, "train", source=source, seed=seed, **kwargs)
            origin = {"split": get_spec(name).source_split("eval")}
        sampled, record = _cap(queries, max_queries, seed)
        record = {**origin, **(record or {"drawn": len(sampled.examples),
                                          "method": f"all, or a seeded subset of {EVAL_MAX_EXAMPLES}"})}
        out.append(EvalDataset(name=name, queries=sampled, exemplars=exemplars, sample=record))
    return EvalSuite(name="paper", datasets=tuple(out))


def _family_name(family) -> str:
    return family if isinstance(family, str) else family.name


def _embedded(*, datasets: Sequence[str] | None, max_queries: int | None, seed: int,
              num_exemplars: int = 64) -> EvalSuite:
    from symbol_tuning.data.embedded import datasets as generated

    known = [_family_name(f) for f in generated.EVAL_FAMILIES]
    names = _pick(datasets, known, "embedded")
    num_queries = 100 if max_queries is None else max_queries
    out = []
    for name in names:
        queries = generated.generated_classification(name, split="eval", num_examples=num_queries, seed=seed)
        exemplars = generated.generated_classification(name, split="train", num_examples=num_exemplars, seed=seed)
        sample = None if max_queries is None else {"max_queries": int(max_queries), "seed": int(seed),
                                                   "method": "generated: the family's first eval examples"}
        out.append(EvalDataset(name=name, queries=queries, exemplars=exemplars, sample=sample))
    return EvalSuite(name="embedded", datasets=tuple(out))


def _reproduction(*, datasets: Sequence[str] | None, max_queries: int | None, seed: int,
                  num_exemplars: int = 64) -> EvalSuite:
    from symbol_tuning.data.embedded import lexicons

    names = _pick(datasets, [f.name for f in lexicons.EVAL_FAMILIES], "reproduction")
    num_queries = 100 if max_queries is None else max_queries
    pools = lexicons.reproduction_pools()
    out = []
    for name in names:
        # Queries from the held-out (eval) split, exemplars from the train split, as for the paper's datasets.
        queries = lexicons.lexicon_classification(name, split="eval", num_examples=num_queries, seed=seed)
        exemplars = lexicons.lexicon_classification(name, split="train", num_examples=num_exemplars, seed=seed)
        sample = {"max_queries": num_queries, "seed": int(seed), "method": "generated: balanced eval examples"}
        out.append(EvalDataset(name=name, queries=queries, exemplars=exemplars, sample=sample, pools=pools))
    return EvalSuite(name="reproduction", datasets=tuple(out))


def bigbench_task_names(concepts: Sequence[str] = LIST_FUNCTIONS_CONCEPTS,
                        turing_subsets: Sequence[str] = TURING_SUBSETS) -> list[str]:
    return [f"list_functions/{c}" for c in concepts] + [f"simple_turing_concept/{s}" for s in turing_subsets]


def _bigbench(*, data_root: str | None, datasets: Sequence[str] | None, max_queries: int | None,
              concepts: Sequence[str] | None, turing_max_instructions: int | None) -> EvalSuite:
    from symbol_tuning.data.bigbench import list_functions_tasks, simple_turing_concept_tasks

    concepts = tuple(concepts) if concepts is not None else LIST_FUNCTIONS_CONCEPTS
    names = _pick(datasets, bigbench_task_names(concepts), "bigbench")
    if not data_root:
        raise ValueError("suite 'bigbench' needs data_root holding bigbench_list_functions/ and "
                         "bigbench_simple_turing_concept/")
    wanted_concepts = [n.split("/", 1)[1] for n in names if n.startswith("list_functions/")]
    wanted_subsets = [n.split("/", 1)[1] for n in names if n.startswith("simple_turing_concept/")]
    tasks = []
    if wanted_concepts:
        for data in list_functions_tasks(os.path.join(data_root, "bigbench_list_functions"),
                                         concepts=wanted_concepts):
            tasks.append(GenerativeTask(data.name, data, LIST_FUNCTIONS_SHOTS))
    if wanted_subsets:
        for data in simple_turing_concept_tasks(os.path.join(data_root, "bigbench_simple_turing_concept"),
                                                subsets=wanted_subsets,
                                                max_instructions=turing_max_instructions):
            tasks.append(GenerativeTask(data.name, data, 0))
    if max_queries is not None:
        tasks = [dataclasses.replace(t, data=dataclasses.replace(t.data, examples=t.data.examples[:max(
            max_queries, t.shots + 1)])) for t in tasks]
    return EvalSuite(name="bigbench", generative=tuple(tasks))


def build_suite(name: str, *, data_root: str | None = None, source: str = "local",
                datasets: Sequence[str] | None = None, max_queries: int | None = None, seed: int = 0,
                concepts: Sequence[str] | None = None,
                turing_max_instructions: int | None = TURING_MAX_INSTRUCTIONS) -> EvalSuite:
    """The suite `name` (one of SUITES), restricted to `datasets` and to `max_queries` queries each (for
    the paper suite a seeded, class-balanced sample, see balanced_sample, recorded in `EvalDataset.sample`).

    Unknown suite or dataset names raise ValueError listing the valid ones before any data is read.
    List_functions tasks keep at least shots + 1 examples so every query has its exemplars; simple Turing
    concepts keep the programs of at most `turing_max_instructions` instructions (None: all).
    """
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; valid suites: {', '.join(SUITES)}")
    if max_queries is not None and max_queries < 1:
        raise ValueError(f"max_queries must be >= 1, got {max_queries}")
    if name == "paper":
        return _paper(data_root=data_root, source=source, datasets=datasets, max_queries=max_queries, seed=seed)
    if name == "embedded":
        return _embedded(datasets=datasets, max_queries=max_queries, seed=seed)
    if name == "reproduction":
        return _reproduction(datasets=datasets, max_queries=max_queries, seed=seed)
    return _bigbench(data_root=data_root, datasets=datasets, max_queries=max_queries, concepts=concepts,
                     turing_max_instructions=turing_max_instructions)


def suite_from_data(name: str, datasets: Sequence[EvalDataset] = (),
                    generative: Sequence[GenerativeTask] = ()) -> EvalSuite:
    """A custom suite from data already in memory (a user's own datasets)."""
    seen = [d.name for d in datasets] + [g.name for g in generative]
    if len(set(seen)) != len(seen):
        raise ValueError(f"suite {name!r}: duplicate dataset names in {seen}")
    return EvalSuite(name=name, datasets=tuple(datasets), generative=tuple(generative))

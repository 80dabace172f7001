"""Dataset specs: where a classification dataset lives and how its rows become examples.

A `DatasetSpec` names a dataset's HF hub id and config (and TFDS builder where one with the same
columns exists), maps our split names ("train" = tuning rows or evaluation exemplars, "eval" =
evaluation queries) onto the source's splits, says which columns form the input and the label, and
carries the natural-language label names and, for evaluation datasets, the paper's instruction.
`TUNING_DATASETS` / `EVAL_DATASETS` hold the paper's 33 datasets and never change; a user's own
datasets go into a separate registry through `register_spec`.

Hub ids, configs, column names and ClassLabel orders are written from knowledge of the hub datasets,
not fetched; the points we were least sure of:
- The 22 tuning datasets are DESIGN.md's reconstruction, not the paper's confirmed list.
- Canonical ids moved to namespaces (glue -> nyu-mll/glue, super_glue -> aps/super_glue, snli ->
  stanfordnlp/snli, trec -> CogComp/trec, piqa -> ybisk/piqa, ag_news -> fancyzhx/ag_news); PIQA and
  TREC are script-based on the hub and may need a parquet export with the same columns.
- The natural label names ("relevant labels") are our choice where the paper does not list them; each
  class also accepts the hub's ClassLabel name, so string-labelled exports load too.
- RAFT (ought/raft) labels are 1-based ClassLabels whose 0 = "Unlabeled" fills the test split, so RAFT
  queries come from its 50-row train split, the same rows as its exemplars: the prompt builder must never
  use a query as its own exemplar.
- Evaluation queries come from the validation split where a dataset has one, as the paper does
  (TweetEval hate and the four stances), else from test (SetFit/subj has train / test only; RAFT: train,
  above); exemplars come from train. The local layouts follow the spec (layouts.py).
"""
from __future__ import annotations

import dataclasses
import re
import types
from typing import Iterable, Mapping

from symbol_tuning.data.rows import FieldMapping

ROLES = ("tuning", "evaluation")
TUNING_TASK_TYPES = ("nli", "sentiment", "paraphrase", "commonsense", "topic", "coreference", "misc")
TUNING_MAX_EXAMPLES = 25_000
EVAL_MAX_EXAMPLES = 100
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One classification dataset: source ids, split names, columns, label names and instruction.

    splits: our split name -> source split name; every spec has "train", evaluation specs also
    "eval" (queries). max_examples caps "train" for tuning specs and "eval" for evaluation specs (see
    `cap`). unlabeled: raw label values (as str) that mean "no gold label" (GLUE test rows are -1,
    RAFT's unlabeled class is 0); loaders drop such rows and count them instead of failing.
    """

    name: str
    role: str
    task_type: str
    hf_path: str
    hf_config: str | None
    splits: Mapping[str, str]
    mapping: FieldMapping
    label_names: tuple[str, ...]
    instruction: str | None = None
    max_examples: int = TUNING_MAX_EXAMPLES
    tfds_name: str | None = None
    unlabeled: tuple[str, ...] = ()

    def __post_init__(self):
        where = f"dataset spec {self.name!r}"
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(f"{where}: name must be lowercase letters, digits, '_', '.' or '-'")
        if self.role not in ROLES:
            raise ValueError(f"{where}: role {self.role!r} is not one of {ROLES}")
        if not self.task_type:
            raise ValueError(f"{where}: task_type is empty")
        if self.role == "tuning" and self.task_type not in TUNING_TASK_TYPES:
            raise ValueError(f"{where}: tuning task_type {self.task_type!r} is not one of {TUNING_TASK_TYPES}")
        if not self.hf_path:
            raise ValueError(f"{where}: hf_path is empty")
        object.__setattr__(self, "splits", types.MappingProxyType(dict(self.splits)))
        object.__setattr__(self, "label_names", tuple(self.label_names))
        object.__setattr__(self, "unlabeled", tuple(str(v) for v in self.unlabeled))
        needed = ("train", "eval") if self.role == "evaluation" else ("train",)
        missing = [s for s in needed if s not in self.splits]
        if missing:
            raise ValueError(f"{where}: splits {dict(self.splits)} lack {missing}")
        if len(self.label_names) < 2 or len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"{where}: needs at least 2 distinct label names, got {self.label_names}")
        if self.mapping.titles is None and len(self.mapping.text_fields) > 1:
            raise ValueError(f"{where}: a multi-field input needs titles")
        if self.mapping.label_map is not None:
            bad = {k: v for k, v in self.mapping.label_map.items() if not 0 <= v < len(self.label_names)}
            if bad:
                raise ValueError(f"{where}: label_map values {bad} are outside 0..{len(self.label_names) - 1}")
        if self.role == "evaluation" and not self.instruction:
            raise ValueError(f"{where}: evaluation datasets need an instruction")
        if self.role == "tuning" and self.instruction is not None:
            raise ValueError(f"{where}: tuning datasets carry no instruction (symbol tuning removes them)")
        if self.max_examples < 1:
            raise ValueError(f"{where}: max_examples must be positive, got {self.max_examples}")

    @property
    def hf_id(self) -> str:
        """'path/config' (or 'path' without a config): the id decontamination compares."""
        return f"{self.hf_path}/{self.hf_config}" if self.hf_config else self.hf_path

    def source_split(self, split: str) -> str:
        """The source split behind our split name; a name that is not ours passes through unchanged."""
        return self.splits.get(split, split)

    def cap(self, split: str) -> int | None:
        """The paper's example cap for a split: tuning train 25k, evaluation queries 100, else none."""
        if (self.role == "tuning" and split == "train") or (self.role == "evaluation" and split == "eval"):
            return self.max_examples
        return None


def label_mapping(text_fields: Iterable[str], label_field: str, *, titles: Iterable[str | None] | None,
                  raw_names: Iterable[Iterable[str]], first_index: int = 0) -> FieldMapping:
    """A FieldMapping whose label_map accepts every spelling of each class.

    raw_names[i] lists the spellings of class i besides its integer (first_index + i): the hub's
    ClassLabel name and our natural name, so hub ints, hub strings and local CSV strings all load.
    """
    label_map: dict[str, int] = {}
    for i, names in enumerate(raw_names):
        for key in (str(first_index + i), *names):
            if label_map.setdefault(key, i) != i:
                raise ValueError(f"label spelling {key!r} names two classes")
    return FieldMapping(text_fields=tuple(text_fields), label_field=label_field,
                        titles=None if titles is None else tuple(titles), label_map=label_map)


# The paper's 33 datasets.
_GLUE = "nyu-mll/glue"
_SUPER_GLUE = "aps/super_glue"
_TWEET_EVAL = "cardiffnlp/tweet_eval"
_RAFT = "ought/raft"
_DEV = {"train": "train", "eval": "validation"}
_TEST = {"train": "train", "eval": "test"}
_PAIR = ("Sentence 1", "Sentence 2")
_NO_GOLD = ("-1",)


def _tuning(name: str, task_type: str, hf_path: str, hf_config: str | None, fields: tuple[str, ...],
            label_field: str, labels: tuple[tuple[str, ...], ...], *, titles: tuple[str, ...] | None = None,
            splits: dict[str, str] | None = None, tfds_name: str | None = None, first_index: int = 0,
            unlabeled: tuple[str, ...] = ()) -> DatasetSpec:
    """A tuning spec; labels[i] = (natural name, other spellings...) of class i."""
    mapping = label_mapping(fields, label_field, titles=titles, raw_names=labels, first_index=first_index)
    return DatasetSpec(name=name, role="tuning", task_type=task_type, hf_path=hf_path, hf_config=hf_config,
                       splits=splits or _DEV, mapping=mapping, label_names=tuple(pair[0] for pair in labels),
                       tfds_name=tfds_name, unlabeled=unlabeled)


def _eval(name: str, task_type: str, hf_path: str, hf_config: str | None, fields: tuple[str, ...],
          label_field: str, labels: tuple[tuple[str, ...], ...], instruction: str, *,
          titles: tuple[str, ...] | None = None, splits: dict[str, str] | None = None, first_index: int = 0,
          unlabeled: tuple[str, ...] = ()) -> DatasetSpec:
    """An evaluation spec; queries ("eval") from the validation split unless `splits` says otherwise."""
    mapping = label_mapping(fields, label_field, titles=titles, raw_names=labels, first_index=first_index)
    return DatasetSpec(name=name, role="evaluation", task_type=task_type, hf_path=hf_path, hf_config=hf_config,
                       splits=splits or _DEV, mapping=mapping, label_names=tuple(pair[0] for pair in labels),
                       instruction=instruction, max_examples=EVAL_MAX_EXAMPLES, unlabeled=unlabeled)


def _glue(name: str, task_type: str, fields: tuple[str, ...], labels, *, titles=None, config=None,
          splits=None) -> DatasetSpec:
    config = config or name
    return _tuning(name, task_type, _GLUE, config, fields, "label", labels, titles=titles, splits=splits,
                   tfds_name=f"glue/{config}", unlabeled=_NO_GOLD)


def _super_glue(name: str, task_type: str, config: str, fields: tuple[str, ...], labels, *, titles) -> DatasetSpec:
    return _tuning(name, task_type, _SUPER_GLUE, config, fields, "label", labels, titles=titles,
                   tfds_name=f"super_glue/{config}", unlabeled=_NO_GOLD)


_ENTAIL3 = (("entailment",), ("neutral",), ("contradiction",))
_OPTIONS = (("Option 1",), ("Option 2",))


def tuning_specs() -> tuple[DatasetSpec, ...]:
    """The 22 tuning datasets (train splits capped at 25k examples each)."""
    return (
        # NLI
        _glue("rte", "nli", ("sentence1", "sentence2"), (("entailment",), ("not entailment", "not_entailment")),
              titles=("Premise", "Hypothesis")),
        _glue("wnli", "nli", ("sentence1", "sentence2"), (("not entailment", "not_entailment"), ("entailment",)),
              titles=("Premise", "Hypothesis")),
        _glue("qnli", "nli", ("question", "sentence"), (("entailment",), ("not entailment", "not_entailment")),
              titles=("Question", "Sentence")),
        _glue("mnli", "nli", ("premise", "hypothesis"), _ENTAIL3, titles=("Premise", "Hypothesis"),
              splits={"train": "train", "eval": "validation_matched"}),
        _tuning("snli", "nli", "stanfordnlp/snli", "plain_text", ("premise", "hypothesis"), "label", _ENTAIL3,
                titles=("Premise", "Hypothesis"), tfds_name="snli", unlabeled=_NO_GOLD),
        _super_glue("cb", "nli", "cb", ("premise", "hypothesis"),
                    (("entailment",), ("contradiction",), ("neutral",)), titles=("Premise", "Hypothesis")),
        # sentiment
        _glue("sst2", "sentiment", ("sentence",), (("negative",), ("positive",))),
        _tuning("rotten_tomatoes", "sentiment", "cornell-movie-review-data/rotten_tomatoes", None, ("text",),
                "label", (("negative", "neg"), ("positive", "pos"))),
        _tuning("tweet_eval_sentiment", "sentiment", _TWEET_EVAL, "sentiment", ("text",), "label",
                (("negative",), ("neutral",), ("positive",))),
        # paraphrase
        _glue("qqp", "paraphrase", ("question1", "question2"), (("not duplicate", "not_duplicate"), ("duplicate",)),
              titles=("Question 1", "Question 2")),
        _glue("mrpc", "paraphrase", ("sentence1", "sentence2"),
              (("not equivalent", "not_equivalent"), ("equivalent",)), titles=_PAIR),
        _tuning("paws", "paraphrase", "google-research-datasets/paws", "labeled_final", ("sentence1", "sentence2"),
                "label", (("not paraphrase",), ("paraphrase",)), titles=_PAIR),
        # commonsense (multiple choice rendered as classification over the options)
        _super_glue("copa", "commonsense", "copa", ("premise", "question", "choice1", "choice2"),
                    (("Option 1", "choice1"), ("Option 2", "choice2")),
                    titles=("Premise", "Question", "Option 1", "Option 2")),
        _tuning("piqa", "commonsense", "ybisk/piqa", None, ("goal", "sol1", "sol2"), "label", _OPTIONS,
                titles=("Goal", "Option 1", "Option 2"), tfds_name="piqa"),
        # topic
        _tuning("ag_news", "topic", "fancyzhx/ag_news", None, ("text",), "label",
                (("world", "World"), ("sports", "Sports"), ("business", "Business"),
                 ("science and technology", "Sci/Tech")), splits=_TEST),
        _tuning("trec", "topic", "CogComp/trec", None, ("text",), "coarse_label",
                (("abbreviation", "ABBR"), ("entity", "ENTY"), ("description", "DESC"), ("human", "HUM"),
                 ("location", "LOC"), ("number", "NUM")), splits=_TEST),
        # coreference
        _super_glue("wsc", "coreference", "wsc.fixed", ("text", "span2_text", "span1_text"),
                    (("false", "False"), ("true", "True")), titles=("Sentence", "Pronoun", "Candidate")),
        _tuning("winogrande", "coreference", "allenai/winogrande", "winogrande_xl", ("sentence", "option1", "option2"),
                "answer", _OPTIONS, titles=("Sentence", "Option 1", "Option 2"), first_index=1,
                unlabeled=("",)),
        # misc
        _tuning("tweet_eval_offensive", "misc", _TWEET_EVAL, "offensive", ("text",), "label",
                (("not offensive", "non-offensive", "not-offensive"), ("offensive",))),
        _tuning("tweet_eval_irony", "misc", _TWEET_EVAL, "irony", ("text",), "label",
                (("not irony", "non_irony"), ("irony",))),
        _super_glue("wic", "misc", "wic", ("word", "sentence1", "sentence2"),
                    (("different meaning", "False", "false"), ("same meaning", "True", "true")),
                    titles=("Word", "Sentence 1", "Sentence 2")),
        _glue("cola", "misc", ("sentence",), (("unacceptable",), ("acceptable",))),
    )


_STANCE = (("none",), ("against",), ("favor",))
_RAFT_SPLITS = {"train": "train", "eval": "train"}
_RAFT_UNLABELED = ("0", "Unlabeled")


def _stance(target: str, topic: str) -> DatasetSpec:
    return _eval(f"tweet_eval_stance_{target}", "stance", _TWEET_EVAL, f"stance_{target}", ("text",), "label",
                 _STANCE, f"Read the following tweet and determine its stance on {topic}.")


def _raft(config: str, task_type: str, fields: tuple[str, ...], labels, instruction: str, *,
          titles=None) -> DatasetSpec:
    return _eval(f"raft_{config}", task_type, _RAFT, config, fields, "Label", labels, instruction,
                 titles=titles, splits=_RAFT_SPLITS, first_index=1, unlabeled=_RAFT_UNLABELED)


def eval_specs() -> tuple[DatasetSpec, ...]:
    """The 11 held-out evaluation datasets (at most 100 queries each), with the paper's instructions."""
    return (
        _eval("subj", "subjectivity", "SetFit/subj", None, ("text",), "label", (("objective",), ("subjective",)),
              "Is the following sentence subjective or objective?", splits=_TEST),  # no validation split
        _eval("tweet_eval_hate", "hate_speech", _TWEET_EVAL, "hate", ("text",), "label",
              (("non-hate", "not-hate"), ("hate",)),
              "Label the following tweet based on whether it contains hate speech."),
        _stance("abortion", "abortion"),
        _stance("atheism", "atheism"),
        _stance("feminist", "feminism"),
        _stance("hillary", "Hillary Clinton"),
        _raft("ade_corpus_v2", "adverse_drug_event", ("Sentence",), (("ADE-related",), ("not ADE-related",)),
              "Label the following sentence based on whether it is related to an adverse drug event."),
        _raft("overruling", "overruling", ("Sentence",), (("not overruling",), ("overruling",)),
              "Label the following sentence based on whether it is overruling or not."),
        _raft("semiconductor_org_types", "organization_type", ("Paper title", "Organization name"),
              (("company",), ("research institute",), ("university",)),
              "Read the following paper title and institution name and classify the institution as a "
              "university, company, or research institute.", titles=("Paper title", "Organization name")),
        _raft("terms_of_service", "unfair_terms", ("Sentence",),
              (("not potentially unfair",), ("potentially unfair",)),
              "Label the following sentence from a Terms of Service based on whether it is potentially unfair."),
        _raft("twitter_complaints", "complaint", ("Tweet text",), (("complaint",), ("no complaint",)),
              "Label the following tweet text based on whether it contains a complaint."),
    )


def _check_builtin(tuning: Mapping[str, DatasetSpec], evaluation: Mapping[str, DatasetSpec]) -> None:
    if len(tuning) != 22 or len(evaluation) != 11:
        raise AssertionError(f"the paper has 22 tuning and 11 evaluation datasets, got {len(tuning)} and "
                             f"{len(evaluation)}")
    both = set(tuning) & set(evaluation)
    shared_ids = {s.hf_id for s in tuning.values()} & {s.hf_id for s in evaluation.values()}
    if both or shared_ids:
        raise AssertionError(f"datasets on both sides: {sorted(both | shared_ids)}")
    for table, role in ((tuning, "tuning"), (evaluation, "evaluation")):
        for key, spec in table.items():
            if key != spec.name or spec.role != role:
                raise AssertionError(f"registry entry {key!r} holds spec {spec.name!r} with role {spec.role!r}")


def _build() -> tuple[Mapping[str, DatasetSpec], Mapping[str, DatasetSpec]]:
    tuning = {s.name: s for s in tuning_specs()}
    evaluation = {s.name: s for s in eval_specs()}
    if len(tuning) != len(tuning_specs()) or len(evaluation) != len(eval_specs()):
        raise AssertionError("duplicate dataset names in the paper registry")
    _check_builtin(tuning, evaluation)
    return types.MappingProxyType(tuning), types.MappingProxyType(evaluation)


TUNING_DATASETS, EVAL_DATASETS = _build()
_USER_SPECS: dict[str, DatasetSpec] = {}


def all_specs(role: str | None = None) -> dict[str, DatasetSpec]:
    """Every known spec (paper and user-registered), optionally only one role."""
    merged = {**TUNING_DATASETS, **EVAL_DATASETS, **_USER_SPECS}
    return {k: v for k, v in merged.items() if role is None or v.role == role}


def get_spec(name: str) -> DatasetSpec:
    """The spec registered under `name`; KeyError listing the known names otherwise."""
    known = all_specs()
    if name not in known:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(known))}")
    return known[name]


def register_spec(spec: DatasetSpec) -> DatasetSpec:
    """Add a user's own dataset. Re-registering an identical spec is a no-op; a different spec under a
    known name, or a tuning spec that points at an evaluation dataset's hub id, raises ValueError."""
    known = all_specs()
    if spec.name in known:
        if known[spec.name] == spec:
            return spec
        raise ValueError(f"dataset {spec.name!r} is already registered with a different spec")
    if spec.role == "tuning":
        clash = [s.name for s in all_specs("evaluation").values() if s.hf_id.lower() == spec.hf_id.lower()]
        if clash:
            raise ValueError(f"tuning dataset {spec.name!r} points at {spec.hf_id!r}, the source of evaluation "
                             f"dataset(s) {clash}; evaluation data can never be tuned on")
    _USER_SPECS[spec.name] = spec
    return spec


def unregister_spec(name: str) -> None:
    """Remove a user-registered spec (the paper's specs cannot be removed)."""
    if name not in _USER_SPECS:
        raise KeyError(f"{name!r} is not a user-registered dataset; user datasets: {sorted(_USER_SPECS)}")
    del _USER_SPECS[name]

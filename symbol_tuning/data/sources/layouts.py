"""On-disk layouts of the real raw datasets staged under shared/data (see its MANIFEST.md).

`local_source(name, root, split)` returns the `LocalSource` that reads split "train" (exemplars /
tuning data) or "eval" (queries) of a dataset, plus "validation" / "test" where such labelled files
exist. Names are the dataset spec names (specs.py: "tweet_eval_hate", "raft_overruling", ...); the
directory names of shared/data, "raft/<task>" and the bare RAFT-only task names are aliases. The
instruction comes from the spec of the same name (or of its RAFT copy) when there is one. Layouts
describe each dataset's canonical release, so a file missing from a snapshot (AG News train.csv,
TweetEval sentiment train_text.txt, ...) raises FileNotFoundError naming it.

Split choices (what each file is):
- TweetEval tasks: train / val ("validation") / test ("test") files of cardiffnlp/tweeteval; "eval"
  is the file of the split the dataset's spec takes its "eval" from (specs.py: validation for every
  TweetEval spec, the paper's evaluation sets included, so the val file), the val file without a spec.
- SUBJ, Rotten Tomatoes (MR), CR, MPQA, Financial PhraseBank (AllAgree), ADE corpus v2 (raw), MQP,
  IMDB / Yelp samples: one pool of labelled rows, deduplicated (first occurrence wins) and split by a
  deterministic stratified partition (80% of each label's rows "train", 20% "eval"; see
  `LocalSource.part`).
- RAFT tasks (`raft_<task>`): only the 50 labelled rows of train.csv are public; "train" and "eval"
  are a deterministic stratified 60/40 partition of those 50 rows (disjoint by construction).
- ADE corpus v2 (raw): ADE-NEG.txt sentences are "not ADE-related", DRUG-AE.rel sentences are
  "ADE-related"; duplicates are dropped (DRUG-AE.rel lists one row per drug/effect relation, and
  ADE-NEG.txt repeats 70 sentences), leaving 16,625 + 4,271 sentences.
- Overruling (LegalBench): train.tsv has only 6 rows, 3 of them repeated in test.tsv, too few for
  4 exemplars per class; both splits are an 80/20 stratified partition of test.tsv (2,394 rows,
  1,504 distinct sentences after dedupe).
- Official train files: rows whose text also occurs in the dataset's eval or test file are removed
  from "train" (logged; TweetEval hate repeats 235 texts, TREC 10, ...), so splits are disjoint.
- TREC and MRPC ship train and test files only: "eval" = test.txt / msr_paraphrase_test.txt.
- Only a held-out file is staged, so "eval" maps to it and "train" to the absent train file:
  AG News (test.csv), BoolQ, COPA, WiC (SuperGLUE val.jsonl), QNLI (dev.tsv), ANLI (test.jsonl),
  SNLI (dev.jsonl; "test" = the 1k TextFooler sample), DBpedia (val.csv; "test" = test.csv).
- MNLI: "train" = the 9k labelled subset train.json, "eval" = the full dev-matched dev.jsonl; QQP:
  the 9k / 1k labelled subsets train.json / dev.json; CoLA: "train" = the tokenized train.tsv,
  "eval" = GLUE's dev set test.tsv.
- Known defects of the files, repaired by declaration (see `LocalSource`) and logged: blank lines in
  TweetEval hate (7 train, 1 val), CR and MPQA are dropped; U+FFFD characters already present in TREC
  train (1 line) and RAFT twitter_complaints (2 rows) are removed; blank optional columns of
  multi-field RAFT rows (e.g. a missing Url or Abstract) read "N/A".
- Label names are natural-language names in the label-index order of the HF version of each dataset
  (RAFT: the order of its task.json); overruling and ade_corpus_v2 use RAFT's label names and order.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

from symbol_tuning.data.rows import FieldMapping
from symbol_tuning.data.sources.local_source import LocalSource

SPLITS = ("train", "eval", "validation", "test")
_TEXT = FieldMapping(text_fields=("text",), label_field="label")
_NLI = ("Premise", "Hypothesis")

_TWEETEVAL = {
    "tweet_eval_hate": ("hate", ("non-hate", "hate")),
    "tweet_eval_offensive": ("offensive", ("not offensive", "offensive")),
    "tweet_eval_irony": ("irony", ("not irony", "irony")),
    "tweet_eval_sentiment": ("sentiment", ("negative", "neutral", "positive")),
    "tweet_eval_emotion": ("emotion", ("anger", "joy", "optimism", "sadness")),
    **{f"tweet_eval_stance_{t}": (f"stance_{t}", ("none", "against", "favor"))
       for t in ("abortion", "atheism", "climate", "feminist", "hillary")},
}

RAFT_TASKS = ("ade_corpus_v2", "banking_77", "medical_subdomain_of_clinical_notes",
              "neurips_impact_statement_risks", "one_stop_english", "overruling", "semiconductor_org_types",
              "systematic_review_inclusion", "tai_safety_research", "terms_of_service", "tweet_eval_hate",
              "twitter_complaints")
# Bare names that only exist as RAFT tasks (the paper's SOT, TOS, TC): they mean raft_<task>.
_RAFT_ONLY = ("semiconductor_org_types", "terms_of_service", "twitter_complaints")

_ALIASES = {
    "sst-2": "sst2", "rotten_tomatoes_mr": "rotten_tomatoes", "mr": "rotten_tomatoes",
    "medical_questions_pairs": "mqp", "yelp": "yelp_polarity", "trec_coarse": "trec",
    **{f"tweeteval_{v[0]}": k for k, v in _TWEETEVAL.items()},
    **{f"raft/{t}": f"raft_{t}" for t in RAFT_TASKS},
    **{t: f"raft_{t}" for t in _RAFT_ONLY},
}


def _need(name: str, path: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: data file {path} does not exist")
    return path


def _by_split(name: str, split: str, files: dict[str, str]) -> str:
    if split not in files:
        raise KeyError(f"{name}: no {split!r} split in the local layout; splits: {sorted(files)}")
    return files[split]


_TWEETEVAL_FILES = {"validation": "val", "test": "test"}


def _spec_eval_split(name: str) -> str:
    """The source split behind "eval" in the dataset's spec ("validation" where it has none)."""
    from symbol_tuning.data import specs  # lazy: specs is optional for reading files

    try:
        return specs.get_spec(name).source_split("eval")
    except KeyError:
        return "validation"


def _tweeteval(name: str, root: str, split: str) -> LocalSource:
    folder, labels = _TWEETEVAL[name]
    eval_file = _TWEETEVAL_FILES[_spec_eval_split(name)]
    prefix = _by_split(name, split, {"train": "train", "eval": eval_file, "validation": "val", "test": "test"})
    d = os.path.join(root, f"tweeteval_{folder}")
    files = (_need(name, os.path.join(d, f"{prefix}_text.txt")), _need(name, os.path.join(d, f"{prefix}_labels.txt")))
    return LocalSource(files=files, label_names=labels, name=name, mapping=_TEXT, drop_empty=True)


def _partitioned(split: str, name: str, **kwargs) -> LocalSource:
    if split not in ("train", "eval"):
        raise KeyError(f"{name}: no {split!r} split in the local layout; splits: ['eval', 'train']")
    return LocalSource(name=name, part=split, dedupe=True, **kwargs)


def _raft(name: str, task: str, root: str, split: str) -> LocalSource:
    d = os.path.join(root, "raft", task)
    with open(_need(name, os.path.join(d, "task.json")), encoding="utf-8") as f:
        meta = json.load(f)
    labels = tuple(meta["label_columns"]["Label"])
    text_fields = tuple(c for c in meta["data_columns"] if c != "ID")
    # The label strings of train.csv, and the 1-based ints of the HF copy (0 = unlabeled).
    label_map = {**{lab: i for i, lab in enumerate(labels)}, **{str(i + 1): i for i in range(len(labels))}}
    mapping = FieldMapping(text_fields=text_fields, label_field="Label", label_map=label_map,
                           titles=None if len(text_fields) == 1 else text_fields)
    return _partitioned(split, name, files=_need(name, os.path.join(d, "train.csv")), file_format="csv",
                        label_names=labels, mapping=mapping, train_fraction=0.6, fill_empty="N/A",
                        strip_replacement_chars=True)


def _jsonl_split(name, root, split, folder, files, text_fields, titles, labels, label_map=None):
    path = os.path.join(root, folder, _by_split(name, split, files))
    mapping = FieldMapping(text_fields=text_fields, label_field="label", titles=titles, label_map=label_map)
    return LocalSource(files=_need(name, path), file_format="jsonl", label_names=labels, name=name, mapping=mapping)


def _subj(name, root, split):
    d = os.path.join(root, "subj")
    files = {"objective": _need(name, os.path.join(d, "subj.objective")),
             "subjective": _need(name, os.path.join(d, "subj.subjective"))}
    return _partitioned(split, name, files=files, label_names=("objective", "subjective"), encoding="cp1252",
                        mapping=_TEXT)


def _two_files(folder, neg, pos, encoding="utf-8"):
    def make(name, root, split):
        d = os.path.join(root, folder)
        files = {"negative": _need(name, os.path.join(d, neg)), "positive": _need(name, os.path.join(d, pos))}
        return _partitioned(split, name, files=files, label_names=("negative", "positive"), encoding=encoding,
                            mapping=_TEXT, drop_empty=True)
    return make


def _ade(name, root, split):
    d = os.path.join(root, "ade_corpus_v2")
    files = {"ADE-related": _need(name, os.path.join(d, "DRUG-AE.rel")),
             "not ADE-related": _need(name, os.path.join(d, "ADE-NEG.txt"))}
    regex = {"ADE-related": r"^\d+\|(?P<text>[^|]+)\|", "not ADE-related": r"^\d+ NEG (?P<text>.+)$"}
    return _partitioned(split, name, files=files, regex=regex, label_names=("ADE-related", "not ADE-related"),
                        mapping=_TEXT)


def _overruling(name, root, split):
    mapping = FieldMapping(text_fields=("text",), label_field="label", label_map={"No": 0, "Yes": 1})
    return _partitioned(split, name, files=_need(name, os.path.join(root, "overruling", "test.tsv")),
                        file_format="tsv", quoting=True, mapping=mapping, label_names=("not overruling", "overruling"))


def _regex_split(folder, files, regex, labels, label_map=None, encoding="utf-8", part=False, repair=False):
    def make(name, root, split):
        mapping = FieldMapping(text_fields=("text",), label_field="label", label_map=label_map)
        if part:
            return _partitioned(split, name, files=_need(name, os.path.join(root, folder, files)),
                                file_format="regex", regex=regex, label_names=labels, mapping=mapping,
                                encoding=encoding)
        path = os.path.join(root, folder, _by_split(name, split, files))
        return LocalSource(files=_need(name, path), file_format="regex", regex=regex, label_names=labels,
                           mapping=mapping, name=name, encoding=encoding, strip_replacement_chars=repair)
    return make


def _mrpc(name, root, split):
    path = os.path.join(root, "mrpc", _by_split(name, split, {"train": "msr_paraphrase_train.txt",
                                                              "eval": "msr_paraphrase_test.txt"}))
    mapping = FieldMapping(text_fields=("#1 String", "#2 String"), label_field="Quality",
                           titles=("Sentence 1", "Sentence 2"))
    return LocalSource(files=_need(name, path), file_format="tsv", mapping=mapping, name=name,
                       label_names=("not equivalent", "equivalent"))


def _ag_news(name, root, split):
    path = os.path.join(root, "ag_news", _by_split(name, split, {"train": "train.csv", "eval": "test.csv"}))
    mapping = FieldMapping(text_fields=("Title", "Description"), label_field="Class Index",
                           titles=("Title", "Description"), label_map={"1": 0, "2": 1, "3": 2, "4": 3})
    return LocalSource(files=_need(name, path), file_format="csv", mapping=mapping, name=name,
                       label_names=("world", "sports", "business", "science and technology"))


def _cola(name, root, split):
    labels = ("unacceptable", "acceptable")
    if split == "train":
        return LocalSource(files=_need(name, os.path.join(root, "cola", "train.tsv")), file_format="tsv",
                           mapping=FieldMapping(("x",), "y"), label_names=labels, name=name)
    path = os.path.join(root, "cola", _by_split(name, split, {"eval": "test.tsv"}))
    return LocalSource(files=_need(name, path), file_format="tsv", has_header=False,
                       columns=("source", "label", "mark", "sentence"), mapping=FieldMapping(("sentence",), "label"),
                       label_names=labels, name=name)


def _keyed_json(folder, text_fields, titles, labels, label_map=None):
    def make(name, root, split):
        path = os.path.join(root, folder, _by_split(name, split, {"train": "train.json", "eval": "dev.json"}))
        mapping = FieldMapping(text_fields=text_fields, label_field="label", titles=titles, label_map=label_map)
        return LocalSource(files=_need(name, path), file_format="json", mapping=mapping, name=name,
                           label_names=labels)
    return make


def _tsv(folder, files, text_fields, titles, label_field, labels, label_map=None, has_header=True, columns=None,
         delimiter=None, fmt="tsv", part=False):
    def make(name, root, split):
        mapping = FieldMapping(text_fields=text_fields, label_field=label_field, titles=titles, label_map=label_map)
        kw = dict(file_format=fmt, mapping=mapping, label_names=labels, has_header=has_header, columns=columns,
                  delimiter=delimiter)
        if part:
            return _partitioned(split, name, files=_need(name, os.path.join(root, folder, files)), **kw)
        path = os.path.join(root, folder, _by_split(name, split, files))
        return LocalSource(files=_need(name, path), name=name, **kw)
    return make


_NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}
_NLI3_NAMES = ("entailment", "neutral", "contradiction")
_BIN01 = r"^(?P<label>[01]) (?P<text>.+)$"
# DHIM's DBpedia sample numbers its classes 1..14 in this order (its meta.txt).
_DBPEDIA = ("Artist", "Company", "OfficeHolder", "Building", "Village", "Plant", "EducationalInstitution",
            "Animal", "Album", "WrittenWork", "NaturalPlace", "MeanOfTransportation", "Athlete", "Film")

_LAYOUTS: dict[str, Callable[[str, str, str], LocalSource]] = {
    **{name: _tweeteval for name in _TWEETEVAL},
    "subj": _subj,
    "ade_corpus_v2": _ade,
    "overruling": _overruling,
    "rotten_tomatoes": _two_files("rotten_tomatoes_mr", "rt-polarity.neg", "rt-polarity.pos", "cp1252"),
    "cr": _two_files("cr", "custrev.neg", "custrev.pos"),
    "mpqa": _two_files("mpqa", "mpqa.neg", "mpqa.pos"),
    "sst2": _regex_split("sst2", {"train": "stsa.binary.train", "eval": "stsa.binary.dev",
                                  "test": "stsa.binary.test"}, _BIN01, ("negative", "positive")),
    "trec": _regex_split("trec", {"train": "train.txt", "eval": "test.txt"}, r"^(?P<label>[A-Z]+):\S+ (?P<text>.+)$",
                         ("abbreviation", "entity", "description", "human", "location", "number"),
                         {"ABBR": 0, "ENTY": 1, "DESC": 2, "HUM": 3, "LOC": 4, "NUM": 5}, repair=True),
    "financial_phrasebank": _regex_split("financial_phrasebank", "Sentences_AllAgree.txt",
                                         r"^(?P<text>.+)@(?P<label>negative|neutral|positive)\s*$",
                                         ("negative", "neutral", "positive"), encoding="iso-8859-1", part=True),
    "imdb": _regex_split("imdb", "imdb", _BIN01, ("negative", "positive"), part=True),
    "yelp_polarity": _regex_split("yelp_polarity", "yelp", _BIN01, ("negative", "positive"), part=True),
    "rte": lambda n, r, s: _jsonl_split(n, r, s, "rte", {"train": "train.jsonl", "eval": "val.jsonl"},
                                        ("premise", "hypothesis"), _NLI, ("entailment", "not entailment"),
                                        {"entailment": 0, "not_entailment": 1}),
    "cb": lambda n, r, s: _jsonl_split(n, r, s, "cb", {"train": "train.jsonl", "eval": "val.jsonl"},
                                       ("premise", "hypothesis"), _NLI, ("entailment", "contradiction", "neutral"),
                                       {"entailment": 0, "contradiction": 1, "neutral": 2}),
    "boolq": lambda n, r, s: _jsonl_split(n, r, s, "boolq", {"train": "train.jsonl", "eval": "val.jsonl"},
                                          ("passage", "question"), ("Passage", "Question"), ("no", "yes"),
                                          {"false": 0, "False": 0, "true": 1, "True": 1}),
    "copa": lambda n, r, s: _jsonl_split(n, r, s, "copa", {"train": "train.jsonl", "eval": "val.jsonl"},
                                         ("premise", "question", "choice1", "choice2"),
                                         ("Premise", "Question", "Option 1", "Option 2"), ("Option 1", "Option 2")),
    "wic": lambda n, r, s: _jsonl_split(n, r, s, "wic", {"train": "train.jsonl", "eval": "val.jsonl"},
                                        ("word", "sentence1", "sentence2"), ("Word", "Sentence 1", "Sentence 2"),
                                        ("different meaning", "same meaning"),
                                        {"false": 0, "False": 0, "true": 1, "True": 1}),
    "anli": lambda n, r, s: _jsonl_split(n, r, s, "anli", {"train": "train.jsonl", "eval": "test.jsonl"},
                                         ("premise", "hypothesis"), _NLI, _NLI3_NAMES, _NLI3),
    "mnli": lambda n, r, s: (_keyed_json("mnli", ("text_a", "text_b"), _NLI, _NLI3_NAMES, _NLI3)(n, r, s)
                             if s == "train" else
                             _jsonl_split(n, r, s, "mnli", {"eval": "dev.jsonl"}, ("premise", "hypothesis"), _NLI,
                                          _NLI3_NAMES, _NLI3)),
    "snli": lambda n, r, s: (_tsv("snli", {"test": "snli"}, ("premise", "hypothesis"), _NLI, "label", _NLI3_NAMES,
                                  _NLI3, has_header=False, columns=("label", "premise", "hypothesis"))(n, r, s)
                             if s == "test" else
                             _jsonl_split(n, r, s, "snli", {"train": "train.jsonl", "eval": "dev.jsonl"},
                                          ("premise", "hypothesis"), _NLI, _NLI3_NAMES, _NLI3)),
    "qqp": _keyed_json("qqp", ("text_a", "text_b"), ("Question 1", "Question 2"), ("not duplicate", "duplicate")),
    "qnli": _tsv("qnli", {"train": "train.tsv", "eval": "dev.tsv"}, ("question", "sentence"),
                 ("Question", "Sentence"), "label", ("entailment", "not entailment"),
                 {"entailment": 0, "not_entailment": 1}),
    "cola": _cola,
    "mrpc": _mrpc,
    "ag_news": _ag_news,
    "emotion": _tsv("emotion", {"train": "train.txt", "eval": "val.txt", "test": "test.txt"}, ("text",), None,
                    "label_name", ("sadness", "joy", "love", "anger", "fear", "surprise"),
                    {"sadness": 0, "joy": 1, "love": 2, "anger": 3, "fear": 4, "surprise": 5},
                    delimiter=";", fmt="csv"),
    "mqp": _tsv("medical_questions_pairs", "mqp.csv", ("question_1", "question_2"), ("Question 1", "Question 2"),
                "label", ("not similar", "similar"), has_header=False,
                columns=("dr_id", "question_1", "question_2", "label"), fmt="csv", part=True),
    "dbpedia": _tsv("dbpedia", {"train": "train.csv", "eval": "val.csv", "test": "test.csv"}, ("text",), None,
                    "label", _DBPEDIA, {str(i + 1): i for i in range(len(_DBPEDIA))}, has_header=False,
                    columns=("label", "text"), fmt="csv"),
}


def known_layouts() -> list[str]:
    """Every name `local_source` accepts: spec names, raft_<task>, and their aliases (directory names, ...)."""
    return sorted({*_LAYOUTS, *_ALIASES, *(f"raft_{t}" for t in RAFT_TASKS)})


def _with_holdout(source: LocalSource, name: str, root: str, split: str) -> LocalSource:
    """A train split of official files minus the texts of the same dataset's eval / test files."""
    if split != "train" or source.part is not None:
        return source
    held: dict[str, LocalSource] = {}
    for other in SPLITS[1:]:
        try:
            candidate = _LAYOUTS[name](name, root, other)
        except (KeyError, FileNotFoundError):
            continue
        held.setdefault(repr(candidate.files), candidate)
    return dataclasses.replace(source, holdout=tuple(held.values()))


def local_source(name: str, root: str, split: str) -> LocalSource:
    """The LocalSource reading split "train" / "eval" (/ "test") of a staged dataset under `root`.

    Unknown name: KeyError listing the known layouts. A missing file: FileNotFoundError naming the
    path and the dataset. See the module docstring for what each split is.
    """
    if split not in SPLITS:
        raise KeyError(f"{name}: unknown split {split!r}; splits are {SPLITS}")
    key = _ALIASES.get(name, name)
    if key.startswith("raft_") and key[len("raft_"):] in RAFT_TASKS:
        source = _raft(key, key[len("raft_"):], root, split)
    elif key in _LAYOUTS:
        source = _with_holdout(_LAYOUTS[key](key, root, split), key, root, split)
    else:
        raise KeyError(f"no local layout for dataset {name!r}; known layouts: {known_layouts()}")
    return dataclasses.replace(source, instruction=_instruction(key))


def _instruction(key: str) -> str | None:
    """The paper's instruction from the dataset spec of the same (or the RAFT copy's) name, if any."""
    from symbol_tuning.data import specs  # lazy: specs is optional for reading files

    for candidate in (key, f"raft_{key}"):
        try:
            return specs.get_spec(candidate).instruction
        except KeyError:
            continue
    return None

"""The real raw datasets in shared/data load through local_source + load_local with MANIFEST.md's counts.

Expected counts are copied from shared/data/MANIFEST.md (raw labels translated to our label names by
hand). "Raw" loads switch off the split hygiene (held-out-text removal, dedupe, partition) to compare
with the MANIFEST; the hygiene itself is then checked against plain set arithmetic on the raw rows.
"""
import collections
import dataclasses

import pytest

from symbol_tuning.data.sources.layouts import local_source
from symbol_tuning.data.sources.local_files import load_local

STANCE = ("none", "against", "favor")
NLI3 = ("contradiction", "entailment", "neutral")


def counts(*pairs):
    return dict(pairs)


# name -> split -> (MANIFEST row count, label counts by our label names)
OFFICIAL = {
    # paper eval sets: "eval" = the val file, as the paper takes queries from validation; 7 blank train and
    # 1 blank val tweet (all label 0) dropped
    "tweet_eval_hate": {
        "train": (9000 - 7, counts(("non-hate", 5217 - 7), ("hate", 3783))),
        "eval": (1000 - 1, counts(("non-hate", 573 - 1), ("hate", 427))),
        "test": (2970, counts(("non-hate", 1718), ("hate", 1252)))},
    **{f"tweet_eval_stance_{topic}": {split: (sum(c), dict(zip(STANCE, c))) for split, c in splits.items()}
       for topic, splits in {
           "abortion": {"train": (159, 319, 109), "eval": (18, 36, 12), "test": (45, 189, 46)},
           "atheism": {"train": (105, 273, 83), "eval": (12, 31, 9), "test": (28, 160, 32)},
           "feminist": {"train": (113, 295, 189), "eval": (13, 33, 21), "test": (44, 183, 58)},
           "hillary": {"train": (160, 354, 106), "eval": (18, 39, 12), "test": (78, 172, 45)},
           "climate": {"train": (151, 13, 191), "eval": (17, 2, 21), "test": (35, 11, 123)}}.items()},
    "tweet_eval_offensive": {"train": (11916, counts(("not offensive", 7975), ("offensive", 3941))),
                             "eval": (1324, counts(("not offensive", 865), ("offensive", 459))),
                             "test": (860, counts(("not offensive", 620), ("offensive", 240)))},
    "tweet_eval_irony": {"train": (2862, counts(("not irony", 1417), ("irony", 1445))),
                         "eval": (955, counts(("not irony", 499), ("irony", 456))),
                         "test": (784, counts(("not irony", 473), ("irony", 311)))},
    "tweet_eval_sentiment": {"eval": (2000, counts(("negative", 312), ("neutral", 869), ("positive", 819))),
                             "test": (12284, counts(("negative", 3972), ("neutral", 5937), ("positive", 2375)))},
    "sst2": {"train": (6920, counts(("negative", 3310), ("positive", 3610))),
             "eval": (872, counts(("negative", 428), ("positive", 444))),
             "test": (1821, counts(("negative", 912), ("positive", 909)))},
    "rte": {"train": (2490, counts(("entailment", 1249), ("not entailment", 1241))),
            "eval": (277, counts(("entailment", 146), ("not entailment", 131)))},
    "cb": {"train": (250, counts(("contradiction", 119), ("entailment", 115), ("neutral", 16))),
           "eval": (56, counts(("contradiction", 28), ("entailment", 23), ("neutral", 5)))},
    "trec": {"train": (5452, counts(("abbreviation", 86), ("description", 1162), ("entity", 1250), ("human", 1223),
                                    ("location", 835), ("number", 896))),
             "eval": (500, counts(("abbreviation", 9), ("description", 138), ("entity", 94), ("human", 65),
                                  ("location", 81), ("number", 113)))},
    "mrpc": {"train": (4076, counts(("not equivalent", 1323), ("equivalent", 2753))),
             "eval": (1725, counts(("not equivalent", 578), ("equivalent", 1147)))},
    "ag_news": {"eval": (7600, counts(("world", 1900), ("sports", 1900), ("business", 1900),
                                      ("science and technology", 1900)))},
    "cola": {"train": (8551, counts(("unacceptable", 2528), ("acceptable", 6023))),
             "eval": (1043, counts(("unacceptable", 322), ("acceptable", 721)))},
    "boolq": {"eval": (3270, counts(("no", 1237), ("yes", 2033)))},
    "copa": {"eval": (100, counts(("Option 1", 55), ("Option 2", 45)))},
    "wic": {"eval": (638, counts(("different meaning", 319), ("same meaning", 319)))},
    "qqp": {"train": (8999, counts(("not duplicate", 5747), ("duplicate", 3252))),
            "eval": (1000, counts(("not duplicate", 623), ("duplicate", 377)))},
    "mnli": {"train": (8999, dict(zip(NLI3, (2958, 3061, 2980)))), "eval": (9815, dict(zip(NLI3, (3213, 3479, 3123))))},
    "snli": {"eval": (9842, dict(zip(NLI3, (3278, 3329, 3235)))), "test": (1000, dict(zip(NLI3, (311, 367, 322))))},
    "qnli": {"eval": (5463, counts(("entailment", 2702), ("not entailment", 2761)))},
}

# name -> (MANIFEST rows of the one labelled pool, label counts)
POOLED = {
    "subj": (10000, counts(("objective", 5000), ("subjective", 5000))),
    "rotten_tomatoes_mr": (10662, counts(("negative", 5331), ("positive", 5331))),
    "financial_phrasebank": (2264, counts(("negative", 303), ("neutral", 1391), ("positive", 570))),
    "overruling": (2394, counts(("not overruling", 1208), ("overruling", 1186))),
    "ade_corpus_v2": (16695 + 6821, counts(("not ADE-related", 16695), ("ADE-related", 6821))),  # relation rows
    "raft/ade_corpus_v2": (50, counts(("ADE-related", 15), ("not ADE-related", 35))),
    "raft/overruling": (50, counts(("not overruling", 25), ("overruling", 25))),
    "semiconductor_org_types": (50, counts(("company", 38), ("research institute", 6), ("university", 6))),
    "terms_of_service": (50, counts(("not potentially unfair", 41), ("potentially unfair", 9))),
    "twitter_complaints": (50, counts(("complaint", 17), ("no complaint", 33))),
    "raft/tweet_eval_hate": (50, counts(("hate speech", 21), ("not hate speech", 29))),
    "raft/one_stop_english": (50, counts(("advanced", 18), ("elementary", 20), ("intermediate", 12))),
    "raft/tai_safety_research": (50, counts(("TAI safety research", 28), ("not TAI safety research", 22))),
}


def raw(name, root, split):
    """The split's rows as the files hold them: no held-out removal, no dedupe, no partition."""
    source = dataclasses.replace(local_source(name, str(root), split), holdout=(), dedupe=False, part=None)
    return load_local(source=source, split=split)


def label_counts(data):
    return dict(collections.Counter(data.label_names[e.label] for e in data.examples))


@pytest.mark.parametrize("name, split", [(n, s) for n, splits in OFFICIAL.items() for s in splits])
def test_official_split_matches_manifest_counts_labels_and_has_no_empty_text(shared_data, name, split):
    n, by_label = OFFICIAL[name][split]
    data = raw(name, shared_data, split)
    assert len(data.examples) == n
    assert label_counts(data) == by_label
    assert set(by_label) <= set(data.label_names)
    assert all(e.text.strip() for e in data.examples)


@pytest.mark.parametrize("name", [n for n, splits in OFFICIAL.items() if "train" in splits])
def test_train_split_drops_exactly_the_texts_of_held_out_files(shared_data, name):
    held = {e.text for s in OFFICIAL[name] if s != "train" for e in raw(name, shared_data, s).examples}
    expected = [e for e in raw(name, shared_data, "train").examples if e.text not in held]
    train = load_local(source=local_source(name, str(shared_data), "train"), split="train")
    assert list(train.examples) == expected
    evals = load_local(source=local_source(name, str(shared_data), "eval"), split="eval")
    assert not {e.text for e in train.examples} & {e.text for e in evals.examples}


@pytest.mark.parametrize("name", sorted(POOLED))
def test_pooled_dataset_matches_manifest_and_partitions_into_disjoint_splits(shared_data, name):
    n, by_label = POOLED[name]
    pool = raw(name, shared_data, "train")
    assert len(pool.examples) == n and label_counts(pool) == by_label
    assert all(e.text.strip() for e in pool.examples)
    first_label = {}
    for e in pool.examples:
        first_label.setdefault(e.text, e.label)
    train, evals = (load_local(source=local_source(name, str(shared_data), s), split=s) for s in ("train", "eval"))
    train_texts, eval_texts = [e.text for e in train.examples], [e.text for e in evals.examples]
    assert not set(train_texts) & set(eval_texts)
    assert sorted(train_texts + eval_texts) == sorted(first_label)
    assert all(first_label[e.text] == e.label for e in train.examples + evals.examples)
    assert len(train_texts) > len(eval_texts) > 0


def test_ade_corpus_keeps_one_row_per_unique_sentence(shared_data):
    data = [load_local(source=local_source("ade_corpus_v2", str(shared_data), s), split=s) for s in ("train", "eval")]
    merged = collections.Counter(d.label_names[e.label] for d in data for e in d.examples)
    neg_file = (shared_data / "ade_corpus_v2" / "ADE-NEG.txt").read_text().splitlines()
    assert merged["ADE-related"] == 4271  # MANIFEST: unique DRUG-AE sentences
    assert merged["not ADE-related"] == len({line.split(" NEG ", 1)[1].strip() for line in neg_file})


def test_raft_rows_render_all_data_columns_and_use_task_label_strings(shared_data):
    data = load_local(source=local_source("semiconductor_org_types", str(shared_data), "train"), split="train")
    assert data.label_names == ("company", "research institute", "university")
    assert all(e.text.startswith("Paper title: ") and "\nOrganization name: " in e.text for e in data.examples)
    assert data.name == "raft_semiconductor_org_types"
    assert data.instruction.startswith("Read the following paper title and institution name")


def test_directory_names_are_aliases_of_spec_names(shared_data):
    a = local_source("tweeteval_stance_feminist", str(shared_data), "eval")
    b = local_source("tweet_eval_stance_feminist", str(shared_data), "eval")
    assert a == b and a.name == "tweet_eval_stance_feminist" and a.files[0].endswith("val_text.txt")
    assert a.instruction == "Read the following tweet and determine its stance on feminism."
    assert local_source("raft/overruling", str(shared_data), "eval") == local_source("raft_overruling",
                                                                                     str(shared_data), "eval")


def test_local_split_labels_agree_with_the_dataset_specs(shared_data):
    from symbol_tuning.data.specs import EVAL_DATASETS, TUNING_DATASETS

    checked = 0
    for name, spec in {**TUNING_DATASETS, **EVAL_DATASETS}.items():
        try:
            source = local_source(name, str(shared_data), "eval")
        except KeyError:  # no staged copy (PAWS, PIQA, WNLI, WSC, WinoGrande)
            continue
        assert source.label_names == spec.label_names, name
        checked += 1
    assert checked >= 25


def test_missing_file_names_the_path_and_the_dataset(shared_data):
    with pytest.raises(FileNotFoundError, match=r"tweet_eval_sentiment: data file .*train_text.txt does not exist"):
        local_source("tweet_eval_sentiment", str(shared_data), "train")


def test_unknown_dataset_lists_the_known_layouts(shared_data):
    with pytest.raises(KeyError, match=r"no local layout for dataset 'nope'.*'subj'"):
        local_source("nope", str(shared_data), "train")


def test_spec_front_door_reads_the_raw_release_directory(shared_data):
    from symbol_tuning.data.sources.hub import load_classification

    data = load_classification("subj", "eval", source="local", path=str(shared_data), max_examples=100, seed=3)
    assert (data.name, len(data.examples), data.label_names) == ("subj", 100, ("objective", "subjective"))
    assert data.instruction == "Is the following sentence subjective or objective?"

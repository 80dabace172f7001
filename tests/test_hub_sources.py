"""HF datasets and TFDS sources: local saved datasets and data files load through real specs, bad rows
are reported by dataset and row, unlabeled rows are dropped, subsets are seeded and deterministic."""
import collections
import json
import logging

import datasets
import numpy as np
import pytest

from symbol_tuning.data.examples import Example
from symbol_tuning.data.rows import DataError, FieldMapping
from symbol_tuning.data.sources.hub import load_classification, load_hf, load_tfds, seeded_subset
from symbol_tuning.data.specs import DatasetSpec

RTE_FEATURES = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["entailment", "not_entailment"]),
                                  "idx": datasets.Value("int32")})


@pytest.fixture
def rte_dir(tmp_path):
    train = {"sentence1": ["A cat sat.", "It rained.", "Dogs bark."], "sentence2": ["A cat exists.", "It is dry.",
                                                                                      "Dogs are loud."],
             "label": [0, 1, 0], "idx": [0, 1, 2]}
    test = {"sentence1": ["Birds fly.", "Fish swim."], "sentence2": ["Birds move.", "Fish fly."], "label": [-1, -1],
            "idx": [0, 1]}
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(train, features=RTE_FEATURES),
                               "validation": datasets.Dataset.from_dict(train, features=RTE_FEATURES),
                               "test": datasets.Dataset.from_dict(test, features=RTE_FEATURES)})
    path = tmp_path / "rte_saved"
    dd.save_to_disk(str(path))
    return str(path)


def test_saved_datasetdict_with_classlabel_loads_rte_with_titles_and_int_labels(rte_dir):
    data = load_hf("rte", "train", path=rte_dir)
    assert data.name == "rte" and data.split == "train" and data.instruction is None
    assert data.label_names == ("entailment", "not entailment")
    assert [(e.text, e.label) for e in data.examples] == [
        ("Premise: A cat sat.\nHypothesis: A cat exists.", 0), ("Premise: It rained.\nHypothesis: It is dry.", 1),
        ("Premise: Dogs bark.\nHypothesis: Dogs are loud.", 0)]
    assert len(load_hf("rte", "eval", path=rte_dir).examples) == 3  # "eval" -> HF "validation"


def test_unlabeled_minus_one_test_rows_are_dropped_not_reported_as_bad(rte_dir):
    with pytest.raises(DataError, match="no usable labelled rows"):
        load_hf("rte", "test", path=rte_dir)


def test_missing_split_in_saved_dataset_names_dataset_and_splits(rte_dir):
    with pytest.raises(DataError, match=r"rte: .*no split 'nope'; splits are \['test', 'train', 'validation'\]"):
        load_hf("rte", "nope", path=rte_dir)


def _hate_rows(n, *, bad=()):
    texts = [f"tweet number {i}" for i in range(n)]
    labels = ["hate" if i % 3 == 0 else "non-hate" for i in range(n)]
    for i, kind in bad:
        if kind == "label":
            labels[i] = "spam"
        else:
            texts[i] = "   "
    return [{"text": t, "label": y} for t, y in zip(texts, labels)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_jsonl_file_with_string_labels_loads_tweet_eval_hate_with_instruction(tmp_path):
    path = _write_jsonl(tmp_path / "hate.jsonl", _hate_rows(6))
    data = load_hf("tweet_eval_hate", "eval", path=path, cache_dir=str(tmp_path / "cache"))
    assert data.instruction == "Label the following tweet based on whether it contains hate speech."
    assert [e.label for e in data.examples] == [1, 0, 0, 1, 0, 0]
    assert data.examples[4].text == "tweet number 4"


def test_directory_of_parquet_files_picks_the_split_by_file_name(tmp_path):
    folder = tmp_path / "hate_parquet"
    folder.mkdir()
    datasets.Dataset.from_list(_hate_rows(4)).to_parquet(str(folder / "train.parquet"))
    datasets.Dataset.from_list(_hate_rows(3)).to_parquet(str(folder / "validation.parquet"))
    datasets.Dataset.from_list(_hate_rows(2)).to_parquet(str(folder / "test.parquet"))
    kw = dict(path=str(folder), cache_dir=str(tmp_path / "cache"))
    assert len(load_hf("tweet_eval_hate", "train", **kw).examples) == 4
    assert len(load_hf("tweet_eval_hate", "eval", **kw).examples) == 3  # "eval" -> HF "validation", as the paper
    assert len(load_hf("tweet_eval_hate", "test", **kw).examples) == 2


@pytest.mark.parametrize("kind,message", [("label", r"row 2: label 'spam' in field 'label' is not in the label set"),
                                          ("text", r"row 2: field 'text' is empty")])
def test_bad_row_raises_data_error_naming_dataset_file_split_and_row(tmp_path, kind, message):
    path = _write_jsonl(tmp_path / "hate.jsonl", _hate_rows(5, bad=[(2, kind)]))
    with pytest.raises(DataError, match=rf"^tweet_eval_hate: .*hate\.jsonl\[validation\] {message}"):
        load_hf("tweet_eval_hate", "eval", path=path, cache_dir=str(tmp_path / "cache"))


def test_missing_column_raises_data_error_naming_column_and_columns_found(tmp_path):
    path = tmp_path / "hate_saved"
    datasets.Dataset.from_dict({"tweet": ["a", "b"], "label": [0, 1]}).save_to_disk(str(path))
    with pytest.raises(DataError, match=r"tweet_eval_hate: .*row 0: column 'text' is missing; the columns are "
                                        r"\['tweet', 'label'\]"):
        load_hf("tweet_eval_hate", "train", path=str(path), skip_bad_rows=True)


def test_skip_bad_rows_drops_exactly_the_bad_rows_and_logs_their_count(tmp_path, caplog):
    path = _write_jsonl(tmp_path / "hate.jsonl", _hate_rows(8, bad=[(1, "label"), (5, "text")]))
    with caplog.at_level(logging.WARNING):
        data = load_hf("tweet_eval_hate", "train", path=path, skip_bad_rows=True, cache_dir=str(tmp_path / "c"))
    assert [e.text for e in data.examples] == [f"tweet number {i}" for i in (0, 2, 3, 4, 6, 7)]
    assert "skipped 2 bad rows" in caplog.text and "tweet_eval_hate" in caplog.text


def test_max_examples_keeps_a_seeded_subset_in_source_order_not_the_first_rows(tmp_path):
    path = _write_jsonl(tmp_path / "hate.jsonl", _hate_rows(60))
    kw = dict(path=path, cache_dir=str(tmp_path / "c"))
    a = [e.text for e in load_hf("tweet_eval_hate", "train", max_examples=10, seed=3, **kw).examples]
    b = [e.text for e in load_hf("tweet_eval_hate", "train", max_examples=10, seed=3, **kw).examples]
    c = [e.text for e in load_hf("tweet_eval_hate", "train", max_examples=10, seed=4, **kw).examples]
    assert a == b and a != c and len(a) == 10 and len(set(a)) == 10
    assert a != [f"tweet number {i}" for i in range(10)]
    positions = [int(t.split()[-1]) for t in a]
    assert positions == sorted(positions)


def test_eval_queries_default_to_the_paper_cap_of_100(tmp_path):
    path = _write_jsonl(tmp_path / "hate.jsonl", _hate_rows(130))
    kw = dict(path=path, cache_dir=str(tmp_path / "c"))
    assert len(load_hf("tweet_eval_hate", "eval", **kw).examples) == 100
    assert len(load_hf("tweet_eval_hate", "train", **kw).examples) == 130  # exemplar pool is not capped


def test_seeded_subset_draws_each_item_about_equally_often():
    hits = np.zeros(20)
    for seed in range(400):
        for item in seeded_subset(list(range(20)), 5, seed):
            hits[item] += 1
    assert hits.min() > 60 and hits.max() < 140  # expectation 100 per item


def test_raft_classlabel_with_unlabeled_zero_loads_one_based_labels(tmp_path):
    feats = datasets.Features({"Sentence": datasets.Value("string"), "ID": datasets.Value("int32"),
                               "Label": datasets.ClassLabel(names=["Unlabeled", "not overruling", "overruling"])})
    rows = {"Sentence": ["we overrule x.", "see y.", "unknown z."], "ID": [0, 1, 2], "Label": [2, 1, 0]}
    path = tmp_path / "raft"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=feats)}).save_to_disk(str(path))
    data = load_hf("raft_overruling", "eval", path=str(path))
    assert [(e.text, data.label_names[e.label]) for e in data.examples] == [("we overrule x.", "overruling"),
                                                                            ("see y.", "not overruling")]


@pytest.mark.parametrize("name,file,counts", [
    ("cb", "cb/val.jsonl", {"contradiction": 28, "entailment": 23, "neutral": 5}),
    ("wic", "wic/val.jsonl", {"different meaning": 319, "same meaning": 319})])
def test_real_superglue_validation_jsonl_loads_with_manifest_label_counts(shared_data, tmp_path, name, file, counts):
    data = load_hf(name, "eval", path=str(shared_data / file), cache_dir=str(tmp_path / "c"))
    assert collections.Counter(data.label_names[e.label] for e in data.examples) == counts


def test_real_copa_renders_premise_question_and_both_options(shared_data, tmp_path):
    data = load_hf("copa", "eval", path=str(shared_data / "copa" / "val.jsonl"), cache_dir=str(tmp_path / "c"))
    assert len(data.examples) == 100 and data.label_names == ("Option 1", "Option 2")
    assert data.examples[0] == Example(
        "Premise: The man turned on the faucet.\nQuestion: effect\nOption 1: The toilet filled with water.\n"
        "Option 2: Water flowed from the spout.", 1)


def test_load_classification_dispatches_and_rejects_unknown_sources(rte_dir):
    assert len(load_classification("rte", "train", source="hf", path=rte_dir).examples) == 3
    with pytest.raises(ValueError, match="unknown source 'ftp'"):
        load_classification("rte", "train", source="ftp")
    with pytest.raises(ValueError, match="source='local' needs a path"):
        load_classification("rte", "train", source="local")


def test_nonexistent_local_path_names_dataset_and_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="rte: local dataset path .*nothing-here"):
        load_hf("rte", "train", path=str(tmp_path / "nothing-here"))


TFDS_TRAIN = [("I hate you", 1), ("nice day", 0), ("lovely", 0), ("awful people", 1)]


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    import tensorflow_datasets as tfds

    class TinyHateTweets(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=["non-hate", "hate"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(TFDS_TRAIN), "test": self._generate_examples(TFDS_TRAIN[:2])}

        def _generate_examples(self, rows):
            for i, (text, label) in enumerate(rows):
                yield i, {"text": text, "label": label}

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    TinyHateTweets(data_dir=data_dir).download_and_prepare()
    return data_dir


def test_tfds_builder_loads_by_name_with_mapping_and_decodes_bytes(tiny_tfds):
    data = load_tfds("tiny_hate_tweets", "train", data_dir=tiny_tfds, mapping=FieldMapping(("text",), "label"),
                     label_names=("non-hate", "hate"), download=False)
    assert sorted((e.text, e.label) for e in data.examples) == sorted(TFDS_TRAIN)
    assert all(isinstance(e.text, str) for e in data.examples)


def test_tfds_through_a_registered_spec_maps_eval_to_test_and_reports_missing_splits(tiny_tfds):
    spec = DatasetSpec(name="tiny_hate", role="tuning", task_type="misc", hf_path="me/tiny_hate", hf_config=None,
                       splits={"train": "train", "eval": "test"}, mapping=FieldMapping(("text",), "label"),
                       label_names=("non-hate", "hate"), tfds_name="tiny_hate_tweets")
    data = load_classification(spec, "eval", source="tfds", data_dir=tiny_tfds)
    assert sorted(e.text for e in data.examples) == ["I hate you", "nice day"]
    with pytest.raises(DataError, match=r"tiny_hate: TFDS tiny_hate_tweets: no split 'validation'"):
        load_tfds(spec, "validation", data_dir=tiny_tfds, download=False)
    with pytest.raises(ValueError, match="no TFDS builder is known"):
        load_tfds("subj", "train", data_dir=tiny_tfds)

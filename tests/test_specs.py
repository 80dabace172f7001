"""Dataset specs: the paper's 22 + 11 datasets, their hub facts, label orders and the user registry."""
import collections
import csv

import pytest

from symbol_tuning.data import specs
from symbol_tuning.data.rows import FieldMapping, label_index, make_examples
from symbol_tuning.data.specs import EVAL_DATASETS, TUNING_DATASETS, DatasetSpec, get_spec, register_spec

PAPER_INSTRUCTIONS = {  # typed from DESIGN.md, section 1
    "subj": "Is the following sentence subjective or objective?",
    "tweet_eval_hate": "Label the following tweet based on whether it contains hate speech.",
    "tweet_eval_stance_abortion": "Read the following tweet and determine its stance on abortion.",
    "tweet_eval_stance_atheism": "Read the following tweet and determine its stance on atheism.",
    "tweet_eval_stance_feminist": "Read the following tweet and determine its stance on feminism.",
    "tweet_eval_stance_hillary": "Read the following tweet and determine its stance on Hillary Clinton.",
    "raft_ade_corpus_v2": "Label the following sentence based on whether it is related to an adverse drug event.",
    "raft_overruling": "Label the following sentence based on whether it is overruling or not.",
    "raft_semiconductor_org_types": "Read the following paper title and institution name and classify the "
                                    "institution as a university, company, or research institute.",
    "raft_terms_of_service": "Label the following sentence from a Terms of Service based on whether it is "
                             "potentially unfair.",
    "raft_twitter_complaints": "Label the following tweet text based on whether it contains a complaint.",
}


def test_registry_has_22_tuning_and_11_disjoint_evaluation_datasets_over_7_task_types():
    assert len(TUNING_DATASETS) == 22 and len(EVAL_DATASETS) == 11
    assert not set(TUNING_DATASETS) & set(EVAL_DATASETS)
    assert not {s.hf_id for s in TUNING_DATASETS.values()} & {s.hf_id for s in EVAL_DATASETS.values()}
    counts = collections.Counter(s.task_type for s in TUNING_DATASETS.values())
    assert counts == {"nli": 6, "sentiment": 3, "paraphrase": 3, "commonsense": 2, "topic": 2, "coreference": 2,
                      "misc": 4}


def test_eval_specs_carry_the_paper_instructions_splits_and_100_query_cap():
    assert set(EVAL_DATASETS) == set(PAPER_INSTRUCTIONS)
    for name, spec in EVAL_DATASETS.items():
        assert spec.instruction == PAPER_INSTRUCTIONS[name]
        assert {"train", "eval"} <= set(spec.splits)
        assert spec.cap("eval") == 100 and spec.cap("train") is None
    chance = sum(1 / len(s.label_names) for s in EVAL_DATASETS.values()) / 11
    assert chance == pytest.approx(0.424, abs=0.001)  # DESIGN.md: chance over the 11 = 42.4%


def test_tuning_specs_have_no_instruction_and_cap_train_at_25k():
    for spec in TUNING_DATASETS.values():
        assert spec.instruction is None and spec.cap("train") == 25_000 and spec.cap("eval") is None


def test_hub_facts_of_a_few_datasets_match_the_hub():
    rte = get_spec("rte")
    assert (rte.hf_path, rte.hf_config, rte.tfds_name) == ("nyu-mll/glue", "rte", "glue/rte")
    assert rte.mapping.text_fields == ("sentence1", "sentence2") and rte.label_names[0] == "entailment"
    assert get_spec("mnli").source_split("eval") == "validation_matched"
    assert get_spec("subj").hf_path == "SetFit/subj" and get_spec("subj").label_names == ("objective", "subjective")
    sot = get_spec("raft_semiconductor_org_types")
    assert (sot.hf_path, sot.hf_config) == ("ought/raft", "semiconductor_org_types")
    assert sot.source_split("eval") == "train"  # RAFT test labels are all 0 = Unlabeled
    assert sot.label_names == ("company", "research institute", "university")


def test_raft_labels_are_one_based_and_zero_is_unlabeled():
    spec = get_spec("raft_ade_corpus_v2")
    kw = dict(label_names=spec.label_names, label_map=spec.mapping.label_map, dataset="x", where="r", field="Label")
    assert label_index(1, **kw) == 0 and label_index(2, **kw) == 1
    assert "0" in spec.unlabeled


def test_winogrande_answer_strings_one_and_two_map_to_options():
    spec = get_spec("winogrande")
    kw = dict(label_names=spec.label_names, label_map=spec.mapping.label_map, dataset="x", where="r", field="answer")
    assert label_index("1", **kw) == 0 and label_index("2", **kw) == 1


@pytest.mark.parametrize("name,folder", [
    ("tweet_eval_hate", "tweeteval_hate"), ("tweet_eval_sentiment", "tweeteval_sentiment"),
    ("tweet_eval_offensive", "tweeteval_offensive"), ("tweet_eval_irony", "tweeteval_irony"),
    ("tweet_eval_stance_abortion", "tweeteval_stance_abortion"),
    ("tweet_eval_stance_hillary", "tweeteval_stance_hillary")])
def test_tweeteval_label_order_matches_the_source_mapping_file(shared_data, name, folder):
    spec = get_spec(name)
    lines = (shared_data / folder / "mapping.txt").read_text().split("\n")
    pairs = [line.split("\t") for line in lines if line.strip()]
    for idx, source_name in pairs:
        kw = dict(label_names=spec.label_names, label_map=spec.mapping.label_map, dataset=name, where="m",
                  field="label")
        assert label_index(source_name.strip(), **kw) == int(idx)
        assert label_index(int(idx), **kw) == int(idx)


@pytest.mark.parametrize("config,counts", [
    ("ade_corpus_v2", {"ADE-related": 15, "not ADE-related": 35}),
    ("semiconductor_org_types", {"company": 38, "research institute": 6, "university": 6}),
    ("terms_of_service", {"not potentially unfair": 41, "potentially unfair": 9})])
def test_raft_specs_read_the_real_raft_train_csv_with_manifest_label_counts(shared_data, config, counts):
    spec = get_spec(f"raft_{config}")
    with open(shared_data / "raft" / config / "train.csv", newline="", encoding="utf-8") as f:
        rows = [(f"train.csv line {i + 2}", r) for i, r in enumerate(csv.DictReader(f))]
    examples = make_examples(rows, dataset=spec.name, mapping=spec.mapping, label_names=spec.label_names)
    got = collections.Counter(spec.label_names[e.label] for e in examples)
    assert got == counts
    if config == "semiconductor_org_types":
        assert examples[0].text.startswith("Paper title: 3Gb/s AC-coupled")
        assert "\nOrganization name: North Carolina State Univ." in examples[0].text


def test_get_spec_unknown_name_raises_key_error_listing_known_names():
    with pytest.raises(KeyError, match="unknown dataset 'nope'.*rte"):
        get_spec("nope")


def _user_spec(**kw):
    base = dict(name="my_reviews", role="tuning", task_type="sentiment", hf_path="me/reviews", hf_config=None,
                splits={"train": "train"}, mapping=FieldMapping(("review",), "stars"), label_names=("bad", "good"))
    base.update(kw)
    return DatasetSpec(**base)


def test_register_spec_adds_a_user_dataset_without_changing_the_paper_lists():
    spec = _user_spec()
    try:
        register_spec(spec)
        register_spec(_user_spec())  # identical re-registration is a no-op
        assert get_spec("my_reviews") is spec
        assert "my_reviews" not in TUNING_DATASETS and len(TUNING_DATASETS) == 22
        with pytest.raises(ValueError, match="already registered"):
            register_spec(_user_spec(label_names=("neg", "pos")))
        with pytest.raises(ValueError, match="already registered"):
            register_spec(_user_spec(name="rte"))
    finally:
        specs.unregister_spec("my_reviews")
    with pytest.raises(KeyError):
        get_spec("my_reviews")


def test_register_spec_rejects_a_tuning_dataset_pointing_at_an_evaluation_source():
    with pytest.raises(ValueError, match="evaluation data can never be tuned on"):
        register_spec(_user_spec(name="sneaky", hf_path="cardiffnlp/tweet_eval", hf_config="hate"))


@pytest.mark.parametrize("change,message", [
    (dict(role="evaluation", splits={"train": "train", "eval": "test"}), "need an instruction"),
    (dict(role="evaluation", instruction="Rate it."), r"lack \['eval'\]"),
    (dict(instruction="Rate it."), "carry no instruction"),
    (dict(mapping=FieldMapping(("a", "b"), "y")), "needs titles"),
    (dict(mapping=FieldMapping(("a",), "y", label_map={"x": 2})), "outside 0..1"),
    (dict(label_names=("same", "same")), "distinct label names"),
    (dict(task_type="poetry"), "tuning task_type"),
    (dict(name="Bad Name"), "name must be"),
])
def test_invalid_specs_are_rejected_with_a_message_naming_the_problem(change, message):
    with pytest.raises(ValueError, match=message):
        _user_spec(**change)

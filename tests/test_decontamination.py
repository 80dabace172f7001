"""Decontamination: evaluation datasets never enter tuning, by id or by (normalised) text."""
import hashlib

import pytest

from symbol_tuning.data.decontamination import (
    ContaminationError,
    assert_tuning_names_allowed,
    check_no_overlap,
    normalized_hash,
)
from symbol_tuning.data.examples import ClassificationData, Example, GenerativeData, TextPair
from symbol_tuning.data.specs import EVAL_DATASETS, TUNING_DATASETS


def _data(name, texts, split="train"):
    return ClassificationData(name=name, split=split, examples=tuple(Example(t, i % 2) for i, t in enumerate(texts)),
                              label_names=("a", "b"))


TUNING = [_data("rte", ["Premise: A man runs.\nHypothesis: Someone moves.", "Premise: x\nHypothesis: y"]),
          _data("sst2", ["a charming film", "dull and lifeless"])]
EVAL = [_data("tweet_eval_hate", ["@user I hate everyone here", "what a lovely morning"], split="eval"),
        _data("subj", ["the film follows three sisters .", "a wonderful mess"], split="eval")]


def test_normalized_hash_is_sha1_of_lowercased_collapsed_text_without_end_punctuation():
    expected = hashlib.sha1(b"hello, big world").hexdigest()
    assert normalized_hash("  Hello,\n\tBIG   world!! ") == expected
    assert normalized_hash("\u201cHello, big world.\u201d") == expected
    assert normalized_hash("Hello big world") != expected  # inner punctuation is kept


def test_clean_tuning_and_evaluation_split_passes():
    check_no_overlap(TUNING, EVAL)
    check_no_overlap([GenerativeData("flan", "train", (TextPair("Translate: hi", "salut"),))], EVAL)


def test_same_dataset_name_on_both_sides_is_rejected():
    with pytest.raises(ContaminationError, match="'subj' ~ 'subj'"):
        check_no_overlap(TUNING + [_data("subj", ["an unrelated sentence"])], EVAL)


def test_hf_id_given_for_tuning_matching_an_evaluation_dataset_is_rejected():
    with pytest.raises(ContaminationError, match="'cardiffnlp/tweet_eval:hate' ~ 'tweet_eval_hate'"):
        check_no_overlap(TUNING, EVAL, tuning_ids=["cardiffnlp/tweet_eval:hate"])
    with pytest.raises(ContaminationError, match="'SetFit/subj'"):
        check_no_overlap(TUNING, [_data("my_eval", ["q"])], tuning_ids=["SetFit/subj"], evaluation_ids=["subj"])


def test_a_sibling_config_of_the_same_hub_collection_is_not_a_clash():
    check_no_overlap(TUNING, EVAL, tuning_ids=["cardiffnlp/tweet_eval/sentiment", "tweet_eval_irony"])


def test_tuning_text_equal_to_an_evaluation_text_up_to_case_and_spacing_is_rejected():
    leaked = _data("my_tweets", ["a fine day", "@USER  i hate\neveryone here!", "another one"])
    with pytest.raises(ContaminationError) as err:
        check_no_overlap(TUNING + [leaked], EVAL)
    message = str(err.value)
    assert "tuning 'my_tweets' shares 1 text(s) with evaluation 'tweet_eval_hate'" in message
    assert "@USER i hate everyone here!" in message


def test_long_leaked_text_is_shortened_in_the_message():
    long_text = "word " * 100
    with pytest.raises(ContaminationError, match=r"e\.g\. 'word word .{40,80}\.\.\.'"):
        check_no_overlap([_data("t", [long_text, "x"])], [_data("e", [long_text.upper(), "y"])])


def test_every_paper_evaluation_name_and_hf_id_is_rejected_as_a_tuning_name():
    for spec in EVAL_DATASETS.values():
        for name in (spec.name, spec.hf_id, f"{spec.hf_path}:{spec.hf_config}" if spec.hf_config else spec.hf_path):
            with pytest.raises(ContaminationError, match=spec.name):
                assert_tuning_names_allowed(["rte", name])
    for collection in ("ought/raft", "cardiffnlp/tweet_eval", "raft", "ade_corpus_v2"):
        with pytest.raises(ContaminationError):
            assert_tuning_names_allowed([collection])


def test_every_paper_tuning_name_and_hf_id_is_allowed():
    assert_tuning_names_allowed(list(TUNING_DATASETS) + [s.hf_id for s in TUNING_DATASETS.values()])

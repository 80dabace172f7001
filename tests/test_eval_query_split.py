"""The paper suite takes its queries from the validation split where a dataset has one (TweetEval hate and
the four stances), as the paper does, and records that split and its files; checked on the real files."""
import pytest

from symbol_tuning.data.specs import EVAL_DATASETS
from symbol_tuning.evaluation import suites

TWEETEVAL = {"tweet_eval_hate": "tweeteval_hate",
             **{f"tweet_eval_stance_{t}": f"tweeteval_stance_{t}" for t in ("abortion", "atheism", "feminist",
                                                                          "hillary")}}


def _rows(folder, prefix):
    texts = (folder / f"{prefix}_text.txt").read_text(encoding="utf-8").splitlines()
    labels = (folder / f"{prefix}_labels.txt").read_text(encoding="utf-8").splitlines()
    return [(t.strip(), int(y)) for t, y in zip(texts, labels) if t.strip()]


def test_specs_take_eval_queries_from_validation_where_the_dataset_has_one():
    assert {n: s.source_split("eval") for n, s in EVAL_DATASETS.items() if n.startswith("tweet_eval")} == {
        n: "validation" for n in TWEETEVAL}
    assert EVAL_DATASETS["subj"].source_split("eval") == "test"  # SetFit/subj: train and test only


@pytest.mark.parametrize("name", sorted(TWEETEVAL))
def test_paper_suite_tweeteval_queries_are_val_file_rows_and_the_split_is_recorded(shared_data, name):
    folder = shared_data / TWEETEVAL[name]
    (dataset,) = suites.build_suite("paper", data_root=str(shared_data), source="local", datasets=[name]).datasets
    val, test = _rows(folder, "val"), _rows(folder, "test")
    queries = [(e.text, e.label) for e in dataset.queries.examples]
    assert len(queries) == min(100, len(val)) and set(queries) <= set(val)
    assert {t for t, _ in queries} - {t for t, _ in test}  # not the test file's rows
    assert dataset.sample["split"] == "validation"
    assert dataset.sample["files"] == [f"{TWEETEVAL[name]}/val_text.txt", f"{TWEETEVAL[name]}/val_labels.txt"]
    assert dataset.sample["drawn"] == len(queries)


def test_partitioned_datasets_record_their_eval_part(shared_data):
    (subj,) = suites.build_suite("paper", data_root=str(shared_data), source="local", datasets=["subj"],
                                 max_queries=4).datasets
    assert subj.sample["split"].startswith("eval part of a stratified partition (20%")
    assert subj.sample["files"] == ["subj/subj.objective", "subj/subj.subjective"] and subj.sample["drawn"] == 4


def test_validation_queries_reproduce_the_papers_704_evaluation_examples(shared_data):
    """The paper evaluates 704 examples over the 11 datasets: SUBJ 100, TweetEval hate 100 (capped), the four
    stance validation sets 66 + 52 + 67 + 69, and RAFT's 5 x 50 labelled rows. The test files would give 850."""
    suite = suites.build_suite("paper", data_root=str(shared_data), source="local", datasets=["subj", *TWEETEVAL])
    counts = {d.name: len(d.queries.examples) for d in suite.datasets}
    assert counts == {"subj": 100, "tweet_eval_hate": 100, "tweet_eval_stance_abortion": 66,
                      "tweet_eval_stance_atheism": 52, "tweet_eval_stance_feminist": 67,
                      "tweet_eval_stance_hillary": 69}
    assert sum(counts.values()) + 5 * 50 == 704

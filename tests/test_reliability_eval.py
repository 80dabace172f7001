"""Reliability of evaluation: eval --all_steps skips a damaged step (named, left in place) and exits 1 after
evaluating the others; an empty evaluation dataset is refused, or reported as missing with the flag."""
import dataclasses
import json

import pytest
from test_evaluation import OPTS, T5_CFG, _params, _save_orbax, t5_model
from test_reliability_checkpoints import _flip_bit, _truncate

from symbol_tuning import eval as eval_cli
from symbol_tuning.data.embedded.datasets import generated_classification
from symbol_tuning.data.vocabularies import get_vocabulary
from symbol_tuning.evaluation import evaluator, reporting
from symbol_tuning.evaluation.evaluator import EvalOptions
from symbol_tuning.evaluation.suites import EvalDataset, suite_from_data
from symbol_tuning.training import checkpoint_integrity


def _truncate_unverified(step_dir):
    """An older step without a checksum manifest whose largest array file is cut in half."""
    (step_dir / checkpoint_integrity.MANIFEST).unlink()
    _truncate(step_dir)
    return step_dir / "state"


@pytest.mark.parametrize("damage", [_flip_bit, _truncate_unverified])
def test_eval_all_steps_skips_a_damaged_step_evaluates_the_others_and_exits_1(tmp_path, capsys, damage):
    _save_orbax(str(tmp_path / "run"), t5_model(T5_CFG), [1, 2, 3])
    culprit = damage(tmp_path / "run" / "2")
    (tmp_path / "config.json").write_text(json.dumps({"family": "encoder_decoder", "config": T5_CFG.to_dict()}))
    out = tmp_path / "eval"
    argv = [f"--checkpoint={tmp_path / 'run'}", "--all_steps", "--suite=embedded", "--datasets=product_review",
            "--settings=neither", "--max_queries=3", "--k_per_class=1", "--max_input_length=512",
            "--min_prompt_bucket=512", "--batch_size=4", f"--model_config={tmp_path / 'config.json'}",
            f"--output_dir={out}"]
    assert eval_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "checkpoint step 2 is damaged" in err and str(culprit) in err and "evaluated: [1, 3]" in err
    assert reporting.step_done(str(out), 1) and reporting.step_done(str(out), 3)
    assert not reporting.step_done(str(out), 2)
    assert (tmp_path / "run" / "2").is_dir()  # eval reads only: the damaged step is left where it is
    assert (out / "results.csv").read_text().count("\n") == 1 + 2


@pytest.fixture(scope="module")
def suite_with_empty():
    full = EvalDataset("product_review", generated_classification("product_review", split="eval", num_examples=3,
                                                                  seed=0),
                       generated_classification("product_review", split="train", num_examples=8, seed=0))
    queries = dataclasses.replace(full.queries, examples=())
    empty = EvalDataset("stance_on_cats", dataclasses.replace(queries, name="stance_on_cats"), full.exemplars)
    return suite_from_data("tiny", [full, empty])


def test_empty_eval_dataset_is_refused_naming_it(suite_with_empty):
    model = t5_model(T5_CFG)
    with pytest.raises(ValueError, match=r"datasets with no queries: \['stance_on_cats'\].*--allow_empty_datasets"):
        evaluator.evaluate(model, _params(model), suite_with_empty, vocabulary=get_vocabulary("bytes"),
                           options=EvalOptions(settings=["neither"], **OPTS))


def test_empty_eval_dataset_is_reported_missing_in_the_table_with_the_flag(suite_with_empty):
    model = t5_model(T5_CFG)
    result = evaluator.evaluate(model, _params(model), suite_with_empty, vocabulary=get_vocabulary("bytes"),
                                options=EvalOptions(settings=["neither"], allow_empty_datasets=True, **OPTS))
    assert result.summary["missing"] == ["stance_on_cats"]
    assert list(result.summary["accuracy"]["neither"]) == ["product_review"]
    table = reporting.summary_markdown(result.summary)
    assert "| stance_on_cats | missing (no queries) |" in table
    assert "**average** (of 1; 1 missing)" in table


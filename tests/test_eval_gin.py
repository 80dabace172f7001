"""eval and sweep take T5X-style gin flags: runs/eval.gin and runs/sweep.gin bind their flags, flags on the
command line win, and a missing required macro fails naming it."""
import json
import os

import pytest

from symbol_tuning import eval as eval_cli
from symbol_tuning import sweep


@pytest.fixture
def checkpoint(tiny_t5_checkpoint):
    return tiny_t5_checkpoint


def test_eval_gin_file_supplies_the_flags_and_command_line_flags_win(checkpoint, shared_data, tmp_path):
    out = tmp_path / "out"
    rc = eval_cli.main(["--gin_file=runs/eval.gin", f"--gin.CHECKPOINT='{checkpoint}'",
                        f"--gin.DATA_ROOT='{shared_data}'", "--gin.VOCABULARY='bytes'", "--gin.ALL_STEPS=False",
                        f"--gin.OUTPUT_DIR='{out}'", "--datasets=subj", "--settings=neither,flipped",
                        "--max_queries=3", "--k_per_class=1", "--max_input_length=1024", "--min_prompt_bucket=1024"])
    assert rc == 0
    with open(out / "final" / "records.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 2 * 3  # the command line's datasets, settings and max_queries, not the config's
    assert {r["setting"] for r in records} == {"neither", "flipped"}
    assert all(r["num_exemplars"] <= 2 for r in records)  # k_per_class=1 from the command line beat the config's 4


def test_eval_gin_file_without_its_required_macro_fails_naming_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main(["--gin_file=runs/eval.gin", "--gin.DATA_ROOT='/x'", "--gin.VOCABULARY='bytes'"])
    assert exit_info.value.code == 2
    assert "CHECKPOINT" in capsys.readouterr().err


def test_sweep_gin_file_passes_its_spec_and_output_dir_to_the_sweep(tmp_path, capsys):
    spec = tmp_path / "missing_spec.yaml"
    rc = sweep.main(["--gin_file=runs/sweep.gin", f"--gin.SWEEP_SPEC='{spec}'",
                     f"--gin.OUTPUT_DIR='{tmp_path / 'out'}'", "--gin.DATA_ROOT='/data'"])
    assert rc == 1
    assert str(spec) in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["--gin_file=runs/sweep.gin", f"--gin.SWEEP_SPEC='{spec}'"])
    assert exit_info.value.code == 2
    assert not os.path.exists(tmp_path / "out")

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


@pytest.mark.parametrize("argv,named", [
    (["--instruction_placement=footer"], "argument --instruction_placement: invalid choice: 'footer'"),
    (["--gin_bindings=evaluate.flags.instruction_placement = 'footer'"],
     "--instruction_placement (evaluate.flags.instruction_placement): unknown instruction placement 'footer'"),
])
def test_eval_bad_instruction_placement_exits_2_naming_the_flag_and_the_allowed_values(argv, named, tmp_path,
                                                                                        capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main([f"--checkpoint={tmp_path}", f"--output_dir={tmp_path / 'out'}", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and named in err and "header" in err and "every_exemplar" in err, err
    assert not os.path.exists(tmp_path / "out")


def test_eval_gin_binding_sets_the_instruction_placement_recorded_in_records_and_summary(checkpoint, tmp_path):
    out = tmp_path / "out"
    rc = eval_cli.main([f"--checkpoint={checkpoint}", f"--output_dir={out}", "--suite=embedded",
                        "--datasets=product_review", "--settings=instr_only", "--max_queries=2", "--k_per_class=1",
                        "--max_input_length=1024", "--min_prompt_bucket=1024",
                        "--gin_bindings=evaluate.flags.instruction_placement = 'every_exemplar'"])
    assert rc == 0
    records = [json.loads(line) for line in (out / "final" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 and {r["instruction_placement"] for r in records} == {"every_exemplar"}
    summary = json.loads((out / "final" / "summary.json").read_text())
    assert summary["instruction_placement"] == "every_exemplar"
    assert set(summary["accuracy_length_normalized"]) == {"instr_only"}


def test_sweep_bad_instruction_placement_fails_naming_the_field_or_flag(tmp_path, capsys):
    with pytest.raises(ValueError, match="spec: instruction_placement: unknown instruction placement 'footer'; "
                                         "allowed: header, every_exemplar"):
        sweep.check_spec({"instruction_placement": "footer", "models": {"m": {"tuned": "x"}}}, source="spec")
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([f"--config={tmp_path / 's.json'}", f"--output_dir={tmp_path}", "--instruction_placement=footer"])
    assert exit_info.value.code == 2 and "invalid choice: 'footer'" in capsys.readouterr().err

"""Sweeps: an interrupted sweep restarted runs only its missing cells, and ends with Table 1 and plots."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from symbol_tuning import sweep
from symbol_tuning.evaluation import reporting
from symbol_tuning.evaluation.checkpoint_loading import LoadedModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _LengthModel:
    """A cheap stand-in scorer: each option scores w * (its length); w comes from the checkpoint."""

    family = "encoder_decoder"
    config = "length-model"

    def score_options(self, params, prompt_tokens, prompt_lengths, option_tokens, option_lengths):
        return params["w"] * option_lengths.astype(jnp.float32)


def _spec():
    return {"suite": "embedded", "datasets": ["product_review", "stance_on_cats"], "max_queries": 3,
            "settings": ["instr_labels", "neither", "flipped"], "k_per_class": [1, 2], "max_input_length": 1024,
            "batch_size": 4, "models": {"tiny": {"vocabulary": "bytes", "baseline": "ckpt/base", "tuned": "ckpt/run",
                                                 "steps": [10, 20]}}}


def _loader(calls):
    def load(path, *, model_config=None, step=None):
        calls.append((path, step))
        return LoadedModel(_LengthModel(), {"w": jnp.float32(-1.0 if path.endswith("base") else 1.0)}, None, "fake",
                           step)
    return load


class _Interrupt(Exception):
    pass


def test_a_sweep_interrupted_after_seven_cells_runs_only_the_missing_cells_on_restart(tmp_path):
    out = str(tmp_path / "sweep")
    finished = []

    def stop_after_seven(record):
        finished.append(record["key"])
        if len(finished) == 7:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        sweep.run_sweep(_spec(), out, after_cell=stop_after_seven, loader=_loader([]))
    assert len(reporting.read_jsonl(os.path.join(out, "results.jsonl"))) == 7
    rerun = []
    records = sweep.run_sweep(_spec(), out, after_cell=lambda r: rerun.append(r["key"]), loader=_loader([]))
    # baseline: 1 checkpoint x 2 k x 3 settings; tuned: 2 steps x 2 k x 3 settings
    assert len(records) == 18 and len(rerun) == 11
    assert not set(rerun) & set(finished)
    keys = [r["key"] for r in reporting.read_jsonl(os.path.join(out, "results.jsonl"))]
    assert len(keys) == len(set(keys)) == 18
    again = []
    sweep.run_sweep(_spec(), out, after_cell=lambda r: again.append(r), loader=_loader(again))
    assert again == []


def test_a_checkpoint_is_loaded_once_for_all_its_missing_cells(tmp_path):
    calls = []
    sweep.run_sweep(_spec(), str(tmp_path), loader=_loader(calls))
    assert calls == [("ckpt/base", None), ("ckpt/run", 10), ("ckpt/run", 20)]


def test_sweep_writes_table1_csv_and_plots_with_baseline_to_tuned_cells(tmp_path):
    records = sweep.run_sweep(_spec(), str(tmp_path), loader=_loader([]))
    by_key = {r["key"]: r for r in records}
    base = by_key["tiny|baseline|final|neither|k=2"]["accuracy"]
    tuned = by_key["tiny|tuned|20|neither|k=2"]["accuracy"]
    with open(tmp_path / "table.md") as f:
        table = f.read()
    assert "## k = 1 exemplars per class" in table and "## k = 2 exemplars per class" in table
    assert "| model | instr + labels | neither | flipped labels |" in table
    k2 = table.split("## k = 2")[1]
    assert f"{100 * base:.1f} -> {100 * tuned:.1f} ({100 * (tuned - base):+.1f})" in k2
    with open(tmp_path / "results.csv") as f:
        assert len(f.read().strip().splitlines()) == 1 + 18
    for name in ("settings.png", "accuracy_vs_step_tiny.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(4) == b"\x89PNG"


def test_per_cell_accuracy_is_the_mean_of_its_per_dataset_accuracies(tmp_path):
    records = sweep.run_sweep(_spec(), str(tmp_path), loader=_loader([]))
    for r in records:
        assert r["accuracy"] == pytest.approx(sum(r["per_dataset"].values()) / len(r["per_dataset"]))
        assert set(r["per_dataset"]) == ({"product_review"} if r["setting"] == "flipped"
                                         else {"product_review", "stance_on_cats"})


def test_bad_sweep_configs_fail_naming_the_field(tmp_path):
    with pytest.raises(ValueError, match="models.tiny: unknown fields \\['tunned'\\]"):
        sweep.check_spec({"models": {"tiny": {"tunned": "x"}}})
    with pytest.raises(ValueError, match="unknown evaluation settings \\['symbols'\\]"):
        sweep.check_spec({"settings": ["symbols"], "models": {"m": {"tuned": "x"}}})
    with pytest.raises(ValueError, match="k_per_class must be a positive integer"):
        sweep.check_spec({"k_per_class": [0], "models": {"m": {"tuned": "x"}}})
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"suites": "paper", "models": {"m": {"tuned": "x"}}}))
    assert sweep.main([f"--config={path}", f"--output_dir={tmp_path / 'o'}"]) == 1


def test_launch_script_runs_the_sweep_cli_and_rejects_missing_flags():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "eval_sweep.py")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--config" in proc.stderr


def test_yaml_and_json_sweep_configs_load_to_the_same_spec(tmp_path):
    import yaml

    (tmp_path / "s.json").write_text(json.dumps(_spec()))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_spec()))
    assert sweep.load_spec(str(tmp_path / "s.json")) == sweep.load_spec(str(tmp_path / "s.yaml"))
    (tmp_path / "t.json").write_text('{"models": {\n "m": }')
    with pytest.raises(ValueError, match="t.json:2: not valid JSON"):
        sweep.load_spec(str(tmp_path / "t.json"))


def test_instruction_placement_is_recorded_per_cell_and_a_changed_placement_reruns_the_cells(tmp_path):
    spec = dict(_spec(), settings=["instr_labels"], k_per_class=[1])
    calls = []
    first = sweep.run_sweep(spec, str(tmp_path), loader=_loader(calls))
    assert {r["instruction_placement"] for r in first} == {"header"} and calls
    assert all("accuracy_length_normalized" in r for r in first)
    calls.clear()
    sweep.run_sweep(dict(spec, instruction_placement="header"), str(tmp_path), loader=_loader(calls))
    assert not calls  # the default, written out, is the same input: nothing reruns
    again = sweep.run_sweep(dict(spec, instruction_placement="every_exemplar"), str(tmp_path), loader=_loader(calls))
    assert calls and {r["instruction_placement"] for r in again} == {"every_exemplar"}
    with open(tmp_path / "results.csv") as f:
        assert "instruction_placement" in f.readline()

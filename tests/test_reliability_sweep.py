"""Reliability of sweeps: a torn last line of results.jsonl (a kill mid-write) is moved aside and its cell
rerun; a retrained checkpoint or a changed suite reruns its cells; a damaged Orbax step's cells are skipped
and the sweep exits 1 after the others."""
import json
import os

import pytest
from test_evaluation import T5_CFG, _save_orbax, t5_model
from test_reliability_checkpoints import _flip_bit
from test_sweep import _loader

from symbol_tuning import sweep
from symbol_tuning.evaluation import sweep_records
from symbol_tuning.training import storage


def _spec(tmp_path):
    for name in ("base", "run"):
        (tmp_path / "ckpt" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "ckpt" / name / "params.safetensors").write_bytes(b"v1" * 10)
    return {"suite": "embedded", "datasets": ["product_review"], "max_queries": 3, "settings": ["neither"],
            "k_per_class": [1], "max_input_length": 1024, "batch_size": 4,
            "models": {"tiny": {"vocabulary": "bytes", "baseline": str(tmp_path / "ckpt" / "base"),
                                "tuned": str(tmp_path / "ckpt" / "run"), "steps": [10, 20]}}}


def _lines(path):
    return path.read_bytes().decode().split("\n")


def test_a_torn_last_line_is_moved_aside_its_cell_rerun_and_later_runs_read_the_file(tmp_path):
    out, spec = tmp_path / "sweep", _spec(tmp_path)
    sweep.run_sweep(spec, str(out), loader=_loader([]))
    results = out / "results.jsonl"
    data = results.read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 3
    last_key = json.loads(data.split(b"\n")[-2])["key"]
    results.write_bytes(data[:-25])  # a kill in the middle of the last append
    rerun = []
    sweep.run_sweep(spec, str(out), after_cell=lambda r: rerun.append(r["key"]), loader=_loader([]))
    assert rerun == [last_key]
    torn = (out / "results.jsonl.torn.1").read_bytes()
    assert torn == data[data.rindex(b"\n", 0, len(data) - 1) + 1:-25]
    lines = _lines(results)
    assert lines[-1] == "" and [json.loads(line)["key"] for line in lines[:-1]][-1] == last_key
    again = []
    records = sweep.run_sweep(spec, str(out), after_cell=lambda r: again.append(r["key"]), loader=_loader([]))
    assert again == [] and len(records) == 3


def test_records_hold_checkpoint_identity_and_inputs_and_a_change_reruns_the_cells(tmp_path):
    out, spec = tmp_path / "sweep", _spec(tmp_path)
    sweep.run_sweep(spec, str(out), loader=_loader([]))
    record = json.loads(_lines(out / "results.jsonl")[0])
    assert record["identity"]["checkpoint"] == spec["models"]["tiny"]["baseline"]
    assert len(record["identity"]["content_hash"]) == 64
    assert record["inputs"]["max_queries"] == 3 and record["inputs"]["datasets"] == ["product_review"]
    (tmp_path / "ckpt" / "run" / "params.safetensors").write_bytes(b"v2" * 11)  # the tuned run is retrained
    rerun = []
    sweep.run_sweep(spec, str(out), after_cell=lambda r: rerun.append(r["key"]), loader=_loader([]))
    assert sorted(rerun) == ["tiny|tuned|10|neither|k=1", "tiny|tuned|20|neither|k=1"]
    rerun.clear()
    spec["max_queries"] = 2  # the suite changed: every cell measured something else
    records = sweep.run_sweep(spec, str(out), after_cell=lambda r: rerun.append(r["key"]), loader=_loader([]))
    assert len(rerun) == 3 and all(r["inputs"]["max_queries"] == 2 for r in records)


def test_a_damaged_step_is_skipped_the_other_cells_run_and_the_cli_exits_1(tmp_path, capsys):
    _save_orbax(str(tmp_path / "run"), t5_model(T5_CFG), [1, 2])
    culprit = _flip_bit(tmp_path / "run" / "1")
    (tmp_path / "config.json").write_text(json.dumps({"family": "encoder_decoder", "config": T5_CFG.to_dict()}))
    spec = {"suite": "embedded", "datasets": ["product_review"], "max_queries": 2, "settings": ["neither"],
            "k_per_class": [1], "max_input_length": 512, "min_prompt_bucket": 512, "batch_size": 4,
            "models": {"tiny": {"vocabulary": "bytes", "tuned": str(tmp_path / "run"), "steps": [1, 2],
                                "model_config": str(tmp_path / "config.json")}}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "sweep"
    assert sweep.main([f"--config={tmp_path / 'spec.json'}", f"--output_dir={out}"]) == 1
    err = capsys.readouterr().err
    assert "checkpoint step 1 is damaged" in err and culprit.name in err and "tiny|tuned|1" in err
    keys = [r["key"] for r in sweep_records.read_records(out / "results.jsonl")]
    assert keys == ["tiny|tuned|2|neither|k=1"]
    assert os.path.isfile(out / "table.md") and (tmp_path / "run" / "1").is_dir()


def test_a_disk_full_append_leaves_a_torn_line_that_the_next_run_repairs(tmp_path, monkeypatch):
    """Simulated ENOSPC: the second append writes half its line, then the disk is full."""
    import errno

    out, spec = tmp_path / "sweep", _spec(tmp_path)
    real_write, calls = os.write, []

    def full_disk(fd, data):
        calls.append(len(data))
        if len(calls) == 2:
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(storage.os, "write", full_disk)
    with pytest.raises(OSError) as info:
        sweep.run_sweep(spec, str(out), loader=_loader([]))
    assert info.value.errno == errno.ENOSPC
    monkeypatch.setattr(storage.os, "write", real_write)
    assert not (out / "results.jsonl").read_bytes().endswith(b"\n")
    rerun = []
    records = sweep.run_sweep(spec, str(out), after_cell=lambda r: rerun.append(r["key"]), loader=_loader([]))
    assert len(rerun) == 2 and len(records) == 3  # the torn cell and the one never started
    assert (out / "results.jsonl.torn.1").exists()
    assert all(json.loads(line) for line in _lines(out / "results.jsonl")[:-1])

"""A shortened `symbol-tuning demo` end to end: stopped by SIGTERM it exits non-zero naming the stage and
reports nothing; rerun on its directory it resumes and writes effect.json, every accuracy, difference and
interval of which is recomputed here (plain numpy, the documented bootstrap) from the per-prompt records."""
import json
import os
import signal
import subprocess
import sys
import time
import zlib

import numpy as np

from symbol_tuning.evaluation.evaluator import EVAL_SETTINGS

ARGS = ["--seeds", "2", "--d_model", "32", "--num_layers", "1", "--instruction_steps", "3", "--symbol_steps", "40",
        "--batch_size", "4", "--eval_queries", "4"]


def _records(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _cells(records, setting):
    out = {}
    for r in records:
        if r["setting"] == setting:
            assert r["prediction"] == int(np.argmax(r["scores"]))  # predictions are the model's argmax
            assert r["num_exemplars"] == 4 * r["num_classes"]  # k = 4 per class always fits
            out.setdefault(r["dataset"], {})[r["index"]] = float(r["correct"])
    return out


def _values(per_seed, setting, left, right=None):
    values = []
    for arms in per_seed:
        a = _cells(arms[left], setting)
        b = _cells(arms[right], setting) if right else None
        rows = []
        for dataset in sorted(a):
            v = np.array([a[dataset][i] for i in sorted(a[dataset])])
            if b is not None:
                v = v - np.array([b[dataset][i] for i in sorted(b[dataset])])
            rows.append(v)
        values.append(rows)
    return values


def _bootstrap(values, key, resamples):
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    seeds = rng.integers(len(values), size=(resamples, len(values)))
    stats = np.zeros(resamples)
    for d in range(len(values[0])):
        n = len(values[0][d])
        picks = rng.integers(n, size=(resamples, len(values), n))
        for b in range(resamples):
            stats[b] += np.mean([values[s][d][picks[b, j]].mean() for j, s in enumerate(seeds[b])])
    return np.percentile(stats / len(values[0]), [2.5, 97.5])


def test_demo_stopped_by_sigterm_reports_nothing_then_resumes_and_effect_json_matches_the_records(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "symbol_tuning.demo", "--run_dir", str(run_dir), *ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run_dir / "seed_0" / "symbol_tuned" / "worker.log"
    deadline = time.time() + 240
    while time.time() < deadline and not (log.exists() and "step " in log.read_text()) and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None and log.exists(), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (out, err)
    assert "stopped by signal" in err and "symbol_tuned" in err and "--run_dir=" in err
    assert not (run_dir / "effect.json").exists() and not (run_dir / "table.md").exists()
    assert not (run_dir / "seed_0" / "symbol_tuned" / "DONE.json").exists()

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.rstrip().splitlines()[-1] == f"run directory: {run_dir}"
    effect = json.loads((run_dir / "effect.json").read_text())
    assert effect["seeds"] == 2 and set(effect["settings"]) == set(EVAL_SETTINGS)
    per_seed = [{arm: _records(run_dir / f"seed_{s}" / arm / "eval" / "final" / "records.jsonl")
                 for arm in ("baseline", "symbol_tuned", "control")} for s in (0, 1)]
    resamples = effect["interval"]["resamples"]
    for setting, entry in effect["settings"].items():
        for arm in ("baseline", "symbol_tuned", "control"):
            values = _values(per_seed, setting, arm)
            assert abs(entry[arm] - np.mean([np.mean([v.mean() for v in rows]) for rows in values])) < 1e-12
        for name, right in (("diff_vs_baseline", "baseline"), ("diff_vs_control", "control")):
            values = _values(per_seed, setting, "symbol_tuned", right)
            mean = np.mean([np.mean([v.mean() for v in rows]) for rows in values])
            assert abs(entry[name]["mean"] - mean) < 1e-12
            assert abs(entry[name]["mean"] - (entry["symbol_tuned"] - entry[right])) < 1e-12
            lo, hi = _bootstrap(values, f"{setting}/{name}", resamples)
            assert np.allclose(entry[name]["ci95"], [lo, hi], atol=1e-12)
            assert entry[name]["ci95"][0] <= entry[name]["mean"] + 1e-12 <= entry[name]["ci95"][1] + 2e-12
    # the plateau gate is the symbol-tuned arms' mean loss (-log p of the right symbol) on the probe prompts
    losses = []
    for s in (0, 1):
        probe = _records(run_dir / f"seed_{s}" / "symbol_tuned" / "eval" / "plateau_records.jsonl")
        losses.append(np.mean([-r["scores"][r["answer"]] for r in probe]))
    gate = effect["plateau"]
    assert abs(gate["symbol_loss"] - np.mean(losses)) < 1e-9
    assert gate["left_plateau"] == (gate["symbol_loss"] < 0.5 * np.log(2))
    table = (run_dir / "table.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| model |"))
    assert header.count("|") == len(EVAL_SETTINGS) + 2 and "Plateau gate" in table and "Per family" in table
    assert os.path.getsize(run_dir / "effect.png") > 0

    again = subprocess.run(cmd[:-2] + ["--eval_queries", "5"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "demo_config.json" in again.stderr  # other settings refused, nothing mixed


def test_demo_sizes_and_bad_flags(capsys):
    from symbol_tuning import demo

    parser = demo._parser()
    parser.set_defaults(**demo.SIZES["gpu"])
    gpu = parser.parse_args([])
    assert gpu.seeds >= 3 and gpu.symbol_steps > demo._parser().parse_args([]).symbol_steps
    assert demo._parser().parse_args([]).seeds >= 3  # the CPU default runs at least 3 seeds
    for flag in ("--seeds", "--symbol_steps", "--workers"):
        assert demo.main([flag, "0"]) == 2
        assert f"{flag} must be >= 1" in capsys.readouterr().err
    env = demo._worker_env(1)
    assert "--xla_cpu_max_isa=AVX2" in env["XLA_FLAGS"] and "device_count" not in env["XLA_FLAGS"]

"""A shortened `symbol-tuning demo` runs end to end: both training stages, the evaluation of both models
and the Table-1 comparison, with every accuracy recomputed here from the recorded predictions."""
import collections
import csv
import os

import numpy as np

from symbol_tuning import demo
from symbol_tuning.data.embedded.datasets import EVAL_FAMILIES
from symbol_tuning.evaluation.evaluator import EVAL_SETTINGS


def test_short_demo_writes_checkpoints_table_and_plots_from_real_predictions(tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = demo.main(["--run_dir", str(run_dir), "--d_model", "32", "--num_layers", "1",
                    "--instruction_steps", "4", "--symbol_steps", "2", "--batch_size", "8", "--eval_queries", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == f"run directory: {run_dir}"
    for stage in ("a_instruction_tuned", "b_symbol_tuned"):
        assert os.path.isfile(run_dir / stage / "native" / "config.json")
        assert any(name.isdigit() for name in os.listdir(run_dir / stage))  # Orbax step directories
        assert os.listdir(run_dir / stage / "train")  # TensorBoard event files
    assert os.path.getsize(run_dir / "accuracy_by_setting.png") > 0

    with open(run_dir / "results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    binary = {fam.name for fam in EVAL_FAMILIES if len(fam.label_names) == 2}
    for variant in ("baseline", "tuned"):
        with open(run_dir / "c_eval" / variant / "final" / "records.jsonl", encoding="utf-8") as f:
            import json
            records = [json.loads(line) for line in f]
        groups = collections.defaultdict(list)
        for r in records:
            assert r["prediction"] == int(np.argmax(r["scores"]))  # predictions are the model's argmax
            groups[(r["setting"], r["dataset"])].append(r["prediction"] == r["answer"])
        expected_cells = {(s, fam.name) for s in EVAL_SETTINGS for fam in EVAL_FAMILIES
                          if s != "flipped" or fam.name in binary}
        assert set(groups) == expected_cells
        table = {(r["setting"], r["dataset"]): float(r["accuracy"]) for r in rows if r["variant"] == variant}
        for key, hits in groups.items():
            assert abs(table[key] - np.mean(hits)) < 1e-9
        for setting in EVAL_SETTINGS:
            per = [np.mean(h) for (s, _), h in groups.items() if s == setting]
            assert abs(table[(setting, "average")] - np.mean(per)) < 1e-9

    table_md = (run_dir / "table.md").read_text()
    header = next(line for line in table_md.splitlines() if line.startswith("| model |"))
    assert header.count("|") == len(EVAL_SETTINGS) + 2
    assert " -> " in table_md and "chance" in table_md

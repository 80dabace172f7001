"""Result files and plots: Table 1 cells, per-setting summaries, CSV / JSONL round trips, PNG output."""
import csv
import json
import os

import pytest

from symbol_tuning.evaluation import reporting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUMMARY = {"accuracy": {"instr_labels": {"subj": 0.75, "hate": 0.5}, "flipped": {"subj": 0.25, "hate": 0.5}},
           "average": {"instr_labels": 0.625, "flipped": 0.375}, "chance": 0.5, "flipped_chance": 0.5,
           "generative": {"list_functions/c080": 0.2}, "generative_average": {"list_functions": 0.2}}


def test_table1_cells_read_baseline_arrow_tuned_with_signed_change_in_points():
    rows = [{"model": "8B", "variant": "baseline", "setting": "instr_only", "accuracy": 0.424},
            {"model": "8B", "variant": "tuned", "setting": "instr_only", "accuracy": 0.582},
            {"model": "8B", "variant": "baseline", "setting": "instr_labels", "accuracy": 0.639},
            {"model": "8B", "variant": "tuned", "setting": "instr_labels", "accuracy": 0.576},
            {"model": "62B", "variant": "tuned", "setting": "instr_labels", "accuracy": 0.755}]
    table = reporting.table1_markdown(rows, settings=["instr_labels", "instr_only"])
    lines = table.strip().splitlines()
    assert lines[0] == "| model | instr + labels | instr only |"
    assert lines[2] == "| 8B | 63.9 -> 57.6 (-6.3) | 42.4 -> 58.2 (+15.8) |"
    assert lines[3] == "| 62B | 75.5 | - |"


def test_summary_markdown_has_a_row_per_dataset_then_average_and_chance():
    text = reporting.summary_markdown(SUMMARY, title="tiny")
    assert "| subj | 75.0 | 25.0 |" in text
    assert "| **average** | 62.5 | 37.5 |" in text
    assert "| chance | 50.0 | 50.0 |" in text
    assert "| list_functions/c080 | 20.0 |" in text


def test_summary_rows_written_as_csv_read_back_with_the_csv_module(tmp_path):
    rows = reporting.summary_rows(SUMMARY, model="m", step=3)
    path = str(tmp_path / "s.csv")
    reporting.write_csv(path, rows)
    with open(path, newline="") as f:
        back = list(csv.DictReader(f))
    assert len(back) == 2 * 2 + 2 + 1
    averages = {r["setting"]: float(r["accuracy"]) for r in back if r["dataset"] == "average"}
    assert averages == {"instr_labels": 0.625, "flipped": 0.375}
    assert {r["step"] for r in back} == {"3"}


def test_jsonl_append_and_read_ignore_only_a_torn_last_line(tmp_path):
    path = str(tmp_path / "r.jsonl")
    reporting.append_jsonl(path, {"key": "a", "x": 1})
    reporting.append_jsonl(path, {"key": "b", "x": 2})
    with open(path, "a") as f:
        f.write('{"key": "c", "x"')
    assert [r["key"] for r in reporting.read_jsonl(path)] == ["a", "b"]
    with open(path, "w") as f:
        f.write('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(ValueError, match=r"r.jsonl:2: not a JSON record"):
        reporting.read_jsonl(path)


def test_plots_are_written_as_png_files(tmp_path):
    rows = [{"model": "m", "variant": v, "setting": s, "accuracy": a, "step": st}
            for v, st, a in (("baseline", 0, 0.4), ("tuned", 100, 0.6)) for s in ("instr_labels", "neither")]
    bars, lines = str(tmp_path / "bars.png"), str(tmp_path / "lines.png")
    reporting.plot_setting_bars(rows, bars)
    reporting.plot_accuracy_vs_step(rows, lines)
    for path in (bars, lines):
        with open(path, "rb") as f:
            assert f.read(8) == PNG_MAGIC
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp.png")]


def test_step_results_mark_completion_with_summary_json_written_last(tmp_path):
    assert not reporting.step_done(str(tmp_path), 5)
    directory = reporting.write_step_results(str(tmp_path), step=5, records=[{"dataset": "subj", "correct": True}],
                                             summary=SUMMARY, model="m")
    assert reporting.step_done(str(tmp_path), 5)
    assert sorted(os.listdir(directory)) == ["records.jsonl", "summary.csv", "summary.json", "summary.md"]
    with open(os.path.join(directory, "summary.json")) as f:
        assert json.load(f)["average"] == SUMMARY["average"]

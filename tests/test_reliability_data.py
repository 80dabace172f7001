"""Reliability of input data: an empty file names the file; a prompt that cannot fit even with two exemplars per
class and a class with no rows are found at run start in one pass (named, before any step), and with
skip_bad_rows the long rows are dropped, counted and saved in MODEL_DIR/data_validation.json, as are the
prompts that length fitting dropped among the first ones built; a non-UTF-8
byte in a .json source is an error naming the file and line, never a silent U+FFFD."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from symbol_tuning import train
from symbol_tuning.data import validation
from symbol_tuning.data.examples import ClassificationData, Example
from symbol_tuning.data.rows import DataError
from symbol_tuning.data.sources.readers import read_records

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cola_root(tmp_path, rows):
    (tmp_path / "data" / "cola").mkdir(parents=True)
    path = tmp_path / "data" / "cola" / "train.tsv"
    path.write_text("x\ty\n" + "".join(f"{text}\t{label}\n" for text, label in rows), encoding="utf-8")
    return tmp_path / "data", path


def _rows(n=12):
    return [(f"sentence number {i} is {'fine' if i % 2 else 'bad'}", i % 2) for i in range(n)]


def test_an_empty_data_file_is_an_error_naming_the_file(tmp_path):
    root, path = _cola_root(tmp_path, [])
    with pytest.raises(DataError, match=f"{path}: no usable rows"):
        train.local_symbol_mixture(name="empty_mix", data_root=str(root), datasets=["cola"], symbol_rate=1.0)


def test_a_class_with_no_rows_is_found_in_one_pass_naming_the_class_and_file():
    data = ClassificationData("local/x", "train", tuple(Example(f"t{i}", 0) for i in range(5)), ("no", "yes"))
    with pytest.raises(DataError, match=r"local/x: \['/d/x.tsv'\]: classes \[\"'yes' \(label 1\)\"\] have no rows"):
        validation.validate_tuning_data("task", data, files=["/d/x.tsv"], max_input_length=512, length_fn=len,
                                        skip_bad_rows=True)


@pytest.mark.parametrize("min_per_class,limit,expected", [
    (1, 100, [2, 4]),  # 200 + 5 + 8 and 95 + 5 + 8, less 3 joins, are over 100; 30 + 5 + 8 is not
    (2, 200, [2, 3, 5]),  # class 1 has 3 rows, one of 200: every class-1 query shows it, as does row 2's own
])
def test_a_row_flagged_as_unfittable_never_fits_in_a_real_prompt_whatever_the_seed(min_per_class, limit, expected):
    from symbol_tuning.data.prompts import PromptTooLongError, _visit_order, build_tuning_prompt

    texts = [("a" * 30, 0), ("b" * 5, 0), ("c" * 200, 1), ("d" * 12, 1), ("e" * 95, 0), ("f" * 8, 1)]
    data = ClassificationData("x", "train", tuple(Example(t, y) for t, y in texts), ("p", "q"))
    bad = dict(validation.rows_that_cannot_fit(data, max_input_length=limit, length_fn=len,
                                               min_per_class=min_per_class))
    assert sorted(bad) == expected
    built = set()
    for seed in range(8):
        order = _visit_order(data, seed)
        for index in range(len(texts)):
            try:
                build_tuning_prompt(data, seed=seed, index=index, max_input_length=limit, length_fn=len,
                                    min_per_class=min_per_class)
                built.add(order[index])
            except PromptTooLongError:
                continue
    assert not built & set(bad) and built  # sound: no flagged row ever fits; some rows do


def test_run_start_check_counts_dropped_prompts_into_the_report_with_one_warning(caplog):
    from symbol_tuning.data.task_builders import symbol_task
    from symbol_tuning.data.task_registry import TaskRegistry

    # 200 + 4 * 6 - 5 is under the row bound (250), but no real prompt around it as the query fits 250 bytes
    examples = tuple(Example(f"row {i:02d}", i % 2) for i in range(20)) + (Example("long " * 40, 1),)
    data = ClassificationData("local/drops", "train", examples, ("a", "b"))
    name = "symbol_tuning:local.drops_check"
    TaskRegistry.add(symbol_task(name, lambda: data, num_examples=len(examples), check_eval=False), overwrite=True)
    try:
        validation.note_tuning_data(name, data, files=["/d/drops.tsv"], skip_bad_rows=True,
                                    rebuild=lambda cleaned: pytest.fail("no row is over the bound"))
        caplog.clear()
        (report,), changed = validation.validate_run([name], max_input_length=250, length_fn=len, seed=7,
                                                     check_prompts=300)
        assert not changed and report.checked_prompts == len(examples) and report.dropped_prompts >= 1
        warned = [r.getMessage() for r in caplog.records if "prompts (seed 7) were dropped" in r.getMessage()]
        assert warned == [f"local/drops: {report.dropped_prompts} of the first 21 symbol-tuning prompts (seed 7) were "
                          "dropped and redrawn: they cannot keep 2 exemplars per class within max_input_length=250"]
        assert TaskRegistry.get(name).metadata["prompt_drops"].snapshot() == (0, 0)  # the stream counts afresh
    finally:
        TaskRegistry.remove(name)
        with validation._LOCK:
            validation._NOTED.pop(name, None)


def _cli(model_dir, root, *extra):
    return [sys.executable, "-m", "symbol_tuning.train", "--gin_file=models/tiny_decoder.gin",
            "--gin_file=runs/tiny_cpu.gin", f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=2",
            "--gin.CHECKPOINT_EVERY=2", "--gin.INPUT_LENGTH=256", "--gin.TARGET_LENGTH=16", "--gin.BATCH_SIZE=8",
            "--gin.MIXTURE_OR_TASK_NAME=@data.local_symbol_mixture()",
            f"--gin_bindings=data.local_symbol_mixture.data_root = '{root}'",
            "--gin_bindings=data.local_symbol_mixture.datasets = ['cola']",
            "--gin_bindings=data.local_symbol_mixture.symbol_rate = 1.0", *extra]


def _run(cmd):
    env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, env=env)


def test_a_row_too_long_to_fit_stops_the_run_before_any_step_and_skip_bad_rows_drops_and_saves_it(tmp_path):
    rows = _rows()
    rows.insert(5, ("long " * 2000, 1))  # 10 kB: cannot fit 256 tokens whatever exemplars are drawn
    root, path = _cola_root(tmp_path, rows)
    model_dir = tmp_path / "run"
    out = _run(_cli(model_dir, root))
    assert out.returncode == 1, out.stderr[-2000:]
    assert f"local/cola: ['{path}']: row 5 ('long long" in out.stderr
    assert "over max_input_length=" in out.stderr and "skip_bad_rows=True" in out.stderr
    assert not model_dir.exists() or not [d for d in os.listdir(model_dir) if d.isdigit()]
    with open(path, "a", encoding="utf-8") as f:
        f.write("a row whose label is not in the label set\t7\n")  # skipped by the reader, and counted
    out = _run(_cli(model_dir, root, "--gin_bindings=data.local_symbol_mixture.skip_bad_rows = True"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "dropped 1 rows whose prompt cannot fit" in out.stderr
    report = json.loads((model_dir / validation.REPORT_NAME).read_text())
    (entry,) = report["datasets"]
    assert entry["dataset"] == "local/cola" and entry["rows"] == 13
    assert entry["dropped_too_long"] == 1 and entry["skipped_bad_rows"] == 1
    assert entry["files"] == [str(path)] and (model_dir / "2").is_dir()


def test_a_non_utf8_byte_in_a_json_source_names_the_file_and_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_bytes(b'[\n {"text": "fine", "label": 0},\n {"text": "caf\xe9", "label": 1}\n]\n')
    with pytest.raises(DataError, match=f"{path}:3: not valid utf-8"):
        list(read_records(str(path)))


@pytest.mark.parametrize("name,content,where", [
    ("pairs.json", b'[{"inputs": "caf\xe9", "targets": "x"}]', "not valid UTF-8"),
    ("pairs.csv", b"inputs,targets\nfine,x\ncaf\xe9,y\n", "not valid UTF-8 after line"),
])
def test_instruction_files_with_a_non_utf8_byte_name_the_file(tmp_path, name, content, where):
    from symbol_tuning.data.instruction_data import load_instruction_data

    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"{path}: {where}"):
        load_instruction_data(str(path))


def test_a_hub_value_that_is_not_utf8_is_reported_naming_the_row_not_replaced():
    from symbol_tuning.data.rows import FieldMapping, make_examples
    from symbol_tuning.data.sources.hub import _decode

    rows = [("tfds:x row 0", {"text": _decode(b"fine"), "label": 0}),
            ("tfds:x row 1", {"text": _decode(b"caf\xe9"), "label": 1})]
    with pytest.raises(DataError, match="tfds:x row 1: field 'text' is not valid UTF-8"):
        make_examples(rows, dataset="x", mapping=FieldMapping(("text",), "label"), label_names=("a", "b"))

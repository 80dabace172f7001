"""Instruction (inputs, targets) data: local jsonl/json/csv/tsv/parquet files and saved HF datasets load
into TextPairs; bad rows are named by file and line; caps keep a seeded subset."""
import json
import logging

import datasets
import pytest

from symbol_tuning.data.examples import TextPair
from symbol_tuning.data.instruction_data import infer_format, load_instruction_data
from symbol_tuning.data.rows import DataError

PAIRS = [{"inputs": f"Translate to French: word {i}", "targets": f"mot {i}"} for i in range(6)]
EXPECTED = [TextPair(p["inputs"], p["targets"]) for p in PAIRS]


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_jsonl_file_loads_every_pair_in_order(tmp_path):
    data = load_instruction_data(_jsonl(tmp_path / "flan.jsonl", PAIRS))
    assert list(data.examples) == EXPECTED
    assert data.name == "flan.jsonl" and data.split == "train" and data.task_type == "instruction"


def test_csv_and_tsv_files_with_custom_field_names_load(tmp_path):
    rows = [("question", "answer"), ("What is 2+2?", "4"), ('Say "hi", politely', "hi")]
    csv_path = tmp_path / "qa.csv"
    csv_path.write_text('question,answer\nWhat is 2+2?,4\n"Say ""hi"", politely",hi\n')
    tsv_path = tmp_path / "qa.tsv"
    tsv_path.write_text("".join("\t".join(r) + "\n" for r in rows))
    expected = [TextPair("What is 2+2?", "4"), TextPair('Say "hi", politely', "hi")]
    for path in (csv_path, tsv_path):
        data = load_instruction_data(str(path), inputs_field="question", targets_field="answer")
        assert list(data.examples) == expected


def test_json_list_and_parquet_files_load(tmp_path):
    json_path = tmp_path / "flan.json"
    json_path.write_text(json.dumps(PAIRS))
    assert list(load_instruction_data(str(json_path)).examples) == EXPECTED
    parquet_path = tmp_path / "flan.parquet"
    datasets.Dataset.from_list(PAIRS).to_parquet(str(parquet_path))
    assert list(load_instruction_data(str(parquet_path)).examples) == EXPECTED


def test_saved_hf_datasetdict_loads_the_requested_split(tmp_path):
    path = tmp_path / "flan_saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(PAIRS),
                          "validation": datasets.Dataset.from_list(PAIRS[:2])}).save_to_disk(str(path))
    assert infer_format(str(path)) == "hf_disk"
    assert list(load_instruction_data(str(path), split="validation").examples) == EXPECTED[:2]
    with pytest.raises(DataError, match=r"no split 'test'; splits are \['train', 'validation'\]"):
        load_instruction_data(str(path), split="test")


def test_empty_target_raises_data_error_naming_file_and_line(tmp_path):
    records = PAIRS[:3] + [{"inputs": "Say nothing", "targets": "  "}]
    path = _jsonl(tmp_path / "flan.jsonl", records)
    with pytest.raises(DataError, match=r"flan\.jsonl line 4: field 'targets' is empty"):
        load_instruction_data(path)


def test_missing_field_in_csv_names_the_file_line_counting_the_header(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("inputs,targets\na,b\nc\n")
    with pytest.raises(DataError, match=r"qa\.csv line 3: field 'targets' is missing"):
        load_instruction_data(str(path))


def test_broken_json_line_names_the_line(tmp_path):
    path = tmp_path / "flan.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"flan\.jsonl: .*flan\.jsonl line 2: not valid JSON"):
        load_instruction_data(str(path))


def test_skip_bad_rows_drops_only_bad_rows_and_logs_the_count(tmp_path, caplog):
    records = [PAIRS[0], {"inputs": "no target"}, PAIRS[1], {"inputs": "", "targets": "x"}, PAIRS[2]]
    with caplog.at_level(logging.WARNING):
        data = load_instruction_data(_jsonl(tmp_path / "flan.jsonl", records), skip_bad_rows=True)
    assert list(data.examples) == EXPECTED[:3]
    assert "skipped 2 bad rows" in caplog.text


def test_max_examples_is_a_deterministic_seeded_subset(tmp_path):
    path = _jsonl(tmp_path / "flan.jsonl", [{"inputs": f"q{i}", "targets": f"a{i}"} for i in range(50)])
    a = load_instruction_data(path, max_examples=7, seed=1).examples
    assert a == load_instruction_data(path, max_examples=7, seed=1).examples
    assert a != load_instruction_data(path, max_examples=7, seed=2).examples
    assert len(a) == 7 and [p.inputs for p in a] != [f"q{i}" for i in range(7)]


def test_format_inference_and_missing_local_files(tmp_path):
    assert infer_format("Muennighoff/flan") == "hub"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_instruction_data(str(tmp_path / "missing.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no usable"):
        load_instruction_data(str(empty))

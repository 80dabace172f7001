"""Local-file sources: every format and layout on small files, every bad input, skipping, subsets."""
import logging
import types

import pytest

from symbol_tuning.data.examples import Example
from symbol_tuning.data.rows import DataError, FieldMapping
from symbol_tuning.data.sources.local_files import load_local, partition, read_records
from symbol_tuning.data.sources.local_source import LocalSource

TEXT = FieldMapping(text_fields=("text",), label_field="label")
NLI = FieldMapping(text_fields=("premise", "hypothesis"), label_field="label", titles=("Premise", "Hypothesis"),
                   label_map={"entailment": 0, "not_entailment": 1})
NEG_POS = ("negative", "positive")


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def load(files, *, label_names=NEG_POS, mapping=TEXT, split="train", skip_bad_rows=False, **kw):
    source = LocalSource(files=files, label_names=label_names, name="toy", mapping=mapping, **kw)
    return load_local(source=source, split=split, skip_bad_rows=skip_bad_rows)


def pairs(data):
    return [(e.text, e.label) for e in data.examples]


def test_jsonl_with_multiple_fields_renders_titles_and_maps_labels(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"premise": "P1", "hypothesis": "H1", "label": "entailment"}\n\n'
                                      '{"premise": "P2", "hypothesis": "H2", "label": "not_entailment"}\n')
    data = load(path, mapping=NLI, label_names=("entailment", "not entailment"))
    assert pairs(data) == [("Premise: P1\nHypothesis: H1", 0), ("Premise: P2\nHypothesis: H2", 1)]
    assert data.name == "toy" and data.split == "train"


def test_json_list_and_keyed_object_report_the_line_of_each_record(tmp_path):
    listed = write(tmp_path, "l.json", '[\n  {"text": "a", "label": 0},\n  {"text": "b", "label": 1}\n]')
    keyed = write(tmp_path, "k.json", '{\n "0": {"text": "a", "label": "1"},\n "1": {\n  "text": "b",\n'
                                      '  "label": "0"}\n}')
    assert [w for w, _ in read_records(listed)] == [f"{listed}:2", f"{listed}:3"]
    assert [(w, r["text"]) for w, r in read_records(keyed)] == [(f"{keyed}:2", "a"), (f"{keyed}:3", "b")]
    assert pairs(load(keyed)) == [("a", 1), ("b", 0)]


def test_csv_with_header_quoted_multiline_field_bom_and_crlf(tmp_path):
    path = write(tmp_path, "d.csv", '\ufeffsentence,label\r\n"good, really",positive\r\n"two\nlines",negative\r\n'
                                    "fine,positive\r\n")
    records = list(read_records(path))
    assert [w for w, _ in records] == [f"{path}:2", f"{path}:3", f"{path}:5"]
    assert pairs(load(path, mapping=FieldMapping(("sentence",), "label"))) == [
        ("good, really", 1), ("two\nlines", 0), ("fine", 1)]


def test_headerless_tsv_with_named_columns_keeps_quotes_verbatim(tmp_path):
    path = write(tmp_path, "d.tsv", '1\tsay "hi" there\n0\t"quoted start\n')
    data = load(path, columns=("label", "text"), has_header=False)
    assert pairs(data) == [('say "hi" there', 1), ('"quoted start', 0)]


def test_lines_format_yields_text_records(tmp_path):
    path = write(tmp_path, "d.txt", "first line\nsecond line\n")
    assert list(read_records(path)) == [(f"{path}:1", {"text": "first line"}), (f"{path}:2", {"text": "second line"})]


@pytest.mark.parametrize("regex, content, expected", [
    (r"^(?P<label>[01]) (?P<text>.+)$", "1 a fine film\n0 a dull film\n", [("a fine film", 1), ("a dull film", 0)]),
    (r"^(?P<label>[A-Z]+):\S+ (?P<text>.+)$", "NUM:dist How far ?\nLOC:city Where ?\n", [("How far ?", 1),
                                                                                         ("Where ?", 0)]),
])
def test_regex_format_reads_sst2_and_trec_style_lines(tmp_path, regex, content, expected):
    path = write(tmp_path, "d.txt", content)
    label_map = None if "[01]" in regex else {"LOC": 0, "NUM": 1}
    data = load(path, file_format="regex", regex=regex, mapping=FieldMapping(("text",), "label", label_map=label_map))
    assert pairs(data) == expected


def test_parallel_text_and_label_files_read_in_lock_step(tmp_path):
    text = write(tmp_path, "train_text.txt", "tweet one\ntweet two\ntweet three\n")
    labels = write(tmp_path, "train_labels.txt", "1\n0\n1\n")
    assert pairs(load((text, labels))) == [("tweet one", 1), ("tweet two", 0), ("tweet three", 1)]


def test_per_label_files_take_the_label_from_the_file_and_decode_cp1252(tmp_path):
    obj = write(tmp_path, "subj.objective", "the plot follows sam .\nit is set in 1920 .\n")
    subj = write(tmp_path, "subj.subjective", b"a clich\xe9 \x96 but fun .\n")
    data = load({"objective": obj, "subjective": subj}, label_names=("objective", "subjective"), encoding="cp1252")
    assert pairs(data) == [("the plot follows sam .", 0), ("it is set in 1920 .", 0), ("a cliché – but fun .", 1)]


def test_spec_with_directory_reads_split_file_by_hf_split_name(tmp_path):
    write(tmp_path, "validation.jsonl", '{"premise": "P", "hypothesis": "H", "label": 1}\n')
    mapping = FieldMapping(("premise", "hypothesis"), "label", ("Premise", "Hypothesis"))
    spec = types.SimpleNamespace(name="rte", mapping=mapping,
                                 label_names=("entailment", "not entailment"), instruction="Does it follow?",
                                 splits={"train": "train", "eval": "validation"})
    data = load_local(spec=spec, split="eval", path=str(tmp_path))
    assert pairs(data) == [("Premise: P\nHypothesis: H", 1)]
    assert (data.name, data.split, data.instruction) == ("rte", "eval", "Does it follow?")
    with pytest.raises(FileNotFoundError, match=r"rte: data file .*rte/train.jsonl does not exist"):
        load_local(spec=spec, split="train", path=str(tmp_path))  # falls back to the raw RTE layout
    mine = types.SimpleNamespace(**{**vars(spec), "name": "my_data"})
    with pytest.raises(FileNotFoundError, match="my_data: no data file for split 'train'.*no known raw layout"):
        load_local(spec=mine, split="train", path=str(tmp_path))


def test_real_spec_reads_a_jsonl_export_of_the_hf_dataset_and_drops_unlabeled_rows(tmp_path):
    from symbol_tuning.data.specs import get_spec

    write(tmp_path, "train.jsonl", '{"sentence1": "A", "sentence2": "B", "label": 1, "idx": 0}\n'
                                   '{"sentence1": "C", "sentence2": "D", "label": -1, "idx": 1}\n'
                                   '{"sentence1": "E", "sentence2": "F", "label": 0, "idx": 2}\n')
    data = load_local(spec=get_spec("rte"), split="train", path=str(tmp_path))
    assert pairs(data) == [("Premise: A\nHypothesis: B", 1), ("Premise: E\nHypothesis: F", 0)]
    assert data.label_names == ("entailment", "not entailment")


def test_max_examples_takes_a_seeded_subset_in_file_order(tmp_path):
    path = write(tmp_path, "d.jsonl", "".join(f'{{"text": "t{i}", "label": {i % 2}}}\n' for i in range(50)))
    source = LocalSource(files=path, label_names=NEG_POS, name="toy", mapping=TEXT)
    a = load_local(source=source, split="train", max_examples=10, seed=1)
    b = load_local(source=source, split="train", max_examples=10, seed=1)
    c = load_local(source=source, split="train", max_examples=10, seed=2)
    indices = [int(e.text[1:]) for e in a.examples]
    assert a == b and a != c and len(set(indices)) == 10 and indices == sorted(indices)
    assert indices != list(range(10))
    assert len(load_local(source=source, split="train", max_examples=100).examples) == 50


def test_partition_is_disjoint_stratified_and_covers_every_row():
    examples = [Example(f"x{i}", 0) for i in range(10)] + [Example(f"y{i}", 1) for i in range(5)]
    train = partition(examples, part="train", train_fraction=0.6, num_labels=2)
    evals = partition(examples, part="eval", train_fraction=0.6, num_labels=2)
    assert not set(train) & set(evals) and set(train) | set(evals) == set(examples)
    assert sum(e.label == 0 for e in train) == 6 and sum(e.label == 1 for e in train) == 3  # ceil(0.6 * n)


BAD_CASES = {
    "missing label": ("d.jsonl", '{"text": "ok", "label": 0}\n{"text": "no label"}\n', 2,
                      "label field 'label' is missing"),
    "label outside set": ("d.jsonl", '{"text": "ok", "label": 0}\n{"text": "x", "label": 7}\n', 2,
                          "outside the label set"),
    "empty text": ("d.jsonl", '{"text": "ok", "label": 0}\n{"text": "  ", "label": 1}\n', 2, "is empty"),
    "non-utf8": ("d.jsonl", b'{"text": "ok", "label": 0}\n{"text": "caf\xe9", "label": 1}\n', 2, "not valid utf-8"),
    "bad json": ("d.jsonl", '{"text": "ok", "label": 0}\n{"text": "x" "label": 1}\n', 2, "malformed JSON"),
    "column count": ("d.csv", "text,label\nok,0\nx,1,extra\n", 3, "3 columns, expected 2"),
    "regex mismatch": ("d.txt", "0 ok\nno label here\n", 2, "does not match the pattern"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_row_raises_data_error_naming_file_and_line(tmp_path, case):
    name, content, line, needle = BAD_CASES[case]
    path = write(tmp_path, name, content)
    kw = dict(file_format="regex", regex=r"^(?P<label>[01]) (?P<text>.+)$") if name == "d.txt" else {}
    with pytest.raises(DataError) as err:
        load(path, **kw)
    assert f"{path}:{line}:" in str(err.value) and needle in str(err.value) and "toy" in str(err.value)


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_skip_bad_rows_drops_exactly_the_bad_row_and_logs_the_count(tmp_path, caplog, case):
    name, content, line, _ = BAD_CASES[case]
    path = write(tmp_path, name, content)
    kw = dict(file_format="regex", regex=r"^(?P<label>[01]) (?P<text>.+)$") if name == "d.txt" else {}
    with caplog.at_level(logging.WARNING):
        data = load(path, skip_bad_rows=True, **kw)
    assert pairs(data) == [("ok", 0)]
    assert "skipped 1 bad rows" in caplog.text and f"{path}:{line}" in caplog.text


def test_unknown_field_in_header_names_file_line_and_columns(tmp_path):
    path = write(tmp_path, "d.csv", "sentence,label\nok,0\n")
    with pytest.raises(DataError, match=rf"{path}:1: unknown field 'text'; the header has \['sentence', 'label'\]"):
        load(path)


def test_unknown_regex_group_is_reported(tmp_path):
    path = write(tmp_path, "d.txt", "0 ok\n")
    with pytest.raises(DataError, match=rf"{path}:1: unknown field 'label'"):
        load(path, file_format="regex", regex=r"^\d (?P<text>.+)$")


def test_parallel_length_mismatch_names_both_files_and_counts(tmp_path):
    text = write(tmp_path, "t.txt", "a\nb\nc\n")
    labels = write(tmp_path, "l.txt", "0\n1\n")
    with pytest.raises(DataError, match=rf"{text} has 3 lines but {labels} has 2 lines"):
        load((text, labels))


def test_malformed_json_document_names_file_and_line(tmp_path):
    path = write(tmp_path, "d.json", '[\n {"text": "a", "label": 0},\n {"text": "b" "label": 1}\n]')
    with pytest.raises(DataError, match=rf"{path}:3: malformed JSON"):
        load(path)


def test_missing_file_and_unknown_extension_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"toy: data file .*nope.jsonl does not exist"):
        load(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match=r"d.xyz: cannot infer the file format"):
        load(write(tmp_path, "d.xyz", "x"))


def test_declared_repairs_drop_blank_rows_fill_optional_fields_strip_fffd(tmp_path):
    path = write(tmp_path, "d.csv", "title,abstract,label\nT1,,0\n,,1\nT3 \ufffdx,A3,1\n")
    mapping = FieldMapping(("title", "abstract"), "label", titles=("Title", "Abstract"))
    data = load(path, mapping=mapping, drop_empty=True, fill_empty="N/A", strip_replacement_chars=True)
    assert pairs(data) == [("Title: T1\nAbstract: N/A", 0), ("Title: T3 x\nAbstract: A3", 1)]

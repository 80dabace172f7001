"""BIG-Bench task.json loading: the real list_functions / simp_turing_concept files and malformed files."""
import json

import pytest

from symbol_tuning.data.bigbench import (
    list_functions_descriptions,
    list_functions_tasks,
    load_bigbench_task,
    load_turing_task,
    simple_turing_concept_tasks,
)
from symbol_tuning.data.rows import DataError


def test_list_functions_has_250_concepts_of_32_examples_each(shared_data):
    tasks = list_functions_tasks(str(shared_data / "bigbench_list_functions"))
    assert [t.name for t in tasks] == [f"list_functions/c{i:03d}" for i in range(1, 251)]
    assert all(len(t.examples) == 32 for t in tasks)
    first = tasks[0].examples[0]
    assert (first.inputs, first.targets) == ("[3, 4, 1, 5, 2, 0, 8, 6, 9]", "[1]")  # c001 = element 3


def test_list_functions_concept_selection_and_stated_functions(shared_data):
    root = str(shared_data / "bigbench_list_functions")
    picked = list_functions_tasks(root, concepts=["c002", "c001"])
    assert [t.name for t in picked] == ["list_functions/c002", "list_functions/c001"]
    assert list_functions_descriptions(root)["c001"] == "remove all but element 3"
    with pytest.raises(KeyError, match="c999"):
        list_functions_tasks(root, concepts=["c999"])


def test_simple_turing_concept_subsets_load_with_2130_examples_each_without_the_instruction_filter(shared_data):
    tasks = simple_turing_concept_tasks(str(shared_data / "bigbench_simple_turing_concept"), max_instructions=None)
    assert [t.name for t in tasks] == ["simple_turing_concept/witness_set", "simple_turing_concept/additional_set_1",
                                       "simple_turing_concept/additional_set_2"]
    assert [len(t.examples) for t in tasks] == [2130, 2130, 2130]
    ex = tasks[0].examples[0]
    assert ex.inputs.startswith("Input: ''\nOutput: '0'") and ex.targets == "''"


# The P3 programs of at most 3 instructions (one instruction per character), read off the AS II file by hand.
PAPER_TURING_PROGRAMS = {"o", "oo", "ooo", "+o", "-o", ">o", "+oo", "-oo", ">oo", "o+o", "o-o", "o>o", ">>o",
                         "<+o", "<-o", ">+o", ">-o"}


def test_paper_turing_subset_is_85_examples_of_17_programs_of_at_most_3_instructions(shared_data):
    path = shared_data / "bigbench_simple_turing_concept" / "additional_set_2" / "task.json"
    raw = json.loads(path.read_text())["examples"]
    expected = [e for e in raw if len(e["comment"].split("'")[1]) <= 3]  # program = first quoted item
    data, programs = load_turing_task(str(path))
    assert len(data.examples) == 85 and len(set(programs)) == 17 and set(programs) == PAPER_TURING_PROGRAMS
    assert [(p.inputs, p.targets) for p in data.examples] == [(e["input"], e["target"]) for e in expected]
    assert all(programs.count(p) == 5 for p in PAPER_TURING_PROGRAMS)
    from symbol_tuning.evaluation.suites import build_suite
    suite = build_suite("bigbench", data_root=str(shared_data), datasets=["simple_turing_concept/additional_set_2"])
    (task,) = suite.generative
    assert task.data.examples == data.examples and task.shots == 0
    wider = build_suite("bigbench", data_root=str(shared_data), datasets=["simple_turing_concept/additional_set_2"],
                        turing_max_instructions=4)
    assert len(wider.generative[0].data.examples) == 230  # 46 programs of <= 4 instructions


@pytest.mark.parametrize("comment, needle", [
    (None, "'comment' must be a string"),
    ("['+o', 2", "is not [program"),
    ("['+o', 'two', 1]", "is not [program"),
    ("['+o', 0, 1]", "is not [program"),
])
def test_bad_turing_comment_error_names_file_and_example(tmp_path, comment, needle):
    bad = {"input": "Input: '1'", "target": "'1'"} | ({} if comment is None else {"comment": comment})
    path = _write(tmp_path, [{"input": "Input: '0'", "target": "''", "comment": "['o', 1, 1]"}, bad])
    with pytest.raises(DataError) as err:
        load_turing_task(path)
    assert path in str(err.value) and "example 1" in str(err.value) and needle in str(err.value)


def _write(tmp_path, examples, name="task.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"name": "toy", "examples": examples}))
    return str(path)


def test_target_list_takes_first_and_target_scores_takes_best(tmp_path):
    path = _write(tmp_path, [{"input": "a", "target": ["x", "y"]},
                             {"input": "b", "target_scores": {"no": 0, "yes": 1}}])
    data = load_bigbench_task(path)
    assert data.name == "toy"
    assert [(e.inputs, e.targets) for e in data.examples] == [("a", "x"), ("b", "yes")]


@pytest.mark.parametrize("bad, needle", [
    ({"target": "x"}, "'input'"),
    ({"input": "a"}, "neither 'target'"),
    ({"input": "a", "target": 3}, "'target' must be"),
    ({"input": "a", "target": []}, "'target' list"),
    ("not an object", "expected an object"),
])
def test_malformed_example_error_names_file_and_index(tmp_path, bad, needle):
    path = _write(tmp_path, [{"input": "ok", "target": "ok"}, bad])
    with pytest.raises(DataError) as err:
        load_bigbench_task(path)
    assert path in str(err.value) and "example 1" in str(err.value) and needle in str(err.value)


def test_malformed_json_error_names_file_and_line(tmp_path):
    path = tmp_path / "task.json"
    path.write_text('{"examples": [\n{"input": "a", "target": "b"},\n{"input": "a" "target": "b"}\n]}')
    with pytest.raises(DataError, match=f"{path}:3: malformed JSON"):
        load_bigbench_task(str(path))

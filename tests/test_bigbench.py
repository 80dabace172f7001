"""BIG-Bench task.json loading: the real list_functions / simp_turing_concept files and malformed files."""
import json

import pytest

from symbol_tuning.data.bigbench import (
    list_functions_descriptions,
    list_functions_tasks,
    load_bigbench_task,
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


def test_simple_turing_concept_subsets_load_with_2130_examples_each(shared_data):
    tasks = simple_turing_concept_tasks(str(shared_data / "bigbench_simple_turing_concept"))
    assert [t.name for t in tasks] == ["simple_turing_concept/witness_set", "simple_turing_concept/additional_set_1",
                                       "simple_turing_concept/additional_set_2"]
    assert [len(t.examples) for t in tasks] == [2130, 2130, 2130]
    ex = tasks[0].examples[0]
    assert ex.inputs.startswith("Input: ''\nOutput: '0'") and ex.targets == "''"


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

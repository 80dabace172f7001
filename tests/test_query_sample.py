"""--max_queries draws a seeded, class-balanced sample of each dataset's queries, recorded in the results."""
import collections

from symbol_tuning.data.examples import ClassificationData, Example
from symbol_tuning.evaluation import suites


def _sorted_by_label(n_per_class=(50, 30, 5)):
    examples = tuple(Example(f"text {label} {i}", label) for label, n in enumerate(n_per_class) for i in range(n))
    return ClassificationData("toy", "eval", examples, ("a", "b", "c"))


def test_sample_is_class_balanced_seeded_in_file_order_and_recorded():
    data = _sorted_by_label()
    picked, record = suites.balanced_sample(data, 12, seed=0)
    counts = collections.Counter(ex.label for ex in picked.examples)
    assert counts == {0: 4, 1: 4, 2: 4}
    positions = [data.examples.index(ex) for ex in picked.examples]
    assert positions == sorted(positions)
    assert suites.balanced_sample(data, 12, seed=0)[0] == picked
    assert suites.balanced_sample(data, 12, seed=1)[0] != picked
    assert record == {"max_queries": 12, "seed": 0, "from": 85, "drawn": 12, "per_class": {"a": 4, "b": 4, "c": 4},
                      "method": "seeded, class-balanced"}
    # a class with too few rows gives what it has; the others fill the rest evenly
    many, _ = suites.balanced_sample(data, 25, seed=0)
    assert collections.Counter(ex.label for ex in many.examples) == {0: 10, 1: 10, 2: 5}
    assert suites.balanced_sample(data, 1000, seed=0)[0].examples == data.examples


def test_paper_suite_max_queries_on_subj_is_balanced_where_the_first_rows_are_one_class(shared_data):
    from symbol_tuning.data.sources.layouts import local_source
    from symbol_tuning.data.sources.local_files import load_local
    full = load_local(source=local_source("subj", str(shared_data), "eval"), split="eval", max_examples=100)
    assert len({ex.label for ex in full.examples[:10]}) == 1  # file order: taking the first 10 is one class
    suite = suites.build_suite("paper", data_root=str(shared_data), source="local", datasets=["subj"],
                               max_queries=10, seed=0)
    (subj,) = suite.datasets
    assert collections.Counter(ex.label for ex in subj.queries.examples) == {0: 5, 1: 5}
    assert subj.sample["per_class"] == {name: 5 for name in subj.queries.label_names}
    assert {ex.text for ex in subj.queries.examples} <= {ex.text for ex in full.examples}


def test_eval_cli_max_queries_scores_a_balanced_sample_and_records_it(tiny_t5_checkpoint, shared_data, tmp_path):
    import json

    from symbol_tuning import eval as eval_cli
    out = tmp_path / "out"
    rc = eval_cli.main([f"--checkpoint={tiny_t5_checkpoint}", "--suite=paper", f"--data_root={shared_data}",
                        "--datasets=subj", "--settings=neither", "--max_queries=6", "--k_per_class=1",
                        "--max_input_length=1024", "--min_prompt_bucket=1024", f"--output_dir={out}"])
    assert rc == 0
    summary = json.loads((out / "final" / "summary.json").read_text())
    sample = summary["query_samples"]["subj"]
    assert sorted(sample["per_class"].values()) == [3, 3] and sample["seed"] == 0 and sample["drawn"] == 6
    records = [json.loads(x) for x in (out / "final" / "records.jsonl").read_text().splitlines() if x.strip()]
    assert len(records) == 6 and sorted(collections.Counter(r["answer"] for r in records).values()) == [3, 3]

"""The eval CLI end to end on the real raw files in shared/data with a tiny random T5 checkpoint: the paper's
datasets in all settings (+ flipped) and BIG-Bench tasks, with tables and plots written; bad flags and a
mismatching checkpoint fail before compute, naming the flag, dataset or tensor."""
import json
import os

import numpy as np
import pytest

from symbol_tuning import eval as eval_cli

PAPER = ("subj,tweet_eval_hate,tweet_eval_stance_abortion,tweet_eval_stance_atheism,tweet_eval_stance_feminist,"
         "tweet_eval_stance_hillary,raft_overruling,raft_ade_corpus_v2,raft_twitter_complaints")
BINARY = {"subj", "tweet_eval_hate", "raft_overruling", "raft_ade_corpus_v2", "raft_twitter_complaints"}
FAST = ["--max_queries=2", "--k_per_class=1", "--max_input_length=1024", "--min_prompt_bucket=1024",
        "--batch_size=8"]


@pytest.fixture
def checkpoint(tiny_t5_checkpoint):
    return tiny_t5_checkpoint


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_paper_datasets_evaluate_end_to_end_through_the_cli_with_tables_and_plots(checkpoint, shared_data, tmp_path):
    out = str(tmp_path / "out")
    rc = eval_cli.main([f"--checkpoint={checkpoint}", "--suite=paper", f"--data_root={shared_data}",
                        f"--datasets={PAPER}", f"--output_dir={out}", *FAST])
    assert rc == 0
    records = _read_jsonl(os.path.join(out, "final", "records.jsonl"))
    assert len(records) == 9 * 4 * 2 + len(BINARY) * 2
    assert {r["dataset"] for r in records if r["setting"] == "flipped"} == BINARY
    with open(os.path.join(out, "final", "summary.json")) as f:
        summary = json.load(f)
    for setting, per in summary["accuracy"].items():
        for dataset, acc in per.items():
            mine = [r for r in records if r["setting"] == setting and r["dataset"] == dataset]
            assert acc == pytest.approx(np.mean([int(np.argmax(r["scores"])) == r["answer"] for r in mine]))
        assert summary["average"][setting] == pytest.approx(np.mean(list(per.values())))
    # 5 binary + 4 three-way datasets
    assert summary["chance"] == pytest.approx((5 / 2 + 4 / 3) / 9)
    with open(os.path.join(out, "results.md")) as f:
        assert "| **average** |" in f.read()
    with open(os.path.join(out, "settings.png"), "rb") as f:
        assert f.read(4) == b"\x89PNG"
    with open(os.path.join(out, "results.csv")) as f:
        assert len(f.read().strip().splitlines()) == 1 + 5


def test_bigbench_tasks_decode_end_to_end_through_the_cli(checkpoint, shared_data, tmp_path):
    out = str(tmp_path / "bb")
    rc = eval_cli.main([f"--checkpoint={checkpoint}", "--suite=bigbench", f"--data_root={shared_data}",
                        "--datasets=list_functions/c080,list_functions/c045,simple_turing_concept/additional_set_2",
                        f"--output_dir={out}", "--max_queries=5", "--max_input_length=1024",
                        "--min_prompt_bucket=1024", "--batch_size=8"])
    assert rc == 0
    records = _read_jsonl(os.path.join(out, "final", "records.jsonl"))
    assert [sum(r["dataset"] == n for r in records) for n in
            ("list_functions/c080", "list_functions/c045", "simple_turing_concept/additional_set_2")] == [5, 5, 5]
    assert all(r["correct"] == (r["output"].strip() == r["target"].strip()) for r in records)
    with open(os.path.join(out, "final", "summary.json")) as f:
        summary = json.load(f)
    assert summary["generative"]["list_functions/c080"] == pytest.approx(
        np.mean([r["correct"] for r in records if r["dataset"] == "list_functions/c080"]))
    assert set(summary["generative_average"]) == {"list_functions", "simple_turing_concept"}


def test_cli_bad_flags_and_names_fail_before_loading_or_compute(checkpoint, shared_data, tmp_path, capsys):
    base = [f"--checkpoint={tmp_path / 'does_not_exist'}", "--suite=paper", f"--data_root={shared_data}",
            f"--output_dir={tmp_path / 'o'}"]
    with pytest.raises(SystemExit) as e:
        eval_cli.main(base + ["--k_per_class=0"])
    assert e.value.code == 2 and "--k_per_class must be >= 1" in capsys.readouterr().err
    assert eval_cli.main(base + ["--datasets=subj,subjj"]) == 1
    assert "unknown datasets ['subjj']" in capsys.readouterr().err
    assert eval_cli.main(base + ["--settings=instr_labels,symbols"]) == 1
    assert "unknown evaluation settings ['symbols']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        eval_cli.main(base + ["--suite=papers"])
    assert e.value.code == 2 and "--suite" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


def test_cli_rejects_a_checkpoint_that_mismatches_the_model_config_naming_the_tensor(checkpoint, shared_data,
                                                                                     tiny_t5_config, tmp_path, capsys):
    other = tmp_path / "cfg"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"family": "encoder_decoder",
                                                   "config": tiny_t5_config.replace(d_model=48).to_dict()}))
    rc = eval_cli.main([f"--checkpoint={checkpoint}", "--suite=paper", f"--data_root={shared_data}",
                        "--datasets=subj", f"--model_config={other / 'config.json'}", f"--output_dir={tmp_path / 'o'}",
                        *FAST])
    assert rc == 1
    err = capsys.readouterr().err
    assert "tensor '" in err and "needs" in err
    assert not os.path.exists(tmp_path / "o")

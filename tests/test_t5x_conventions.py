"""What a T5X / SeqIO user types works: T5X's macro names are honoured or refused, unknown macros and gin
syntax errors exit 2 naming the culprit, a plain-SeqIO mixture trains through `symbol-tuning train`, and
the console shows one line per log window without Orbax's chatter."""
import json
import logging
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from symbol_tuning import gin_utils, train

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--gin_file=models/tiny_t5.gin", "--gin_file=runs/tiny_cpu.gin"]

def _readme_blocks():
    """The README's SeqIO example: my_tasks.py, my_tasks.gin, the shell commands and the console sample."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    part = text.split("<!-- readme-seqio", 1)[1]
    python, rest = part.split("```python\n", 1)[1].split("```\n", 1)
    gin_text = rest.split("```\n", 1)[1].split("```", 1)[0]
    after = part.split("import my_tasks\n```\n\n", 1)[1].split("\n\n", 1)[0]
    commands = [c.strip() for c in after.replace("\\\n", " ").splitlines()]
    console = text.split("<!-- readme-console -->\n```\n", 1)[1].split("```", 1)[0].splitlines()
    return python, gin_text, commands, console


def _shape(line):
    return re.sub(r"\d+(\.\d+)?(e[+-]\d+)?", "N", line)


def _env(*paths):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), str(REPO), env.get("PYTHONPATH", "")])
    env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    return env


def test_readme_plain_seqio_mixture_trains_through_symbol_tuning_train_with_a_quiet_console(tmp_path):
    python, gin_text, commands, console = _readme_blocks()
    (tmp_path / "my_tasks.py").write_text(python)
    (tmp_path / "my_tasks.gin").write_text(gin_text)
    model_dir = tmp_path / "my_mix"
    train_cmd, inspect_cmd = (c.replace("/tmp/my_mix", str(model_dir)) for c in commands)
    env = _env()
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env["PATH"]])
    out = subprocess.run(["bash", "-c", train_cmd], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert [_shape(x) for x in lines] == [_shape(x) for x in console]  # the README's sample, number for number
    assert [line.split(" | ")[0] for line in lines[2:4]] == ["step 2/4", "step 4/4"]
    assert "INFO:absl" not in out.stderr and "orbax" not in out.stderr.lower()  # quiet by default
    # the mixture's leaves, ours and the user's SeqIO task, are what the stream drew from
    (host_state,) = json.loads((model_dir / "4" / "data" / "metadata").read_text())["hosts"]
    (data_state,) = json.loads(host_state)["shards"].values()  # one host reading one data shard
    assert "my_qa" in data_state["tasks"] and any(t.startswith("symbol_tuning:gen.") for t in data_state["tasks"])
    assert data_state["task_counts"][data_state["tasks"].index("my_qa")] > 0
    # `tensorboard --logdir MODEL_DIR` reads the run's scalars under T5X's names
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(model_dir / "train"))
    events.Reload()
    assert {"train/loss", "train/accuracy", "timing/tokens_per_second", "timing/compile_time_s",
            "perf/tflops_per_device"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    shown = subprocess.run(["bash", "-c", inspect_cmd], capture_output=True, text=True, env=env, timeout=300)
    assert shown.returncode == 0 and "train/loss" in shown.stdout and "perf/tflops_per_device" in shown.stdout


def test_t5x_macros_reach_the_run(tmp_path, tiny_t5_checkpoint):
    from symbol_tuning.train import load_init_params
    model_dir = tmp_path / "run"
    parser = train.build_parser()
    rest, macros = gin_utils.split_macro_flags([
        *TINY, "--gin_bindings=models.build_model.preset = None",
        f"--gin_bindings=models.build_model.config_file = '{tiny_t5_checkpoint}/config.json'",
        "--gin_bindings=models.build_model.overrides = None",
        "--gin.MIXTURE_OR_TASK_NAME='embedded_symbol_100'", f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8", "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 16}",
        f"--gin.INITIAL_CHECKPOINT_PATH='{tiny_t5_checkpoint}'", "--gin.LEARNING_RATE=0.0"])
    gin_utils.parse_gin_flags(parser.parse_args(rest), macros)
    result = train.train()
    assert result.step == 2 and result.checkpoint_steps == [2] and (model_dir / "2").is_dir()  # TRAIN_STEPS, MODEL_DIR
    # INITIAL_CHECKPOINT_PATH: with a zero learning rate the trained weights are the checkpoint's
    init = load_init_params(tiny_t5_checkpoint)
    import jax
    for a, b in zip(jax.tree_util.tree_leaves(init), jax.tree_util.tree_leaves(result.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("flag, value, error", [
    ("TASK_FEATURE_LENGTHS", "{'inputs': 24, 'targets': 8}", r"inputs.*24.*targets.*8|max_input_length=2[0-9]"),
    ("BATCH_SIZE", "3", r"global batch 3 "),
    ("MIXTURE_OR_TASK_NAME", "'embedded_symbol_17'", r"embedded_symbol_1[06]"),
])
def test_t5x_macros_are_used_by_the_run_they_break(tmp_path, capsys, flag, value, error):
    rc = train.main([*TINY, f"--gin.MODEL_DIR='{tmp_path}/run'", "--gin.TRAIN_STEPS=1", f"--gin.{flag}={value}"])
    assert rc == 1
    assert re.search(error, capsys.readouterr().err)


@pytest.mark.parametrize("flag, named", [
    ("CHECKPOINT_EVRY=3", "did you mean CHECKPOINT_EVERY?"),
    ("USE_CACHED_TASKS=False", "no SeqIO cache"),
    ("MIXTURE_OR_TASK_MODULE='my_tasks'", "`import my_tasks` line in a gin file"),
    ("INIT_CHECKPOINT=None", "INITIAL_CHECKPOINT_PATH"),
])
def test_unknown_or_refused_macro_exits_2_naming_it_and_what_to_use(tmp_path, capsys, flag, named):
    rc = train.main([*TINY, f"--gin.MODEL_DIR='{tmp_path}'", f"--gin.{flag}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"--gin.{flag.split('=')[0]}: no loaded gin file or binding uses macro" in err and named in err


@pytest.mark.parametrize("text, line", [("TRAIN_STEPS = [1,\n", 2), ("X = 1\nY = 2 3\n", 3), ("A = {'x': (1,\n\n", 2),
                                        ("X = 1\nY = @no_such_configurable()\n", 3)])
def test_gin_syntax_errors_exit_2_naming_the_file_and_line(tmp_path, capsys, text, line):
    inner = tmp_path / "inner.gin"
    inner.write_text("include 'runs/tiny_cpu.gin'\n" + text)
    outer = tmp_path / "outer.gin"
    outer.write_text(f"include '{inner}'\n")
    rc = train.main(["--gin_file=models/tiny_t5.gin", f"--gin_file={outer}", f"--gin.MODEL_DIR='{tmp_path}'"])
    err = capsys.readouterr().err
    assert rc == 2 and f"gin file {inner}, line {line}" in err, err
    assert "Traceback" not in err


def test_orbax_info_chatter_is_off_by_default_and_verbose_brings_it_back(tmp_path, caplog):
    import orbax.checkpoint as ocp

    from symbol_tuning.training.console import quiet_libraries
    caplog.set_level(logging.INFO)
    try:
        quiet_libraries(verbose=False)
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(tmp_path / "quiet", {"w": np.zeros(3)})
        quiet = [r for r in caplog.records if r.name == "absl" and r.levelno == logging.INFO]
        caplog.clear()
        quiet_libraries(verbose=True)
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(tmp_path / "verbose", {"w": np.zeros(3)})
        verbose = [r for r in caplog.records if r.name == "absl" and r.levelno == logging.INFO]
    finally:
        quiet_libraries(verbose=False)
    assert not quiet and len(verbose) >= 5


def test_window_metrics_are_means_and_throughput_excludes_untimed_steps_with_mfu_where_peak_known():
    from symbol_tuning.training.console import Throughput, format_line, window_metrics
    steps = [{"loss": 4.0, "accuracy": 0.1, "learning_rate": 1e-3, "num_target_tokens": 100.0},
             {"loss": 2.0, "accuracy": 0.3, "learning_rate": 3e-3, "num_target_tokens": 300.0}]
    tp = Throughput(tokens_per_step=1000, flops_per_token=6e9, num_devices=4, peak_flops_per_device=1e15)
    out = window_metrics(steps, timed_steps=2, seconds=4.0, step=10, total_steps=30, throughput=tp)
    assert out["train/loss"] == 3.0 and out["train/accuracy"] == pytest.approx(0.2)
    assert out["train/learning_rate"] == pytest.approx(2e-3)
    assert out["timing/step_time_s"] == 2.0 and out["timing/tokens_per_second"] == 500.0
    assert out["timing/eta_s"] == 40.0 and out["timing/target_tokens_per_second"] == 100.0
    assert out["perf/tflops_per_device"] == pytest.approx(500 * 6e9 / 4 / 1e12)
    assert out["perf/mfu"] == pytest.approx(500 * 6e9 / 4 / 1e15)
    line = format_line(10, 30, out)
    assert line == ("step 10/30 | loss 3.0000 | acc 0.200 | lr 2.0e-03 | 500 tok/s | 0.75 TFLOP/s/dev | MFU 0.1% "
                    "| 2 s/step | ETA 0:00:40")
    only_compile = window_metrics(steps[:1], timed_steps=0, seconds=9.0, step=1, total_steps=30, throughput=tp)
    assert not any(k.startswith(("timing/", "perf/")) for k in only_compile)
    no_peak = window_metrics(steps, timed_steps=2, seconds=4.0, step=10, total_steps=30,
                             throughput=Throughput(1000, 6e9, 4, None))
    assert "perf/mfu" not in no_peak and "MFU" not in format_line(10, 30, no_peak)

"""Exact resume of the train CLI after SIGKILL, cross-mesh restore, and SIGTERM preemption."""
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from symbol_tuning.train import build_model
from symbol_tuning.training import optimizers, partitioning
from symbol_tuning.training.checkpoints import Checkpointer
from symbol_tuning.training.train_state import abstract_train_state

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 6
EVERY = 2
LENGTH = 512 + 32  # decoder-only rows hold inputs + targets
RUN_FLAGS = ["--gin_file=models/tiny_decoder.gin", "--gin_file=runs/tiny_cpu.gin",
             "--gin.MIXTURE_OR_TASK_NAME='embedded_symbol_0'", "--gin.INPUT_LENGTH=512",
             "--gin.TARGET_LENGTH=32", "--gin.LOG_EVERY=1"]


def _env():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    return env


def _cli(model_dir, *extra):
    return [sys.executable, "-m", "symbol_tuning.train", *RUN_FLAGS, f"--gin.MODEL_DIR='{model_dir}'", *extra]


def _spawn(model_dir, *extra):
    """A background CLI run whose output goes to files beside its model dir (no pipe can fill up)."""
    log_dir = pathlib.Path(f"{model_dir}_logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "out", "w") as out, open(log_dir / "err", "w") as err:
        proc = subprocess.Popen(_cli(model_dir, *extra), cwd=REPO, env=_env(), stdout=out, stderr=err, text=True)
    proc.out = lambda: (log_dir / "out").read_text()
    proc.err = lambda: (log_dir / "err").read_text()
    return proc


def _run(model_dir, *extra, timeout=400):
    proc = subprocess.run(_cli(model_dir, *extra), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _wait_for(predicate, proc, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before {what}: {proc.err()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def _restore(model_dir, mesh_config, step=None):
    """The train state at `step` of `model_dir` laid out on `mesh_config` (the model of tiny_decoder.gin)."""
    model = build_model(family="decoder_only", preset="tiny",
                        overrides={"vocab_size": 384, "dtype": "float32", "dropout_rate": 0.0})
    mesh = partitioning.create_mesh(mesh_config)
    schedule = optimizers.make_schedule(kind="constant", base_learning_rate=3e-3)  # as runs/tiny_cpu.gin
    optimizer = optimizers.make_optimizer(name="adafactor", learning_rate=schedule)
    abstract = abstract_train_state(model=model, optimizer=optimizer,
                                    input_shapes={"decoder_input_tokens": (8, LENGTH)}, mesh=mesh,
                                    rules=partitioning.DEFAULT_RULES)
    ckpt = Checkpointer(str(model_dir), async_save=False)
    try:
        state, data = ckpt.restore(step, abstract)
    finally:
        ckpt.close()
    return state, data, abstract


def _steps(model_dir):
    ckpt = Checkpointer(str(model_dir), async_save=False)
    try:
        return ckpt.all_steps()
    finally:
        ckpt.close()


def _leaves(tree):
    return [np.asarray(jax.device_get(x)) for x in jax.tree_util.tree_leaves(tree)]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted run of STEPS steps, started in the background (it overlaps the killed run)."""
    model_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = _spawn(model_dir, f"--gin.TRAIN_STEPS={STEPS}", f"--gin.CHECKPOINT_EVERY={EVERY}")
    finished = []

    def wait():
        if not finished:
            proc.wait(timeout=400)
            assert proc.returncode == 0, proc.err()[-3000:]
            finished.append(True)
        return model_dir

    yield wait
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_sigkilled_run_resumes_to_bitwise_identical_params(tmp_path, reference_run):
    model_dir = tmp_path / "killed"
    proc = _spawn(model_dir, f"--gin.TRAIN_STEPS={STEPS}", f"--gin.CHECKPOINT_EVERY={EVERY}")
    # Orbax renames a step's temporary folder to its number only once the step is complete.
    _wait_for(lambda: (model_dir / str(EVERY)).is_dir(), proc, 400, f"checkpoint {EVERY}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = max(_steps(model_dir))
    assert killed_at < STEPS

    resumed = _run(model_dir, f"--gin.TRAIN_STEPS={STEPS}", f"--gin.CHECKPOINT_EVERY={EVERY}")
    assert f"done at step {STEPS}, resumed from step {killed_at}" in resumed.stdout

    config = partitioning.MeshConfig()
    want, want_data, _ = _restore(reference_run(), config, STEPS)
    got, got_data, _ = _restore(model_dir, config, STEPS)
    assert int(got.step) == int(want.step) == STEPS
    assert got_data == want_data
    for a, b in zip(_leaves(want.params) + _leaves(want.opt_state), _leaves(got.params) + _leaves(got.opt_state)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_checkpoint_restores_across_meshes_with_same_values(tmp_path, reference_run):
    data_mesh = partitioning.MeshConfig(ici_data=8, ici_fsdp=1, ici_tensor=1)
    model_mesh = partitioning.MeshConfig(ici_data=1, ici_fsdp=4, ici_tensor=2)
    on_data, data_state, _ = _restore(reference_run(), data_mesh, STEPS)   # written on (8, 1, 1)
    on_model, _, abstract = _restore(reference_run(), model_mesh, STEPS)
    for x, a in zip(jax.tree_util.tree_leaves(on_model), jax.tree_util.tree_leaves(abstract)):
        assert x.sharding.is_equivalent_to(a.sharding, x.ndim)
    assert any(x.sharding.spec != jax.sharding.PartitionSpec() for x in jax.tree_util.tree_leaves(on_model.params))
    for a, b in zip(_leaves(on_data), _leaves(on_model)):
        np.testing.assert_array_equal(a, b)

    # and back: saved on (1, 4, 2), restored on (8, 1, 1)
    ckpt = Checkpointer(str(tmp_path / "model_mesh"), async_save=False)
    ckpt.save(STEPS, on_model, data_state, force=True)
    ckpt.close()
    back, back_data, _ = _restore(tmp_path / "model_mesh", data_mesh, STEPS)
    assert back_data == data_state
    for a, b in zip(_leaves(on_data), _leaves(back)):
        np.testing.assert_array_equal(a, b)


def test_sigterm_saves_current_step_and_exits_zero(tmp_path):
    model_dir = tmp_path / "preempted"
    proc = _spawn(model_dir, "--gin.TRAIN_STEPS=1000", "--gin.CHECKPOINT_EVERY=1000")
    metrics = model_dir / "metrics_train.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 1, proc, 400, "the first logged step")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    out = proc.out()
    assert proc.returncode == 0, proc.err()[-3000:]
    assert "preempted at step" in out
    step = int(out.split("preempted at step ")[1].split()[0].rstrip(","))
    assert 1 <= step < 1000
    assert _steps(model_dir) == [step]
    state, data, _ = _restore(model_dir, partitioning.MeshConfig(), step)
    assert int(state.step) == step
    assert data["kind"] == "data_shards" and data["shards"]["0"]["position"] > 0
    assert all(np.isfinite(x).all() for x in _leaves(state.params))

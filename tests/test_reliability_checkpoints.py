"""Reliability: damaged checkpoints fall back to the previous good step (moved aside, never deleted), a
bit flip is caught by the checksum manifest, one writer per model dir, no overwrite of a finished step,
kill -9 mid-save, and eval --all_steps over a damaged step."""
import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
from test_trainer import CopyStream, _train

from symbol_tuning.training import checkpoint_integrity, run_lock
from symbol_tuning.training.checkpoint_integrity import DamagedCheckpointError
from symbol_tuning.training.checkpoints import Checkpointer

REPO = pathlib.Path(__file__).resolve().parents[1]


def _largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    return max(files, key=lambda p: p.stat().st_size)


def _truncate(step_dir):
    path = _largest_array_file(step_dir)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _flip_bit(step_dir):
    path = _largest_array_file(step_dir)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    return path


def _delete_array_file(step_dir):
    path = _largest_array_file(step_dir)
    path.unlink()
    return path


def _delete_metadata(step_dir):
    path = step_dir / "state" / "_METADATA"
    path.unlink()
    return path


def _truncate_metadata(step_dir):
    path = step_dir / "state" / "_METADATA"
    path.write_bytes(path.read_bytes()[:100])
    return path


def _delete_data_position(step_dir):
    path = step_dir / "data" / "metadata"
    path.unlink()
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model dir with finished steps 2 and 4 (4 updates, a checkpoint every 2)."""
    model_dir = tmp_path_factory.mktemp("trained") / "run"
    result = _train(model_dir, CopyStream(), 4, checkpoint_every=2)
    assert result.checkpoint_steps == [2, 4]
    return model_dir


def _copy(trained, tmp_path):
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


@pytest.mark.parametrize("damage", [_truncate, _delete_array_file, _flip_bit, _delete_metadata, _truncate_metadata,
                                    _delete_data_position])
def test_damaged_latest_step_is_moved_aside_and_the_run_resumes_from_the_previous_step(trained, tmp_path, damage,
                                                                                     caplog):
    model_dir = _copy(trained, tmp_path)
    culprit = damage(model_dir / "4")
    with caplog.at_level("ERROR"):
        result = _train(model_dir, CopyStream(), 6, checkpoint_every=2)
    assert result.resumed_from == 2
    assert result.step == 6
    message = caplog.text
    assert "checkpoint step 4 is damaged" in message and culprit.name in message
    moved = model_dir / "damaged" / "step_4"
    assert moved.is_dir()  # kept, not deleted
    reason = (moved / checkpoint_integrity.REASON_FILE).read_text()
    assert culprit.name in reason and "step 4" in reason
    # the run wrote a fresh step 4 from the good step 2 and went on
    assert sorted(int(d) for d in os.listdir(model_dir) if d.isdigit()) == [2, 4, 6]
    assert checkpoint_integrity.verify_step(model_dir, 6).status == "ok"


def test_bit_flip_is_reported_naming_file_and_step(trained, tmp_path):
    model_dir = _copy(trained, tmp_path)
    culprit = _flip_bit(model_dir / "4")
    verdict = checkpoint_integrity.verify_step(model_dir, 4)
    assert verdict.status == "damaged"
    assert verdict.path == str(culprit) and "sha256" in verdict.reason
    assert checkpoint_integrity.verify_step(model_dir, 2).status == "ok"


def test_every_step_damaged_raises_and_keeps_them_all(trained, tmp_path):
    model_dir = _copy(trained, tmp_path)
    _truncate(model_dir / "2")
    _flip_bit(model_dir / "4")
    with pytest.raises(DamagedCheckpointError, match="step 2 is damaged"):
        _train(model_dir, CopyStream(), 6, checkpoint_every=2)
    assert sorted(os.listdir(model_dir / "damaged")) == ["step_2", "step_4"]
    assert not [d for d in os.listdir(model_dir) if d.isdigit()]
    assert not (model_dir / run_lock.LOCK_NAME).exists()  # the lock is released on error


def test_config_mismatch_on_a_good_step_is_raised_not_taken_for_damage(trained, tmp_path):
    model_dir = _copy(trained, tmp_path)
    import test_trainer

    with pytest.raises(Exception) as info:
        test_trainer.trainer.train(
            model=test_trainer._setup()[0], model_dir=str(model_dir), train_stream=CopyStream(),
            optimizer=test_trainer.optimizers.make_optimizer(name="adam", learning_rate=1e-3),
            mesh=test_trainer._setup()[1], rules=test_trainer.partitioning.DEFAULT_RULES,
            input_shapes={"decoder_input_tokens": (8, 32)}, options=test_trainer.trainer.LoopOptions(steps=6))
    assert not isinstance(info.value, DamagedCheckpointError)
    assert not (model_dir / "damaged").exists()
    assert sorted(int(d) for d in os.listdir(model_dir) if d.isdigit()) == [2, 4]


def test_saving_over_a_step_another_writer_finished_is_refused(trained, tmp_path):
    import shutil

    model_dir = _copy(trained, tmp_path)
    other = tmp_path / "other_step_4"
    shutil.move(model_dir / "4", other)
    ckpt = Checkpointer(str(model_dir), async_save=False)  # it knows step 2 only
    try:
        shutil.move(other, model_dir / "4")  # another writer finishes step 4 meanwhile
        before = {p: p.read_bytes() for p in (model_dir / "4").rglob("*") if p.is_file()}
        with pytest.raises(RuntimeError, match="step 4 is already a finished checkpoint; refusing to overwrite"):
            ckpt.save(4, {"x": np.zeros(3)}, {}, force=True)
    finally:
        ckpt.close()
    assert {p: p.read_bytes() for p in (model_dir / "4").rglob("*") if p.is_file()} == before


def _lock_holder(model_dir):
    """A real second process holding the model dir's run lock until killed."""
    code = ("import sys, time; from symbol_tuning.training.run_lock import RunLock; "
            f"RunLock({str(model_dir)!r}).acquire(); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_trainer_is_refused_naming_the_owner_then_a_dead_owners_lock_is_stale(tmp_path):
    model_dir = tmp_path / "run"
    holder = _lock_holder(model_dir)
    try:
        with pytest.raises(run_lock.ModelDirLockedError, match=f"process {holder.pid} on host"):
            _train(model_dir, CopyStream(), 2, checkpoint_every=2)
        assert not [d for d in os.listdir(model_dir) if d.isdigit()]  # refused before any write
        assert json.loads((model_dir / run_lock.LOCK_NAME).read_text())["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    result = _train(model_dir, CopyStream(), 2, checkpoint_every=2)  # the dead owner's lock is stale
    assert result.step == 2 and result.checkpoint_steps == [2]
    assert not (model_dir / run_lock.LOCK_NAME).exists()


def test_lock_of_another_host_is_refused_and_only_the_primary_takes_it(tmp_path):
    lock_path = tmp_path / run_lock.LOCK_NAME
    lock_path.write_text(json.dumps({"host": "other-host", "pid": 1, "started": "2026-01-01T00:00:00Z"}))
    with pytest.raises(run_lock.ModelDirLockedError, match=f"process 1 on host other-host.*delete {lock_path}"):
        run_lock.RunLock(tmp_path).acquire()
    lock_path.unlink()
    with run_lock.RunLock(tmp_path, is_primary=False):
        assert not lock_path.exists()  # a non-primary process never writes the lock
    with run_lock.RunLock(tmp_path) as lock:
        assert json.loads(lock_path.read_text())["pid"] == os.getpid() and lock.held
    assert not lock_path.exists()


_SAVER = """
import glob, os, signal, sys, time
import numpy as np
from symbol_tuning.training.checkpoints import Checkpointer
ckpt = Checkpointer(sys.argv[1], async_save=True, save_interval_steps=1)
ckpt.save(1, {"w": np.arange(1000, dtype=np.float32)}, {"index": 1})
ckpt.wait_until_finished()
ckpt.save(2, {"w": np.ones((4096, 4096), np.float32)}, {"index": 2})
deadline = time.time() + 120
while not glob.glob(os.path.join(sys.argv[1], "2.orbax-checkpoint-tmp", "state*", "*")) and time.time() < deadline:
    time.sleep(0.001)
os.kill(os.getpid(), signal.SIGKILL)  # kill -9 while the asynchronous save of step 2 is in flight
"""


def test_kill_9_mid_save_leaves_the_previous_step_restorable(tmp_path):
    model_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(model_dir)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu"))
    assert proc.wait(timeout=300) == -signal.SIGKILL
    assert not (model_dir / "2").exists()
    assert [p.name for p in model_dir.iterdir() if p.name.startswith("2.")], "the kill did not land mid-save"
    ckpt = Checkpointer(str(model_dir), async_save=False)
    try:
        import jax

        abstract = {"w": jax.ShapeDtypeStruct((1000,), np.float32)}
        step, state, data = ckpt.restore_newest(abstract)
    finally:
        ckpt.close()
    assert step == 1 and data == {"index": 1}
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(1000, dtype=np.float32))
    assert checkpoint_integrity.verify_step(model_dir, 1).status == "ok"


_FILL = """
import sys
sys.path.insert(0, {tests!r})
from test_trainer import CopyStream, _train
_train(sys.argv[1], CopyStream(), 6, checkpoint_every=2, async_checkpoints=False)
"""


def test_disk_full_mid_save_exits_naming_enospc_keeps_the_previous_step_and_resumes_from_it(tmp_path):
    """A real full disk: a 1.6 MB tmpfs (mounted in a user namespace, no privileges) holds step 2 but not 4."""
    if subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True).returncode:
        pytest.skip("this kernel refuses unprivileged mount namespaces, so no small tmpfs can be mounted")
    mount, script = tmp_path / "small", tmp_path / "fill.py"
    mount.mkdir()
    script.write_text(_FILL.format(tests=str(REPO / "tests")))
    saved = tmp_path / "saved"
    shell = (f"mount -t tmpfs -o size=1600k tmpfs {mount} && {sys.executable} {script} {mount / 'run'}; rc=$?; "
             f"cp -a {mount / 'run'} {saved}; exit $rc")
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", shell], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "No space left on device" in proc.stderr
    finished = sorted(int(d) for d in os.listdir(saved) if d.isdigit())
    assert finished == [2]  # the step that did not fit never looks finished
    assert checkpoint_integrity.verify_step(saved, 2).status == "ok"
    assert not (saved / run_lock.LOCK_NAME).exists()
    result = _train(saved, CopyStream(), 6, checkpoint_every=2)  # space freed: the run goes on from step 2
    assert result.resumed_from == 2 and result.checkpoint_steps == [2, 4, 6]


def test_two_train_commands_on_one_model_dir_the_second_is_refused_naming_the_first(tmp_path):
    from test_resume import _cli, _env, _spawn, _wait_for

    model_dir = tmp_path / "run"
    first = _spawn(model_dir, "--gin.TRAIN_STEPS=100000", "--gin.CHECKPOINT_EVERY=2")
    try:
        _wait_for(lambda: (model_dir / "2").is_dir(), first, 400, "the first run's checkpoint 2")
        second = subprocess.run(_cli(model_dir, "--gin.TRAIN_STEPS=4"), cwd=REPO, env=_env(), capture_output=True,
                                text=True, timeout=400)
        assert first.poll() is None  # the first run is untouched and still training
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert second.returncode == 1
    assert f"model dir is in use by process {first.pid} on host" in second.stderr
    assert json.loads((model_dir / run_lock.LOCK_NAME).read_text())["pid"] == first.pid
    assert "train" not in second.stdout and "Traceback" not in second.stderr

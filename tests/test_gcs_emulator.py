"""A training run to gs://bucket/run on a local GCS-API server (gcp-storage-emulator on 127.0.0.1, with the
generation headers real GCS sends added: tests/gcs_emulator_server.py), killed
and resumed, then `eval --all_steps` and `export-hf` from gs://, with every client pointed at the server
by its own variable: STORAGE_EMULATOR_HOST (google-cloud-storage: tensorboardX's event writer and this
test's listing; gcsfs: epath with EPATH_USE_TF=false), TENSORSTORE_GCS_HTTP_URL (+ a fixed token in
GOOGLE_AUTH_TOKEN_FOR_TESTING) for Orbax's TensorStore array data."""
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import traverse_util

REPO = pathlib.Path(__file__).resolve().parents[1]
BUCKET = "bucket"
TIMEOUT_S = 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The emulator's URL, with this process's and the children's clients pointed at it."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("gcs") / "emulator.log", "w")
    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "gcs_emulator_server.py"), "start",
                               "--host=127.0.0.1", f"--port={port}", "--in-memory", f"--default-bucket={BUCKET}"],
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
                                            "GOOGLE_AUTH_TOKEN_FOR_TESTING", "EPATH_USE_TF", "GOOGLE_CLOUD_PROJECT")}
    os.environ.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url, GOOGLE_AUTH_TOKEN_FOR_TESTING="test",
                      EPATH_USE_TF="false", GOOGLE_CLOUD_PROJECT="test")
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "GCS emulator did not start"
            time.sleep(0.2)
    yield url
    server.terminate()
    server.wait(timeout=30)
    log.close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def objects(prefix: str = "") -> list[str]:
    from google.cloud import storage

    client = storage.Client(project="test")
    return sorted(b.name for b in client.list_blobs(BUCKET, prefix=prefix))


def download(prefix: str, target: pathlib.Path) -> None:
    """Copy every object under `prefix` into `target` (keeping the names below the prefix)."""
    from google.cloud import storage

    client = storage.Client(project="test")
    for blob in client.list_blobs(BUCKET, prefix=prefix):
        local = target / blob.name[len(prefix):]
        local.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(local))


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, out[-5000:]
    return out


def _train(steps: int) -> subprocess.Popen:
    return _cli("symbol_tuning.train", "--gin_file=models/tiny_t5.gin", "--gin_file=runs/tiny_cpu.gin",
                f"--gin.MODEL_DIR='gs://{BUCKET}/run'", f"--gin.TRAIN_STEPS={steps}", "--gin.CHECKPOINT_EVERY=2",
                "--gin.LOG_EVERY=1")


def _committed_steps() -> list[int]:
    return sorted(int(name.split("/")[1]) for name in objects("run/")
                  if name.count("/") == 2 and name.endswith("/commit_success.txt"))


def test_train_kill_resume_eval_and_export_all_on_gs(gcs, tmp_path):
    run = _train(1000)
    deadline = time.monotonic() + TIMEOUT_S
    while not _committed_steps():
        assert run.poll() is None, run.communicate()[0][-5000:]
        assert time.monotonic() < deadline, "no committed checkpoint on gs:// in time"
        time.sleep(0.5)
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=60)
    saved = _committed_steps()[-1]
    out = _finish(_train(saved + 2))
    assert f"done at step {saved + 2}, resumed from step {saved}" in out
    listing = objects()
    print("objects in gs://bucket after train, kill -9, resume:\n" + "\n".join(listing))
    assert {"run/config.gin", "run/model_config.json", "run/metrics_train.jsonl"} <= set(listing)
    assert any(name.startswith("run/train/events.out.tfevents") for name in listing)
    assert not any(name.startswith("gs:") for name in listing) and not (REPO / "gs:").exists()

    out = _finish(_cli("symbol_tuning.eval", f"--checkpoint=gs://{BUCKET}/run", "--all_steps", "--suite=embedded",
                       "--datasets=product_review", "--settings=neither", "--max_queries=4", "--k_per_class=1",
                       "--max_input_length=512", "--min_prompt_bucket=512", "--batch_size=4",
                       f"--output_dir=gs://{BUCKET}/eval"))
    evaluated = objects("eval/")
    for step in _committed_steps():
        assert f"eval/step_{step}/summary.json" in evaluated and f"eval/step_{step}/records.jsonl" in evaluated
    assert {"eval/results.csv", "eval/results.md", "eval/settings.png"} <= set(evaluated)

    out = _finish(_cli("symbol_tuning.export_hf", f"--checkpoint=gs://{BUCKET}/run", f"--step={saved}",
                       f"--out=gs://{BUCKET}/hf"))
    assert f"step {saved}" in out
    assert {"hf/config.json", "hf/model.safetensors"} <= set(objects("hf/"))
    print("objects after eval and export-hf:\n" + "\n".join(objects("eval/") + objects("hf/")))

    from symbol_tuning.evaluation.checkpoint_loading import load_for_eval
    from symbol_tuning.models.families import import_hf_checkpoint

    # Read back with the GCS client itself (not epath in this process: epath caches its gs backend choice
    # per process, and an earlier test in this worker may have made it before EPATH_USE_TF was set).
    download("hf/", tmp_path / "hf")
    download("run/", tmp_path / "run")
    _, exported = import_hf_checkpoint(str(tmp_path / "hf"))
    trained = load_for_eval(str(tmp_path / "run"), step=saved)
    want = traverse_util.flatten_dict(trained.params, sep="/")
    got = traverse_util.flatten_dict(exported, sep="/")
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=0, atol=1e-6, err_msg=name)


def test_readme_gs_commands_are_the_ones_this_test_runs():
    import shlex

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Scale"):text.index("## Evaluation and sweeps")]
    lines = [shlex.split(line.strip()) for line in section.splitlines()
             if line.startswith("    symbol-tuning") and "gs://bucket" in line]
    assert [argv[1] for argv in lines] == ["train", "eval", "export-hf"]
    ran = {"train": ["--gin_file=models/tiny_t5.gin", "--gin_file=runs/tiny_cpu.gin", f"--gin.MODEL_DIR='gs://{BUCKET}/run'"],
           "eval": [f"--checkpoint=gs://{BUCKET}/run", "--all_steps", "--suite=embedded",
                    f"--output_dir=gs://{BUCKET}/eval"],
           "export-hf": [f"--checkpoint=gs://{BUCKET}/run", f"--out=gs://{BUCKET}/hf"]}
    for argv in lines:
        flags = [a for a in argv[2:] if not a.startswith("--step=")]
        assert flags == ran[argv[1]], argv

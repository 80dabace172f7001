"""Local/remote path handling: unknown URL schemes are refused, never made into local folders."""
import os

import pytest

from symbol_tuning.training import checkpoints, storage


def test_local_paths_become_absolute_and_gs_urls_stay_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert os.fspath(storage.resolve("run")) == os.path.join(str(tmp_path), "run")
    assert os.fspath(storage.resolve("gs://bucket/run")) == "gs://bucket/run"


@pytest.mark.parametrize("url", ["gcs://bucket/run", "hdfs://nn/run", "s3a://b/r", "http://host/run"])
def test_unknown_url_scheme_is_refused_naming_the_value(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"model_dir=.*unknown URL scheme"):
        storage.resolve(url, what="model_dir")
    with pytest.raises(ValueError, match="unknown URL scheme"):
        checkpoints.Checkpointer(url)
    assert os.listdir(tmp_path) == []


def test_append_file_keeps_earlier_lines_and_write_text_replaces(tmp_path):
    path = tmp_path / "sub" / "log.jsonl"
    log = storage.AppendFile(path)
    log.write("a\n")
    log.close()
    log = storage.AppendFile(path)
    log.write("b\n")
    log.close()
    assert path.read_text() == "a\nb\n"
    storage.write_text(path, "c\n")
    assert path.read_text() == "c\n" and sorted(os.listdir(path.parent)) == ["log.jsonl"]

"""Paths that may be local or remote (gs://), through etils `epath`, for every file the runs read or write.

`resolve(path, what=...)` turns a flag or gin value into an `epath.Path`: a local path is made absolute; a
`gs://` URL stays a URL (Orbax's arrays go through TensorStore, everything else through epath); a string
that looks like a URL with any other scheme is refused, never turned into a local folder named `xx:`.

Which client talks to GCS, and what points it at another endpoint (the test's local GCS-API server):
- epath (metrics, run records, eval results, Orbax's metadata files): tf.io.gfile when TensorFlow is
  installed, which has no endpoint setting; with EPATH_USE_TF=false it uses fsspec's gcsfs, which honours
  STORAGE_EMULATOR_HOST;
- TensorStore (Orbax's array data): TENSORSTORE_GCS_HTTP_URL, with GOOGLE_AUTH_TOKEN_FOR_TESTING for a
  fixed token instead of Google credentials;
- google-cloud-storage (the tests' bucket set-up and object listing): STORAGE_EMULATOR_HOST.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any, Callable

from etils import epath

REMOTE_SCHEMES = ("gs",)
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path: str | os.PathLike) -> str | None:
    """The URL scheme of `path` ("gs"), or None for a local path."""
    match = _URL.match(os.fspath(path))
    return match.group(1).lower() if match else None


def resolve(path: str | os.PathLike, *, what: str = "path") -> epath.Path:
    """`path` as an epath.Path: local ones absolute, gs:// kept; ValueError naming `what` for another scheme."""
    text = os.fspath(path)
    found = scheme(text)
    if found is None:
        return epath.Path(os.path.abspath(os.path.expanduser(text)))
    if found not in REMOTE_SCHEMES:
        raise ValueError(f"{what}={text!r}: unknown URL scheme '{found}://' (supported: a local path or "
                         f"{', '.join(s + '://' for s in REMOTE_SCHEMES)})")
    return epath.Path(text)


def is_remote(path: str | os.PathLike) -> bool:
    return scheme(path) is not None


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a whole file: locally via a temporary sibling and a rename; on GCS an object write is atomic."""
    target = resolve(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(os.fspath(target)):
        target.write_text(text)
        return
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.fspath(target.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, os.fspath(target))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; FileNotFoundError / ValueError naming the file."""
    target = resolve(path)
    if not target.exists():
        raise FileNotFoundError(f"{target}: does not exist")
    try:
        return json.loads(target.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{target}:{e.lineno}: not valid JSON ({e.msg})") from None


def with_local_copy(path: str | os.PathLike, use: Callable[[str], Any]) -> Any:
    """`use(local_dir)` on `path` itself when local, else on a temporary local copy of the remote folder
    (libraries that read only local files: safetensors, HF config readers)."""
    source = resolve(path)
    if not is_remote(os.fspath(source)):
        return use(os.fspath(source))
    with tempfile.TemporaryDirectory(prefix="symbol-tuning-") as tmp:
        local = os.path.join(tmp, source.name)
        copy_tree(source, local)
        return use(local)


def copy_tree(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy a folder's files (recursively) between any two epath locations."""
    source, target = resolve(source), resolve(target)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: not a directory")
    target.mkdir(parents=True, exist_ok=True)
    for child in source.iterdir():
        if child.is_dir():
            copy_tree(child, target / child.name)
        else:
            child.copy(target / child.name, overwrite=True)


def publish_dir(target: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Build a folder with `write(local_dir)` and put it at `target`: a local target is written in place by
    `write` (which keeps its own atomic rename); a remote one is built locally, then uploaded."""
    resolved = resolve(target, what="output")
    if not is_remote(os.fspath(resolved)):
        write(os.fspath(resolved))
        return
    if resolved.exists() and any(resolved.iterdir()):
        raise FileExistsError(f"{resolved}: output directory exists and is not empty")
    with tempfile.TemporaryDirectory(prefix="symbol-tuning-") as tmp:
        local = os.path.join(tmp, "out")
        write(local)
        copy_tree(local, resolved)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one whole line: locally with one O_APPEND write and an fsync, so a kill never leaves half of
    it glued to the next; on GCS (no appends) by rewriting the object."""
    target = resolve(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = line.encode("utf-8")
    if is_remote(os.fspath(target)):
        target.write_bytes((target.read_bytes() if target.exists() else b"") + data)
        return
    fd = os.open(os.fspath(target), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"{target}: short write ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)


class AppendFile:
    """A text file appended to line by line: locally a real append (flushed, fsynced); on GCS, whose
    objects cannot be appended to, the whole object is rewritten on each append (for small logs such as
    metrics JSONL, written every few steps), keeping what an earlier run wrote."""

    def __init__(self, path: str | os.PathLike):
        self.path = resolve(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._remote = is_remote(os.fspath(self.path))
        if self._remote:
            self._text = self.path.read_text() if self.path.exists() else ""
            self._file = None
        else:
            self._file = open(os.fspath(self.path), "a", encoding="utf-8")

    def write(self, text: str) -> None:
        if self._remote:
            self._text += text
            self.path.write_text(self._text)
            return
        self._file.write(text)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

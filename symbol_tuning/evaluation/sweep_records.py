"""A sweep's results.jsonl: line-atomic appends, torn-tail repair, and what each cell measured.

Appends: a record is one JSON line written with a single `write` on an O_APPEND descriptor, then
fsynced, so a killed sweep leaves at most one torn last line. Reading detects a torn tail (a last line
without its newline, or one that is not JSON), moves its bytes aside to `results.jsonl.torn.<k>` and
rewrites the file without it (temporary file + rename); the torn cell then has no record and reruns. A
bad line anywhere else raises naming the line: that is not a kill, and is left for a person to look at.

Object stores (gs:// through etils epath) have no append: an append there reads the object and writes
it back whole (one writer only, which the sweep is: process 0). Each record holds what the cell
measured: the checkpoint's identity (path, resolved step, content hash) and the suite's inputs; a cell
whose stored identity or inputs differ from the current ones is run again.

Content hash: for an Orbax step with a checksum manifest (training.checkpoint_integrity) it is the
sha256 of that manifest, i.e. of every file's sha256; otherwise (native / HF dirs, older steps) it is a
sha256 over each file's name, size and modification time, plus the full content of files under 1 MiB
(config.json, indexes): a retrained or replaced checkpoint changes it, reading gigabytes does not.
"""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Mapping

from etils import epath

from symbol_tuning.data.prompts import INSTRUCTION_PLACEMENTS
from symbol_tuning.training import checkpoint_integrity, checkpoints, storage

log = logging.getLogger(__name__)

INPUT_KEYS = ("suite", "data_root", "source", "datasets", "concepts", "max_queries", "max_input_length",
              "min_prompt_bucket", "batch_size", "seed")
_SMALL = 1 << 20


def _rewrite(path: epath.Path, data: bytes) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_bytes(data)
    tmp.replace(path)


def _move_aside(path: epath.Path, torn: bytes) -> epath.Path:
    k = 1
    while (path.parent / f"{path.name}.torn.{k}").exists():
        k += 1
    target = path.parent / f"{path.name}.torn.{k}"
    target.write_bytes(torn)
    return target


def read_records(path: str | epath.PathLike, *, repair: bool = True) -> list[dict[str, Any]]:
    """Every record of results.jsonl; a torn tail is moved aside (when `repair`) and left out."""
    path = epath.Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    records, good_end = [], 0
    for number, raw in enumerate(lines, 1):
        last = number == len(lines)
        if not raw.strip():
            if not last:
                good_end += len(raw) + 1
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError as e:
            if last or (number == len(lines) - 1 and not lines[-1]):
                break  # the final line: a write cut short
            raise ValueError(f"{path}:{number}: not a JSON record ({e}); only a torn last line is repaired") from None
        if last:  # valid JSON but no newline: the newline itself was cut; keep it and complete the line
            if repair:
                _rewrite(path, data + b"\n")
            records.append(record)
            return records
        records.append(record)
        good_end += len(raw) + 1
    if good_end < len(data):
        torn = data[good_end:]
        if repair:
            moved = _move_aside(path, torn)
            _rewrite(path, data[:good_end])
            log.warning("%s: torn last line (%d bytes, a killed write) moved to %s; its cell runs again", path,
                        len(torn), moved)
    return records


def append_record(path: str | epath.PathLike, record: Mapping[str, Any]) -> None:
    """Append one record as one whole line and fsync it (object stores: rewrite the object)."""
    storage.append_line(path, json.dumps(record, sort_keys=True) + "\n")


def _listing_hash(directory: epath.Path) -> str:
    h = hashlib.sha256()
    todo = [directory]
    while todo:
        for p in sorted(todo.pop().iterdir()):
            if p.is_dir():
                todo.append(p)
                continue
            stat = p.stat()
            size = int(getattr(stat, "length", getattr(stat, "st_size", 0)))
            mtime = getattr(stat, "mtime", getattr(stat, "st_mtime", 0))
            h.update(f"{p.relative_to(directory)}\0{size}\0{mtime}\0".encode())
            if size < _SMALL:
                h.update(p.read_bytes())
    return h.hexdigest()


def checkpoint_identity(path: str, step: int | None) -> dict[str, Any]:
    """{"checkpoint", "checkpoint_step", "content_hash"} of what a cell loads (hash None if `path` is absent)."""
    root = epath.Path(path)
    if not root.exists():
        return {"checkpoint": path, "checkpoint_step": step, "content_hash": None}
    steps = checkpoints.finished_steps(path) if root.is_dir() and not storage.is_remote(root) else []
    if steps:
        resolved = steps[-1] if step is None else int(step)
        step_dir = checkpoint_integrity.step_path(path, resolved)
        manifest = step_dir / checkpoint_integrity.MANIFEST
        if manifest.exists():
            digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
        elif step_dir.exists():
            digest = _listing_hash(step_dir)
        else:
            digest = None
        return {"checkpoint": path, "checkpoint_step": resolved, "content_hash": digest}
    return {"checkpoint": path, "checkpoint_step": step, "content_hash": _listing_hash(root)}


def cell_inputs(spec: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """The suite and settings a cell's number depends on beyond its key (model, variant, step, setting, k)."""
    inputs = {k: spec.get(k) for k in INPUT_KEYS}
    placement = spec.get("instruction_placement") or INSTRUCTION_PLACEMENTS[0]
    if placement != INSTRUCTION_PLACEMENTS[0]:  # only when not the default: older records stay current
        inputs["instruction_placement"] = placement
    inputs["vocabulary"] = entry.get("vocabulary", "bytes")
    config = entry.get("model_config")
    inputs["model_config"] = config
    if config and epath.Path(config).exists():
        inputs["model_config_sha256"] = hashlib.sha256(epath.Path(config).read_bytes()).hexdigest()
    return json.loads(json.dumps(inputs, sort_keys=True))


def is_current(record: Mapping[str, Any], identity: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """True when a stored record measured this checkpoint with these inputs."""
    return record.get("identity") == dict(identity) and record.get("inputs") == dict(inputs)

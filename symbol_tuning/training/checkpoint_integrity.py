"""Checkpoint integrity: a checksum manifest per finished step, verification on restore, and moving a
damaged step aside so that a run, an eval or a sweep goes on from the newest good step.

Orbax 0.12.8 (our pin) writes a step under a temporary name and renames it when complete, so a step
killed mid-save is never a finished step; but it has no checksum of the array data (only the zarr3
shard index carries a crc32c), so a truncated or bit-flipped file of a finished step is restored
silently or fails deep inside TensorStore. Here every finished step gets `checksums.json` (size and
sha256 of every file of the step), written by the primary process once the save has completed.

Verification is a full read of the step (cost: one sequential read of the checkpoint, ~1 GB/s on a
local disk; on gs:// it is a download by each host). A step without a manifest (written before this
module, or killed in the instant between Orbax's rename and the manifest write) is "unverified": it is
checked structurally (every JSON file parses, no file is empty) and restored as is; a restore error of
such a step is raised, not taken for damage.

A damaged step is moved (never deleted) to `<model_dir>/damaged/step_<N>[.k]` with a REASON.txt;
Orbax only lists numeric directories, so it no longer sees it. Paths are etils epath paths; on object
stores a "move" is a copy plus delete (not atomic) and is done by process 0 only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from typing import Any, Callable, Sequence

from etils import epath

log = logging.getLogger(__name__)

MANIFEST = "checksums.json"
QUARANTINE_DIR = "damaged"
REASON_FILE = "REASON.txt"
_CHUNK = 1 << 22


class DamagedCheckpointError(Exception):
    """A checkpoint step whose files are missing, truncated or changed; names the step and the file."""

    def __init__(self, step: int, path: str, reason: str):
        super().__init__(f"checkpoint step {step} is damaged: {path}: {reason}")
        self.step, self.path, self.reason = step, path, reason


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The state of one step: "ok" (manifest matches), "unverified" (no manifest, structure fine) or
    "damaged" (with the file at fault and what is wrong)."""

    status: str
    path: str = ""
    reason: str = ""


def _files(step_dir: epath.Path) -> list[epath.Path]:
    """Every file under `step_dir` but the manifest, walked one directory at a time (epath has no
    recursive glob on object stores)."""
    out, todo = [], [step_dir]
    while todo:
        for p in sorted(todo.pop().iterdir()):
            if p.is_dir():
                todo.append(p)
            elif p.name != MANIFEST and p != step_dir / (MANIFEST + ".tmp"):
                out.append(p)
    return sorted(out)


def _digest(path: epath.Path) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _size(path: epath.Path) -> int:
    stat = path.stat()
    return int(getattr(stat, "length", getattr(stat, "st_size", 0)))


def step_path(directory: str | epath.PathLike, step: int) -> epath.Path:
    return epath.Path(directory) / str(step)


def write_manifest(step_dir: str | epath.PathLike) -> None:
    """Write `checksums.json` for a finished step (temporary name, then rename)."""
    step_dir = epath.Path(step_dir)
    entries = {}
    for p in _files(step_dir):
        size, digest = _digest(p)
        entries[str(p.relative_to(step_dir))] = {"size": size, "sha256": digest}
    tmp = step_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"version": 1, "files": entries}, sort_keys=True, indent=1))
    tmp.rename(step_dir / MANIFEST)


def seal(directory: str | epath.PathLike, steps: Sequence[int]) -> None:
    """Write the manifest of every finished step in `steps` that lacks one (call on process 0 only, after
    the saves have completed)."""
    for step in steps:
        step_dir = step_path(directory, step)
        if step_dir.is_dir() and not (step_dir / MANIFEST).exists():
            write_manifest(step_dir)


class Sealer:
    """Writes the manifests of finished steps on a background thread (process 0 only), so that hashing a
    large step (~650 MiB/s here) overlaps training instead of stalling it; `finish` waits and seals
    whatever is left, synchronously."""

    def __init__(self, directory: str | epath.PathLike, list_steps: Callable[[], Sequence[int]]):
        self.directory, self.list_steps = directory, list_steps
        self._thread: threading.Thread | None = None

    def _run(self, steps: Sequence[int]) -> None:
        try:
            seal(self.directory, steps)
        except Exception as e:  # noqa: BLE001 - e.g. a step deleted by max_to_keep meanwhile; finish() retries
            log.warning("%s: background checksum manifest failed (%s); retried at the next wait", self.directory, e)

    def start(self) -> None:
        """Seal the steps finished now (listed before the next save starts, so a step Orbax is still
        finalizing is never hashed)."""
        self._join()
        steps = list(self.list_steps())
        self._thread = threading.Thread(target=self._run, args=(steps,), name="checkpoint-seal", daemon=True)
        self._thread.start()

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def finish(self) -> None:
        self._join()
        seal(self.directory, self.list_steps())


def _structural(step_dir: epath.Path) -> Verdict:
    files = _files(step_dir)
    if not files:
        return Verdict("damaged", str(step_dir), "the step directory holds no files")
    for p in files:
        name = p.name
        size = _size(p)
        if size == 0 and not name.startswith("."):
            return Verdict("damaged", str(p), "the file is empty")
        if name.endswith(".json") or name in ("_METADATA", "_CHECKPOINT_METADATA", "metadata"):
            try:
                json.loads(p.read_text())
            except (ValueError, UnicodeDecodeError) as e:
                return Verdict("damaged", str(p), f"not valid JSON ({e})")
    return Verdict("unverified")


def verify_step(directory: str | epath.PathLike, step: int) -> Verdict:
    """Compare the step's files with its manifest: a missing, extra-sized or changed file is "damaged"."""
    step_dir = step_path(directory, step)
    manifest_path = step_dir / MANIFEST
    if not manifest_path.exists():
        return _structural(step_dir)
    try:
        entries = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        return Verdict("damaged", str(manifest_path), f"the checksum manifest is unreadable ({e})")
    for rel, want in sorted(entries.items()):
        p = step_dir / rel
        if not p.exists():
            return Verdict("damaged", str(p), "the file is missing")
        size, digest = _digest(p)
        if size != want["size"]:
            return Verdict("damaged", str(p), f"size {size} bytes, {want['size']} when saved (truncated?)")
        if digest != want["sha256"]:
            return Verdict("damaged", str(p), "content differs from its sha256 when saved (corrupted)")
    return Verdict("ok")


def quarantine(directory: str | epath.PathLike, step: int, *, path: str, reason: str) -> epath.Path:
    """Move the step to `<directory>/damaged/step_<N>[.k]` with a REASON.txt; returns where it went."""
    root = epath.Path(directory) / QUARANTINE_DIR
    root.mkdir(parents=True, exist_ok=True)
    target, k = root / f"step_{step}", 1
    while target.exists():
        target, k = root / f"step_{step}.{k}", k + 1
    step_path(directory, step).rename(target)
    (target / REASON_FILE).write_text(f"step {step}: {path}: {reason}\n")
    return target


def restore_newest_good(directory: str | epath.PathLike, steps: Sequence[int], restore: Callable[[int], Any], *,
                        is_primary: bool = True, barrier: Callable[[str], None] | None = None
                        ) -> tuple[int | None, Any, list[DamagedCheckpointError]]:
    """Restore the newest of `steps` that verifies and restores; each damaged newer step is logged (file,
    step) and moved aside by the primary process. Returns (step or None, restored value, damaged steps).

    A restore error of a step that is not damaged (a config or mesh mismatch) is raised, never taken for
    damage: moving every step aside because of a config typo would silently restart the run. Every process
    reaches the same verdicts (they read the same files); `barrier(name)` is called before and after
    each move so that no process reads a directory while it moves.
    """
    damaged: list[DamagedCheckpointError] = []
    for step in sorted(steps, reverse=True):
        verdict = verify_step(directory, step)
        if verdict.status != "damaged":
            return step, restore(step), damaged
        error = DamagedCheckpointError(step, verdict.path, verdict.reason)
        damaged.append(error)
        if barrier is not None:  # every process has read the step before it moves
            barrier(f"checkpoint_verified_{step}")
        if is_primary:
            moved = quarantine(directory, step, path=verdict.path, reason=verdict.reason)
            log.error("%s; moved to %s, trying the previous step", error, moved)
        if barrier is not None:
            barrier(f"checkpoint_quarantine_{step}")
    return None, None, damaged


def check_readable(directory: str | epath.PathLike, step: int) -> Verdict:
    """The step's verdict; DamagedCheckpointError naming the file when it is damaged (for readers such as
    eval: nothing is moved)."""
    verdict = verify_step(directory, step)
    if verdict.status == "damaged":
        raise DamagedCheckpointError(step, verdict.path, verdict.reason)
    return verdict

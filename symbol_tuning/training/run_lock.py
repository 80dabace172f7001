"""One writer per model dir: a lock file `<model_dir>/RUN_LOCK.json` naming its owner (host, pid, start).

Only the primary process (process 0 under multi-host) takes the lock; the others pass `is_primary=False`
and hold nothing (the trainer shares the primary's verdict with them). A second trainer on the same
model dir is refused with a message naming the owner. A lock whose owner is a dead process on this
host is stale: it is replaced, with a warning. A lock held by another host cannot be checked from here
(no pid to probe): it is refused and the message says which file to delete if that host's run is gone.

Local paths are created with O_CREAT | O_EXCL, which is atomic. On object stores (gs://, through etils
epath) there is no exclusive create: the lock is written and read back, so two writers starting within
the same second can both believe they own it; the check still stops the common case (a second run
started while the first one runs). The lock is removed when its owner closes it normally; a killed
owner leaves it behind (stale, see above).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid

from etils import epath

log = logging.getLogger(__name__)

LOCK_NAME = "RUN_LOCK.json"


class ModelDirLockedError(RuntimeError):
    """Another run owns the model dir; the message names the owner and the lock file."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_local(path: epath.Path) -> bool:
    return "://" not in str(path)


class RunLock:
    """`with RunLock(model_dir, is_primary=...)`: own `model_dir` for the duration of a run."""

    def __init__(self, model_dir: str | epath.PathLike, *, is_primary: bool = True):
        self.path = epath.Path(model_dir) / LOCK_NAME
        self.is_primary = is_primary
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": uuid.uuid4().hex}
        self.held = False

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # a lock being written or a torn one: treat as held by an unknown owner

    def _create(self) -> bool:
        text = json.dumps(self.owner, sort_keys=True)
        if _is_local(self.path):
            try:
                fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            return True
        if self.path.exists():
            return False
        self.path.write_text(text)
        return (self._read() or {}).get("token") == self.owner["token"]

    def acquire(self) -> "RunLock":
        """Take the lock or raise ModelDirLockedError naming the owner (no-op off the primary process)."""
        if not self.is_primary:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                self.held = True
                return self
            other = self._read()
            if other is None:
                continue  # released between our two looks
            host, pid = other.get("host"), other.get("pid")
            if host == self.owner["host"] and isinstance(pid, int) and not _alive(pid):
                log.warning("%s: stale lock of dead process %d on %s (started %s), taking it over", self.path,
                            pid, host, other.get("started"))
                self.path.unlink(missing_ok=True)
                continue
            where = f"process {pid} on host {host} (started {other.get('started')})" if other else "an unknown owner"
            raise ModelDirLockedError(
                f"{self.path.parent}: model dir is in use by {where}; one trainer per model dir. If that run is "
                f"gone, delete {self.path}")
        raise ModelDirLockedError(f"{self.path}: could not take the lock (it changed hands repeatedly)")

    def release(self) -> None:
        """Remove the lock if this process still owns it."""
        if not self.held:
            return
        self.held = False
        current = self._read()
        if current and current.get("token") == self.owner["token"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

"""A run directory is owned by one process at a time: ``RUN_DIR/.lock`` holds the owner's PID.

``RunLock(run_dir)`` is a context manager. Taking the lock creates ``.lock`` with ``O_EXCL`` (so two
processes cannot both create it) holding ``{"pid", "host", "start", "created"}``; ``start`` is the
process's start time from ``/proc/PID/stat`` where there is one, so a PID reused by an unrelated
process after a crash is not mistaken for the owner. A lock whose process is gone (killed with -9,
a crashed machine's same-host PID no longer alive) is taken over; a live owner makes the lock
raise ``RunDirError`` naming the PID. Leaving the block removes the file if it is still ours.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, /proc/PID/stat field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` exists (and, when ``start`` is given and known, started then)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:            # exists, owned by another user
        pass
    now = _start_time(pid)
    return not (start and now and now != start)


class RunLock:
    """Exclusive ownership of ``run_dir`` (created if missing) for the ``with`` block.

    Raises (on enter):
        RunDirError: another live process holds the lock (the message names its PID and host), or
            the directory cannot be created or written.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                       "start": _start_time(os.getpid())}

    def __enter__(self) -> "RunLock":
        from factmas.run.rundir import RunDirError
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunDirError(f"{self.run_dir} is a file, not a run directory")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"{self.run_dir}: cannot create the run directory: {e}") from e
        for _ in range(5):
            if self._create():
                return self
            owner = self._owner()
            if owner is None:          # vanished, or being written right now: look once more
                time.sleep(0.1)
                owner = self._owner()
                if owner is None:
                    self._take_over(None, "unreadable")
                    continue
            if owner.get("host") == self.record["host"] and not pid_alive(int(owner.get("pid", -1)),
                                                                          owner.get("start")):
                self._take_over(owner, f"process {owner.get('pid')} is gone")
                continue
            raise RunDirError(f"{self.run_dir} is in use by process {owner.get('pid')} on "
                              f"{owner.get('host')} (since {owner.get('created', '?')}); wait for it "
                              f"to finish, or stop it; a lock left by a killed process is taken "
                              f"over automatically ({self.path})")
        raise RunDirError(f"{self.path}: could not take the lock (it keeps changing hands)")

    def _create(self) -> bool:
        from factmas.run.rundir import RunDirError
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise RunDirError(f"{self.path}: cannot create the lock file: {e}") from e
        with os.fdopen(fd, "w") as f:
            json.dump({**self.record, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, f)
        return True

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _take_over(self, stale: dict | None, why: str) -> None:
        """Move the stale lock aside and delete it. If another process replaced it with a fresh lock
        in the meantime, that lock is put back (``os.link`` never overwrites)."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = None
        if stale is not None and moved != stale:
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        else:
            log.warning("%s: taking over a stale lock (%s)", self.path, why)
        aside.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        owner = self._owner()
        if owner and owner.get("pid") == self.record["pid"] and owner.get("host") == self.record["host"]:
            self.path.unlink(missing_ok=True)

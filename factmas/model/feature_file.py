"""The feature cache's file: written chunk by chunk into a memory-mapped ``.npy`` at a temporary name,
resumed after a kill from its last complete chunk, renamed to its final name only when whole, and read
memory-mapped (issue 28).

While a cache ``X.npy`` is being built, three files lie beside it::

    X.npy.partial          the .npy being filled (``np.lib.format.open_memmap``, final shape and dtype)
    X.npy.partial.json     {"key", "shape", "dtype", "chunk", "done"}: chunks 0 .. done-1 are written
                           and flushed to the disk (``done`` is raised only after the flush)
    X.npy.lock             held (``fcntl.flock``) by the one process building it

A build that finds the sidecar of the same ``key`` (the cache file's name, its version, the images per
forward and per chunk: whatever changes a bit of the output) and shape continues at chunk ``done``;
any other sidecar, or none, starts over. ``X.npy`` exists only once every chunk is in, so a half-written
cache is never read; a second process building the same cache waits on the lock, then reads the
finished file.

    with PartialFile(path, key, rows=N, chunk=512) as part:
        if not part.complete:                      # another process may have finished it meanwhile
            for lo in range(part.start, N, 512):
                part.write(lo, float16 [min(512, N - lo), ...])
            part.finish()
    features = read(path)                          # np.load(path, mmap_mode="r")

May import: numpy, ``factmas.io``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from factmas.io import atomic_path, check_room

log = logging.getLogger(__name__)


def partial_paths(path: Path) -> tuple[Path, Path, Path]:
    """(``X.npy.partial``, ``X.npy.partial.json``, ``X.npy.lock``) of the cache file ``path``."""
    return (path.with_name(path.name + ".partial"), path.with_name(path.name + ".partial.json"),
            path.with_name(path.name + ".lock"))


def read(path: Path) -> np.ndarray:
    """The finished cache file memory-mapped read-only (``np.load(path, mmap_mode="r")``): rows are read
    from the disk (through the page cache) when indexed, nothing is loaded whole.

    Raises whatever ``np.load`` raises on a damaged file (OSError, ValueError, EOFError, ...)."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


def release(array: np.ndarray) -> bool:
    """Drop the pages of a memory map from this process's resident set (``madvise(MADV_DONTNEED)``);
    True if done. For a file mapping this loses nothing: written pages are already in the page cache
    (and on the disk after ``flush``), and a later read maps them again from the page cache (a minor
    fault) or the disk. Without it every page touched stays in the process's RSS (as file-backed
    memory, RssFile) until the map is closed, so the peak RSS of a pass over the cache grows with its
    size. Anything but a ``np.memmap`` (or a platform without ``madvise``): nothing done, False."""
    import mmap
    mm = getattr(array, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return False
    mm.madvise(mmap.MADV_DONTNEED)
    return True


def _write_sidecar(side: Path, record: dict[str, Any]) -> None:
    """Replace ``side`` by ``record`` as JSON (temporary file, flush to the disk, rename)."""
    tmp = side.with_name(side.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, side)


class PartialFile:
    """A ``.npy`` of ``rows`` rows written in chunks of ``chunk`` rows, resumable (module docstring).

    Args:
        path: the final file.  key: what the content depends on (compared with the sidecar's).
        rows: the first dimension.  chunk: rows per ``write`` (the last one may be shorter).
    Within ``with``: ``complete`` (the final file already exists: nothing to write), ``start`` (the first
    row still to write, a multiple of ``chunk``), ``write(lo, block)``, ``finish()``.
    Raises:
        OSError: the lock or the files cannot be created; too little disk space for the file
            (``factmas.io.check_room``, checked before the memory map is created, since a full disk
            under a memory map ends the process with SIGBUS).
        ValueError: ``write`` out of order, or of another row shape or dtype than the first one.
    """

    def __init__(self, path: str | os.PathLike, key: str, rows: int, chunk: int) -> None:
        if chunk < 1 or rows < 1:
            raise ValueError(f"{path}: a cache needs rows >= 1 and chunk >= 1 (got {rows}, {chunk})")
        self.path, self.key, self.rows, self.chunk = Path(path), key, int(rows), int(chunk)
        self.partial, self.side, self.lock = partial_paths(self.path)
        self.complete, self.start = False, 0
        self._mm: np.ndarray | None = None
        self._record: dict[str, Any] = {}
        self._lock_file = None

    # -- the lock -------------------------------------------------------------------------------
    def __enter__(self) -> "PartialFile":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.lock, "a+")
        try:
            try:
                import fcntl
            except ImportError:                # Windows: no flock; one builder at a time is up to the user
                fcntl = None
            if fcntl is not None:
                try:
                    fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    log.info("feature cache: %s is being built by another process; waiting for it",
                             self.path)
                    fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            self.complete = self.path.exists()
            if not self.complete:
                self.start = self._resume()
        except BaseException:
            self._lock_file.close()
            self._lock_file = None
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._close()
        if self._lock_file is not None:
            if self.complete:                  # finished (or found finished): the lock is no longer needed
                with contextlib.suppress(OSError):
                    self.lock.unlink()
            self._lock_file.close()            # releases the flock
            self._lock_file = None

    # -- resuming ---------------------------------------------------------------------------------
    def _resume(self) -> int:
        """The first row to write: after the sidecar's last complete chunk when its key, chunk and the
        partial file's shape agree, else 0 (the stale files removed)."""
        try:
            record = json.loads(self.side.read_text(encoding="utf-8"))
            ok = (isinstance(record, dict) and record.get("key") == self.key
                  and record.get("chunk") == self.chunk and isinstance(record.get("done"), int)
                  and record.get("shape", [None])[0] == self.rows and self.partial.exists())
            if ok:
                mm = np.lib.format.open_memmap(self.partial, mode="r+")
                ok = list(mm.shape) == record["shape"] and str(mm.dtype) == record["dtype"]
        except (OSError, ValueError, TypeError, KeyError, IndexError, EOFError):
            ok = False                         # no sidecar, or one from a damaged or other build
        if not ok:
            for p in (self.partial, self.side):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            return 0
        self._mm, self._record = mm, record
        start = min(record["done"] * self.chunk, self.rows)
        if start:
            log.info("feature cache: resuming %s at image %s of %s (%d complete chunks of %d)",
                     self.path, f"{start:,}", f"{self.rows:,}", record["done"], self.chunk)
        return start

    # -- writing ----------------------------------------------------------------------------------
    def write(self, lo: int, block: np.ndarray) -> None:
        """Write rows ``lo .. lo + len(block)`` (chunk number ``lo // chunk``, the next one due), flush
        them to the disk, then record the chunk as complete in the sidecar."""
        due = self._record["done"] * self.chunk if self._mm is not None else 0
        if lo != due or len(block) != min(self.chunk, self.rows - lo):
            raise ValueError(f"{self.partial}: chunk at row {lo} of {len(block)} rows; expected row {due}, "
                             f"{min(self.chunk, max(self.rows - due, 0))} rows")
        if self._mm is None:                   # the first chunk fixes the row shape and the dtype
            shape = (self.rows, *block.shape[1:])
            nbytes = int(np.prod(shape, dtype=np.int64)) * block.dtype.itemsize
            check_room(self.partial, nbytes)
            self._mm = np.lib.format.open_memmap(self.partial, mode="w+", dtype=block.dtype, shape=shape)
            self._record = {"key": self.key, "shape": list(shape), "dtype": str(block.dtype),
                            "chunk": self.chunk, "done": 0}
            _write_sidecar(self.side, self._record)
        elif block.shape[1:] != self._mm.shape[1:] or block.dtype != self._mm.dtype:
            raise ValueError(f"{self.partial}: rows {block.shape[1:]} {block.dtype}, expected "
                             f"{self._mm.shape[1:]} {self._mm.dtype}")
        self._mm[lo:lo + len(block)] = block
        self._mm.flush()                       # the rows are on the disk before the sidecar says so
        release(self._mm)                      # and out of this process's RSS (the build stays flat)
        self._record["done"] += 1
        _write_sidecar(self.side, self._record)

    def finish(self) -> None:
        """Rename the complete partial file to ``path`` (``factmas.io.atomic_path``: recorded in the
        manifest of a factmas folder it lies in) and remove the sidecar.

        Raises:
            ValueError: chunks are missing."""
        if self._mm is None or self._record["done"] * self.chunk < self.rows:
            done = 0 if self._mm is None else self._record["done"] * self.chunk
            raise ValueError(f"{self.partial}: {min(done, self.rows)} of {self.rows} rows written; "
                             "not finished")
        self._close()
        with atomic_path(self.path) as tmp:
            os.replace(self.partial, tmp)
        self.side.unlink()
        self.complete = True

    def _close(self) -> None:
        if self._mm is not None:
            self._mm.flush()
            del self._mm                        # numpy unmaps when the last reference goes
            self._mm = None

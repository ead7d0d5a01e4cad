"""The errors a user can cause, and how the command line turns any error into one clear line.

``FactmasError`` is the base of every error factmas raises for bad input, a bad setting or a file it
cannot use (``UsageError``, ``ConfigError``, ``DatasetError``, ``RunDirError``, ...); its
``exit_code`` is 2 (1 for ``TrainingError`` and a failed peer process). ``user_message(exc)`` maps an
exception to ``(exit status, one line)`` or None for a bug (which keeps its traceback): a
``FactmasError``; an ``OSError`` of a full disk (ENOSPC, EDQUOT), a read-only or forbidden place
(EROFS, EACCES, EPERM) or the file-size limit (EFBIG), naming the file; a failed collective of torch's
process group (gloo's ``RuntimeError``, ``DistError``), naming the rank. ``printable(name)`` escapes the
control characters of a name before it is printed to a terminal.

May import: the standard library only (every package of factmas imports from here).
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
from typing import Iterator

__all__ = ["FactmasError", "Terminated", "UsageError", "guarded_main", "os_error_line", "printable",
           "sigterm_raises", "user_message"]


class FactmasError(Exception):
    """Bad input, a bad setting, or a file factmas cannot use; the message names the file/key and what
    was expected. The command line prints it as one line and exits ``exit_code`` (2)."""

    exit_code = 2

    def __str__(self) -> str:
        # messages embed file names, which may hold terminal escape sequences: printed as escapes
        return printable(super().__str__())


class UsageError(FactmasError, ValueError):
    """A setting names something that does not exist (split, method, device); lists the valid ones."""


# errno → what the user should read (a full disk, a read-only place, the file-size limit)
OS_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large (the file-size limit, ulimit -f, or the file system's)",
}


def printable(name: object) -> str:
    """``str(name)`` with every control character (C0, DEL, C1: terminal escape sequences, newlines,
    carriage returns) written as a visible escape such as ``\\x1b``, so that a file name cannot move
    the cursor, recolour the terminal or forge a line of output. Other characters are kept."""
    out = []
    for ch in str(name):
        code = ord(ch)
        if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch, f"\\x{code:02x}"))
        else:
            out.append(ch)
    return "".join(out)


def os_error_line(e: OSError, path: object = None) -> str | None:
    """One line for a disk-full, read-only, permission or file-size ``OSError`` naming its file
    (``e.filename`` or ``path``); None for any other errno."""
    what = OS_ERRORS.get(e.errno)
    if what is None:
        return None
    where = e.filename if e.filename is not None else path
    where = f"{printable(where)}: " if where is not None else ""
    hint = {errno.ENOSPC: "; free some space (or choose another --out) and run the command again",
            errno.EDQUOT: "; free some space and run the command again",
            errno.EFBIG: "; raise the limit or write elsewhere",
            }.get(e.errno, "; choose a folder you may write to")
    return f"{where}cannot write: {what}{hint}. Nothing half-written was kept"


def _is_peer_failure(e: BaseException) -> bool:
    """True for torch.distributed's error of a collective whose peer died or stopped answering."""
    if type(e).__name__ in ("DistError", "DistNetworkError", "DistBackendError", "DistStoreError"):
        return True
    if not isinstance(e, RuntimeError) or int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return False
    text = str(e).lower()
    return any(w in text for w in ("gloo", "nccl", "connection closed by peer", "connection reset",
                                   "broken pipe", "timed out", "process group"))


def user_message(e: BaseException) -> tuple[int, str] | None:
    """``(exit status, one line)`` for an error the user can act on; None for a bug (a traceback).

    FactmasError → its ``exit_code`` and message; OSError of a full disk, a read-only or forbidden
    place, or the file-size limit → 2 and ``os_error_line``; a dead or silent peer process under
    torchrun → 1 and a line naming this process's rank.
    """
    if isinstance(e, FactmasError):
        return int(getattr(e, "exit_code", 2)), printable(e)
    if isinstance(e, OSError):
        line = os_error_line(e)
        if line is not None:
            return 2, line
    if _is_peer_failure(e):
        rank = os.environ.get("RANK", "0")
        first = printable(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)[:300]
        return 1, (f"process {rank} of the run: another process (rank) of the run failed or stopped "
                   f"answering ({type(e).__name__}: {first}); its own message says why. The completed "
                   "tasks are checkpointed: continue with factmas train --resume RUN_DIR")
    # an error raised from an OSError of that kind (e.g. h5py or torch wrapping it)
    cause = e.__cause__ or e.__context__
    if cause is not None and cause is not e and isinstance(cause, OSError):
        line = os_error_line(cause)
        if line is not None:
            return 2, line
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception (``sigterm_raises``), handled like Ctrl-C; exit status 143."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside the block SIGTERM raises ``Terminated`` in the main thread (a batch scheduler's stop
    then runs the same cleanup as Ctrl-C); the previous handler is put back at the end. Outside the
    main thread it does nothing."""
    def handler(signum, frame):
        raise Terminated()
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def guarded_main(prog: str, main, argv: list[str] | None = None) -> int:
    """``main(argv)``'s exit status, with any error a user can cause (``user_message``) printed as
    "PROG: error: LINE" on stderr and its exit status returned instead of a traceback. Every command's
    entry point goes through here once (``factmas.cli.main``, the ``__main__`` blocks of the command
    modules, ``eval/*.py`` and ``data_prep``); a bug's exception is raised unchanged. Output piped
    into a reader that exits early (``| head``) ends the command quietly with status 141."""
    import sys
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt as e:    # Ctrl-C or Terminated, not handled by the command itself
        print(f"{prog}: {'terminated' if isinstance(e, Terminated) else 'interrupted'}; nothing "
              "half-written was kept", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except BrokenPipeError:           # the reader of stdout has gone (``| head``): stop quietly, as
        import os                     # Unix tools do, with the status of a death by SIGPIPE (128 + 13)
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error at exit
        except (OSError, ValueError):
            pass
        return 141
    except Exception as e:
        known = user_message(e)
        if known is None:
            raise
        print(f"{prog}: error: {known[1]}", file=sys.stderr)
        return known[0]

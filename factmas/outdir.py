"""Output folders: what factmas may write into, delete from, and how it knows what it wrote there.

Every command that writes a folder (a run of ``train``, ``evaluate``'s output, ``gallery``,
``paper_table``, the search index ``.factmas-index``) ``claim``s it first:

- the folder must be new, empty, or already a factmas folder of the same kind: a folder that holds
  someone else's files is refused (nothing of theirs is replaced, appended to or deleted);
- no symbolic link may lie inside it (a link such as ``checkpoints -> /elsewhere`` would send writes,
  or ``--overwrite``'s deletions, out of the folder asked for); the folder itself may be given through
  a link, which is resolved once;
- it gets a manifest, ``MANIFEST``: its kind on the first line, then the relative path of every file
  factmas wrote there, one a line. ``factmas.io.atomic_path`` checks each write against the nearest
  manifest above it (no link on the way) and records the file; ``remove_written`` (``--overwrite``)
  deletes exactly those files and the folders they leave empty, nothing else;
- ``clean_temps`` removes the temporary files (``.NAME.XXXXXXXX.tmp``) a killed write left behind.

Raises ``OutputError`` (a ``FactmasError``: exit 2) naming the folder and the offending entry.

May import: the standard library and ``factmas.errors`` only (``factmas.io`` imports it).
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

from factmas.errors import FactmasError, printable

MANIFEST = ".factmas-written"
HEADER = "# factmas {kind}: the files factmas wrote here, one a line; --overwrite deletes only these\n"
TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")      # atomic_path's temporary files
IGNORED = {MANIFEST, ".lock"}                                 # not user files
MAX_UP = 4                                                    # a file lies at most this deep in a folder


class OutputError(FactmasError):
    """A folder or file factmas was asked to write cannot be used safely; the message names it."""


def _abs(path: str | os.PathLike) -> Path:
    """The absolute path without resolving links (``os.path.abspath``)."""
    return Path(os.path.abspath(os.fspath(path)))


def kind_of(root: str | os.PathLike) -> str | None:
    """The kind recorded in ``root``'s manifest ("run", "gallery", ...), or None without one."""
    try:
        with open(Path(root) / MANIFEST, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError):
        return None
    m = re.match(r"# factmas (\S+):", first)
    return m.group(1) if m else "unknown"


def find_root(path: str | os.PathLike) -> Path | None:
    """The nearest folder above ``path`` (at most ``MAX_UP`` levels) that holds a manifest."""
    p = _abs(path).parent
    for _ in range(MAX_UP):
        if (p / MANIFEST).is_file():
            return p
        if p.parent == p:
            return None
        p = p.parent
    return None


def link_inside(root: Path, target: Path) -> Path | None:
    """The first path from ``root`` (excluded) down to ``target`` (included) that is a symbolic link,
    or None. ``target`` must lie lexically inside ``root``."""
    rel = _abs(target).relative_to(_abs(root))
    p = _abs(root)
    for part in rel.parts:
        p = p / part
        if p.is_symlink():
            return p
    return None


def check_no_links(root: str | os.PathLike) -> None:
    """Raise OutputError when a symbolic link lies anywhere inside the folder ``root`` (links are
    not followed while looking)."""
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                raise OutputError(f"{printable(p)} is a symbolic link (to {printable(os.readlink(p))}); "
                                  f"factmas does not write through links inside {printable(root)}: "
                                  "remove the link or choose another folder")


def guard_write(path: str | os.PathLike) -> Path | None:
    """Before writing ``path``: when a manifest lies above it, refuse a link between that folder and
    the file (OutputError). Returns the folder (None when there is none)."""
    root = find_root(path)
    if root is not None:
        link = link_inside(root, _abs(path))
        if link is not None:
            raise OutputError(f"{printable(link)} is a symbolic link; factmas does not write through "
                              f"links inside {printable(root)}: remove the link or choose another folder")
    return root


def record_written(path: str | os.PathLike, root: Path | None = None) -> None:
    """Add ``path`` to the manifest of the folder above it (``find_root``; nothing when none)."""
    root = root or find_root(path)
    if root is None:
        return
    rel = _abs(path).relative_to(_abs(root)).as_posix()
    if rel == MANIFEST or rel in written(root):
        return
    with open(root / MANIFEST, "a", encoding="utf-8") as f:
        f.write(rel + "\n")


def written(root: str | os.PathLike) -> list[str]:
    """The relative paths recorded in ``root``'s manifest ([] without one)."""
    try:
        lines = (Path(root) / MANIFEST).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    return [ln for ln in lines[1:] if ln and not ln.startswith("#")]


def claim(root: str | os.PathLike, kind: str, *, legacy: bool = False) -> Path:
    """Make ``root`` a factmas folder of ``kind`` (create it and its manifest) or refuse.

    Args:
        root: the folder asked for; a link to a folder is resolved once.
        kind: "run", "evaluation", "gallery", "paper_table", "search-index".
        legacy: the folder holds factmas output written before manifests existed (e.g. a run's
            config.json): its present files are taken as factmas's and listed in the manifest.
    Returns:
        the resolved folder.
    Raises:
        OutputError: ``root`` is a file; holds a link; is a factmas folder of another kind; or holds
            files factmas did not write.
    """
    given = Path(root)
    root = given.resolve() if given.is_symlink() else _abs(given)
    if root.exists() and not root.is_dir():
        raise OutputError(f"{printable(given)} is a file; a folder is needed here")
    if root.is_dir():
        have = _check_folder(root, given, kind, legacy)
        if have is not None:
            clean_temps(root)                  # killed writes' temporaries, 10 minutes old or more
        if have is None:
            _write_header(root, kind)
            if legacy:
                with open(root / MANIFEST, "a", encoding="utf-8") as f:
                    for p in sorted(root.rglob("*")):
                        if p.is_file() and p.name not in IGNORED:
                            f.write(p.relative_to(root).as_posix() + "\n")
        return root
    root.mkdir(parents=True, exist_ok=True)
    _write_header(root, kind)
    return root


def _check_folder(folder: Path, shown_as: Path, kind: str, legacy: bool) -> str | None:
    """``claim``'s rules for an existing folder: no link inside, not a factmas folder of another
    kind, no files factmas did not write (unless ``legacy``). Returns its kind (None: not a factmas
    folder yet). Raises OutputError naming ``shown_as``."""
    check_no_links(folder)
    have = kind_of(folder)
    if have is not None and have != kind:
        raise OutputError(f"{printable(shown_as)} holds a factmas {have} (see its {MANIFEST}); "
                          f"choose another folder for this {kind}")
    if have is None and not legacy:
        present = sorted(p.name for p in folder.iterdir() if p.name not in IGNORED)
        if present:
            shown = ", ".join(printable(n) for n in present[:4]) + (" ..." if len(present) > 4 else "")
            raise OutputError(f"{printable(shown_as)} already holds files factmas did not write "
                              f"({shown}); choose a new or empty folder (nothing in it was changed)")
    return have


def _write_header(root: Path, kind: str) -> None:
    tmp = root / f".{MANIFEST}.{os.getpid()}.new"
    tmp.write_text(HEADER.format(kind=kind), encoding="utf-8")
    os.replace(tmp, root / MANIFEST)


def remove_written(root: str | os.PathLike) -> list[Path]:
    """Delete the files listed in ``root``'s manifest (``--overwrite``) and the folders they leave
    empty; never anything else, never through a link, never outside ``root``. Returns what was deleted.

    Raises:
        OutputError: ``root`` holds a link, or the manifest names a path outside ``root``.
    """
    root = _abs(root)
    check_no_links(root)
    gone: list[Path] = []
    folders: set[Path] = set()
    listed = sorted(written(root), key=lambda r: -r.count("/"))
    for rel in listed:                     # all checked before anything is deleted
        if rel.startswith("/") or ".." in Path(rel).parts or root not in _abs(root / rel).parents:
            raise OutputError(f"{root / MANIFEST}: names {printable(rel)}, which lies outside "
                              f"{printable(root)}; nothing was deleted from it")
    for rel in listed:
        p = _abs(root / rel)
        if p.is_file():
            p.unlink()
            gone.append(p)
        folders.update(q for q in p.parents if root in q.parents)
    for d in sorted(folders, key=lambda q: -len(q.parts)):
        try:
            d.rmdir()                      # only when empty
        except OSError:
            pass
    if (root / MANIFEST).is_file():
        _write_header(root, kind_of(root) or "unknown")
    return gone


def clean_temps(root: str | os.PathLike, min_age_s: float = 600.0) -> list[Path]:
    """Delete the temporary files of writes that were killed (``.NAME.XXXXXXXX.tmp``, at least
    ``min_age_s`` seconds old, so that a write still going on elsewhere keeps its own) inside
    ``root``, without following links. Returns what was deleted."""
    now = time.time()
    gone = []
    for dirpath, _, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            p = Path(dirpath) / name
            try:
                if TEMP_NAME.match(name) and not p.is_symlink() and now - p.stat().st_mtime >= min_age_s:
                    p.unlink()
                    gone.append(p)
            except OSError:
                continue
    return gone


def _enclosing(out: Path) -> Path | None:
    """The factmas folder ``out`` lies in (a manifest at most ``MAX_UP`` levels above), or None."""
    root = find_root(out / "_")
    return None if root is None or root == _abs(out) else root


def check_output(out: str | os.PathLike, kind: str, legacy: bool = False) -> None:
    """Raise OutputError when ``prepare_output(out, kind)`` would refuse; writes nothing.

    Inside a factmas folder (e.g. ``RUN/evaluations/test``): no link on the way down, and ``out``
    must not itself hold files of that folder. Elsewhere: ``claim``'s rules (new, empty, or a factmas
    folder of the same kind; no link inside; a file is not a folder)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{printable(out)} is a file; a folder is needed here")
    root = _enclosing(out)
    if root is not None:
        link = _first_link_above(root, out)
        if link is not None:
            raise OutputError(f"{printable(link)} is a symbolic link; factmas does not write through "
                              f"links inside {printable(root)}")
        if out.is_dir():
            check_no_links(out)
        return
    if out.is_dir():
        _check_folder(out, out, kind, legacy)


def _first_link_above(root: Path, out: Path) -> Path | None:
    """The first existing link between ``root`` and ``out`` (``out`` need not exist yet)."""
    p = _abs(root)
    for part in _abs(out).relative_to(_abs(root)).parts:
        p = p / part
        if p.is_symlink():
            return p
        if not p.exists():
            return None
    return None


def prepare_output(out: str | os.PathLike, kind: str, legacy: bool = False) -> Path:
    """``check_output``, then create ``out``: inside a factmas folder as a plain folder (its files go
    in that folder's manifest), elsewhere ``claim``ed with a manifest of its own. ``legacy``: ``out``
    holds factmas output written before manifests (see ``claim``). Returns ``out``."""
    check_output(out, kind, legacy)
    out = Path(out)
    if _enclosing(out) is not None:
        out.mkdir(parents=True, exist_ok=True)
        return out
    return claim(out, kind, legacy=legacy)


def check_new_file(path: str | os.PathLike, overwrite: bool, option: str = "--out") -> None:
    """For a command that writes single files (``compare --out PREFIX``): refuse (OutputError) a
    path inside a factmas folder of another command (a run's results.md), a symbolic link, or an
    existing file unless ``overwrite``."""
    path = Path(path)
    root = find_root(path)
    holder = root if root is not None else (path.parent if (path.parent / "config.json").is_file()
                                            and (path.parent / "checkpoints").is_dir() else None)
    if holder is not None:
        raise OutputError(f"{option} {printable(path)}: lies inside {printable(holder)}, a factmas "
                          f"{kind_of(holder) or 'run'} folder whose files are its own; write elsewhere")
    if path.is_symlink():
        raise OutputError(f"{option} {printable(path)}: is a symbolic link; factmas does not write "
                          "through it")
    if path.exists() and not overwrite:
        raise OutputError(f"{option} {printable(path)}: exists; pass --overwrite to replace it or "
                          "choose another name")

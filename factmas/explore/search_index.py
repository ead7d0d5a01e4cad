"""The embeddings of a folder of photos, computed once and kept beside the photos.

``factmas search --images DIR`` embeds every image file of DIR (not its subfolders) with the run's
model and saves the result as::

    DIR/.factmas-index/<run key>-<files key>.npz
        names   str [N]            file names (sorted) that were embedded
        phi     float32 [N, 3, d]  raw image embeddings (``RunEmbedder.pixels``)
        failed  str [E]            "name: reason" of files that could not be read (not retried)

``run key`` = BLAKE2b of the checkpoint file's bytes, the image size and the flip setting (the run's
``eval.flip_average``); ``files key`` = BLAKE2b of the names and contents (bytes) of the image files. The file is written atomically
(temporary name, then rename); it is reused while the run and the files are unchanged, and a change
of either gives a new key, so the index is rebuilt (older indexes of the same run that factmas wrote, listed in the folder's manifest, are
removed). A ``.factmas-index`` that is a symbolic link is refused; an index whose stored names are
not the folder's image files is not used.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from factmas.data.imageio import ImageError, load_image
from factmas import outdir
from factmas.io import atomic_path

log = logging.getLogger(__name__)

INDEX_DIR = ".factmas-index"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_files(folder: str | Path) -> list[Path]:
    """Image files (by suffix, case-insensitive) directly in ``folder``, sorted by name.

    Raises:
        ValueError: ``folder`` is not a directory or holds no image file (the message names it).
    """
    d = Path(folder)
    if not d.is_dir():
        raise ValueError(f"--images {d}: not a directory")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"--images {d}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def run_key(checkpoint: str | Path, image_size: int, flip_average: bool = False) -> str:
    """16 hex digits: BLAKE2b of the checkpoint file's bytes, the image size and the flip setting."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"v1:{image_size}:".encode() + (b"flip:" if flip_average else b""))
    with open(checkpoint, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def files_key(files: list[Path]) -> str:
    """16 hex digits: BLAKE2b of each file's name and content (its bytes), so that a photo replaced by
    another of the same name, size and modification time gives another key (issue 30)."""
    h = hashlib.blake2b(digest_size=8)
    for p in files:
        h.update(p.name.encode("utf-8", "surrogateescape") + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        h.update(b"\n")
    return h.hexdigest()


def names_inside(names: list[str], files: list[Path]) -> bool:
    """True when every stored name is a plain file name of the folder's current image files (no
    folder part, no ``..``): a planted or stale index's names are never trusted or printed."""
    present = {p.name for p in files}
    return all(n in present and n == Path(n).name and n not in (".", "..") for n in names)


def embed_files(embedder: Any, files: list[Path], size: int) -> tuple[list[str], np.ndarray, list[str]]:
    """Embed image files with ``embedder.pixels`` (``factmas.model.embedder.RunEmbedder``: the run's
    flip averaging), reading ``embedder.batch_size`` files at a time.

    Args:
        files: image paths.  size: the dataset's image side (``factmas.data.imageio.load_image``).
    Returns:
        (names of the embedded files, raw φ float32 [N, 3, d], "name: reason" of unreadable files).
    """
    names, failed, chunks, pixels, batch_names = [], [], [], [], []

    def flush():
        if pixels:
            chunks.append(embedder.pixels(np.stack(pixels)).numpy())
            names.extend(batch_names)
            pixels.clear()
            batch_names.clear()

    for p in files:
        try:
            pixels.append(load_image(p, size))
            batch_names.append(p.name)
        except ImageError as e:
            failed.append(f"{p.name}: {e.reason}")
        if len(pixels) >= embedder.batch_size:
            flush()
    flush()
    d = int(embedder.model.cfg.embed_dim)
    phi = np.concatenate(chunks) if chunks else np.zeros((0, 3, d), np.float32)
    return names, phi, failed


def folder_embeddings(embedder: Any, checkpoint: str | Path, folder: str | Path, size: int
                      ) -> tuple[list[Path], np.ndarray, list[str], bool]:
    """The folder's image embeddings, from its saved index or computed and saved (module docstring),
    by ``embedder`` (the run's ``factmas.model.embedder.RunEmbedder``); its ``flip_average`` is part
    of the index's key.

    Returns:
        (paths of the embedded images, raw φ float32 [N, 3, d], "name: reason" of unreadable
        files, True when the saved index was reused).
    Raises:
        ValueError: not a folder, no image files, or none of them readable.
    A folder that cannot be written (read-only) is searched all the same; the index is not saved
    (a warning says so).
    """
    folder = Path(folder)
    files = image_files(folder)
    rk = run_key(checkpoint, size, embedder.flip_average)
    index_dir = folder / INDEX_DIR
    if index_dir.is_symlink():
        raise ValueError(f"--images {folder}: {INDEX_DIR} is a symbolic link (to "
                         f"{os.readlink(index_dir)}); factmas neither reads nor writes an index "
                         "through it: remove the link")
    path = index_dir / f"{rk}-{files_key(files)}.npz"
    if path.exists() and not path.is_symlink():
        try:
            with np.load(path, allow_pickle=False) as z:
                names, phi, failed = [str(n) for n in z["names"]], z["phi"], [str(s) for s in z["failed"]]
            if not names_inside(names, files):
                log.warning("search index %s names files that are not images of %s; rebuilding it",
                            path, folder)
            elif phi.shape[0] == len(names):
                log.info("search index: %s (reused, %d images)", path, len(names))
                return [folder / n for n in names], phi, failed, True
        except (OSError, ValueError, KeyError) as e:
            log.warning("search index %s unreadable (%s); rebuilding it", path, e)
    names, phi, failed = embed_files(embedder, files, size)
    if not names:
        raise ValueError(f"--images {folder}: none of {len(files)} image files could be read "
                         f"(first: {failed[0]})")
    try:
        outdir.claim(index_dir, "search-index", legacy=True)     # no link inside; a manifest
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, names=np.array(names, dtype=str), phi=phi.astype(np.float32),
                         failed=np.array(failed, dtype=str))
    except OSError as e:
        log.warning("search index not saved (%s: %s); the next search embeds the photos again",
                    path, e.strerror or e)
        return [folder / n for n in names], phi, failed, False
    ours = set(outdir.written(index_dir))
    for old in index_dir.glob(f"{rk}-*.npz"):
        if old != path and old.name in ours and not old.is_symlink():   # only what factmas wrote
            try:
                os.remove(old)
            except OSError:
                pass
    log.info("search index: %s written (%d images)", path, len(names))
    return [folder / n for n in names], phi, failed, False

"""Text input files (captions, annotations) opened as UTF-8 with errors that name file and line."""
from __future__ import annotations

import io
from pathlib import Path


def open_utf8(path: str | Path, error: type[Exception]) -> io.StringIO:
    """The whole of ``path`` decoded as UTF-8 (a BOM is dropped), as a text stream for ``csv`` or
    line iteration (newlines untranslated, as ``open(newline="")``).

    Raises:
        error: the file is not UTF-8; the message names the file, the line and the byte offset of
            the first undecodable byte (e.g. a Latin-1 file: save it as UTF-8).
        OSError: the file cannot be read.
    """
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                    "save the file as UTF-8") from None
    return io.StringIO(text, newline="")

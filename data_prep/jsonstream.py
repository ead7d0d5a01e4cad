"""Records of a large JSON array read one at a time (Visual Genome's annotation files), stdlib only.

Visual Genome ships each annotation file as one JSON array of per-image records; ``json.load`` holds
all of it as Python objects, about 6× the file's size (``bench/results/vg_read.json``). ``iter_records``
decodes the array element by element with ``json.JSONDecoder.raw_decode`` on a sliding text buffer,
so memory is one record plus a buffer of about 2 MiB characters. ``ijson`` would do the same but is
not a dependency of factmas.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

CHUNK = 1 << 20              # characters read at a time
MAX_RECORD = 64 << 20        # a single record longer than this many characters is refused
_WS = " \t\n\r"


def iter_records(path: str | Path, error: type[Exception],
                 max_record: int = MAX_RECORD) -> Iterator[tuple[int, object]]:
    """Yield ``(index, value)`` for each element of the JSON array in ``path``, in file order.

    Args:
        path: a UTF-8 JSON file whose top level is an array.
        error: the exception class raised for malformed input.
        max_record: the longest element accepted, in characters.
    Raises:
        error: the file is missing, not UTF-8, its top level is not an array, an element is not
            valid JSON or longer than ``max_record`` characters, or text follows the array; the
            message names the file, the element index and the character offset.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    reader = _Reader(path, error)
    try:
        yield from _records(path, reader, error, max_record)
    finally:
        reader.close()


def _records(path: Path, reader: "_Reader", error: type[Exception],
             max_record: int) -> Iterator[tuple[int, object]]:
    dec = json.JSONDecoder()
    reader.skip_ws()
    if reader.peek() != "[":
        raise error(f"{path}: expected a JSON array of per-image records at character "
                    f"{reader.offset()}, found {reader.peek() or 'the end of the file'!r}")
    reader.pos += 1
    index = 0
    reader.skip_ws()
    if reader.peek() == "]":
        reader.pos += 1
    else:
        while True:
            reader.fill(CHUNK)
            start = reader.offset()
            while True:
                try:
                    value, end = dec.raw_decode(reader.buf, reader.pos)
                    break
                except json.JSONDecodeError as e:
                    if reader.eof or len(reader.buf) - reader.pos > max_record:
                        why = (f"longer than {max_record} characters" if not reader.eof
                               else f"not valid JSON ({e.msg} at character {reader.base + e.pos})")
                        raise error(f"{path}: record {index} (character {start}): {why}") from None
                    reader.fill(len(reader.buf) - reader.pos + CHUNK)
            reader.pos = end
            yield index, value
            index += 1
            reader.skip_ws()
            c = reader.peek()
            if c == ",":
                reader.pos += 1
                reader.skip_ws()
                continue
            if c == "]":
                reader.pos += 1
                break
            raise error(f"{path}: after record {index - 1}: expected ',' or ']' at character "
                        f"{reader.offset()}, found {c or 'the end of the file'!r}")
    reader.skip_ws()
    if reader.peek():
        raise error(f"{path}: text after the closing ']' at character {reader.offset()}")


class _Reader:
    """A text buffer over a UTF-8 file: ``buf[pos:]`` is unread, ``base`` counts dropped characters."""

    def __init__(self, path: Path, error: type[Exception]):
        self.path, self.error = path, error
        self.fh = open(path, encoding="utf-8-sig")
        self.buf, self.pos, self.base, self.eof = "", 0, 0, False

    def offset(self) -> int:
        return self.base + self.pos

    def fill(self, want: int) -> None:
        """Make at least ``want`` unread characters available (fewer at the end of the file)."""
        if self.eof or len(self.buf) - self.pos >= want:
            return
        try:
            more = self.fh.read(max(want - (len(self.buf) - self.pos), CHUNK))
        except UnicodeDecodeError as e:
            raise self.error(f"{self.path}: not UTF-8 text near character {self.offset()} "
                             f"({e.reason}); save the file as UTF-8") from None
        self.base += self.pos
        self.buf, self.pos = self.buf[self.pos:] + more, 0
        if not more:
            self.eof = True
            self.close()

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.close()

    def peek(self) -> str:
        self.fill(1)
        return self.buf[self.pos] if self.pos < len(self.buf) else ""

    def skip_ws(self) -> None:
        while True:
            self.fill(1)
            n = len(self.buf)
            while self.pos < n and self.buf[self.pos] in _WS:
                self.pos += 1
            if self.pos < n or self.eof:
                return

"""Progress of long stages that reaches a log: a tqdm bar on a terminal, and when the output is a file
or a pipe (a redirected job, ``tee``) a whole line with the rate and the time left every ``interval``
seconds (30 by default).

    bar = progress_bar(total=len(images), desc="feature cache", unit="img", unit_scale=True)
    with bar:
        for ...: bar.update(n)

A logged line reads ``12:03:41 feature cache: 4,096/16,182 img (25%), 48.1 img/s, 01:25 elapsed,
04:11 left`` (without a total: count, rate and elapsed). A stage shorter than one interval prints
nothing; a stage that printed a line ends with ``… done: N img in 05:36, 48.2 img/s`` (its mean rate)
unless its last line already showed the whole count.

May import: tqdm, and nothing of factmas, so that every folder (and ``data_prep``) may use it.
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Iterable, Iterator

from tqdm import tqdm

#: seconds between two lines of a stage when the output is not a terminal (tests set it small)
LOG_INTERVAL = 30.0
_switched_off = 0                   # > 0 inside ``switched_off``: every bar is disabled


@contextlib.contextmanager
def switched_off(off: bool = True) -> Iterator[None]:
    """Within the block, ``progress_bar`` shows nothing when ``off`` (e.g. a run with
    ``--no-progress``: the bars of code that has no progress flag of its own, such as MAS Ω)."""
    global _switched_off
    _switched_off += int(off)
    try:
        yield
    finally:
        _switched_off -= int(off)


class LogLines(tqdm):
    """A tqdm that writes one full line (newline-ended, no carriage return) at most every
    ``interval`` seconds instead of redrawing a bar: for logs. Every tqdm argument is accepted;
    ``mininterval`` is ``interval`` and ``miniters`` 1, so the clock is read at each update."""

    def __init__(self, *args: Any, interval: float = LOG_INTERVAL, **kwargs: Any) -> None:
        self._interval = float(interval)
        self._lines = 0
        self._line_t = None             # time of the last line (None: the start)
        self._line_n = 0                # the count it showed
        kwargs.update(mininterval=self._interval, miniters=1)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Write a line when ``interval`` seconds have passed since the last one (or the start) and
        something was counted; tqdm calls this on updates, ``set_postfix`` and ``refresh``."""
        if msg == "":                    # tqdm clearing the bar: nothing to clear in a log
            return False
        now = self._time()
        since = getattr(self, "start_t", now) if self._line_t is None else self._line_t
        if self.n > 0 and now - since >= self._interval:
            self._write_line(now)
        return True

    def _write_line(self, now: float, final: bool = False) -> None:
        self.fp.write(f"{time.strftime('%H:%M:%S')} {self.line(final)}\n")
        self.fp.flush()
        self._lines += 1
        self._line_t, self._line_n = now, self.n

    def line(self, final: bool = False) -> str:
        """The text of a log line: count (of total), rate, elapsed and time left; ``final``: the
        stage's mean rate. The rate is tqdm's smoothed one while the stage runs."""
        d = self.format_dict
        n, total, elapsed, unit = d["n"], d["total"], d["elapsed"], d["unit"]
        rate = d.get("rate") if not final else None
        if not rate:                              # the mean rate of the whole stage
            rate = n / elapsed if elapsed > 0 else 0.0
        speed = f"{rate:,.1f} {unit}/s" if rate < 100 else f"{rate:,.0f} {unit}/s"
        desc = d.get("prefix") or "progress"
        post = f", {d['postfix']}" if d.get("postfix") else ""
        if final:
            return f"{desc} done: {n:,} {unit} in {self.format_interval(elapsed)}, {speed}{post}"
        if not total:
            return f"{desc}: {n:,} {unit}, {speed}, {self.format_interval(elapsed)} elapsed{post}"
        left = self.format_interval((total - n) / rate) if rate > 0 else "?"
        return (f"{desc}: {n:,}/{total:,} {unit} ({100 * n / total:.0f}%), {speed}, "
                f"{self.format_interval(elapsed)} elapsed, {left} left{post}")

    def clear(self, nolock: bool = False) -> None:
        """Nothing to clear in a log (tqdm.write, e.g. logging through ``logging_redirect_tqdm``,
        clears the bars around each message)."""

    def close(self) -> None:
        """End the stage: a last line with the mean rate if the stage printed any; no bar to clear."""
        if getattr(self, "disable", True):
            return
        if self._lines:                 # also when the last line came at the last update: it is
            self._write_line(self._time(), final=True)      # not the stage's "done" with its mean rate
        self.leave = False
        super().close()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):     # no isatty, or a closed stream
        return False


def progress_bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "",
                 unit: str = "it", enabled: bool = True, interval: float | None = None,
                 file: Any = None, **kwargs: Any) -> tqdm:
    """The progress of one stage: a tqdm bar on a terminal, ``LogLines`` elsewhere.

    Args:
        iterable: wrapped like ``tqdm(iterable)`` (None: call ``update`` by hand).
        total, desc, unit, and ``kwargs`` (e.g. ``unit_scale``, ``leave``): tqdm's.
        enabled: False: nothing is shown (a disabled tqdm, e.g. ``--no-progress`` or rank > 0); also
            nothing inside ``switched_off()``.
        interval: seconds between two log lines (None: ``LOG_INTERVAL``, 30 s).
        file: the stream (None: ``sys.stderr`` at the time of the call).
    Returns:
        a tqdm (use as a context manager, or iterate it).
    Raises:
        ValueError: ``interval`` < 0.
    """
    interval = LOG_INTERVAL if interval is None else float(interval)
    if interval < 0:
        raise ValueError(f"progress interval must be >= 0 seconds, got {interval}")
    stream = sys.stderr if file is None else file
    if not enabled or _switched_off:
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True, file=stream, **kwargs)
    if _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, **kwargs)
    kwargs.pop("mininterval", None)
    return LogLines(iterable, total=total, desc=desc, unit=unit, file=stream, interval=interval, **kwargs)


__all__ = ["LOG_INTERVAL", "LogLines", "progress_bar", "switched_off"]

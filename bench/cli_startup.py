"""Start-up time of the command line and of ``import factmas``, for this checkout against another one.

    .venv/bin/python bench/cli_startup.py [--baseline DIR] [--repeats 5] [--out FILE]

Each measurement is a fresh Python process (``python -m factmas.cli --help``, ``python -m factmas
--help`` where the checkout has ``factmas/__main__.py``, and ``python -c "import factmas"``), run with
``PYTHONPATH`` set to the checkout's root; the checkouts alternate repeat by repeat, so that a change
of load hits both. ``--baseline DIR``: a folder holding another version's ``factmas/`` package (e.g.
``git archive COMMIT factmas | tar -x -C DIR``). The table gives medians; the ratio is this checkout's
time ÷ the baseline's, repeat by repeat (median).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common

COMMANDS = {"cli --help": ["-m", "factmas.cli", "--help"],
            "-m factmas --help": ["-m", "factmas", "--help"],
            "import factmas": ["-c", "import factmas"]}


def once(root: Path, args: list[str]) -> float | None:
    """Wall seconds of ``python ARGS`` with ``root`` on PYTHONPATH; None when it fails."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, *args], env=env, cwd=root, capture_output=True)
    return time.perf_counter() - t0 if out.returncode == 0 else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", help="folder holding another version's factmas/ package")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(common.RESULTS / "cli_startup.json"))
    args = p.parse_args(argv)
    info = common.machine_info()
    roots = {"this": common.REPO} | ({"baseline": Path(args.baseline).resolve()} if args.baseline else {})
    times: dict[str, dict[str, list[float | None]]] = {r: {c: [] for c in COMMANDS} for r in roots}
    for _ in range(args.repeats):
        for name, a in COMMANDS.items():
            for r, root in roots.items():
                times[r][name].append(once(root, a))
    rows = []
    for name in COMMANDS:
        row = {"command": name}
        for r in roots:
            ok = [t for t in times[r][name] if t is not None]
            row[r] = statistics.median(ok) if len(ok) == args.repeats else None
        pairs = list(zip(times["this"][name], times.get("baseline", {}).get(name, [])))
        if pairs and all(a and b for a, b in pairs):
            row["ratio"] = statistics.median(a / b for a, b in pairs)     # repeat by repeat
        rows.append(row)
    cols = [("command", "command", "")] + [(r, f"{r} median s", ".3f") for r in roots]
    if "baseline" in roots:
        cols.append(("ratio", "median of this ÷ baseline per repeat", ".2f"))
    for row in rows:
        for k, v in list(row.items()):
            if v is None:
                row[k] = float("nan")
    common.print_table(rows, cols)
    print(common.load_line(info))
    common.write_results(args.out, {"machine": info, "repeats": args.repeats, "rows": rows,
                                    "times": {r: t for r, t in times.items()},
                                    "roots": {r: str(p) for r, p in roots.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())

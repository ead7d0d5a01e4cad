"""The regime table of issue 27 (when does MAS beat finetune?), from the regimes' paper tables.

    python eval/regime_table.py --regimes docs/results/regimes --out docs/results/regimes/table
        [--pilot runs/pilot] [--today docs/results/paper_table] [--overwrite]

Reads every regime folder under ``--regimes`` (R0..R4, any subset; each an ``eval/paper_table.py``
output, ``docs/regimes.md``) and writes OUT.md, OUT.csv and OUT.png: per regime and method the
final (test) runs' mean ± std over seeds (with n) of fact→image mAP and forgetting, image→fact mAP,
image→fact top-5 and forgetting, LFL's standard and generalized means; MAS − finetune ± the pooled
std, flagged beyond 2 pooled std; the λ chosen on val. With ``--pilot DIR`` also the pilot table
(``DIR/<regime>/results.json``: one finetune run per regime on val) against today's finetune
forgetting (``--today``: a committed paper table). What is computed: ``factmas.experiments.regime_table``
(``regime_pilot``, ``regime_plot``).

Exit status: 0 written; 2 a missing folder, a malformed results.json (named), an output that exists
without ``--overwrite``.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from factmas.errors import FactmasError
from factmas.io import atomic_write_text
from factmas.experiments import regime_pilot, regime_plot, regime_table as rt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="eval/regime_table.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--regimes", required=True, help="folder holding the regime folders R0, R1, ...")
    p.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.md, .csv and .png")
    p.add_argument("--pilot", help="folder of pilot runs, one <regime>/results.json each (val images)")
    p.add_argument("--today", default="docs/results/paper_table",
                   help="the paper table whose finetune runs are today's forgetting (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace PREFIX.md/.csv/.png if present")
    args = p.parse_args(argv)
    out = Path(args.out)
    paths = [out.with_name(out.name + ext) for ext in (".md", ".csv", ".png")]
    try:
        if not args.overwrite:
            there = [str(q) for q in paths if q.exists()]
            if there:
                raise FileExistsError(f"{', '.join(there)} exist(s); pass --overwrite to replace")
        regimes = [rt.read_regime(f) for f in rt.find_regimes(Path(args.regimes))]
        pilot = None
        if args.pilot:
            today = regime_pilot.today_forgetting(Path(args.today)) if args.today else None
            pilot = regime_pilot.pilot_markdown(regime_pilot.pilot_rows(Path(args.pilot), today), today)
        command = "python eval/regime_table.py " + " ".join(map(shlex.quote, argv if argv is not None
                                                                else sys.argv[1:]))
        atomic_write_text(paths[0], rt.table_markdown(regimes, pilot, command))
        atomic_write_text(paths[1], rt.to_csv(regimes))
        regime_plot.bar_plot(regimes, paths[2])
    except (ValueError, FileExistsError, FactmasError) as e:
        print(f"regime_table: error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    from factmas.errors import guarded_main
    sys.exit(guarded_main("regime_table", main, sys.argv[1:]))

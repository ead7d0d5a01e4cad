"""One evaluator against another on the same case: run this script once per checkout and compare.

    OMP_NUM_THREADS=1 PYTHONPATH=<checkout> .venv/bin/python bench/eval_side_by_side.py N F OUT.json

Builds ``eval_exact.make_case(N, F, 4)`` (seed 0), times ``eval_exact.floor_seconds`` (the score
matrix alone) and then ``Evaluator.evaluate_embeddings`` of whichever ``factmas`` PYTHONPATH
imports, at 1 thread, and writes {"floor_s", "total_s", "timing", "over_floor", "metrics"} to
OUT.json, so that two checkouts' runs, back to back under the same load, can be compared figure by
figure (metrics equal as JSON) and ratio by ratio. The side-by-side numbers of
``bench/results/eval_exact_vs_previous.json`` came from it (6015e2b, then this branch's evaluator).
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from eval_exact import fake_data, floor_seconds, make_case
from factmas.config import EvalConfig
from factmas.evaluation.evaluator import Evaluator


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    n, f, out = int(argv[0]), int(argv[1]), argv[2]
    torch.set_num_threads(1)
    phi, psi, order, pairs, task, tokens = make_case(n, f, 4)
    data = fake_data(n, order, pairs, task, tokens)
    ev = Evaluator(data, "bench", EvalConfig())
    floor = floor_seconds(phi, psi, order)
    t0 = time.perf_counter()
    res = ev.evaluate_embeddings(torch.from_numpy(phi), torch.from_numpy(psi))
    total = time.perf_counter() - t0
    timing = res.pop("timing")
    print(f"floor {floor:.2f} s, evaluation {total:.2f} s = {total / floor:.2f} x", flush=True)
    with open(out, "w") as fh:
        json.dump({"floor_s": floor, "total_s": total, "over_floor": total / floor, "timing": timing,
                   "metrics": res}, fh, default=lambda x: float(x) if np.isscalar(x) else str(x))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A torchrun worker for tests/distributed/test_shard_eval.py and bench/shard_eval.py (not a test
module): each rank evaluates its share of given embeddings (``Evaluator.evaluate_sharded``), rank 0
writes the metrics as JSON.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed/shard_eval_worker.py \
        DATA.h5 SPLIT EMB.npz OUT.json [--search-batch B] [--repeat R] [--window-budget E]

EMB.npz holds ``phi`` float32 [N_pool, 3, d] (the pool images in ``Evaluator.image_ids`` order) and
``psi`` float32 [F, 3, d]. ``--repeat R``: evaluate R times, the JSON's "wall_s" lists each time
(between barriers, rank 0's clock).
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("split")
    p.add_argument("emb")
    p.add_argument("out")
    p.add_argument("--search-batch", type=int, default=None)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--window-budget", type=int, default=None,
                   help="column_ranks.WINDOW_BUDGET for this run (and INFO logs on stderr)")
    args = p.parse_args()
    if args.window_budget is not None:
        import logging
        from factmas.evaluation import column_ranks
        column_ranks.WINDOW_BUDGET = args.window_budget
        logging.basicConfig(level=logging.INFO)
    import numpy as np
    import torch
    from factmas import distributed
    from factmas.config import EvalConfig
    from factmas.data.dataset import read_dataset
    from factmas.evaluation.evaluator import Evaluator
    distributed.start_from_env("cpu")
    finished = False
    try:
        data = read_dataset(args.data)
        cfg = EvalConfig() if args.search_batch is None else EvalConfig(search_batch=args.search_batch)
        ev = Evaluator(data, args.split, cfg)
        emb = np.load(args.emb)
        lo, hi = distributed.shard_bounds(len(ev.image_ids))
        phi, psi = torch.from_numpy(emb["phi"][lo:hi]), torch.from_numpy(emb["psi"])
        walls = []
        for _ in range(args.repeat):
            distributed.barrier()
            t0 = time.perf_counter()
            result = ev.evaluate_sharded(phi, psi, lo)
            distributed.barrier()
            walls.append(time.perf_counter() - t0)
        if distributed.is_main():
            result["wall_s"] = walls
            result["world"] = distributed.size()
            with open(args.out, "w") as f:
                json.dump(result, f)
        finished = True
    finally:
        distributed.stop(clean=finished)


if __name__ == "__main__":
    main()

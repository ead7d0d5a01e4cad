"""A torchrun worker for tests/distributed/test_distributed.py (not a test module): trains one run per method
on the process group torchrun describes, like ``factmas train`` would.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed/worker.py \
        DATA.h5 CONFIG.json OUT_ROOT mas,ewc [--fail-rank R]

``--fail-rank R``: rank R raises in the Ω of the second task (after the first task's checkpoint) while
the others wait for it in the all-reduce of Ω (a failing rank must stop the others instead of leaving
them waiting; the run is then resumed).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("config")
    p.add_argument("out_root")
    p.add_argument("methods")
    p.add_argument("--fail-rank", type=int)
    args = p.parse_args()
    from factmas import distributed
    from factmas.config import RunConfig
    from factmas.trainer import train
    distributed.start_from_env("cpu")
    if args.fail_rank is not None and distributed.rank() == args.fail_rank:
        from factmas.methods.mas import MAS
        importance, calls = MAS.estimate_importance, []

        def fail_in_task_2(*a, **k):          # call 1: task 1's Ω (images and facts)
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError(f"injected failure on rank {args.fail_rank}")
            return importance(*a, **k)
        MAS.estimate_importance = fail_in_task_2
    finished = False
    try:
        for method in args.methods.split(","):
            cfg = RunConfig.from_json(args.config)
            cfg.data, cfg.out, cfg.train.method = args.data, str(Path(args.out_root) / method), method
            train(cfg, progress=False)
        finished = True
    finally:
        distributed.stop(clean=finished)


if __name__ == "__main__":
    main()

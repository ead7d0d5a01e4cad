"""Time one full evaluation (embedding, search, metrics) of a randomly initialised model.

    python bench/time_eval.py --data data/flickr8k.h5 [--split random4_seed0] [--repeats 3]
                             [--device cpu] [--image-pool all|task] [--threads N]

Prints the median seconds of each part over the repeats (every evaluation embeds everything and
builds its FAISS indexes anew, as after every task in training), the numbers of images and facts,
and the headline metric of the untrained model.
"""
import argparse
import dataclasses
import json
import statistics
import sys
import time

import torch

from factmas.config import EvalConfig, ModelConfig
from factmas.data.dataset import read_dataset
from factmas.evaluation.evaluator import HEADLINE, Evaluator
from factmas.model import build_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="random4_seed0")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--image-pool", default="all", choices=["all", "task"])
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = read_dataset(args.data)
    load_s = time.perf_counter() - t0
    torch.manual_seed(0)
    model = build_model(ModelConfig(), len(data.vocab)).to(args.device).eval()
    ev = Evaluator(data, args.split, dataclasses.replace(EvalConfig(), image_pool=args.image_pool),
                   args.device)
    runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        m = ev.evaluate(model)
        runs.append({**m["timing"], "total_s": time.perf_counter() - t0})
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    fig = {"images": int(len(ev.image_ids)), "facts": int(data.num_facts),
           "image_size": int(data.images.shape[1]), "torch_threads": torch.get_num_threads(),
           "device": args.device, "repeats": args.repeats, "dataset_load_s": load_s,
           "median": med, "runs": runs, HEADLINE + "_all_untrained": m[HEADLINE]["all"]}
    print(f"{fig['images']} test images × {fig['facts']} facts, image size {fig['image_size']}, "
          f"{fig['torch_threads']} torch threads, {args.device}; median of {args.repeats}:")
    for k, v in med.items():
        print(f"  {k:<10} {v:8.3f} s")
    print(f"  untrained {HEADLINE} over all facts: {m[HEADLINE]['all']:.4f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(fig, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

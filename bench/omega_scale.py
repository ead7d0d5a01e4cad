"""The scale of MAS's Ω on the raw output (Eq. 2) against the normalized-output ablation
(``train.omega_output: normalized``, ``factmas.methods.mas``), on one trained checkpoint.

    .venv/bin/python bench/omega_scale.py RUN_DIR [--checkpoint task0.pt] [--images 400] [--facts 300]

Both estimators run on the same first ``--images`` training images (the run's model inputs: cached
features for a pretrained backbone) and the first ``--facts`` facts; prints Σ Ω per branch for each
and their ratio raw ÷ normalized, the factor by which the ablation's λ grid is shifted
(``factmas.experiments.paper_table.GRIDS``), and the mean slot norm ‖φ_s‖ of the raw image
embeddings. Exit status 2 on a run directory that cannot be loaded.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    from factmas.model.features import image_inputs
    from factmas.methods.mas import mas_importance, normalized_mas_importance
    from factmas.run.load import RunLoadError, load_run
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--checkpoint", default="task0.pt", help="checkpoint file name (default task0.pt)")
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--facts", type=int, default=300)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        cfg, data, model, _ = load_run(a.run_dir, checkpoint=a.checkpoint, device="cpu", load_images=True)
    except RunLoadError as e:
        print(f"omega_scale: {e}", file=sys.stderr)
        return 2
    inputs = image_inputs(model, data, "cpu", progress=False)
    ids = np.flatnonzero(data.image_split == 0)[:a.images]
    images = [inputs.get(ids[i:i + 100]) for i in range(0, len(ids), 100)]
    tokens = torch.from_numpy(data.tokens.astype(np.int64))[:a.facts]
    order = torch.from_numpy(data.order.astype(np.int64))[:a.facts]
    facts = [(tokens[i:i + 100], order[i:i + 100]) for i in range(0, len(order), 100)]
    raw = mas_importance(model, images, facts)
    norm = normalized_mas_importance(model, images, facts)
    print(f"{a.run_dir} ({a.checkpoint}): {len(ids)} images, {len(order)} facts")
    for branch in ("image_branch", "fact_branch"):
        r = sum(float(v.sum()) for n, v in raw.items() if n.startswith(branch))
        q = sum(float(v.sum()) for n, v in norm.items() if n.startswith(branch))
        print(f"{branch}: Σ Ω raw {r:.4g}, normalized {q:.4g}, raw ÷ normalized {r / q:.3g}")
    with torch.no_grad():
        phi = model.image_branch(images[0])
    print(f"mean slot norm ‖φ_s‖ of the raw image embeddings: {float(phi.norm(dim=-1).mean()):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

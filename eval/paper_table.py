"""The MAS paper's facts comparison on factmas data, in one command.

    python eval/paper_table.py --data data/flickr8k.h5 [--out runs/paper_table] [--quick]
        [--seeds 0,1,2] [--semantic-seeds 0] [--disjoint-seeds 0] [--methods finetune,mas,...]
        [--one-run ewc,si] [--epochs 3] [--search-epochs 3] [--jobs 2] [--config RUNCONFIG.json]
        [--grid mas=0,1,10,100]

Rows: finetune, LwF, EWC, SI, MAS, ℓ-MAS and joint (the upper bound), and the ablation rows (MAS
with Ω from test or train+test images, transductive; MAS with Ω of the normalized output; finetune
and MAS trained with SGD), which run on the first random split and seed only, as do the methods
named in ``--one-run``. Each runs on ``random4_seed{s}`` with seed s, on ``semantic4`` for each
``--semantic-seeds`` seed and on the image-disjoint ``disjoint4_seed{s}`` for each ``--disjoint-seeds``
seed; every setting not given is the trainer's default (``--config`` replaces them).

λ is chosen on the val images, never the test set, by ½ (fact→image + image→fact mAP) over all facts
after the last task; every default grid includes λ = 0, and a grid whose best value is at its edge is
extended (at most 3 rounds) until that value is interior.
What runs and how λ is chosen: ``factmas.experiments.paper_table``; the outputs (paper_table.md,
.csv, .png, results.json, one run directory per run): ``factmas.experiments.paper_report``; the
options: ``factmas.cli.paper``. A run with a timing.json is complete and is not repeated, so
re-running the command continues a killed experiment.

Cost, measured: on the pretrained default (data/flickr8k.h5, 224 px) one run takes 4–13 CPU-minutes
of its single thread (finetune about 9, MAS about 12, joint about 9 on random4_seed{s} and semantic4;
4–6 on the image-disjoint split; its CPU seconds are in each run's timing.json); the table in
docs/results/paper_table/ took 9.8 CPU-hours (see its README for the command).
"""
import sys

from factmas.errors import guarded_main
from factmas.cli.paper import main

if __name__ == "__main__":
    sys.exit(guarded_main("paper_table", main, sys.argv[1:]))

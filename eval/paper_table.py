"""The MAS paper's facts comparison on factmas data, in one command.

    python eval/paper_table.py --data data/flickr8k.h5 [--out runs/paper_table] [--quick]
        [--seeds 0,1,2] [--semantic-seeds 0] [--disjoint-seeds 0] [--methods finetune,mas,...] [--epochs 4]
        [--search-epochs 2] [--jobs 2] [--config RUNCONFIG.json] [--grid mas=0.1,1,10]

Methods (rows): finetune, lwf, ewc, si, mas, l-mas, mas_test (MAS with Ω from the task's unlabeled test
images), mas_train+test, joint (all tasks together, the upper bound). Each runs on random4_seed{s}
with seed s for every seed, on semantic4 with the first seed (``--semantic-seeds`` for more), and on
the image-disjoint disjoint4_seed{s} (every training image in one task only) with the first seed
(``--disjoint-seeds``; skipped, with a warning, on a file built before that split), with
``--epochs`` epochs per task (default 4, fewer than the trainer's default of 12, to fit the 2-hour budget;
every other setting is the trainer's default, or ``--config``'s).

How λ is chosen (never on the test set): for each regularized method (lwf, ewc, si, mas, l-mas) every
λ of a 3-value grid (``factmas.experiments.paper_table.GRIDS``; ``--grid`` replaces one) trains random4_seed{first
seed} for ``--search-epochs`` epochs per task and is scored by the fact→image mAP over all facts after
the last task on the *val* image split, images of the training part held out from training
(``EvalConfig.image_split = "val"``). The best λ is used in all final runs; mas_test and
mas_train+test take MAS's λ. The search table is part of the output.

Output in OUT: paper_table.md (per split family: the fact→image mAP per task; both directions side
by side — fact→image mAP, image→fact mAP and top-5, each with forgetting and BWT; Lifelong Fact
Learning's metric per task with its standard and generalized means; reference rows for the
image-frequency ranking and the untrained model; mean ± std over seeds; the command, the commit, the
λ search, the time),
paper_table.csv, paper_table.png (all-facts mAP per method, mean ± std), results.json (everything,
every run's summary and timing), and one run directory per run (search/…, runs/…). A run with a
timing.json is complete and is not repeated, so re-running the command continues a killed experiment.

Time: runs go to ``--jobs`` processes with one torch thread each. On Flickr8k (data/flickr8k.h5, 4 tasks
of ~5,000 training pairs) one run took, in CPU seconds of its single thread (measured on the shared
2-core machine): 45–50 for finetune with 1 epoch per task, +47 per further epoch (all 4 tasks), and
for the Ω estimates +20–40 (MAS, ℓ-MAS, EWC's Fisher over all training pairs). The default experiment
(15 λ-search runs at 2 epochs, 36 final runs at 4 epochs) adds up to ~9,400 CPU s, about 80 minutes
on 2 cores (65–95 min given how much the measurements varied); ``--semantic-seeds 0,1,2`` would add
~30 min. ``--quick`` is a smoke check of about 1–4 minutes (1 epoch, seed 0, finetune/mas/joint,
MAS's grid {1, 10}, a random 10% of the images of a large dataset).
"""
import sys

from factmas.cli.paper import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""What the MAS paper's facts comparison runs: its options resolved into ``paper_table.Settings``
(the defaults of ``--quick`` first, explicit values win), checked against the dataset before any
run (the work behind ``python eval/paper_table.py``'s options; the command line is
``factmas.cli.paper``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

from factmas.config import RunConfig, TrainConfig
from factmas.experiments.paper_table import (GRIDS, QUICK_GRIDS, QUICK_VARIANTS, VARIANT, VARIANTS,
                                             Settings, check_splits, claim_out)

log = logging.getLogger("factmas.experiments.paper_table")

# The trainer's default epochs per task (train.epochs), so that the table is run on the default model.
DEFAULT_EPOCHS = TrainConfig().epochs
# The λ search trains as long as the final runs (--search-epochs defaults to --epochs): on Flickr8k a
# 2-epoch search ranked MAS's λ opposite to 4-epoch training (val 3.36/3.64/3.69% for λ = 1/10/100,
# test 3.45/2.96/2.90% at 4 epochs), so a shorter search is not a proxy for the runs it tunes.
QUICK_FRACTION, QUICK_MIN_IMAGES = 0.1, 2000


def resolve_settings(data: str | Path, num_images: int, splits: Sequence[str] | None = None, *,
                     out: str | Path = "runs/paper_table", quick: bool = False,
                     seeds: Sequence[int] | None = None, semantic_seeds: Sequence[int] | None = None,
                     disjoint_seeds: Sequence[int] | None = None,
                     methods: Sequence[str] | None = None, one_run: Sequence[str] = (),
                     epochs: int | None = None, search_epochs: int | None = None,
                     grids: Mapping[str, tuple[float, ...]] | None = None, jobs: int = 2,
                     image_fraction: float | None = None, config: str | Path | None = None,
                     random_prefix: str = "random4", semantic_split: str = "semantic4",
                     disjoint_prefix: str = "disjoint4") -> Settings:
    """The comparison's ``Settings`` from its options (None: the default, which ``quick`` changes).

    Args:
        data: the HDF5 dataset.  num_images: its number of images (``quick`` runs a random
            ``QUICK_FRACTION`` of more than ``QUICK_MIN_IMAGES``).  splits: its split names (the
            default of ``disjoint_seeds``: the first seed when the file has that split; None: assume
            it has).  out: output folder.  quick: a smoke check (1 epoch, seed 0, ``QUICK_VARIANTS``,
            ``QUICK_GRIDS``).  seeds: of the random splits (default 0, 1, 2).  semantic_seeds:
            default the first seed.  methods: variant labels (``VARIANTS``).  one_run: labels of
            ``methods`` run on the first random split and seed only.  epochs: per task (default
            ``DEFAULT_EPOCHS``).  search_epochs: in the λ search (default ``epochs``).  grids:
            {label: λ values} replacing the default grids.  jobs: worker processes.
            image_fraction: in (0, 1].  config: a base RunConfig JSON file.
    Raises:
        ValueError: an unknown method, a one-run method not among the methods, no seed, a count
            below 1, a fraction outside (0, 1], a searched method without a grid (each names its
            option).  ConfigError: ``config`` cannot be used.
    """
    q = quick
    variants = list(methods) if methods else list(QUICK_VARIANTS) if q else [v.label for v in VARIANTS]
    bad = [v for v in variants if v not in VARIANT]
    if bad:
        raise ValueError(f"--methods: unknown {bad}; valid: {[v.label for v in VARIANTS]}")
    stray = [v for v in one_run if v not in variants]
    if stray:
        raise ValueError(f"--one-run: {stray} not among --methods {variants}")
    seeds = list(seeds) if seeds is not None else ([0] if q else [0, 1, 2])
    if not seeds:
        raise ValueError("--seeds: at least one seed")
    # `is None`, not `or`: an explicit 0 is refused below, never taken for "not given" (issue 30)
    epochs = epochs if epochs is not None else (1 if q else DEFAULT_EPOCHS)
    search_epochs = search_epochs if search_epochs is not None else epochs
    if epochs < 1 or search_epochs < 1 or jobs < 1:
        raise ValueError(f"--epochs, --search-epochs and --jobs must be >= 1, got {epochs}, "
                         f"{search_epochs} and {jobs}")
    all_grids = dict(QUICK_GRIDS if q else GRIDS)
    all_grids.update(dict(grids or {}))
    fraction = (image_fraction if image_fraction is not None
                else QUICK_FRACTION if q and num_images > QUICK_MIN_IMAGES else 1.0)
    if not 0 < fraction <= 1:
        raise ValueError(f"--image-fraction must be in (0, 1], got {fraction}")
    base = RunConfig.from_json(config).to_dict() if config else RunConfig().to_dict()
    base.pop("data"), base.pop("out")
    s = Settings(data=str(Path(data).absolute()), out=str(Path(out).resolve()),   # data: a link kept
                 variants=variants, seeds=seeds,
                 semantic_seeds=(list(semantic_seeds) if semantic_seeds is not None else seeds[:1]),
                 epochs=epochs, search_epochs=search_epochs, grids=all_grids, jobs=jobs,
                 random_prefix=random_prefix, semantic_split=semantic_split,
                 disjoint_seeds=default_disjoint_seeds(disjoint_seeds, disjoint_prefix, seeds, splits),
                 disjoint_prefix=disjoint_prefix,
                 image_fraction=fraction, base=base, one_run=list(one_run))
    missing = [m for m in s.searches() if m not in all_grids]
    if missing:
        raise ValueError(f"no λ grid for {missing}; give --grid {missing[0]}=...")
    return s


def default_disjoint_seeds(given: Sequence[int] | None, prefix: str, seeds: Sequence[int],
                           splits: Sequence[str] | None) -> list[int]:
    """``given``, else the first of ``seeds`` when the file has ``PREFIX_seed{first}`` (or its splits
    are unknown), else none (a file built before the image-disjoint split; a warning says so)."""
    if given is not None:
        return list(given)
    name = f"{prefix}_seed{seeds[0]}"
    if splits is None or name in splits:
        return list(seeds[:1])
    log.warning("the dataset has no image-disjoint split %s (files built before it): the table is "
                "made without it; rebuild the file with data_prep to add it", name)
    return []


def plan_paper_table(data: str | Path, **options) -> Settings:
    """Read ``data``'s split names and image count (not its pixels), resolve the ``options``
    (``resolve_settings``'s keywords), check that the file has every split the plan needs
    (``check_splits``) and claim the output folder (``claim_out``), all before any run.

    Raises:
        DatasetError: ``data`` cannot be read.  ValueError, ConfigError: a bad option, a missing
            split.  FactmasError (``OutputError``): the output folder is refused.
    """
    from factmas.data.dataset import read_dataset
    fd = read_dataset(data, load_images=False)
    settings = resolve_settings(data, len(fd.image_split), sorted(fd.splits), **options)
    check_splits(settings, sorted(fd.splits))
    claim_out(settings.out)
    return settings

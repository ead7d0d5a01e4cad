"""Several runs or a dataset at once: ``compare``, ``make_gallery``, ``build_feature_cache``,
``read_dataset`` (the work of ``factmas compare``, ``factmas gallery`` and ``factmas features``).

Heavy imports happen inside the functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from factmas.api.records import Comparison

if TYPE_CHECKING:
    from factmas.data.dataset import FactData

HEADLINE = "fact_to_image_map"          # factmas.evaluation.metrics.HEADLINE (kept torch- and numpy-free)


def read_dataset(path: str | Path, load_images: bool = True) -> FactData:
    """A factmas HDF5 dataset (``FactData``: images uint8 [N, H, W, 3] read from the file on demand,
    facts, pairs, task splits), validated first (schema v1, ``data_prep/README.md``).

    Raises:
        DatasetError: a missing or unreadable file, a wrong layout or checksum (names file and key).
    """
    from factmas.data.dataset import read_dataset as _read
    return _read(path, load_images=load_images)


def compare(runs: Sequence[str | Path], metric: str = HEADLINE, allow_mixed: bool = False,
            out: str | Path | None = None, overwrite: bool = False) -> Comparison:
    """Runs (methods × seeds) in one table: mean ± std over seeds of each task's final value, all
    facts, average, forgetting, BWT and FWT, with the reference rows (untrained model, frequency).

    Args:
        runs: run directories, or folders holding run directories one level down.  metric: a name of
            ``factmas.experiments.compare.METRIC_CHOICES``.  allow_mixed: compare runs of different datasets,
            splits, image splits or unfinished runs.  out: a path PREFIX: also write the table to
            PREFIX.md and PREFIX.csv (each atomically; checked before the runs are read).
            overwrite: replace PREFIX.md / PREFIX.csv when they exist.
    Raises:
        ValueError: no results.json, an unknown metric, or runs that do not belong in one table
            (the reason and each run's value); PREFIX.md is a directory.  OutputError (a
            ``FactmasError``): PREFIX.md or PREFIX.csv exists without ``overwrite``, or lies in a
            run's folder (``factmas.outdir.check_new_file``).  OSError: they cannot be written.
    Source: ``factmas.experiments.compare``.
    """
    from factmas.experiments import compare as C
    if out is not None:
        from factmas.outdir import check_new_file
        if Path(f"{out}.md").is_dir():
            raise ValueError(f"--out {out}: {out}.md is a directory")
        for suffix in (".md", ".csv"):           # not into a run, not over a file unasked (issue 30)
            check_new_file(f"{out}{suffix}", overwrite)
    if metric not in C.METRIC_CHOICES:
        raise ValueError(f"metric {metric!r}; valid: {list(C.METRIC_CHOICES)}")
    found = C.find_runs([str(r) for r in runs])
    groups, num_tasks = C.collect(found, metric, allow_mixed)
    groups += C.reference_groups(found, metric)
    table = Comparison(metric, num_tasks, tuple(groups))
    if out is not None:
        from factmas.io import atomic_write_text
        atomic_write_text(f"{out}.md", table.markdown())
        atomic_write_text(f"{out}.csv", table.csv())
    return table


def make_gallery(runs: Sequence[str | Path], out: str | Path, photos: int = 8, facts_per_task: int = 3,
                 top_images: int = 5, seed: int = 0, data: str | Path | None = None,
                 device: str = "auto", overwrite: bool = False) -> Path:
    """A static HTML page of what runs retrieve side by side (``factmas gallery``); returns the path
    of ``out/index.html``.

    Args:
        runs: run directories of one dataset and split.  photos: sample test photos (top-5 facts
            each).  facts_per_task: sample facts per task.  top_images: images per fact.  seed: of
            the samples.  data: a dataset file (default: the first run's).  overwrite: replace a
            gallery already in ``out`` (only the files factmas wrote there).
    Raises:
        GalleryError: a run or the dataset cannot be used, runs of different splits, or ``out`` is
            refused (a file, a link inside, someone else's files, a gallery without ``overwrite``).
        OSError: ``out`` cannot be written.
    """
    from factmas.explore.gallery import collect, load_runs
    from factmas.explore.gallery_html import check_out, write_gallery
    check_out(out, overwrite)                    # before the work
    fd, loaded = load_runs([str(r) for r in runs], None if data is None else str(data), device)
    page = collect(fd, loaded, photos, facts_per_task, top_images, seed)
    return write_gallery(out, fd, loaded, page, overwrite=overwrite)


def build_feature_cache(data: str | Path, config: Any = None, backbone: str | None = None,
                        freeze_stages: int | None = None, threads: int | None = None,
                        device: str = "auto", progress: bool = True) -> Path:
    """Compute (or find) the feature cache of a pretrained backbone's frozen stages on a dataset,
    the file every run with that backbone reads (``factmas.model.features``); returns its path.

    Args:
        config: a ``RunConfig`` or its JSON file (its model section is used); None: the defaults.
        backbone, freeze_stages: override the model section.  threads: torch CPU threads.
    Raises:
        ConfigError, DatasetError, UsageError (a backbone without frozen stages, threads < 1),
            ValueError, OSError.
    """
    import torch

    from factmas.config import RunConfig
    from factmas.data.dataset import read_dataset as _read
    from factmas.machine.device import UsageError, resolve_device
    from factmas.model.features import cache_file, load_or_build
    from factmas.model import build_model
    if isinstance(config, RunConfig):
        cfg = RunConfig.from_dict(config.to_dict())
    else:
        cfg = RunConfig.from_json(config) if config else RunConfig()
    if backbone:
        cfg.model.backbone = backbone
    if freeze_stages is not None:
        cfg.model.freeze_stages = freeze_stages
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    fd = _read(data)
    torch.manual_seed(cfg.train.seed)           # as the trainer builds the model
    model = build_model(cfg.model, len(fd.vocab))
    if model.image_stem is None:
        raise UsageError(f"backbone {cfg.model.backbone} has no frozen stages: nothing to cache")
    path = cache_file(fd, model, dev)
    load_or_build(model, fd, dev, progress=progress, path=path)
    return path

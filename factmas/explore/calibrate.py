"""A run's calibrator: fitted on its val images, stored as ``RUN_DIR/calibration.json``, read back.

``fit_run_calibration`` fits P(fact true | distance D) and the abstention threshold p* of a model on
the **val** images of its dataset (``factmas.evaluation.calibration_fit``; never the test images the
tables report). The trainer calls it after the last task (``eval.calibrate``, ``eval.calibration_k``,
``eval.calibration_precision``); ``calibrate_run`` (``factmas calibrate``) does it for a run trained
before calibration existed, or for another checkpoint. ``run_calibrator`` gives ``query``, ``search``
and the gallery the calibrator that fits the weights they loaded, or None with the reason.

The file records the SHA-256 of the weights it was fitted for (``weights_sha256``): a calibrator is
only used with those weights, so ``--checkpoint task1`` on a four-task run gets no probabilities
rather than the last task's.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from factmas.evaluation.calibration import (CalibrationError, Calibrator, load_calibrator,
                                            save_calibrator)

if TYPE_CHECKING:
    import torch


def val_images(data: Any) -> np.ndarray:
    """int64 [N]: the ids of the dataset's val images (image split 1)."""
    from factmas.data.dataset import SPLIT_NAMES
    return np.flatnonzero(data.image_split == SPLIT_NAMES.index("val")).astype(np.int64)


def fit_run_calibration(model: torch.nn.Module, data: Any, inputs: Any, device: Any, cfg: Any, *,
                        checkpoint: str = "last.pt", k: int | None = None,
                        target_precision: float | None = None) -> Calibrator:
    """The calibrator of ``model`` on the val images of ``data``, with its provenance in ``meta``.

    Args:
        inputs: the image inputs (``factmas.model.features.image_inputs``; None: built from ``cfg``).
            cfg: the run's RunConfig (its embedder, ``RunEmbedder.for_run``: ``eval.flip_average``,
            ``eval.embed_batch``; k and target default to ``eval.calibration_k`` and
            ``eval.calibration_precision``).  checkpoint: the name recorded.
    Raises:
        CalibrationError: the dataset has no val images.
    """
    from factmas.evaluation.calibration_fit import fit_on_images, weights_sha256
    from factmas.io import package_versions
    from factmas.model.embedder import RunEmbedder
    from factmas.run.rundir import data_fingerprint

    t0 = time.perf_counter()
    k = cfg.eval.calibration_k if k is None else k
    target = cfg.eval.calibration_precision if target_precision is None else target_precision
    embedder = RunEmbedder.for_run(model, cfg, data, inputs=inputs, device=device)
    cal = fit_on_images(embedder, data, val_images(data), k=k, target_precision=target)
    fp = data_fingerprint(data, cfg.train.split)
    cal.meta.update({"image_split": "val", "checkpoint": Path(checkpoint).name,
                     "weights_sha256": weights_sha256(model.state_dict()),
                     "data_sha256": fp["sha256"], "data": str(data.path),
                     "flip_average": embedder.flip_average,
                     "seconds": round(time.perf_counter() - t0, 3),
                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "versions": {k_: v for k_, v in package_versions().items()
                                  if k_ in ("python", "factmas", "scikit-learn", "numpy")}})
    return cal


def describe(cal: Calibrator) -> str:
    """One line: p*, the target, and what the shown answers reach on val."""
    at = cal.meta.get("at_threshold", {})
    prec = at.get("precision")
    cov = at.get("coverage")
    reached = "" if cal.meta.get("target_reached", True) else " (target not reached: the highest p)"
    return (f"p* = {cal.threshold:.3f} for target precision {cal.meta.get('target_precision')}"
            f"{reached}; on val: precision {'-' if prec is None else f'{prec:.3f}'}, coverage "
            f"{'-' if cov is None else f'{cov:.3f}'} of {at.get('images')} images")


def calibrate_run(run_dir: str | Path, checkpoint: str | None = None, data_path: str | None = None,
                  device: str = "auto", k: int | None = None, target_precision: float | None = None,
                  out: str | Path | None = None) -> tuple[Path, Calibrator]:
    """Fit the calibrator of a trained run's checkpoint and write it (default
    ``RUN_DIR/calibration.json``, atomically, under the run's lock).

    Raises:
        RunLoadError: the run, checkpoint or dataset cannot be used.
        RunDirError: another process holds the run (e.g. it is still training).
        CalibrationError: the dataset has no val images.
        ValueError: the feature cache cannot be used.
    """
    from factmas.run.load import load_run
    from factmas.run.lock import RunLock
    from factmas.run.rundir import RunDir

    cfg, data, model, _ = load_run(run_dir, data_path, checkpoint, device, load_images=True)
    dev = next(model.parameters()).device
    cal = fit_run_calibration(model, data, None, dev, cfg, checkpoint=checkpoint or "last.pt",
                              k=k, target_precision=target_precision)
    path = Path(out) if out else RunDir(run_dir).calibration_path
    if out:
        save_calibrator(path, cal)
    else:
        with RunLock(run_dir):
            save_calibrator(path, cal)
    return path, cal


def run_calibrator(run_dir: str | Path, state_dict: dict | None,
                   path: str | Path | None = None) -> tuple[Calibrator | None, str | None]:
    """(the calibrator, None) when the file was fitted for these weights, else (None, why not: no
    file, an unreadable or invalid file, or other weights); never an exception.

    Args:
        state_dict: the loaded model's weights (``model.state_dict()``); None skips the check.
        path: the calibration file (default ``RUN_DIR/calibration.json``).
    """
    from factmas.evaluation.calibration_fit import weights_sha256
    from factmas.run.rundir import RunDir

    path = Path(path) if path else RunDir(run_dir).calibration_path
    hint = f"`factmas calibrate --run {run_dir}`"
    try:
        cal = load_calibrator(path)
    except FileNotFoundError:
        return None, f"{path}: no calibration; {hint} fits one (probabilities are then shown)"
    except CalibrationError as e:
        return None, f"{e}; {hint} writes a new one"
    if state_dict is not None and cal.meta.get("weights_sha256") != weights_sha256(state_dict):
        return None, (f"{path} was fitted for other weights (checkpoint "
                      f"{cal.meta.get('checkpoint')!r}); {hint} --checkpoint NAME --out FILE fits "
                      "one for this checkpoint, then pass --calibration FILE")
    return cal, None

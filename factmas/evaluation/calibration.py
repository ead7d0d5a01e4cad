"""Calibrated confidence: P(fact true | wildcard distance D), and the abstention threshold p*.

A trained model ranks facts by the wildcard distance D ∈ [0, 4] (``factmas.space``), which says which
fact is closer, not how likely a fact is to be true. The calibrator maps D to that probability:

    p(D) = P(y = 1 | D),   fitted by isotonic regression of y on D, non-increasing in D

(Zadrozny & Elkan, KDD 2002, "Transforming classifier scores into accurate multiclass probability
estimates": calibration by isotonic regression, fitted by pool-adjacent-violators; here scikit-learn's
``IsotonicRegression`` with ``increasing=False, out_of_bounds='clip'``). Here y = 1 when the fact is one of the image's facts
in the dataset, over candidate pairs (image, fact) of held-out images (``factmas.evaluation.
calibration_fit`` draws them: the top-k facts of every val image).

The fitted step function is kept as its breakpoints (``X_thresholds_``, ``y_thresholds_``) and
evaluated with ``np.interp`` (linear between breakpoints, constant outside them), which is what
``IsotonicRegression.predict`` computes; so a calibrator is plain JSON, loaded without pickle.

The abstention threshold p* (``choose_threshold``): over the same candidate pairs, the answers shown
at threshold t are the pairs with p ≥ t; p* is the smallest t whose shown answers reach the target
precision. ``factmas query`` shows an image's top-k facts with p ≥ p* and otherwise says that no
known fact fits the photo.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from factmas.io import atomic_write_json

FORMAT = "factmas-calibration/1"
METHOD = ("isotonic regression of fact truth on the wildcard distance D (scikit-learn "
          "IsotonicRegression, increasing=False, out_of_bounds='clip'; Zadrozny & Elkan 2002)")


class CalibrationError(ValueError):
    """A calibration file or fit input that cannot be used; the message names the file and key."""


@dataclass
class Calibrator:
    """P(fact true | D) as a non-increasing step function, plus the abstention threshold.

    Attributes:
        distance: float64 [B] breakpoints in D, non-decreasing (IsotonicRegression.X_thresholds_).
        probability: float64 [B] p at each breakpoint, non-increasing, in [0, 1] (y_thresholds_).
        threshold: p*: answers with p ≥ p* are shown (``choose_threshold``).
        meta: how it was fitted (pairs, images, k, target precision, data and weights fingerprints).
    """
    distance: np.ndarray
    probability: np.ndarray
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)

    def predict(self, d: Any) -> np.ndarray:
        """p float64 with the shape of ``d`` (distances D, any float array): linear between the
        breakpoints, the end values outside them (= ``IsotonicRegression.predict`` with
        out_of_bounds='clip')."""
        return np.interp(np.asarray(d, np.float64), self.distance, self.probability)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (floats written exactly: Python's repr round-trips float64)."""
        return {"format": FORMAT, "method": METHOD, "threshold": float(self.threshold),
                "distance": [float(x) for x in self.distance],
                "probability": [float(y) for y in self.probability], **self.meta}

    @classmethod
    def from_dict(cls, d: Any, where: str = "calibration") -> "Calibrator":
        """Rebuild from ``to_dict``'s data, checking every field.

        Raises:
            CalibrationError: a wrong format, missing or non-numeric breakpoints, breakpoints out of
                order, probabilities outside [0, 1] or increasing, a threshold outside [0, 1];
                the message starts with ``where`` (the file) and names the key.
        """
        if not isinstance(d, dict):
            raise CalibrationError(f"{where}: expected a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise CalibrationError(f"{where}: key 'format' is {d.get('format')!r}, expected {FORMAT!r}")
        arrays = {}
        for key in ("distance", "probability"):
            v = d.get(key)
            if (not isinstance(v, list) or not v
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                               and math.isfinite(x) for x in v)):
                raise CalibrationError(f"{where}: key {key!r} must be a non-empty list of finite "
                                       "numbers")
            arrays[key] = np.asarray(v, np.float64)
        x, y = arrays["distance"], arrays["probability"]
        if len(x) != len(y):
            raise CalibrationError(f"{where}: 'distance' has {len(x)} breakpoints, 'probability' "
                                   f"{len(y)}")
        if np.any(np.diff(x) < 0):
            raise CalibrationError(f"{where}: key 'distance' is not in increasing order")
        if np.any(np.diff(y) > 0) or y.min() < 0 or y.max() > 1:
            raise CalibrationError(f"{where}: key 'probability' must be non-increasing and in [0, 1]")
        t = d.get("threshold")
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 <= t <= 1:
            raise CalibrationError(f"{where}: key 'threshold' must be a number in [0, 1], got {t!r}")
        meta = {k: v for k, v in d.items()
                if k not in ("format", "method", "threshold", "distance", "probability")}
        return cls(x, y, float(t), meta)


def fit_isotonic(distance: np.ndarray, is_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints (X_thresholds_, y_thresholds_) float64 [B] of P(y = 1 | D), non-increasing in D.

    Args:
        distance: float [N] wildcard distances D of the candidate pairs.
        is_true: bool or {0, 1} [N], whether each pair's fact is true of its image.
    Raises:
        CalibrationError: no pairs, shapes that differ, or a non-finite distance.
    """
    from sklearn.isotonic import IsotonicRegression

    d = np.asarray(distance, np.float64).ravel()
    y = np.asarray(is_true, np.float64).ravel()
    if not len(d) or d.shape != y.shape:
        raise CalibrationError(f"calibration needs as many labels as distances (> 0), got "
                               f"{len(d)} distances and {len(y)} labels")
    if not np.all(np.isfinite(d)):
        raise CalibrationError("calibration: a distance is not finite")
    iso = IsotonicRegression(increasing=False, out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(d, y)
    return (np.asarray(iso.X_thresholds_, np.float64), np.asarray(iso.y_thresholds_, np.float64))


def choose_threshold(p: np.ndarray, is_true: np.ndarray, target: float) -> tuple[float, bool]:
    """(p*, reached): the smallest t among the values of ``p`` at which the pairs with p ≥ t have a
    precision (mean of ``is_true``) of at least ``target``.

    When no t reaches the target, p* = max(p) (only the most confident answers are shown) and
    ``reached`` is False.

    Args:
        p: float [N] calibrated probabilities of the candidate pairs.  is_true: bool/{0, 1} [N].
        target: the precision asked for, in (0, 1].
    Raises:
        CalibrationError: no pairs or shapes that differ.
    """
    p = np.asarray(p, np.float64).ravel()
    y = np.asarray(is_true, np.float64).ravel()
    if not len(p) or p.shape != y.shape:
        raise CalibrationError(f"threshold: got {len(p)} probabilities and {len(y)} labels")
    values, inverse = np.unique(p, return_inverse=True)       # ascending
    true_at = np.bincount(inverse, weights=y, minlength=len(values))
    n_at = np.bincount(inverse, minlength=len(values)).astype(np.float64)
    # precision of {p >= values[j]}: suffix sums from the top
    precision = np.cumsum(true_at[::-1])[::-1] / np.cumsum(n_at[::-1])[::-1]
    ok = np.flatnonzero(precision >= target - 1e-12)
    if not len(ok):
        return float(values[-1]), False
    return float(values[ok[0]]), True


def shown_stats(p: np.ndarray, is_true: np.ndarray, image: np.ndarray, threshold: float) -> dict:
    """What the answers shown at ``threshold`` achieve on labelled candidate pairs.

    Args:
        p: float [N] probabilities.  is_true: bool [N].  image: int [N] the image of each pair.
        threshold: p*; a pair is shown when p ≥ p*.
    Returns:
        {"images", "pairs", "shown", "precision" (of the shown pairs, None if none),
        "coverage" (share of images with at least one shown pair), "abstention" (1 − coverage)}
    """
    p = np.asarray(p, np.float64)
    y = np.asarray(is_true, bool)
    image = np.asarray(image)
    shown = p >= threshold
    n_img = len(np.unique(image))
    covered = len(np.unique(image[shown]))
    return {"images": int(n_img), "pairs": int(len(p)), "shown": int(shown.sum()),
            "precision": float(y[shown].mean()) if shown.any() else None,
            "coverage": covered / n_img if n_img else None,
            "abstention": 1 - covered / n_img if n_img else None}


def reliability(p: np.ndarray, is_true: np.ndarray, bins: int = 10) -> dict:
    """Reliability of probabilities: the Brier score mean (p − y)² (Brier 1950), the expected
    calibration error ECE = Σ_b (n_b / N) |mean y_b − mean p_b| over ``bins`` equal-width bins of p
    (Naeini et al., AAAI 2015; Guo et al., ICML 2017, Sec. 2), and the bins themselves.

    p float [N] in [0, 1]; is_true bool [N]. Returns {"brier", "ece", "bins": [{"lo", "hi", "n",
    "mean_p", "frequency"}]} (empty bins left out); N = 0 gives None values.
    """
    p = np.asarray(p, np.float64)
    y = np.asarray(is_true, np.float64)
    if not len(p):
        return {"brier": None, "ece": None, "bins": []}
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = which == b
        if not m.any():
            continue
        ece += m.sum() / len(p) * abs(y[m].mean() - p[m].mean())
        rows.append({"lo": b / bins, "hi": (b + 1) / bins, "n": int(m.sum()),
                     "mean_p": float(p[m].mean()), "frequency": float(y[m].mean())})
    return {"brier": float(np.mean((p - y) ** 2)), "ece": float(ece), "bins": rows}


def save_calibrator(path: str | Path, cal: Calibrator) -> Path:
    """Write ``cal`` as JSON to ``path`` atomically (temporary file, then rename)."""
    atomic_write_json(path, cal.to_dict())
    return Path(path)


def load_calibrator(path: str | Path) -> Calibrator:
    """Read a calibration JSON file (no pickle).

    Raises:
        FileNotFoundError: no such file.
        CalibrationError: not JSON, or a field that is missing or wrong (the message names the file
            and the key).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as e:
        raise CalibrationError(f"{path}: cannot read: {e}") from e
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise CalibrationError(f"{path}: not JSON ({e})") from e
    return Calibrator.from_dict(d, str(path))

"""The gallery's plots: several runs' R heat maps on ONE colour scale, their per-task curves on ONE axis.

``write_comparison_plots(results, out_dir)`` reads the headline metric of each run's results.json
(``factmas.evaluation.report`` format) and writes, with matplotlib's Agg backend, atomically:

* ``r_heatmaps.png``: one heat map per run (rows = initial + each training stage, columns = tasks),
  all with the same vmin/vmax and a single shared colour bar, so runs compare by eye;
* ``map_per_task.png``: each task's metric after each training step, every run on one axis
  (colour = task, line style and marker = run; black = over all facts).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from factmas.io import atomic_path
from factmas.evaluation.metric_specs import label as metric_label
from factmas.evaluation.report import draw_r, stage_label

_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (1, 3)), "v")]


def headline_matrix(res: dict) -> tuple[list[str], np.ndarray, list[float]]:
    """(row labels, headline metric in % float [rows, T] (NaN = missing), 'all' per row in %)."""
    e = res["metrics"][res["headline"]]
    labels = ((["initial"] if e.get("initial") is not None else [])
              + [stage_label(res, s) for s in res["stages"]])
    rows = ([e["initial"]] if e.get("initial") is not None else []) + e["R"]
    alls = ([e.get("initial_all")] if e.get("initial") is not None else []) + e["all"]
    A = np.array([[np.nan if x is None else x for x in r] for r in rows], dtype=float) * 100
    return labels, A, [np.nan if v is None else v * 100 for v in alls]


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def write_comparison_plots(results: list[dict], names: list[str], out_dir: str | Path) -> list[Path]:
    """Write r_heatmaps.png and map_per_task.png comparing ``results`` (one dict per run).

    Args:
        results: results.json dicts (same headline metric and number of tasks).
        names: a label per run.  out_dir: where the PNGs go (created).
    Returns:
        the two paths written.
    Raises:
        ValueError: no results, or results of different headline metrics / task counts.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("no results to plot")
    heads = {(r["headline"], tuple(r["columns"])) for r in results}
    if len(heads) != 1:
        raise ValueError(f"runs with different headline metrics or tasks cannot share a plot: {heads}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cols, label = results[0]["columns"], metric_label(results[0]["headline"])
    mats = [headline_matrix(r) for r in results]
    finite = np.concatenate([A[np.isfinite(A)] for _, A, _ in mats] or [np.zeros(1)])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(1.0 * len(cols) * n + 1.2 * n + 1.2, 0.5 * len(mats[0][0]) + 2),
                             squeeze=False, layout="constrained")
    im = None
    for ax, name, (labels, A, _) in zip(axes[0], names, mats):
        im = draw_r(ax, A, labels, cols, vmin, vmax)
        ax.set_title(name)
    fig.colorbar(im, ax=list(axes[0]), label=f"{label} (%)", shrink=0.9)
    fig.suptitle(f"R: {label} (%) of each task after each training stage, one colour scale")
    paths = [_save(fig, out_dir / "r_heatmaps.png")]
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r, (name, (labels, A, alls)) in enumerate(zip(names, mats)):
        ls, marker = _STYLES[r % len(_STYLES)]
        x = np.arange(len(labels))
        for j, c in enumerate(cols):
            ax.plot(x, A[:, j], linestyle=ls, marker=marker, color=colours[j % len(colours)],
                    label=f"{name} {c}")
        ax.plot(x, alls, linestyle=ls, marker=marker, color="k", label=f"{name} all")
    longest = max((m[0] for m in mats), key=len)
    ax.set_xticks(np.arange(len(longest)), longest, rotation=20)
    ax.set_ylabel(f"{label} (%)")
    ax.set_title("each task after each training step (colour = task, line = run)")
    ax.legend(fontsize=7, ncol=n, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out_dir / "map_per_task.png"))
    plt.close(fig)
    return paths

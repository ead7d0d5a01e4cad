"""The regime table's PNG (``factmas.experiments.regime_table``): one panel per column, regimes on
the x axis, a bar per method."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from factmas.experiments.compare import mean_std
from factmas.experiments.regime_table import COLUMNS, label_order, differences
from factmas.io import atomic_path


def bar_plot(regimes: list[dict], path: Path, overwrite: bool = True) -> Path:
    """One panel per column of ``COLUMNS``: regimes on the x axis, a bar per method (mean over
    seeds, sample std as error bar), † above a MAS bar whose difference from finetune exceeds
    2 pooled std."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(r["name"], row["family"]) for r in regimes for row in r["rows"]]
    keys = list(dict.fromkeys(keys))
    labels = label_order({row["label"] for r in regimes for row in r["rows"]})
    titles = {row["label"]: row["title"] for r in regimes for row in r["rows"]}
    n = len(COLUMNS)
    ncol = 4 if n > 4 else n
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * max(3.2, 0.9 * len(keys) + 1.5), 3.8 * nrow),
                             squeeze=False)
    width = 0.8 / max(len(labels), 1)
    x = np.arange(len(keys))

    def seeds(name: str, fam: str) -> str:       # the seeds per bar of a group: "3" or "1–3"
        reg = next(r for r in regimes if r["name"] == name)
        ns = [len(w["seeds"]) for w in reg["rows"] if w["family"] == fam]
        return f"{min(ns)}" if min(ns) == max(ns) else f"{min(ns)}–{max(ns)}"
    for k, (col, head) in enumerate(COLUMNS):
        ax = axes[k // ncol][k % ncol]
        for i, lab in enumerate(labels):
            ms, ss, flags = [], [], []
            for name, fam in keys:
                reg = next(r for r in regimes if r["name"] == name)
                row = next((w for w in reg["rows"] if w["label"] == lab and w["family"] == fam), None)
                m, s = mean_std(row["values"][col]) if row else (np.nan, np.nan)
                ms.append(m * 100)
                ss.append(s * 100)
                d = next((d for d in differences(reg) if d["label"] == lab and d["family"] == fam), None)
                flags.append(bool(d and d["columns"][col][2]))
            pos = x + (i - (len(labels) - 1) / 2) * width
            ss_arr = np.array(ss)
            ax.bar(pos, ms, width, yerr=np.nan_to_num(ss_arr) if np.isfinite(ss_arr).any() else None,
                   capsize=2, label=titles[lab])
            for p, m, s, f in zip(pos, ms, ss, flags):
                if f and np.isfinite(m):
                    ax.text(p, m + (s if np.isfinite(s) else 0), "†", ha="center", va="bottom")
        ax.set_xticks(x, [f"{name}\n{fam}\nn {seeds(name, fam)}" for name, fam in keys], fontsize=8)
        ax.set_title(f"{head} (%)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for k in range(n, nrow * ncol):
        axes[k // ncol][k % ncol].axis("off")
    handles, names = axes[0][0].get_legend_handles_labels()
    spare = axes[-1][-1] if nrow * ncol > n else None
    (spare or axes[0][0]).legend(handles, names, fontsize=7, loc="center" if spare else "best")
    fig.suptitle("Regime × method, test images after the last task (mean ± std over seeds; "
                 "† MAS − finetune > 2 pooled std)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path

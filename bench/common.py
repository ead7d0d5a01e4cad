"""Shared helpers of the benchmark scripts: timing, peak memory, machine facts, data, JSON output.

Scripts are run as ``.venv/bin/python bench/NAME.py`` (their folder is then on ``sys.path``, so they
``import common``). Conventions:

* Times are medians of ``repeats`` runs (``median_seconds``); on a shared CPU, compare ratios measured
  within one run, repeat by repeat, rather than figures from different runs.
* Peak memory is the peak resident set size (VmHWM of ``/proc/self/status``), which covers torch,
  numpy and FAISS allocations alike. ``reset_peak_rss`` lowers the mark to the current RSS (Linux ≥ 4.0,
  ``echo 5 > /proc/self/clear_refs``), so a peak can be measured per section of one process.
* Every result file holds ``machine_info()``: cores, torch version and threads, load average, date.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from factmas.io import atomic_write_json, cpu_model, git_commit, package_versions

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
FLICKR8K_H5 = REPO / "data" / "flickr8k.h5"
MiB = 1 << 20


# ---- memory ------------------------------------------------------------------------------------
def _status_kib(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    if not m:
        raise RuntimeError(f"/proc/self/status has no {key} line (peak RSS needs Linux)")
    return int(m.group(1))


def rss_bytes() -> int:
    """Current resident set size of this process in bytes (VmRSS)."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size of this process in bytes (VmHWM) since start or ``reset_peak_rss``."""
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> bool:
    """Set the peak RSS mark to the current RSS; False when the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---- time --------------------------------------------------------------------------------------
def time_call(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of one call of ``fn``."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_seconds(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls; (median, all)."""
    for _ in range(warmup):
        fn()
    runs = [time_call(fn)[0] for _ in range(max(1, repeats))]
    return statistics.median(runs), runs


def matmul_gflops(n: int = 2048, repeats: int = 5) -> dict:
    """Measured float32 matrix-multiply rate: median over ``repeats`` of ``torch.mm`` of two n×n
    matrices (2n³ floating-point operations each), at the current ``torch.get_num_threads()``.

    Returns {"n", "seconds" (median), "gflops" (median rate), "runs"}.
    """
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    med, runs = median_seconds(lambda: torch.mm(a, b), repeats, warmup=1)
    return {"n": n, "seconds": med, "gflops": 2 * n ** 3 / med / 1e9, "runs": runs}


# ---- machine -------------------------------------------------------------------------------------
def machine_info() -> dict:
    """Facts needed to read a timing: cores, CPU, torch version and threads, load, date (UTC)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "usable_cores": usable,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(), "versions": package_versions(), "git_commit": git_commit(REPO),
    }


def load_line(info_before: dict) -> str:
    """One line telling the load average before the run and now (the CPU may be shared)."""
    now = [round(x, 2) for x in os.getloadavg()]
    return (f"load average (1 min) {info_before['loadavg_1_5_15'][0]} at start, {now[0]} at end; "
            f"{info_before['usable_cores']} cores, {torch.get_num_threads()} torch threads")


# ---- data --------------------------------------------------------------------------------------
def backbone_bench_data(path: str | None, lite: bool, quick: bool, lite_images: int):
    """``load_bench_data`` as the backbone needs it: Lite0 reads 224-px images (synthetic,
    ``lite_images`` of them, unless ``path``); the small CNN the dataset at ``path``, or 120 synthetic
    images with ``quick``. Returns (FactData, description)."""
    if lite:
        return load_bench_data(path, synthetic=path is None, synthetic_images=lite_images, image_size=224)
    return load_bench_data(path, synthetic=quick and path is None, synthetic_images=120)


def load_bench_data(path: str | Path | None = None, synthetic: bool = False,
                    synthetic_images: int = 2000, image_size: int = 64):
    """(FactData, description): ``path``, else data/flickr8k.h5 if present (and not ``synthetic``),
    else a synthetic dataset of ``synthetic_images`` images of ``image_size``² pixels written to a
    temporary file (``factmas.data.synthetic``)."""
    from factmas.data.dataset import read_dataset
    from factmas.data.synthetic import make_synthetic_dataset
    if path is None and not synthetic and FLICKR8K_H5.is_file():
        path = FLICKR8K_H5
    if path is not None:
        data = read_dataset(path)
        return data, f"{Path(path).name} ({len(data.images):,} images {data.images.shape[1]}², " \
                     f"{data.num_facts:,} facts)"
    tmp = Path(tempfile.mkdtemp(prefix="factmas_bench_")) / "synthetic.h5"
    make_synthetic_dataset(tmp, n_images=synthetic_images, image_size=image_size, num_tasks=4)
    data = read_dataset(tmp)
    return data, f"synthetic ({synthetic_images:,} images {image_size}², {data.num_facts} facts)"


def first_split(data, preferred: str = "random4_seed0") -> str:
    """``preferred`` if the dataset has it, else its first split name."""
    return preferred if preferred in data.splits else sorted(data.splits)[0]


# ---- output ------------------------------------------------------------------------------------
def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Print ``rows`` as a text table; ``columns``: (key, header, format spec such as '.1f')."""
    cells = [[format(r[k], f) if isinstance(r.get(k), (int, float)) and f else str(r.get(k, ""))
              for k, _, f in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, (_, h, _) in enumerate(columns)]
    print("  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths)))
    for c in cells:
        print("  ".join(x.rjust(w) for x, w in zip(c, widths)))


def write_results(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` as JSON (atomically) and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, payload)
    print(f"\nwrote {path}")
    return path

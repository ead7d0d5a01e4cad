"""The MAS paper's facts comparison on factmas data: plan, λ search on validation images, runs.

``python eval/paper_table.py --data FILE.h5`` (see ``factmas.cli.paper``) runs, for every method variant
(``VARIANTS``: every method of the registry ``factmas.methods.METHODS``, in its order: Finetune, LwF,
EWC, SI, MAS, ℓ-MAS, ..., then the ablation rows (``ABLATIONS``): MAS with Ω from test or train+test
images (transductive), MAS with Ω of the normalized output, Finetune and MAS trained with SGD; then
Joint):

1. **λ search** (regularized methods only), on held-out *training* images, never the test set: each
   λ of the method's grid (``GRIDS``: each method's ``paper_grid``, λ = 0 and values a decade apart) trains the first random split
   (``random4_seed{first seed}``, seed = first seed) for ``search_epochs`` epochs per task, and is
   scored by one declared criterion that weighs both retrieval directions (``criterion``:
   ½ (fact→image mAP + image→fact mAP), over all facts at the end of the sequence, on the "val"
   image split: images of the training part held out from training). The best λ is kept (ties
   within ``TIE``: the smaller λ). A grid whose best λ is its largest value is extended by ×10,
   one whose best is λ = 0 downwards (its smallest positive λ ÷ 10), at most ``MAX_EXTENSIONS``
   rounds, so that the chosen λ is bracketed (``factmas.experiments.lambda_search``, run by
   ``factmas.experiments.paper_run.bracketed_search``). MAS with Ω from test or train+test images takes MAS's λ (same penalty, Ω is a
   per-sample mean either way; only the Ω data differ), and so does MAS with SGD; MAS with Ω of
   the normalized output has its own grid (its Ω has another scale). At λ = 0 every regularized
   method trains MAS's λ = 0 model, so a search that includes MAS reuses that run for the others
   (``SAME_AT_ZERO``, ``share_zero``).
2. **Final runs** with the chosen λ, evaluated on the test images: every variant on
   ``random4_seed{s}`` with seed s for each seed, on ``semantic4`` for each semantic seed, and on the
   image-disjoint ``disjoint4_seed{s}`` (every training image in one task only; ``data_prep.splits``)
   for each disjoint seed, seed-major (``final_jobs``); an ablation row (``Variant.ablation``), and a
   method named in ``Settings.one_run`` (``--one-run``), on the first random split and seed only.

Each final run's summary (``run_summary``) carries both retrieval directions (``DIRECTIONS``:
fact→image mAP, image→fact mAP and top-5, each with forgetting and BWT), Lifelong Fact Learning's
metric (``LFL_KEYS``, ``factmas.evaluation.lfl``), and the two reference rows of its results.json: the
image-frequency ranking and the untrained model (``BASELINES``).

Every run is one ``factmas.trainer.train`` run directory under OUT (``search/…``, ``runs/…``) with its
own results.json; a run whose ``timing.json`` exists is complete and is not run again when its
``config.json`` holds the same settings, dataset fingerprint and word vectors
(``factmas.experiments.paper_resume``; a changed λ, ``--epochs`` or ``--config`` trains it again),
so a killed experiment continues where it stopped. Runs go to
``jobs`` worker processes with one torch thread each (independent runs scale over cores better than
threads inside one run).
"""
from __future__ import annotations

import json
import logging
import os
import resource
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from factmas.config import RunConfig
from factmas.errors import Terminated, sigterm_raises
from factmas.evaluation.metric_specs import names as metric_names
from factmas.experiments.paper_resume import resumable_tasks, same_run
from factmas.io import atomic_write_json
from factmas.methods import METHODS, resolve_options

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One row of the table: ``label`` (directory name), trainer method, whose λ it uses,
    ``train``: other ``TrainConfig`` values of the row ((key, value) pairs), ``options``: the
    method's options of the row (``train.options.<method>``, (field, value) pairs), and
    ``ablation``: run on the first random split and seed only (one row beside the method it varies)."""
    label: str
    method: str
    title: str
    lambda_from: str | None = None          # a search label, or None: λ is not used
    train: tuple[tuple[str, Any], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    ablation: bool = False

    def train_values(self) -> dict[str, Any]:
        """The row's ``TrainConfig`` values: ``train``, and ``options`` as ``{"options": {method:
        {...}}}``."""
        out = dict(self.train)
        if self.options:
            out["options"] = {self.method: dict(self.options)}
        return out


# The SGD ablation's learning rate (momentum 0.9, as the official MAS and LFL code), chosen on val with
# finetune over random4_seed0's 4 tasks (docs/results/defaults/ablations_val.md); λ is Adam-MAS's.
SGD_LR = 0.001
# The ablation rows: the experiment's own design, each a variation of a registered method.
ABLATIONS = (
    Variant("mas_test", "mas", "MAS (Ω: test images, transductive)", lambda_from="mas",
            options=(("data", "test"),), ablation=True),
    Variant("mas_train+test", "mas", "MAS (Ω: train+test images, transductive)", lambda_from="mas",
            options=(("data", "train+test"),), ablation=True),
    Variant("mas_normalized", "mas", "MAS (Ω of the normalized output, ablation)",
            lambda_from="mas_normalized", options=(("output", "normalized"),), ablation=True),
    Variant("finetune_sgd", "finetune", f"Finetune (SGD, momentum 0.9, lr {SGD_LR:g}, ablation)",
            train=(("optimizer", "sgd"), ("lr", SGD_LR), ("momentum", 0.9)), ablation=True),
    Variant("mas_sgd", "mas", f"MAS (SGD, momentum 0.9, lr {SGD_LR:g}, ablation)", lambda_from="mas",
            train=(("optimizer", "sgd"), ("lr", SGD_LR), ("momentum", 0.9)), ablation=True),
)
# The rows: every registered method in the registry's order (``factmas.methods.METHODS``; its
# ``title``, and its λ search when it has a ``paper_grid``), then the ablations, then the upper
# bounds (``upper_bound``: joint).
VARIANTS = (
    *(Variant(name, name, cls.title, lambda_from=name if cls.paper_grid is not None else None)
      for name, cls in METHODS.items() if not cls.upper_bound),
    *ABLATIONS,
    *(Variant(name, name, cls.title) for name, cls in METHODS.items() if cls.upper_bound),
)
VARIANT = {v.label: v for v in VARIANTS}
# λ grids, λ = 0 and values a decade apart: each method's ``paper_grid`` (in its own file), and the
# ablations' own grids. The methods' positive values were placed on the from-scratch small CNN
# (Flickr8k random4_seed0) from the regularizer's term after the first epoch of task 2 at λ = 1 (MAS
# 0.028, ℓ-MAS 0.81, EWC 1.7e-5, SI 0.0034, LwF 0.0098; about 0.3, ≈ 7% of the task loss, is reached
# inside every grid, at its top value for SI and LwF). ``extend_grids`` extends a grid whose best
# value is at its edge (at most ``MAX_EXTENSIONS`` rounds).
# The MAS grid at the current default on the 350-fact set (docs/results/defaults/lambda_val.md, val): 0 → 24.85,
# 1 → 24.38, 10 → 25.14, 100 → 22.47 (criterion below): interior at 10.
# The normalized-output Ω is 3–4 times smaller than the raw one (Σ Ω over the image branch 2.97×,
# fact branch 3.95× on the default MAS checkpoint after task 1: bench/omega_scale.py,
# docs/results/defaults/ablations_val.md), so its grid sits 3× higher.
ABLATION_GRIDS = {"mas_normalized": (0.0, 3.0, 30.0, 300.0)}
GRIDS = {**{name: tuple(cls.paper_grid) for name, cls in METHODS.items() if cls.paper_grid is not None},
         **ABLATION_GRIDS}
# At λ = 0 every regularized method trains the same model as MAS at λ = 0 (the penalty and its
# gradient are exactly zero, the batches and seeds the same; tests/train/test_train.py): when MAS is
# searched too, the others reuse its λ = 0 run (``SAME_AT_ZERO``) instead of training it again.
SAME_AT_ZERO = {label: "mas" for label in GRIDS if label != "mas"}
QUICK_GRIDS = {"mas": (0.0, 10.0)}
# results.json metrics reported side by side (each with its forgetting and BWT), LFL's metric, and the
# reference rows (label, title) every table carries
DIRECTIONS = metric_names(view="paper")           # their records: factmas.evaluation.metric_specs
LFL_KEYS = metric_names(view="paper_lfl")
BASELINES = (("frequency", "Image-frequency ranking"), ("untrained", "Untrained model"))
QUICK_VARIANTS = ("finetune", "mas", "joint")


@dataclass
class Settings:
    """What the experiment runs (the CLI's options, resolved)."""
    data: str
    out: str
    variants: list[str]
    seeds: list[int]
    semantic_seeds: list[int]
    epochs: int
    search_epochs: int
    grids: dict[str, tuple[float, ...]]
    random_prefix: str = "random4"
    semantic_split: str = "semantic4"
    disjoint_seeds: list[int] = field(default_factory=list)
    disjoint_prefix: str = "disjoint4"
    jobs: int = 2
    image_fraction: float = 1.0             # --quick on real data: a random part of the images
    base: dict = field(default_factory=dict)   # RunConfig dict (model, loss, train defaults)
    one_run: list[str] = field(default_factory=list)   # variants run on the first random run only

    def first_run_only(self, label: str) -> bool:
        """Whether variant ``label`` runs on the first random split and seed only: an ablation
        row, or a method named in ``one_run`` (``--one-run``: a row too costly for every seed)."""
        return VARIANT[label].ablation or label in self.one_run

    def searches(self) -> list[str]:
        """Search labels needed by the variants (their ``lambda_from``), in grid order."""
        need = {VARIANT[v].lambda_from for v in self.variants} - {None}
        return [m for m in GRIDS if m in need]


def job(settings: Settings, kind: str, label: str, method: str, split: str, seed: int,
        reg_lambda: float, train: dict | None = None) -> dict:
    """The plain-data description of one run (what a worker needs); ``train``: the variant's other
    ``TrainConfig`` values (``Variant.train_values``)."""
    if kind == "search":
        out = Path(settings.out) / "search" / f"{label}_lambda{reg_lambda:g}"
        epochs, image_split = settings.search_epochs, "val"
    else:
        out = Path(settings.out) / "runs" / label / f"{split}_seed{seed}"
        epochs, image_split = settings.epochs, "test"
    return {"kind": kind, "label": label, "method": method, "split": split, "seed": seed,
            "reg_lambda": reg_lambda, "epochs": epochs,
            "image_split": image_split, "out": str(out), "train": dict(train or {})}


def search_jobs(settings: Settings, grids: dict[str, tuple[float, ...]] | None = None) -> list[dict]:
    """One job per (regularized method, λ of its grid) on the first random split, val images;
    ``grids``: these values instead of ``settings.grids`` (an extension round)."""
    seed = settings.seeds[0]
    split = f"{settings.random_prefix}_seed{seed}"
    grids = settings.grids if grids is None else grids
    searches = settings.searches()
    out = []
    for m in searches:
        v = VARIANT[m]
        for lam in grids.get(m, ()):
            src = SAME_AT_ZERO.get(m)
            if lam == 0 and src in searches and 0.0 in settings.grids.get(src, ()):
                continue                          # the source's λ = 0 run (``share_zero``)
            out.append(job(settings, "search", m, v.method, split, seed, lam, v.train_values()))
    return out


def share_zero(results: list[dict], grids: dict[str, tuple[float, ...]]) -> list[dict]:
    """``results`` plus, for each label of ``grids`` in ``SAME_AT_ZERO`` whose grid has λ = 0 and that
    has no λ = 0 run, its source's λ = 0 run relabelled, with ``shared_from`` = the source (the same
    trained model: a zero penalty makes the methods' Ω irrelevant). Its times are the source's: sum
    run times over the rows without ``shared_from``."""
    have = {(r["label"], r["reg_lambda"]) for r in results}
    extra = [{**r, "label": label, "shared_from": src} for label, src in SAME_AT_ZERO.items()
             if 0.0 in grids.get(label, ()) for r in results
             if r["label"] == src and r["reg_lambda"] == 0.0 and (label, 0.0) not in have]
    return results + extra


def final_jobs(settings: Settings, lambdas: dict[str, float]) -> list[dict]:
    """Every variant on each random split / seed, on the semantic split per semantic seed and on
    the image-disjoint split per disjoint seed (an ablation variant, or one in ``settings.one_run``,
    on the first random split and seed only), seed-major: the first seed of every split family
    comes before the second seed of any, so that an experiment stopped early (the runs are resumed
    on the next call) already has one run of each family."""
    families = [[(f"{settings.random_prefix}_seed{s}", s) for s in settings.seeds],
                [(settings.semantic_split, s) for s in settings.semantic_seeds],
                [(f"{settings.disjoint_prefix}_seed{s}", s) for s in settings.disjoint_seeds]]
    depth = max(len(f) for f in families)
    plan = [f[i] for i in range(depth) for f in families if i < len(f)]
    first = families[0][0] if families[0] else None
    out = []
    for split, seed in plan:
        for label in settings.variants:
            v = VARIANT[label]
            if settings.first_run_only(label) and (split, seed) != first:
                continue                          # the first random run only
            lam = lambdas[v.lambda_from] if v.lambda_from else 0.0
            out.append(job(settings, "final", label, v.method, split, seed, lam, v.train_values()))
    return out


def check_splits(settings: Settings, splits: list[str]) -> None:
    """Raise ValueError naming the file and the missing splits the plan needs (the λ search's
    first random split and every final run's split)."""
    need = {f"{settings.random_prefix}_seed{settings.seeds[0]}"}
    need |= {j["split"] for j in final_jobs(settings, {m: 0.0 for m in GRIDS})}
    missing = sorted(need - set(splits))
    if missing:
        raise ValueError(f"{settings.data}: no split(s) {missing}; the file has {sorted(splits)}")


def criterion(summary: dict) -> float | None:
    """The λ-search criterion of a run summary (``run_job``): ½ (fact→image mAP + image→fact mAP),
    each over all facts at the end of the sequence (fractions); None when either is undefined.
    Declared once here: the README's λ tables and the λ search (``paper_run.bracketed_search``)
    use it."""
    m = summary.get("metrics") or {}
    vals = [(m.get(k) or {}).get("final_all") for k in ("fact_to_image_map", "image_to_fact_map")]
    if any(v is None or not np.isfinite(v) for v in vals):
        return None
    return 0.5 * (vals[0] + vals[1])


# ---- workers ----------------------------------------------------------------------------------
_DATA: Any = None


def subsample_images(data: Any, fraction: float, seed: int = 0) -> Any:
    """A copy of ``data`` keeping a random ``fraction`` of the images (the others leave every image
    split and lose their pairs); for the quick smoke run only."""
    if fraction >= 1.0:
        return data
    keep = np.random.default_rng(seed).random(len(data.image_split)) < fraction
    split = np.where(keep, data.image_split, -1).astype(np.int8)
    pairs = data.pairs[keep[data.pairs[:, 0]]]
    return replace(data, image_split=split, pairs=pairs)


def init_worker(data_path: str, fraction: float, threads: int = 1) -> None:
    """Worker start: freed tensor memory kept for reuse (``factmas.machine.cpu_memory``; a spawned worker
    does not pass through the ``factmas`` command, which does it), one torch thread, the dataset read
    once per process."""
    global _DATA
    import torch
    from factmas.machine.cpu_memory import keep_freed_memory
    from factmas.data.dataset import read_dataset
    keep_freed_memory()
    torch.set_num_threads(threads)
    _DATA = subsample_images(read_dataset(data_path), fraction)


_JOB_TAG = {"tag": "-"}       # the job a worker process is running, for its log lines


class _JobTag(logging.Filter):
    """Adds ``record.job``: the tag of the job this process runs (``run_job`` sets it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job = _JOB_TAG["tag"]
        return True


def start_worker(data_path: str, fraction: float, threads: int = 1,
                 log_level: int = logging.INFO) -> None:
    """Start of a spawned worker: ``init_worker``, then its log lines (the trainer's epochs with
    their images/s, its evaluations) go to stderr at the parent's level, each tagged with its job
    (``HH:MM:SS [mas random4_seed1 s1 λ=10] ...``), so that the terminal or log file of
    ``paper_table --jobs N`` shows every run's progress and tells the N workers apart."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s [%(job)s] %(message)s", "%H:%M:%S"))
    handler.addFilter(_JobTag())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(log_level)
    init_worker(data_path, fraction, threads)


def run_job(j: dict, base: dict) -> dict:
    """Train one job (or read it back when its timing.json exists); returns its summary."""
    from factmas.evaluation.report import read_results
    from factmas.run.rundir import RunDir
    from factmas.trainer import resume, train
    _JOB_TAG["tag"] = f"{j['label']} {j['split']} s{j['seed']} λ={j['reg_lambda']:g}"
    out = Path(j["out"])
    timing = out / "timing.json"
    d = {**base, "data": str(_DATA.path), "out": str(out)}
    row = dict(j.get("train", {}))
    options = dict(base.get("train", {}).get("options") or {})
    for method, values in row.pop("options", {}).items():      # the row's options over the base's
        options[method] = {**options.get(method, {}), **values}
    d["train"] = {**base.get("train", {}), "method": j["method"], "split": j["split"],
                  "seed": j["seed"], "reg_lambda": j["reg_lambda"], "epochs": j["epochs"],
                  "threads": 1, **row, "options": options}
    d["eval"] = {**base.get("eval", {}), "enabled": True, "image_split": j["image_split"]}
    cfg = RunConfig.from_dict(d)
    resolve_options(cfg.train)          # complete, as config.json records it (``same_run``)
    if timing.is_file() and not same_run(out, cfg, _DATA):
        log.info("%s: finished with other settings or data (λ, epochs, base config, dataset, word "
                 "vectors); training it again", out)
        timing.unlink()
    trained_now = not timing.is_file()
    if trained_now:
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        done = resumable_tasks(out, cfg, _DATA)
        if done:        # killed mid-run with these settings: continue from its last checkpoint
            log.info("%s: resuming after %d trained task(s) (factmas train --resume)", out, done)
            resume(out, threads=1, progress=False, data=_DATA)
        else:
            train(cfg, command="python eval/paper_table.py", overwrite=True, progress=False, data=_DATA)
        atomic_write_json(timing, {"seconds": time.perf_counter() - t0,
                                   "cpu_seconds": cpu_seconds() - cpu0, "pid": os.getpid(),
                                   "resumed_after_tasks": done})
    res = read_results(out)
    e = res["metrics"][res["headline"]]
    t = json.loads(timing.read_text())
    summary = run_summary(res)
    return {**j, "final": e["final"], "final_all": e["final_all"], "forgetting": e["forgetting"],
            "bwt": e["bwt"], "seconds": t["seconds"], "cpu_seconds": t["cpu_seconds"],
            "criterion": criterion(summary), "trained_now": trained_now,
            "commit": (RunDir(out).record() or {}).get("git_commit"), **summary}


def run_summary(res: dict) -> dict:
    """What the tables need from a run's results.json (``factmas.evaluation.report``), as plain data:
    ``{"metrics": {m: {"final", "final_all", "average", "forgetting", "bwt"}} for m in DIRECTIONS +
    LFL_KEYS present, "baselines": {"frequency" | "untrained": {m: {"final", "final_all",
    "average"}}}}``; "untrained" is the run's "initial" row, "frequency" its image-frequency ranking.
    Values are fractions, None where undefined."""
    def mean(xs):
        v = [x for x in xs or [] if x is not None]
        return float(np.mean(v)) if v and len(v) == len(xs) else None
    metrics, freq, init = {}, {}, {}
    for m in DIRECTIONS + LFL_KEYS:
        e = res["metrics"].get(m)
        if e is None:
            continue
        metrics[m] = {k: e.get(k) for k in ("final", "final_all", "average", "forgetting", "bwt")}
        b = ((res.get("baselines") or {}).get("frequency") or {}).get(m)
        if b is not None:
            freq[m] = {"final": b["final"], "final_all": b["final_all"], "average": mean(b["final"])}
        if e.get("initial") is not None:
            init[m] = {"final": e["initial"], "final_all": e["initial_all"],
                       "average": mean(e["initial"])}
    return {"metrics": metrics, "baselines": {"frequency": freq, "untrained": init}}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def claim_out(out: str | Path) -> Path:
    """Make ``out`` the experiment's folder (``factmas.outdir.claim``): refused when it is a file,
    holds a link, or holds files that are not a paper table's; a table's folder written before
    manifests (runs/, search/, paper_table.md) is taken as one, so a killed experiment continues.

    Raises:
        factmas.outdir.OutputError: the folder cannot be used (the message names it).
    """
    from factmas import outdir
    out = Path(out)
    legacy = out.is_dir() and any((out / n).exists() for n in ("runs", "search", "paper_table.md"))
    return outdir.claim(out, "paper_table", legacy=legacy)


def run_all(jobs: list[dict], settings: Settings) -> list[dict]:
    """Run ``jobs`` (in ``settings.jobs`` processes; 1: in this process) and return their summaries
    in the order given. Raises the first run's error (TrainingError, ...)."""
    if not jobs:
        return []
    if settings.jobs <= 1:
        if _DATA is None or str(_DATA.path) != str(Path(settings.data)):
            init_worker(settings.data, settings.image_fraction)
        out = []
        for i, j in enumerate(jobs, 1):
            out.append(run_job(j, settings.base))
            _log_done(out[-1], i, len(jobs))
        return out
    ctx = get_context("spawn")
    with ProcessPoolExecutor(settings.jobs, mp_context=ctx, initializer=start_worker,
                             initargs=(settings.data, settings.image_fraction, 1,
                                       logging.getLogger().getEffectiveLevel())) as pool, \
            sigterm_raises():
        out = []
        try:
            futures = [pool.submit(run_job, j, settings.base) for j in jobs]
            for i, f in enumerate(futures, 1):
                out.append(f.result())
                _log_done(out[-1], i, len(jobs))
        except KeyboardInterrupt as e:      # Ctrl-C or SIGTERM: passed on to the workers, then waited for
            forward_signal(pool, signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)   # runs in progress finish, no new ones
            raise
        return out


def forward_signal(pool: ProcessPoolExecutor, signum: int) -> list[int]:
    """Send ``signum`` to every live worker process of ``pool`` (SIGTERM or SIGINT the parent got),
    so that no worker trains on after the parent has gone; returns their pids. Each worker's run
    keeps its completed tasks' checkpoints (written atomically), and re-running the command continues
    the experiment."""
    sent = []
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive():
            try:
                os.kill(proc.pid, signum)
                sent.append(proc.pid)
            except ProcessLookupError:
                continue
    if sent:
        log.warning("paper_table: %s sent to worker(s) %s; waiting for them to stop",
                    signal.Signals(signum).name, ", ".join(map(str, sent)))
    return sent


def _log_done(r: dict, i: int, n: int) -> None:
    log.info("[%d/%d] %s %s %s seed %d λ=%g: all-facts mAP %s (%s images) in %.0f s (%.0f CPU s)",
             i, n, r["kind"], r["label"], r["split"], r["seed"], r["reg_lambda"],
             "–" if r["final_all"] is None else f"{100 * r['final_all']:.2f}%", r["image_split"],
             r["seconds"], r["cpu_seconds"])

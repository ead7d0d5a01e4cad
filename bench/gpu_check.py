"""The GPU check (issue 32): everything to learn from a few minutes on one CUDA GPU, in one JSON file.

    .venv/bin/python bench/gpu_check.py [--device cuda] [--images 2000] [--out FILE]
    bash scripts/gpu_check.sh                       # the same, what a person with a GPU runs
    .venv/bin/python bench/gpu_check.py --device cpu --quick --out /tmp/gpu_check.json   # dry run

Sections, each timed and recorded on its own (one failing section is written as its error and the
others still run; the JSON is rewritten after every section, so a run cut short keeps what it did):

1. ``tests``: the CUDA test subset, ``pytest -m cuda`` on the files using the marker (tests/test_cuda.py: the model's step,
   exact Ω, the cached inputs and the FAISS GPU index against the CPU), pass/fail counts.
2. ``cache``: the default model's frozen stages (EfficientNet-Lite0, 6 frozen stages) over a synthetic
   224-px dataset and its mirror images on the device, images/s; the features of the first images
   against the CPU's (largest |difference| / (2e-3 + 2e-3·|cpu|), the cache's float16 tolerance).
3. ``train_step``: images/s of ``factmas.trainer.loop.train_step`` (finetune and MAS with an Ω) on the
   cached features at the trainer's batch (64), synchronized timing.
4. ``omega``: exact MAS Ω (``factmas.methods.mas.mas_importance``) at the trainer's batch (256) on the
   device, images/s and facts/s, and its largest relative difference from the CPU's Ω at the same
   weights: max over parameters of max|Ω_dev − Ω_cpu| / max|Ω_cpu|; with cuDNN's TF32 as torch sets
   it (what the trainer gets) and with TF32 off.
5. ``task``: one task of the default configuration (MAS, 3 epochs) trained by ``factmas.trainer.train``
   on the device, evaluated with FAISS (on the GPU when ``faiss.get_num_gpus() > 0``, as the
   evaluator chooses): wall seconds, the trainer's images/s per epoch, evaluation seconds, metrics.

Without a CUDA GPU (``--device cuda``, the default) it prints one line and exits 2 before any work.
Exit 1 when a section failed or the tests did not pass; 0 otherwise. Writes
bench/results/gpu_check.json (``--out``). The dataset is synthetic (``factmas.data.synthetic``, no
files needed on the GPU machine) unless ``--data`` names an HDF5 dataset.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

import common

RESULTS = common.RESULTS / "gpu_check.json"


def no_gpu_message(device: str) -> str | None:
    """The one-line refusal when ``device`` is cuda and torch sees no CUDA GPU, else None."""
    if device == "cuda" and not torch.cuda.is_available():
        return ("gpu_check: torch sees no CUDA GPU (torch.cuda.is_available() is False, torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda}); run it on a machine with one "
                "GPU, or --device cpu --quick for a dry run")
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """(seconds, result) of ``fn()`` with the device synchronized before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def device_info(device: torch.device) -> dict:
    """The GPU (name, memory, capability), CUDA/cuDNN versions, TF32 settings, FAISS GPUs."""
    info = {"device": str(device), "cuda_build": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}")
    try:
        import faiss
        info["faiss"] = getattr(faiss, "__version__", "?")
        info["faiss_gpus"] = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except ImportError as e:
        info["faiss"] = f"not importable: {e}"
        info["faiss_gpus"] = 0
    return info


# ---- sections ----------------------------------------------------------------------------------
def run_tests(timeout: int) -> dict:
    """``pytest -m cuda`` on the test files that use the marker (so that a test module needing
    another optional package cannot stop the collection), in a subprocess: return code and summary."""
    files = sorted(str(p) for p in (common.REPO / "tests").rglob("test_*.py")
                   if "mark.cuda" in p.read_text(encoding="utf-8", errors="replace"))
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-rs", *files]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=common.REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if " in " in ln and ("passed" in ln or "skipped" in ln
                                                                    or "failed" in ln or "error" in ln
                                                                    or "deselected" in ln)), "")
    print(f"tests: {summary or proc.stdout[-300:]}", flush=True)
    return {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "summary": summary,
            "seconds": time.perf_counter() - t0, "output_tail": proc.stdout[-4000:] + proc.stderr[-2000:],
            "passed": proc.returncode == 0}


def build_cache(model, data, device: torch.device, batch: int, compare: int) -> tuple[dict, np.ndarray]:
    """Frozen-stage features of every image and its mirror on ``device`` (images/s), saved where
    ``factmas.model.features.load_or_build`` finds them, and the first ``compare`` images against the CPU."""
    from factmas.model.features import cache_file, compute_features
    from factmas.io import atomic_path
    stem = model.image_stem
    compute_features(stem, data.images[:batch], device, batch=batch, progress=False)   # warm-up
    seconds, feats = timed(lambda: compute_features(stem, data.images, device, batch=batch,
                                                    progress=False), device)
    path = cache_file(data, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, feats)
    cpu = compute_features(copy.deepcopy(stem).cpu(), data.images[:compare], "cpu", progress=False)
    here = feats[:compare].astype(np.float32)
    ref = cpu.astype(np.float32)
    # in units of one float16 step near 1 (2e-3 + 2e-3·|ref|: the rule of tests/test_features.py)
    steps = np.abs(here - ref) / (2e-3 + 2e-3 * np.abs(ref))
    out = {"images": 2 * len(data.images), "batch": batch, "seconds": seconds,
           "images_per_s": 2 * len(data.images) / seconds, "shape": list(feats.shape[1:]),
           "vs_cpu_images": compare, "vs_cpu_max_diff_over_tol": float(steps.max()),
           "vs_cpu_fraction_over_tol": float((steps > 1).mean()),
           "vs_cpu_max_abs": float(np.abs(here - ref).max()),
           "vs_cpu_max_abs_over_max_ref": float(np.abs(here - ref).max() / max(np.abs(ref).max(), 1e-30))}
    print(f"cache: {out['images_per_s']:.0f} images/s (batch {batch}); vs CPU: max |diff| / tol "
          f"{out['vs_cpu_max_diff_over_tol']:.2f} (tol 2e-3 + 2e-3·|x|)", flush=True)
    return out, feats


def train_steps(model, data, feats, device: torch.device, cfg, steps: int, batch: int) -> dict:
    """images/s of ``train_step`` on cached features, finetune and MAS (Ω and θ* set), medians."""
    from factmas.model.features import CachedInputs
    from factmas.methods import make_method
    from factmas.trainer.batches import Batcher
    from factmas.trainer.loop import train_step
    model = copy.deepcopy(model).to(device).train()
    batcher = Batcher(data, device, inputs=CachedInputs(feats, device))
    pairs = data.task_pairs(cfg.train.split, 0, "train")
    need = steps * batch
    pairs = np.resize(pairs[np.random.default_rng(0).permutation(len(pairs))], (need, 2))
    g = torch.Generator().manual_seed(1)
    mas = make_method("mas", 1.0)
    mas.load_state_dict({**{f"omega.{n}": torch.rand(p.shape, generator=g).to(device)
                            for n, p in model.named_parameters()},
                         **{f"anchor.{n}": p.detach().clone() for n, p in model.named_parameters()}})
    out = {"batch": batch, "steps": steps}
    for name, method in (("finetune", make_method("finetune")), ("mas", mas)):
        runs = []
        for r in range(4):                          # the first run is the warm-up (cuDNN autotune)
            opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
            batches = list(batcher.pair_batches(pairs, batch, np.random.default_rng(r), flip=True))
            sec, _ = timed(lambda: [train_step(model, method, opt, b, cfg) for b in batches], device)
            runs.append(need / sec)
        out[name] = {"images_per_s": statistics.median(runs[1:]), "runs": runs[1:]}
        print(f"train step ({name}): {out[name]['images_per_s']:.0f} images/s (batch {batch})", flush=True)
    return out


def omega_check(model, data, feats, device: torch.device, samples: int, batch: int) -> dict:
    """Exact Ω on ``device`` (images/s, facts/s) and its relative difference from the CPU's Ω."""
    from factmas.methods.mas import mas_importance
    from factmas.methods.quadratic import eval_mode
    n = min(samples, len(feats))
    x = torch.from_numpy(feats[:n, 0].astype(np.float32))
    tokens = torch.from_numpy(data.tokens[:n].astype(np.int64))
    order = torch.from_numpy(data.order[:n].astype(np.int64))
    nf = len(tokens)

    def batches(dev):
        xi = x.to(dev)
        ti, oi = tokens.to(dev), order.to(dev)
        return ([xi[i:i + batch] for i in range(0, n, batch)],
                [(ti[i:i + batch], oi[i:i + batch]) for i in range(0, nf, batch)])

    def omega(m, dev, which):
        imgs, facts = batches(dev)
        with eval_mode(m):
            return mas_importance(m, imgs if which == "image" else None,
                                  facts if which == "fact" else None)

    cpu_model = copy.deepcopy(model).cpu()
    dev_model = copy.deepcopy(model).to(device)
    t_cpu = time.perf_counter()
    ref = {**omega(cpu_model, torch.device("cpu"), "image"), **omega(cpu_model, torch.device("cpu"), "fact")}
    t_cpu = time.perf_counter() - t_cpu
    out = {"images": n, "facts": nf, "batch": batch, "cpu_seconds_both_branches": t_cpu}
    omega(dev_model, device, "image")                                   # warm-up
    rates = {"image": [], "fact": []}
    got = {}
    for which, count in (("image", n), ("fact", nf)):
        for _ in range(3):
            sec, got_w = timed(lambda: omega(dev_model, device, which), device)
            rates[which].append(count / sec)
        got.update(got_w)
    out["images_per_s"] = statistics.median(rates["image"])
    out["facts_per_s"] = statistics.median(rates["fact"])

    def rel(o):
        per = {k: float((o[k].cpu() - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-30))
               for k in ref if float(ref[k].abs().max()) > 0}
        worst = max(per, key=per.get)
        return per[worst], worst

    out["max_rel_err"], out["worst_param"] = rel(got)
    if device.type == "cuda":
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            strict = {**omega(dev_model, device, "image"), **omega(dev_model, device, "fact")}
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
        out["max_rel_err_tf32_off"], out["worst_param_tf32_off"] = rel(strict)
    print(f"Ω: {out['images_per_s']:.0f} images/s, {out['facts_per_s']:.0f} facts/s (batch {batch}); "
          f"max rel. difference from CPU {out['max_rel_err']:.2e}"
          + (f", TF32 off {out['max_rel_err_tf32_off']:.2e}" if "max_rel_err_tf32_off" in out else ""),
          flush=True)
    return out


def one_task(data_path: Path, device: torch.device, epochs: int, out_dir: Path) -> dict:
    """``factmas.trainer.train`` of the default configuration (MAS) for one task on ``device``."""
    from factmas.config import RunConfig
    from factmas.trainer import train
    cfg = RunConfig(data=str(data_path), out=str(out_dir))
    cfg.train.device = device.type
    cfg.train.epochs = epochs
    t0 = time.perf_counter()
    state = train(cfg, limit_tasks=1, progress=False)
    seconds = time.perf_counter() - t0
    events = [json.loads(ln) for ln in (out_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    epochs_rows = [e for e in events if e.get("event") == "epoch"]
    ends = [e for e in events if e.get("event") == "task_end"]
    out = {"method": cfg.train.method, "epochs": epochs, "seconds": seconds,
           "epoch_images_per_s": [e["images_per_s"] for e in epochs_rows],
           "task_end": ends[-1] if ends else None,
           "completed_tasks": state.completed_tasks}
    print(f"one task: {seconds:.0f} s; epochs at {[round(r) for r in out['epoch_images_per_s']]} images/s",
          flush=True)
    return out


# ---- main --------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cuda (the check); cpu: a dry run of the same code path")
    ap.add_argument("--images", type=int, default=2000, help="synthetic 224-px images")
    ap.add_argument("--data", type=Path, help="an HDF5 dataset instead of the synthetic one")
    ap.add_argument("--cache-batch", type=int, default=128)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--omega-samples", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--test-timeout", type=int, default=240)
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["tests", "cache", "train_step", "omega", "task"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a dry run of the code path)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    refusal = no_gpu_message(args.device)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    if args.quick:
        args.images, args.cache_batch, args.train_steps, args.omega_samples, args.epochs = 40, 8, 2, 16, 1
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)                      # a dry run on a shared CPU
    from factmas.config import ModelConfig
    from factmas.data.dataset import read_dataset
    from factmas.data.synthetic import make_synthetic_dataset
    from factmas.model import build_model

    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="factmas_gpu_check_"))
    payload = {"benchmark": "gpu_check", "machine": common.machine_info(), "gpu": device_info(device),
               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "sections": {}}
    failed = []

    def section(name, fn):
        if name in args.skip:
            return None
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as e:                       # recorded; the other sections still run
            traceback.print_exc()
            result = {"error": f"{type(e).__name__}: {e}"[:2000]}
            failed.append(name)
        if isinstance(result, dict):
            result.setdefault("section_seconds", time.perf_counter() - t0)
            if result.get("passed") is False:
                failed.append(name)
        payload["sections"][name] = result
        payload["total_seconds"] = time.perf_counter() - t_start
        common.write_results(args.out, payload)
        return result

    section("tests", lambda: run_tests(args.test_timeout))
    if args.data:
        data_path = args.data
    else:
        data_path = work / "synthetic224.h5"
        make_synthetic_dataset(data_path, n_images=args.images, image_size=224, num_tasks=4)
    data = read_dataset(data_path)
    payload["data"] = {"path": str(data_path), "images": len(data.images),
                       "image_size": int(data.images.shape[1]), "facts": data.num_facts}
    torch.manual_seed(0)
    model = build_model(ModelConfig(), len(data.vocab))
    from factmas.config import RunConfig
    cfg = RunConfig(data=str(data_path))
    cfg.train.split = next(iter(sorted(data.splits))) if cfg.train.split not in data.splits else cfg.train.split
    state = {}

    def cache():
        res, state["feats"] = build_cache(model, data, device, args.cache_batch, min(16, len(data.images)))
        return res

    def need_feats():
        if "feats" not in state:
            from factmas.model.features import load_or_build
            state["feats"] = load_or_build(model, data, device, progress=False)
        return state["feats"]

    section("cache", cache)
    section("train_step", lambda: train_steps(model, data, need_feats(), device, cfg, args.train_steps,
                                              cfg.train.batch_size))
    section("omega", lambda: omega_check(model, data, need_feats(), device, args.omega_samples,
                                         cfg.train.aux_batch_size))
    section("task", lambda: one_task(data_path, device, args.epochs, work / "run"))
    payload["failed_sections"] = failed
    payload["total_seconds"] = time.perf_counter() - t_start
    common.write_results(args.out, payload)
    print(f"gpu_check: {time.perf_counter() - t_start:.0f} s, "
          + (f"FAILED sections: {failed}" if failed else "all sections ran"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

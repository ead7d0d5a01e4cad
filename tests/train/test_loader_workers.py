"""``train.num_workers``: image batches read by DataLoader workers give the same run, bit for bit, as
batches read in the training process (issue 28): the same batches in the same order (pixels and the
memory-mapped feature cache, flips included), the same embeddings, metrics, weights and Ω; a bad value
is a configuration error (exit 2) before any work."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from factmas.config import ConfigError, ModelConfig, RunConfig
from factmas.config_check import validate_config
from factmas.data.dataset import read_dataset
from factmas.data.synthetic import make_synthetic_dataset
from factmas.distributed.step import RowShare
from factmas.model import build_model
from factmas.model.embedder import RunEmbedder
from factmas.model.features import CachedInputs, PixelInputs, input_batches, load_or_build
from factmas.run.checkpoint import last_path, load_checkpoint
from factmas.trainer import train
from factmas.trainer.batches import Batcher, make_rng

TINY_PIXELS = {"backbone": "small_cnn", "width": 8, "embed_dim": 16, "word_dim": 16, "fact_hidden": 32,
               "norm_groups": 4}
TINY_LITE = {"backbone": "efficientnet_lite0", "embed_dim": 8, "word_dim": 8, "fact_hidden": 16,
             "freeze_stages": 5}
TIMING = {"seconds", "images_per_s", "task_end_seconds", "stage_seconds", "timing"}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    return make_synthetic_dataset(root / "syn.h5", n_images=64, image_size=32, num_tasks=2)


def _run(path, out, model, workers, method="mas"):
    cfg = RunConfig.from_dict({
        "data": str(path), "out": str(out), "model": model,
        "train": {"split": "random2_seed0", "method": method, "reg_lambda": 1.0, "epochs": 1,
                  "batch_size": 16, "aux_batch_size": 16, "num_workers": workers, "threads": 1},
        "eval": {"embed_batch": 16, "enabled": True}})
    torch.manual_seed(0)
    train(cfg, progress=False)
    metrics = [_strip(json.loads(line)) for line in (out / "metrics.jsonl").read_text().splitlines()]
    results = _strip(json.loads((out / "results.json").read_text()))
    return metrics, results, load_checkpoint(last_path(out))


def _assert_same_run(a, b):
    (m0, r0, s0), (m2, r2, s2) = a, b
    assert m0 == m2 and any("retrieval" in json.dumps(r) for r in m2)
    differ = {k for k in r0.keys() | r2.keys() if r0.get(k) != r2.get(k)}
    assert differ == {"run_name"}, differ                  # results.json: R, metrics, baselines, ...
    weights = [k for k, v in s0["model"].items() if torch.is_tensor(v)]
    assert weights and all(torch.equal(s0["model"][k], s2["model"][k]) for k in weights)
    omega = [k for k in s0["method"] if k.startswith("omega.")]
    assert omega and any(float(s0["method"][k].abs().sum()) > 0 for k in omega)
    assert sorted(s0["method"]) == sorted(s2["method"])
    assert all(torch.equal(s0["method"][k], s2["method"][k]) for k in s0["method"])


def _spy(monkeypatch):
    """Count the loader's calls with workers (training pairs, Ω, validation loss, evaluation)."""
    import factmas.model.features as features
    calls = []
    real = features.batch_loader

    def spy(fetch, keys, num_workers=0, **kw):
        calls.append((type(fetch.inputs).__name__, num_workers, len(keys)))
        return real(fetch, keys, num_workers, **kw)

    monkeypatch.setattr(features, "batch_loader", spy)
    return calls


def test_pixel_backbone_run_is_identical_with_two_workers(dataset, tmp_path, monkeypatch):
    calls = _spy(monkeypatch)
    runs = [_run(dataset, tmp_path / f"w{w}", TINY_PIXELS, w) for w in (0, 2)]
    _assert_same_run(*runs)
    assert len(calls) >= 8 and {c[:2] for c in calls} == {("PixelInputs", 2)}


def test_cached_backbone_run_is_identical_with_two_workers(dataset, tmp_path, monkeypatch):
    """The default backbone's path (frozen stem read from the memory-mapped feature cache, flips from
    its mirrored half) at a tiny size."""
    calls = _spy(monkeypatch)
    runs = [_run(dataset, tmp_path / f"w{w}", TINY_LITE, w) for w in (0, 2)]
    _assert_same_run(*runs)
    assert len(calls) >= 8 and {c[:2] for c in calls} == {("CachedInputs", 2)}


def _batches(batcher, pairs, flip):
    rng = make_rng(3, 1, 0)
    return list(batcher.pair_batches(pairs, 10, rng, flip=flip))


@pytest.mark.parametrize("source", ["pixels", "cache"])
def test_batches_come_in_the_same_order_with_the_same_content(dataset, source):
    data = read_dataset(dataset)
    if source == "pixels":
        make = lambda w: PixelInputs(data, num_workers=w)  # noqa: E731
    else:
        torch.manual_seed(0)
        model = build_model(ModelConfig(**TINY_LITE), len(data.vocab)).eval()
        feats = load_or_build(model, data, progress=False)
        assert isinstance(feats, np.memmap)
        make = lambda w: CachedInputs(feats, num_workers=w)  # noqa: E731
    pairs = data.pairs[np.random.default_rng(0).permutation(len(data.pairs))[:95]]
    got = {w: _batches(Batcher(data, "cpu", make(w)), pairs, flip=True) for w in (0, 2)}
    assert len(got[0]) == len(got[2]) == 10                # 95 pairs of 10: the last 5 kept
    for b0, b2 in zip(got[0], got[2]):
        assert torch.equal(b0["image_idx"], b2["image_idx"]) and torch.equal(b0["fact_idx"], b2["fact_idx"])
        assert torch.equal(b0["images"], b2["images"]) and torch.equal(b0["positive"], b2["positive"])
    # the same as reading each batch with get() (the code path before the loader)
    rng = make_rng(3, 1, 0)
    order = rng.permutation(len(pairs))
    flips = rng.random(len(pairs)) < 0.5
    first = pairs[order[:10]]
    assert torch.equal(got[2][0]["images"], make(0).get(first[:, 0].astype(np.int64), flips[:10]))
    imgs = {w: list(Batcher(data, "cpu", make(w)).image_batches(np.arange(37), 8)) for w in (0, 2)}
    assert len(imgs[2]) == 5 and all(torch.equal(a, b) for a, b in zip(imgs[0], imgs[2]))


def test_the_embedder_gives_the_same_embeddings_with_workers(dataset):
    data = read_dataset(dataset)
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY_PIXELS), len(data.vocab)).eval()
    ids = np.random.default_rng(1).permutation(len(data.images))[:41]
    phi = {w: RunEmbedder(model, data, inputs=PixelInputs(data, num_workers=w), flip_average=True,
                          batch_size=8).images(ids) for w in (0, 2)}
    assert phi[0].shape == (41, 3, 16) and torch.equal(phi[0], phi[2])
    plain = RunEmbedder(model, data, flip_average=False, batch_size=8, num_workers=2).images(ids)
    assert plain.shape == phi[0].shape and not torch.equal(plain, phi[0])


def test_a_rank_share_reads_its_rows_in_the_worker(dataset):
    data = read_dataset(dataset)
    share = RowShare(PixelInputs(data, num_workers=2))
    share.rank, share.world = 1, 2                           # as rank 1 of 2 would have fixed them
    ids = np.arange(10, 21)                                  # 11 rows: rank 1 holds the last 5
    x = next(input_batches(share, [(ids, None)]))
    assert torch.equal(x, PixelInputs(data).get(ids[6:]))


def test_inputs_pickle_for_spawned_workers(dataset):
    import pickle
    data = read_dataset(dataset)
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY_LITE), len(data.vocab)).eval()
    inputs = CachedInputs(load_or_build(model, data, progress=False), num_workers=2)
    blob = pickle.dumps(inputs)
    assert len(blob) < 10_000                              # by the cache file's path, not its rows
    back = pickle.loads(blob)
    ids = np.array([5, 1, 9])
    assert torch.equal(back.host(ids, np.array([1, 0, 1])), inputs.host(ids, np.array([1, 0, 1])))


@pytest.mark.parametrize("bad", [-1, -3])
def test_negative_workers_are_a_config_error(bad):
    cfg = RunConfig.from_dict({"train": {"num_workers": bad}})
    with pytest.raises(ConfigError, match=r"train\.num_workers \(--num-workers\)"):
        validate_config(cfg)


def test_negative_workers_on_the_command_line_exit_2(dataset, tmp_path, capsys):
    from factmas.cli.train import main
    from factmas.errors import guarded_main
    out = tmp_path / "run"
    status = guarded_main("factmas train", main, ["--data", str(dataset), "--out", str(out),
                                                  "--split", "random2_seed0", "--num-workers", "-1",
                                                  "--no-progress", "-q"])
    assert status == 2
    err = capsys.readouterr().err
    assert "--num-workers" in err and ">= 0" in err and "Traceback" not in err
    assert not (out / "config.json").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("source", ["pixels", "cache"])
def test_on_cuda_workers_stream_the_same_batches_as_the_whole_device_copy(dataset, source):
    """On a GPU, workers read each batch's rows on the host (pinned) instead of a copy of every image
    on the device; the batches are the same to the bit."""
    data = read_dataset(dataset)
    if source == "pixels":
        make = lambda w: PixelInputs(data, "cuda", num_workers=w)  # noqa: E731
    else:
        torch.manual_seed(0)
        model = build_model(ModelConfig(**TINY_LITE), len(data.vocab)).eval()
        feats = load_or_build(model, data, progress=False)
        make = lambda w: CachedInputs(feats, "cuda", num_workers=w)  # noqa: E731
    whole, streamed = make(0), make(2)
    assert streamed.pin_memory
    if source == "pixels":
        assert streamed.pixels is None                         # nothing copied to the device whole
    else:
        assert isinstance(streamed.features, np.ndarray)
    assert isinstance(whole.pixels if source == "pixels" else whole.features, torch.Tensor)
    pairs = data.pairs[:50]
    got = {w: _batches(Batcher(data, "cuda", inp), pairs, flip=True) for w, inp in ((0, whole), (2, streamed))}
    for b0, b2 in zip(got[0], got[2]):
        assert b2["images"].is_cuda and torch.equal(b0["images"], b2["images"])


def test_a_run_resumed_with_workers_equals_the_uninterrupted_run(dataset, tmp_path, capsys):
    """``--num-workers`` may be given with ``--resume`` (and config.json may differ in it): who reads
    the batches does not change them."""
    from factmas.cli.train import main
    from factmas.errors import guarded_main
    from factmas.trainer import resume
    full_metrics, full_results, full_state = _run(dataset, tmp_path / "full", TINY_PIXELS, 0)
    cfg = RunConfig.from_dict({
        "data": str(dataset), "out": str(tmp_path / "part"), "model": TINY_PIXELS,
        "train": {"split": "random2_seed0", "method": "mas", "reg_lambda": 1.0, "epochs": 1,
                  "batch_size": 16, "aux_batch_size": 16, "num_workers": 0, "threads": 1},
        "eval": {"embed_batch": 16, "enabled": True}})
    torch.manual_seed(0)
    train(cfg, progress=False, limit_tasks=1)
    bad = guarded_main("factmas train", main, ["--resume", str(tmp_path / "part"), "--num-workers", "-2",
                                               "--no-progress", "-q"])
    assert bad == 2 and "--num-workers" in capsys.readouterr().err
    resume(tmp_path / "part", progress=False, num_workers=2)
    part = tmp_path / "part"
    metrics = [_strip(json.loads(line)) for line in (part / "metrics.jsonl").read_text().splitlines()]
    state = load_checkpoint(last_path(part))
    assert metrics == full_metrics
    assert all(torch.equal(v, state["model"][k]) for k, v in full_state["model"].items())
    assert all(torch.equal(v, state["method"][k]) for k, v in full_state["method"].items())

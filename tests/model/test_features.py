"""The feature cache of a pretrained backbone's frozen stem: equal to the live stem, mirrored images,
fingerprinted (reused while pixels and weights are unchanged, rebuilt otherwise), written atomically,
and a MAS run on the default backbone that trains, evaluates and resumes through it."""
from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest
import torch

import factmas.model.features as features
from factmas.config import ModelConfig, RunConfig
from factmas.data.dataset import read_dataset
from factmas.model.features import CachedInputs, PixelInputs, cache_file, image_inputs, load_or_build
from factmas.model import build_model, preprocess
from factmas.data.synthetic import make_synthetic_dataset
from factmas.trainer import resume, train

LITE = {"backbone": "efficientnet_lite0", "embed_dim": 8, "word_dim": 8, "fact_hidden": 16,
        "freeze_stages": 5}


@pytest.fixture()
def data(tmp_path):
    path = make_synthetic_dataset(tmp_path / "syn.h5", n_images=40, image_size=32, num_tasks=2)
    return read_dataset(path, in_memory=True)       # a test below edits the pixels in memory


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(**LITE), 50).eval()


def test_cache_equals_the_live_stem_for_both_orientations(data, model):
    feats = load_or_build(model, data, progress=False)
    assert feats.dtype == np.float16 and feats.shape == (40, 2, 112, 2, 2)
    ids = np.array([3, 0, 17])
    flip = np.array([False, True, True])
    cached = CachedInputs(feats).get(ids, flip)
    live = PixelInputs(data, stem=model.image_stem).get(ids, flip)
    # equal up to one float16 step: the convolution's summation order depends on the batch size
    assert torch.allclose(cached, live, rtol=2e-3, atol=2e-3)
    by_hand = model.image_stem(preprocess(data.images[ids[1:2]]).flip(-1))
    assert torch.allclose(cached[1:2], by_hand, rtol=2e-3, atol=2e-3)
    unflipped = model.image_stem(preprocess(data.images[ids[1:2]]))
    assert not torch.allclose(cached[1:2], unflipped, rtol=2e-3, atol=2e-3)


def test_cache_key_names_the_engine(data):
    """An ONNX Runtime cache never stands in for a torch one (features equal only to float16 rounding),
    and a torch stem keeps the key of caches built before engines existed."""
    from factmas.model.stem_engine import ort_available
    if not ort_available():
        pytest.skip("onnxruntime is not installed")
    auto = build_model(ModelConfig(**{**LITE, "stem_engine": "auto"}), 50)
    plain = build_model(ModelConfig(**{**LITE, "stem_engine": "torch"}), 50)
    plain.load_state_dict(auto.state_dict())
    assert cache_file(data, auto) != cache_file(data, plain)
    key = hashlib.blake2b(f"{features.CACHE_VERSION}:{features.pixels_hash(data.images)}:"
                          f"{features.stem_hash(plain.image_stem)}".encode(), digest_size=8).hexdigest()
    assert cache_file(data, plain).name.endswith(f"-{key}.npy")


def test_a_run_recorded_before_stem_engine_loads_with_torch(tmp_path):
    """Runs made before model.stem_engine existed computed their frozen stages with torch."""
    import json
    from factmas.run.rundir import read_run_config
    cfg = RunConfig().to_dict()
    del cfg["model"]["stem_engine"]
    (tmp_path / "config.json").write_text(json.dumps({"config": cfg}), encoding="utf-8")
    assert read_run_config(tmp_path)[0].model.stem_engine == "torch"
    cfg["model"]["stem_engine"] = "auto"
    (tmp_path / "config.json").write_text(json.dumps({"config": cfg}), encoding="utf-8")
    assert read_run_config(tmp_path)[0].model.stem_engine == "auto"


def test_cache_is_reused_and_rebuilt_when_pixels_or_weights_change(data, model, monkeypatch):
    first = cache_file(data, model)
    load_or_build(model, data, progress=False)
    calls = []
    real = features.build_file
    monkeypatch.setattr(features, "build_file", lambda *a, **k: calls.append(1) or real(*a, **k))
    load_or_build(model, data, progress=False)
    assert calls == []                                           # reused
    data.images[5, 0, 0, 0] ^= 1                                 # one pixel changes
    assert cache_file(data, model) != first
    load_or_build(model, data, progress=False)
    assert calls == [1]
    other = build_model(ModelConfig(**{**LITE, "pretrained": False}), 50)
    assert cache_file(data, other) != cache_file(data, model)    # other weights, other file
    assert not list(first.parent.glob(".*.tmp"))                 # nothing half-written left
    assert sorted(p.suffix for p in first.parent.iterdir()) == [".npy", ".npy"]   # no partial, sidecar, lock


def test_unreadable_cache_names_the_file(data, model):
    path = cache_file(data, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not numpy")
    with pytest.raises(ValueError, match=f"{path.name}: unreadable feature cache"):
        load_or_build(model, data, progress=False)
    np.save(path, np.zeros((3, 2, 1), np.float16))
    with pytest.raises(ValueError, match="expected \\[40, 2, [0-9]+, [0-9]+, [0-9]+\\] float16; delete it to rebuild"):
        load_or_build(model, data, progress=False)
    np.save(path, np.zeros((40, 2, 1, 1, 1), np.float16))      # right count, wrong rows (issue 30)
    with pytest.raises(ValueError, match="shape \\(40, 2, 1, 1, 1\\)"):
        load_or_build(model, data, progress=False)


def test_traceback_truncated_or_wrongly_shaped_cache_during_train_is_one_line(tmp_path, capsys):
    """Issue 30: ``factmas train`` (and gallery) on a damaged cache: exit 2, one line naming it."""
    import json as _json

    from factmas.cli import main as cli
    from factmas.model.features import load_or_build as build
    path = make_synthetic_dataset(tmp_path / "syn.h5", n_images=40, image_size=32, num_tasks=2)
    data = read_dataset(path)
    torch.manual_seed(0)
    m = build_model(ModelConfig(**LITE), len(data.vocab)).eval()
    cache = cache_file(data, m)
    good = np.array(build(m, data, progress=False))   # a copy: the damage below truncates the mapped file
    cfg = tmp_path / "c.json"
    cfg.write_text(_json.dumps({"model": LITE, "train": {"epochs": 1, "threads": 1}}))
    argv = ["train", "--data", str(path), "--split", "random2_seed0", "-q", "--no-progress", "--config",
            str(cfg)]
    for i, damage in enumerate((lambda: cache.write_bytes(cache.read_bytes()[:200]),
                                lambda: np.save(cache, good[:, :, :1]))):
        damage()
        assert cli(argv + ["--out", str(tmp_path / f"r{i}")]) == 2
        err = capsys.readouterr().err
        assert cache.name in err and "delete it to rebuild" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err


def test_a_dataset_read_without_pixels_is_refused_and_writes_nothing(data, model):
    bare = read_dataset(data.path, load_images=False)
    with pytest.raises(ValueError, match="needs the dataset's pixels \\(0 of 40 images loaded"):
        image_inputs(model, bare, progress=False)
    assert not cache_file(data, model).parent.exists()


def test_pixel_models_read_pixels(data):
    cnn = build_model(ModelConfig(backbone="small_cnn", width=8, embed_dim=8), 50)
    inputs = image_inputs(cnn, data)
    assert isinstance(inputs, PixelInputs)
    assert torch.equal(inputs.get(np.array([1, 2])), preprocess(data.images[[1, 2]]))


def _cfg(path, out, **train):
    t = {"split": "random2_seed0", "method": "mas", "epochs": 1, "batch_size": 16, **train}
    return RunConfig.from_dict({"data": str(path), "out": str(out), "model": LITE, "train": t,
                                "eval": {"embed_batch": 16}})


def test_mas_run_on_the_default_backbone_trains_evaluates_and_resumes(tmp_path):
    path = make_synthetic_dataset(tmp_path / "syn.h5", n_images=48, image_size=32, num_tasks=2)
    full = train(_cfg(path, tmp_path / "full", threads=1), progress=False)
    assert len(full.history) == 3 and full.completed_tasks == [0, 1]
    assert len(list((tmp_path / "syn.h5.features").glob("*.npy"))) == 1
    ckpt = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    omega = [k for k in ckpt["method"] if k.startswith("omega.")]
    assert omega and not any(k.startswith("omega.image_stem.") for k in omega)
    assert any(k.startswith("omega.image_branch.trunk.") for k in omega)
    stem_keys = [k for k in ckpt["model"] if k.startswith("image_stem.")]
    assert stem_keys                                              # the checkpoint is self-contained
    part = train(_cfg(path, tmp_path / "part", threads=1), progress=False, limit_tasks=1)
    assert len(part.history) == 2
    resumed = resume(tmp_path / "part", progress=False)
    last = torch.load(tmp_path / "part" / "checkpoints" / "last.pt", weights_only=True)
    for k, v in ckpt["model"].items():
        assert torch.equal(last["model"][k], v), k
    strip = lambda row: {k: v for k, v in row["retrieval"].items() if k != "timing"}  # noqa: E731
    assert strip(resumed.history[-1]) == strip(full.history[-1])


def test_pixel_shifts_are_refused_for_a_cached_backbone(tmp_path):
    from factmas.trainer import UsageError
    path = make_synthetic_dataset(tmp_path / "syn.h5", n_images=24, image_size=32, num_tasks=2)
    with pytest.raises(UsageError, match="augment_shift = 4.*pixel-input backbones"):
        train(_cfg(path, tmp_path / "run", augment_shift=4), progress=False)
    assert not (tmp_path / "run").exists()
    with h5py.File(path) as h:
        assert h["images"].shape[1] == 32

"""The run embedder (``factmas.model.embedder.RunEmbedder``): the numbers of the code it replaced, bit
for bit; flip averaging from the feature cache and from pixels; batching against a per-image loop;
the run's config deciding flip averaging, batch size and the cache; failure paths."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from factmas.config import ModelConfig, RunConfig
from factmas.data.dataset import read_dataset
from factmas.data.synthetic import make_synthetic_dataset
from factmas.model import build_model, preprocess
from factmas.model.embedder import RunEmbedder
from factmas.model.features import CachedInputs, PixelInputs, image_inputs, load_or_build

TINY = {"embed_dim": 8, "word_dim": 8, "fact_hidden": 16}
LITE = {"backbone": "efficientnet_lite0", "freeze_stages": 5, **TINY}
CNN = {"backbone": "small_cnn", "width": 8, "norm_groups": 4, **TINY}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = make_synthetic_dataset(tmp_path_factory.mktemp("e") / "syn.h5", n_images=30, image_size=32,
                                  num_tasks=2, seed=int(np.random.default_rng().integers(1000)))
    return read_dataset(path)


def _model(spec: dict, vocab: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(**spec), vocab).eval()


# ---- the numbers of the code it replaced ----------------------------------------------------------
def _old_pixels(model, images, batch, flip):
    """``evaluator.embed_images`` → ``TwoBranchModel.embed_pixels(x, flip_average)`` before issue 29."""
    out = []
    for i in range(0, len(images), batch):
        x = preprocess(torch.from_numpy(np.ascontiguousarray(images[i:i + batch])))
        phi = model.image_branch(model.image_input(x))
        if flip:
            phi = 0.5 * (phi + model.image_branch(model.image_input(x.flip(-1))))
        out.append(phi.float().cpu())
    return torch.cat(out)


def _old_inputs(model, inputs, ids, batch, flip):
    """``evaluator.embed_inputs`` → ``TwoBranchModel.embed_inputs(inputs, ids, flip_average)``."""
    out = []
    for i in range(0, len(ids), batch):
        part = ids[i:i + batch]
        phi = model.image_branch(inputs.get(part))
        if flip:
            phi = 0.5 * (phi + model.image_branch(inputs.get(part, np.ones(len(part), dtype=bool))))
        out.append(phi.float().cpu())
    return torch.cat(out)


def _old_facts(model, tokens, order, batch):
    """``evaluator.embed_facts`` before issue 29."""
    tok = torch.as_tensor(np.asarray(tokens, np.int64))
    ord_ = torch.as_tensor(np.asarray(order, np.int64))
    return torch.cat([model.fact_branch(tok[i:i + batch], ord_[i:i + batch]).float().cpu()
                      for i in range(0, len(tok), batch)])


@pytest.mark.parametrize("spec", [CNN, LITE], ids=["small_cnn", "efficientnet_lite0"])
@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("batch", [7, 256])
@torch.no_grad()
def test_the_same_numbers_as_before_bit_for_bit(data, spec, flip, batch):
    """φ through the cache (or the pixels), φ of photos and ψ equal the pre-embedder code exactly."""
    model = _model(spec, len(data.vocab), int(np.random.default_rng().integers(1 << 31)))
    ids = np.random.default_rng().permutation(len(data.images))[:19]
    inputs = image_inputs(model, data, progress=False)
    e = RunEmbedder(model, data, inputs=inputs, flip_average=flip, batch_size=batch)
    assert torch.equal(e.images(ids), _old_inputs(model, inputs, ids, batch, flip))
    photos = data.images[ids]
    assert torch.equal(e.pixels(photos), _old_pixels(model, photos, batch, flip))
    order = data.order.astype(np.int64)
    assert torch.equal(e.facts(data.tokens, order), _old_facts(model, data.tokens, order, batch))


# ---- flip averaging and batching against naive references --------------------------------------
@torch.no_grad()
def test_flip_average_from_the_cache_equals_the_mirror_mean_from_pixels(data):
    """eval.flip_average: φ of the cached image and its cached mirror, averaged, is the mean of φ of
    the pixels and of the pixels mirrored by hand; without the flag it is the plain φ."""
    model = _model(LITE, len(data.vocab), 0)
    inputs = CachedInputs(load_or_build(model, data, progress=False))
    ids = np.array([5, 1, 30 - 1, 2])
    x = preprocess(data.images[ids])
    plain = model.image_branch(model.image_stem(x))
    mirror = model.image_branch(model.image_stem(torch.flip(x, dims=[3])))
    flip, no_flip = (RunEmbedder(model, data, inputs=inputs, flip_average=f) for f in (True, False))
    # the cache holds the stem's output rounded to float16: equal to the live stem to one float16 step
    assert torch.allclose(flip.images(ids), (plain + mirror) / 2, rtol=1e-2, atol=1e-2)
    assert torch.allclose(no_flip.images(ids), plain, rtol=1e-2, atol=1e-2)
    assert torch.allclose(flip.pixels(data.images[ids]), (plain + mirror) / 2, atol=1e-6)
    assert torch.allclose(no_flip.pixels(data.images[ids]), plain, atol=1e-6)
    assert not torch.allclose(plain, mirror, rtol=1e-2, atol=1e-2)     # the flag changes something


@torch.no_grad()
def test_batches_equal_a_per_image_loop(data):
    """Batches of 4 over 13 images / all facts (a last partial batch): each row is that image's (fact's)
    own embedding, in the order asked, whatever the batch."""
    model = _model(CNN, len(data.vocab), 1)
    ids = np.array([12, 0, 7, 7, 3, 29, 1, 2, 25, 11, 4, 5, 6])
    e = RunEmbedder(model, data, flip_average=True, batch_size=4)
    got = e.images(ids)
    for row, i in zip(got, ids):
        x = preprocess(data.images[i:i + 1])
        ref = (model.image_branch(x) + model.image_branch(torch.flip(x, dims=[3]))) / 2
        assert torch.allclose(row, ref[0], atol=1e-5)
    assert torch.allclose(e.pixels(data.images[ids]), got, atol=1e-6)
    tok, order = data.tokens.astype(np.int64), data.order.astype(np.int64)
    psi = e.facts(tok, order)
    assert psi.shape == (len(order), 3, 8) and psi.dtype == torch.float32
    for f in range(len(order)):
        ref = model.fact_branch(torch.as_tensor(tok[f:f + 1]), torch.as_tensor(order[f:f + 1]))
        assert torch.allclose(psi[f], ref[0], atol=1e-5)


def test_bare_model_is_enough(data):
    """Any module with ``image_branch`` and ``fact_branch`` (no stem, no embed_* methods) is embedded
    the same way: no path of its own."""
    model = _model(CNN, len(data.vocab), 2)

    class Bare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.image_branch, self.fact_branch = model.image_branch, model.fact_branch

    ids = np.arange(10)
    a = RunEmbedder(Bare(), data, flip_average=True, batch_size=3)
    b = RunEmbedder(model, data, flip_average=True, batch_size=3)
    assert torch.equal(a.images(ids), b.images(ids))
    assert torch.equal(a.pixels(data.images[ids]), b.pixels(data.images[ids]))


# ---- the run's config decides ----------------------------------------------------------------------
def test_for_run_reads_flip_batch_and_cache_from_the_config(data):
    model = _model(LITE, len(data.vocab), 3)
    cfg = RunConfig(model=ModelConfig(**LITE))
    cfg.eval.flip_average, cfg.eval.embed_batch, cfg.train.feature_cache = False, 5, False
    e = RunEmbedder.for_run(model, cfg, data)
    assert (e.flip_average, e.batch_size, e.device) == (False, 5, torch.device("cpu"))
    assert isinstance(e.inputs, PixelInputs) and e.inputs.stem is model.image_stem
    cfg.eval.flip_average, cfg.train.feature_cache = True, True
    e = RunEmbedder.for_run(model, cfg, data)
    assert e.flip_average and isinstance(e.inputs, CachedInputs)
    assert isinstance(RunEmbedder.for_run(model, cfg, data, cache=False).inputs, PixelInputs)
    given = object()
    assert RunEmbedder.for_run(model, cfg, data, inputs=given).inputs is given


# ---- failure paths and edges -------------------------------------------------------------------------
def test_bad_use_is_a_clear_error(data):
    model = _model(CNN, len(data.vocab), 4)
    with pytest.raises(ValueError, match="embed_batch.*>= 1, got 0"):
        RunEmbedder(model, batch_size=0)
    with pytest.raises(ValueError, match="no dataset"):
        RunEmbedder(model).images(np.arange(3))
    with pytest.raises(ValueError, match="expected uint8"):
        RunEmbedder(model).pixels(data.images[:2].astype(np.float32))


def test_nothing_to_embed_gives_zero_rows_of_the_model_width(data):
    model = _model(CNN, len(data.vocab), 5)
    e = RunEmbedder(model, data, flip_average=True)
    assert e.images(np.zeros(0, np.int64)).shape == (0, 3, 8)
    assert e.pixels(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 3, 8)
    assert e.facts(np.zeros((0, 3, 4), np.int64), np.zeros(0, np.int64)).shape == (0, 3, 8)


def test_from_eval_reads_the_two_eval_settings(data):
    from factmas.config import EvalConfig
    model = _model(CNN, len(data.vocab), 6)
    e = RunEmbedder.from_eval(model, EvalConfig(flip_average=False, embed_batch=9), data)
    assert (e.flip_average, e.batch_size, e.cache) == (False, 9, True)
    e = RunEmbedder.from_eval(model, EvalConfig(), data, cache=False)
    assert (e.flip_average, e.batch_size, e.cache) == (EvalConfig.flip_average, EvalConfig.embed_batch, False)

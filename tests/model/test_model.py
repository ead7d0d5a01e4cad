"""factmas.model: shapes, the S/PO fork, the fact branch against a naive loop, wildcard zeros,
sample independence, allowed layer types, resnet18 weights, preprocess and image-file loading."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from factmas.config import ModelConfig
from factmas.model import (IMAGENET_MEAN, IMAGENET_STD, build_model, load_image_file, preprocess)

VOCAB = 20
HOOKED_LAYERS = {nn.Conv2d, nn.Linear, nn.Embedding, nn.GroupNorm, nn.LayerNorm}


def _facts(b: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    order = torch.randint(1, 4, (b,), generator=g)
    tokens = torch.randint(1, VOCAB, (b, 3, 4), generator=g)
    n_words = torch.randint(1, 5, (b, 3), generator=g)
    tokens[torch.arange(4)[None, None, :] >= n_words[..., None]] = 0       # trailing pads
    tokens[torch.arange(3)[None, :] >= order[:, None]] = 0                 # absent slots
    return tokens, order


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone="small_cnn", embed_dim=8, width=8, word_dim=6, fact_hidden=10, norm_groups=4), VOCAB)


def test_shapes_and_contract(small):
    x = torch.randn(3, 3, 32, 32)
    tokens, order = _facts(5)
    phi, psi = small(x, tokens, order)
    assert phi.shape == (3, 3, 8) and phi.dtype == torch.float32
    assert psi.shape == (5, 3, 8) and psi.dtype == torch.float32
    assert torch.equal(small.image_branch(x), phi)
    assert torch.equal(small.fact_branch(tokens, order), psi)
    cnn = build_model(ModelConfig(backbone="small_cnn"), VOCAB)
    assert cnn.image_stem is None and cnn.image_branch(torch.randn(2, 3, 64, 64)).shape == (2, 3, ModelConfig().embed_dim)


def test_small_cnn_uses_only_hooked_layer_types():
    model = build_model(ModelConfig(backbone="small_cnn"), VOCAB)
    types = {type(m) for m in model.modules() if any(True for _ in m.parameters(recurse=False))}
    assert types <= HOOKED_LAYERS and nn.GroupNorm in types and nn.Embedding in types
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_image_branch_fork_s_head_and_po_head(small):
    heads = small.image_branch.heads
    phi = small.image_branch(torch.randn(2, 3, 32, 32))
    small.zero_grad()
    phi[:, 0].sum().backward(retain_graph=True)                 # φ_S: S head and trunk only
    assert all(p.grad is None or not p.grad.any() for p in heads.po_head.parameters())
    assert all(p.grad.abs().sum() > 0 for p in heads.s_head.parameters())
    small.zero_grad()
    phi[:, 1:].sum().backward()                                 # φ_P, φ_O: PO head and trunk only
    assert all(p.grad is None or not p.grad.any() for p in heads.s_head.parameters())
    assert all(p.grad.abs().sum() > 0 for p in small.image_branch.trunk.parameters())
    small.zero_grad()


def test_samples_are_independent(small):
    """No batch statistics: a sample's output does not depend on the rest of its batch."""
    x = torch.randn(4, 3, 32, 32)
    tokens, order = _facts(4, 1)
    phi, psi = small(x, tokens, order)
    phi1, psi1 = small(x[2:3], tokens[2:3], order[2:3])
    torch.testing.assert_close(phi1[0], phi[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(psi1[0], psi[2], rtol=1e-5, atol=1e-6)


def test_fact_branch_matches_naive_loop(small):
    fb = small.fact_branch
    tokens, order = _facts(6, 2)
    psi = fb(tokens, order)
    for i in range(6):
        for s in range(3):
            if s >= order[i]:
                assert torch.equal(psi[i, s], torch.zeros(8))
                continue
            words = [int(w) for w in tokens[i, s] if w != 0]
            pooled = torch.stack([fb.words.weight[w] for w in words]).mean(0)
            torch.testing.assert_close(psi[i, s], fb.slots[s](pooled[None])[0], rtol=1e-5, atol=1e-6)


def test_fact_branch_pad_position_and_shared_words(small):
    fb = small.fact_branch
    tokens = torch.tensor([[[3, 5, 0, 0], [7, 0, 0, 0], [0, 0, 0, 0]],
                           [[0, 3, 0, 5], [0, 0, 7, 0], [0, 0, 0, 0]]])
    psi = fb(tokens, torch.tensor([2, 2]))
    torch.testing.assert_close(psi[0], psi[1])                  # pads anywhere are ignored
    assert fb.words.padding_idx == 0 and not fb.words.weight[0].any()


def test_absent_slots_are_zero_and_pass_no_gradient(small):
    fb = small.fact_branch
    tokens, _ = _facts(4, 3)
    order = torch.ones(4, dtype=torch.long)
    tokens[:, 1:] = 0
    fb.zero_grad()
    psi = fb(tokens, order)
    assert not psi[:, 1:].any()
    (psi * torch.randn_like(psi)).sum().backward()
    for s in (1, 2):                                            # the P and O encoders learn nothing
        assert all(p.grad is None or not p.grad.any() for p in fb.slots[s].parameters())
    assert fb.slots[0][0].weight.grad.abs().sum() > 0
    assert not fb.words.weight.grad[0].any()
    fb.zero_grad()


def test_fact_branch_rejects_bad_input(small):
    fb = small.fact_branch
    tokens, order = _facts(3, 4)
    with pytest.raises(ValueError, match="order must be in 1..3"):
        fb(tokens, torch.tensor([1, 4, 2]))
    with pytest.raises(ValueError, match="word ids"):
        fb(torch.full_like(tokens, VOCAB), order)
    bad = tokens.clone()
    bad[0, 0] = 0
    with pytest.raises(ValueError, match="present slot"):
        fb(bad, order)
    with pytest.raises(ValueError, match=r"tokens \[B, 3, L\]"):
        fb(tokens[:, :2], order)


def test_bad_model_config_is_rejected():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'.*resnet18.*small_cnn"):
        build_model(ModelConfig(backbone="vgg"), VOCAB)
    with pytest.raises(ValueError, match="norm_groups=5"):
        build_model(ModelConfig(backbone="small_cnn", norm_groups=5), VOCAB)
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(ModelConfig(backbone="small_cnn"), 1)


def test_resnet18_fork_groupnorm_and_pretrained_weights(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    with torch.no_grad():                                       # non-trivial BN affines to copy
        ref.bn1.weight.uniform_(0.5, 1.5)
        ref.layer4[1].bn2.bias.uniform_(-1, 1)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    cfg = ModelConfig(backbone="resnet18_gn", pretrained_path=str(path), embed_dim=8, norm_groups=8)
    model = build_model(cfg, VOCAB)
    ib = model.image_branch
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    torch.testing.assert_close(ib.trunk[0].weight, ref.conv1.weight)
    torch.testing.assert_close(ib.trunk[1].weight, ref.bn1.weight)
    for head in (ib.heads.s_head, ib.heads.po_head):            # two separate copies of layer4
        torch.testing.assert_close(head[1].bn2.bias, ref.layer4[1].bn2.bias)
    assert ib.heads.s_head[0].conv1.weight.data_ptr() != ib.heads.po_head[0].conv1.weight.data_ptr()
    assert ib(torch.randn(2, 3, 32, 32)).shape == (2, 3, 8)

    with pytest.raises(ValueError, match="missing.pth"):
        build_model(ModelConfig(backbone="resnet18_gn", pretrained_path=str(tmp_path / "missing.pth")), VOCAB)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a torchvision resnet18"):
        build_model(ModelConfig(backbone="resnet18_gn", pretrained_path=str(tmp_path / "other.pth")), VOCAB)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_preprocess_matches_formula(as_tensor):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    out = preprocess(torch.from_numpy(images) if as_tensor else images)
    assert out.shape == (2, 3, 5, 4) and out.dtype == torch.float32
    for c in range(3):
        expected = (images[..., c] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        np.testing.assert_allclose(out[:, c].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert preprocess(images[0]).shape == (1, 3, 5, 4)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(images.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        preprocess(images[..., :2])


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "CMYK", "LA"])
def test_load_image_file_converts_modes_and_resizes_bicubic(tmp_path, mode):
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8))
    im = rgb.convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    im.save(path)
    out = load_image_file(path, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    with Image.open(path) as again:
        expected = np.asarray(again.convert("RGB").resize((16, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out, expected)


def test_load_image_file_errors_name_the_file(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.jpg"):
        load_image_file(text, 16)
    with pytest.raises(ValueError, match="absent.png"):
        load_image_file(tmp_path / "absent.png", 16)
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "full.png")
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:60])
    with pytest.raises(ValueError, match="cut.png"):
        load_image_file(truncated, 16)


def test_resnet18_rejects_mismatched_state_dict(tmp_path):
    torch.save({"layer9.weight": torch.zeros(1)}, tmp_path / "keys.pth")
    with pytest.raises(ValueError, match=r"keys.pth: not a torchvision resnet18.*mismatched keys"):
        build_model(ModelConfig(backbone="resnet18_gn", pretrained_path=str(tmp_path / "keys.pth")), VOCAB)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth: not a torchvision resnet18"):
        build_model(ModelConfig(backbone="resnet18_gn", pretrained_path=str(tmp_path / "list.pth")), VOCAB)


def test_fact_branch_runs_under_vmap_without_input_checks(small):
    fb = small.fact_branch
    tokens, order = _facts(5, 5)
    expected = fb(tokens, order)
    one = lambda t, o: fb(t[None], o[None])[0]                  # noqa: E731
    fb.check_inputs = False
    try:
        got = torch.func.vmap(one)(tokens, order)
    finally:
        fb.check_inputs = True
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)

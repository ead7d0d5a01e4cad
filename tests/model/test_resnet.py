"""ImageNet ResNet branches through torchvision's weights API, tested with a state dict placed in the
torch hub cache beforehand (never a download): weights loaded, BatchNorm and stem frozen, exact
per-sample Ω equal to the loop, clear errors."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from factmas.config import ModelConfig
from factmas.model import build_model
from factmas.persample.hooks import PerSampleHooks, abs_grad_sums
from factmas.persample.reference import loop_abs_grad_sums

VOCAB = 20


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """A torch hub cache holding a (random, seeded) resnet18 under torchvision's file name; any
    download attempt fails the test."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: pytest.fail("tried to download weights"))
    torch.manual_seed(3)
    state = torchvision.models.resnet18(weights=None).state_dict()
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1])
    yield state
    torch.hub.set_dir(old)


def test_resnet18_reads_the_cached_imagenet_file_and_freezes_batchnorm(hub):
    model = build_model(ModelConfig(backbone="resnet18", embed_dim=8), VOCAB)
    conv1 = model.image_stem.body[0]
    assert torch.equal(conv1.weight, hub["conv1.weight"])
    layer3 = model.image_branch.trunk                              # 3 frozen layers: trunk empty
    assert len(layer3) == 0 and model.image_stem.stages == 3
    s_head, po_head = model.image_branch.heads.s_head, model.image_branch.heads.po_head
    assert torch.equal(s_head[0].conv1.weight, hub["layer4.0.conv1.weight"])
    assert s_head[0].conv1.weight.data_ptr() != po_head[0].conv1.weight.data_ptr()
    model.train()
    assert not any(m.training for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    assert all(not p.requires_grad for p in model.image_stem.parameters())
    x = torch.randn(2, 3, 64, 64)
    assert model.embed_pixels(x).shape == (2, 3, 8)


def test_exact_omega_on_the_resnet_branch_matches_the_loop(hub):
    torch.manual_seed(0)
    m = build_model(ModelConfig(backbone="resnet18", embed_dim=8, freeze_stages=2), VOCAB).eval()
    h = m.image_stem(torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)))

    def loss(model, x):
        return model.image_branch(x).square().sum(dim=(1, 2))

    assert not PerSampleHooks(m.image_branch, fallback="error").fallback_names
    exact, _ = abs_grad_sums(m, loss, [h[:2], h[2:]], fallback="error")
    ref, _ = loop_abs_grad_sums(m, loss, [h[:2], h[2:]])
    for k in exact:
        assert torch.allclose(exact[k], ref[k], rtol=1e-4, atol=1e-6 * float(ref[k].abs().max()) + 1e-12), k


def test_missing_weights_and_bad_settings_are_clear(tmp_path, monkeypatch):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "empty_hub"))

    def offline(*a, **k):
        raise OSError("no network")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    try:
        with pytest.raises(ValueError, match="place the file in .*empty_hub/checkpoints"):
            build_model(ModelConfig(backbone="resnet18"), VOCAB)
    finally:
        torch.hub.set_dir(old)
    with pytest.raises(ValueError, match="freeze_stages: must be in 0..3"):
        build_model(ModelConfig(backbone="resnet50", pretrained=False, freeze_stages=4), VOCAB)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth: not torchvision resnet50 weights"):
        build_model(ModelConfig(backbone="resnet50", pretrained_path=str(tmp_path / "bad.pth")), VOCAB)
    r50 = build_model(ModelConfig(backbone="resnet50", pretrained=False, embed_dim=4), VOCAB)
    assert r50.embed_pixels(torch.randn(1, 3, 64, 64)).shape == (1, 3, 4)

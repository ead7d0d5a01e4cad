"""Hook-based per-sample |gradient| sums against the naive per-sample loop, layer type by layer type."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from factmas.persample import layers as persample_layers
from factmas.persample.hooks import PerSampleHooks, abs_grad_sums
from factmas.persample.reference import batch_abs_grad_sums, loop_abs_grad_sums, vmap_abs_grad_sums


def sq_norm(model: nn.Module, batch) -> torch.Tensor:
    """‖F(x_k)‖² per sample for a model taking the batch's tensors as arguments."""
    args = batch if isinstance(batch, (tuple, list)) else (batch,)
    return model(*args).pow(2).flatten(1).sum(1)


def rel_err(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[n] - b[n]).abs().max() / b[n].abs().max().clamp_min(1e-300)) for n in b)


def split(batch, sizes):
    """Cut a batch (tensor or tuple) into consecutive batches of the given sizes."""
    out, start = [], 0
    for s in sizes:
        sl = slice(start, start + s)
        out.append(tuple(t[sl] for t in batch) if isinstance(batch, tuple) else batch[sl])
        start += s
    return out


def check_exact(model, batches, power=1, **kw):
    hooks, n = abs_grad_sums(model, sq_norm, batches, power=power, **kw)
    loop, n_loop = loop_abs_grad_sums(model, sq_norm, batches, power=power)
    assert n == n_loop
    assert rel_err(hooks, loop) < 1e-10
    assert all(float(t.abs().sum()) > 0 for t in loop.values()), "reference Ω has an all-zero tensor"
    return hooks, loop


class ConvNet(nn.Module):
    """Conv2d (stride, padding, groups, 'same', dilation, bias), GroupNorm, BatchNorm (eval), Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.g1 = nn.GroupNorm(4, 8)
        self.c2 = nn.Conv2d(8, 8, 3, padding="same", groups=2, dilation=2, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.c3 = nn.Conv1d(8, 6, 3, padding=2, stride=2)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.g1(self.c1(x)))
        h = torch.relu(self.bn(self.c2(h)))
        h = torch.tanh(self.c3(h.flatten(2)))                   # [B, 6, L]
        return self.fc(h.mean(-1))


class WordNet(nn.Module):
    """Embedding with padding over [B, 3, L] tokens, Linear on extra dims, LayerNorm, a Linear
    called twice, and a Linear on rows flattened to [3B, ...]."""

    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(12, 5, padding_idx=0)
        self.proj = nn.Linear(5, 6)
        self.ln = nn.LayerNorm(6)
        self.twice = nn.Linear(6, 6)
        self.rows = nn.Linear(6, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        e = self.words(tokens)                                  # [B, 3, L, 5]
        h = self.ln(self.proj(e).sum(2))                        # [B, 3, 6]: Linear with extra dims
        h = self.twice(torch.relu(self.twice(h)))               # one module, two calls
        return self.rows(h.flatten(0, 1)).view(tokens.shape[0], -1)   # rows 3B, sample-major


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("route", ["unfold", "grouped"])
def test_conv_groupnorm_batchnorm_linear_match_loop(route, monkeypatch):
    monkeypatch.setattr(persample_layers, "GROUPED_MIN_POSITIONS", 10**9 if route == "unfold" else 0)
    torch.manual_seed(0)
    model = ConvNet()
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(7, 3, 10, 10)
    check_exact(model, split(x, [4, 3]))
    check_exact(model, split(x, [7]), budget=1)                # one sample per chunk


def test_embedding_extra_dims_multicall_and_flattened_rows_match_loop():
    torch.manual_seed(1)
    model = WordNet()
    tokens = torch.randint(0, 4, (9, 3, 5))                    # few ids: many repeats and pads
    tokens[0] = 3                                              # one word used 15 times by a sample
    hooks, loop = check_exact(model, split(tokens, [5, 4]))
    assert float(hooks["words.weight"][0].abs().max()) == 0.0  # the pad row gets no gradient


class RowsConv(nn.Module):
    """Conv1d and Conv2d on rows flattened to [3B, ...] (sample-major), as a per-slot encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 5, 3, padding=1)
        self.c2 = nn.Conv2d(5, 3, 2, padding="same")

    def forward(self, x: torch.Tensor) -> torch.Tensor:        # x [B, 3, 4, L]
        h = torch.tanh(self.c1(x.flatten(0, 1)))               # [3B, 5, L]
        return self.c2(h.unsqueeze(2).expand(-1, -1, 2, -1)).reshape(x.shape[0], -1)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("route", ["unfold", "grouped", "small tiles"])
def test_conv_on_flattened_rows_and_cache_tiles(route, monkeypatch):
    monkeypatch.setattr(persample_layers, "GROUPED_MIN_POSITIONS", 0 if route == "grouped" else 10**9)
    if route == "small tiles":                                 # tiles of output rows, 1 sample a step
        monkeypatch.setattr(persample_layers, "CACHE_ELEMENTS", 40)
    torch.manual_seed(7)
    check_exact(RowsConv(), split(torch.randn(6, 3, 4, 7), [4, 2]))
    check_exact(ConvNet().eval(), [torch.randn(5, 3, 8, 8)])


def test_embedding_repeated_word_sums_before_abs():
    """A sample using a word twice with opposite output gradients has per-sample gradient 0 there;
    taking |.| per position first would give 2."""
    emb = nn.Embedding(3, 1)
    model = nn.Sequential(emb)
    sign = torch.tensor([1.0, -1.0])

    def loss(m, t):
        return (m(t)[..., 0] * sign).sum(1)                   # l = E[w] − E[w]

    sums, _ = abs_grad_sums(model, loss, [torch.tensor([[2, 2]])])
    assert float(sums["0.weight"].abs().sum()) == 0.0
    sums, _ = abs_grad_sums(model, loss, [torch.tensor([[1, 2]])])
    assert torch.equal(sums["0.weight"][:, 0], torch.tensor([0.0, 1.0, 1.0]))


@pytest.mark.parametrize("power", [1, 2])
def test_power_two_gives_squared_gradient_sums(power):
    torch.manual_seed(2)
    model = WordNet()
    check_exact(model, split(torch.randint(0, 12, (6, 3, 4)), [6]), power=power)


class Scaled(nn.Module):
    """A bare parameter (no per-sample formula) next to a supported Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.randn(3))
        self.act = nn.PReLU(3)

    def forward(self, x):
        return self.act(self.fc(x) * self.scale)


def test_unsupported_modules_use_the_loop_or_raise():
    torch.manual_seed(3)
    model = Scaled()
    x = torch.randn(5, 4)
    check_exact(model, [x[:3], x[3:]])
    with pytest.raises(ValueError, match="scale.*no per-sample formula for Scaled"):
        abs_grad_sums(model, sq_norm, [x], fallback="error")
    with pytest.raises(ValueError, match="fallback"):
        abs_grad_sums(model, sq_norm, [x], fallback="ignore")


def test_batchnorm_in_training_mode_is_not_given_a_formula():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="BatchNorm1d in training mode"):
        abs_grad_sums(model.train(), sq_norm, [torch.randn(4, 3)], fallback="error")


def test_grads_untouched_hooks_removed_and_max_samples():
    torch.manual_seed(4)
    model = ConvNet().eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    x = torch.randn(6, 3, 8, 8)
    sums, n = abs_grad_sums(model, sq_norm, split(x, [4, 2]), max_samples=5)
    ref, _ = loop_abs_grad_sums(model, sq_norm, [x[:5]])
    assert n == 5 and rel_err(sums, ref) < 1e-10
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())
    out = model(x)                                             # no probe left in the forward
    assert type(out.grad_fn).__name__ == "AddmmBackward0"


def test_bad_loss_shape_and_rows_not_a_multiple_of_batch():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"float \[B\] = \[4\]"):
        abs_grad_sums(model, lambda m, x: m(x).pow(2).sum(), [torch.randn(4, 3)])

    def odd_rows(m, x):                                       # 4 samples, 3 rows through the layer
        return m(x[:3]).pow(2).sum() * torch.ones(4)

    with pytest.raises(RuntimeError, match="3 rows for a batch of 4"):
        abs_grad_sums(model, odd_rows, [torch.randn(4, 3)])


def test_input_modified_in_place_is_detected():
    model = nn.Sequential(nn.Linear(3, 3))

    def loss(m, x):
        h = x * 1.0
        out = m(h)
        h.mul_(2.0)                                            # the layer's input changes afterwards
        return out.pow(2).sum(1)

    with pytest.raises(RuntimeError, match="modified in place"):
        abs_grad_sums(model, loss, [torch.randn(2, 3)])


def test_inplace_activation_after_layer_is_handled():
    """A ReLU(inplace) overwriting a layer's output (as in resnet18) must not change δ."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(inplace=True),
                          nn.Conv2d(4, 3, 3))
    check_exact(model, [torch.randn(5, 2, 7, 7)])


def test_vmap_and_batch_approximation():
    torch.manual_seed(6)
    model = ConvNet().eval()
    x = torch.randn(8, 3, 8, 8)
    loop, _ = loop_abs_grad_sums(model, sq_norm, [x])
    vm, _ = vmap_abs_grad_sums(model, sq_norm, split(x, [5, 3]))
    assert rel_err(vm, loop) < 1e-10
    approx, _ = batch_abs_grad_sums(model, sq_norm, split(x, [4, 4]))
    assert all(bool((approx[n] <= loop[n] * (1 + 1e-12) + 1e-15).all()) for n in loop)
    assert any(bool((approx[n] < loop[n] * 0.999).any()) for n in loop)
    ones, _ = batch_abs_grad_sums(model, sq_norm, split(x, [1] * 8))
    assert rel_err(ones, loop) < 1e-10


def test_hooks_ignore_forwards_outside_add_batch():
    model = nn.Linear(3, 2)
    with PerSampleHooks(model) as hooks:
        y = model(torch.randn(2, 3))
        assert not hooks.probes and y.grad_fn is not None
        y.sum().backward()                                    # a plain backward still works
    assert model.weight.grad is not None
    assert F.linear(torch.ones(1, 3), model.weight).shape == (1, 2)


class MBConvLike(nn.Module):
    """EfficientNet's block on few positions: 1×1 expansion, depthwise 5×5 stride 2 (groups = C),
    1×1 projection, each followed by a frozen-statistics BatchNorm; then a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(4, 12, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 5, stride=2, padding=2, groups=12, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.pwl = nn.Conv2d(12, 6, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.relu6(self.bn1(self.pw(x)))
        h = torch.nn.functional.relu6(self.bn2(self.dw(h)))
        return self.fc(self.bn3(self.pwl(h)).mean((2, 3)))


@pytest.mark.parametrize("cache", [1 << 18, 30])
def test_depthwise_and_pointwise_convolutions_match_loop(cache, monkeypatch):
    """Depthwise convolutions take the grouped route at any number of positions, 1×1 ones skip the
    unfold; both against the per-sample loop (and with cache tiles of a few elements)."""
    monkeypatch.setattr(persample_layers, "CACHE_ELEMENTS", cache)
    torch.manual_seed(3)
    model = MBConvLike()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
    check_exact(model.eval(), split(torch.randn(7, 4, 8, 8), [4, 3]))

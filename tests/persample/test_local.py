"""Per-sample |∂‖F_l‖²/∂θ_l| of each layer's own output (``persample.local``, ℓ-MAS's engine) against the
naive loop (``reference.loop_local_abs_grad_sums``: per sample, per layer, one backward), layer type by
layer type, with sample weights, power 2, in-place activations and the failure paths."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from factmas.persample import layers as persample_layers
from factmas.persample.local import LocalOutputHooks, local_abs_grad_sums
from factmas.persample.reference import loop_local_abs_grad_sums

from test_persample import ConvNet, RowsConv, Scaled, WordNet, rel_err, split   # tests/persample on the path


def run(model: nn.Module, batch) -> None:
    """The forward of a model taking the batch's tensors as arguments; every sample counts."""
    model(*(batch if isinstance(batch, (tuple, list)) else (batch,)))


def check_exact(model, batches, forward=run, power=1, **kw):
    ours, n = local_abs_grad_sums(model, forward, batches, power=power, **kw)
    loop, n_loop = loop_local_abs_grad_sums(model, forward, batches, power=power)
    assert n == n_loop
    assert rel_err(ours, loop) < 1e-10
    assert all(float(t.abs().sum()) > 0 for t in loop.values()), "reference has an all-zero tensor"
    return ours, loop


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


def test_embedding_repeated_words_two_calls_and_flattened_rows_match_loop():
    torch.manual_seed(1)
    model = WordNet()
    tokens = torch.randint(0, 4, (9, 3, 5))                    # few ids: many repeats and pads
    tokens[0] = 3                                              # one word used 15 times by a sample
    ours, _ = check_exact(model, split(tokens, [5, 4]))
    assert float(ours["words.weight"][0].abs().max()) == 0.0   # the pad row gets no gradient
    # the Linear called twice sums its two calls' g_k before |.|: not the sum of two |g_k|
    one = {}
    for call in range(2):
        seen = []
        h = model.twice.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
        model(tokens)
        h.remove()
        a, y = seen[call]
        one[call] = (2 * y[..., :, None] * a[..., None, :]).sum(1)      # [B, out, in], Σ over slots
    separate = (one[0].abs() + one[1].abs()).sum(0)
    separate = separate.detach()
    assert float((separate - ours["twice.weight"]).abs().max()) > 1e-6 * float(separate.abs().max())


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("route", ["unfold", "grouped", "small tiles"])
def test_conv_on_flattened_rows_and_cache_tiles(route, monkeypatch):
    monkeypatch.setattr(persample_layers, "GROUPED_MIN_POSITIONS", 0 if route == "grouped" else 10**9)
    if route == "small tiles":
        monkeypatch.setattr(persample_layers, "CACHE_ELEMENTS", 40)
    torch.manual_seed(7)
    check_exact(RowsConv(), split(torch.randn(6, 3, 4, 7), [4, 2]))


def test_sample_weights_per_module():
    """Weights w_k of a module scale its δ_k (bool: drop samples); other modules keep all samples."""
    torch.manual_seed(2)
    model = WordNet()
    tokens = torch.randint(0, 6, (8, 3, 4))
    w = torch.rand(8)
    keep = torch.rand(8) > 0.5

    def weighted(m, batch):
        toks, wk, kk = batch
        m(toks)
        return {m.proj: wk, m.rows: kk}

    batches = split((tokens, w, keep), [5, 3])
    ours, loop = check_exact(model, batches, weighted)
    plain, _ = local_abs_grad_sums(model, run, split(tokens, [5, 3]))
    assert torch.equal(ours["ln.weight"], plain["ln.weight"])        # not weighted: unchanged
    assert rel_err({"w": ours["proj.weight"]}, {"w": plain["proj.weight"]}) > 1e-3
    # a bool weight drops the samples: same as the kept samples alone
    kept, _ = local_abs_grad_sums(model, run, [tokens[keep]])
    assert rel_err({"w": ours["rows.weight"]}, {"w": kept["rows.weight"]}) < 1e-12


@pytest.mark.parametrize("power", [1, 2])
def test_power(power):
    torch.manual_seed(3)
    check_exact(ConvNet().eval(), [torch.randn(5, 3, 8, 8)], power=power)


def test_inplace_activation_after_a_layer_is_read_after_the_forward():
    """F_l is the layer's output as the whole forward leaves it: an in-place ReLU after it counts,
    as in the per-layer loop through the same forward (``persample.local`` docstring)."""
    torch.manual_seed(5)
    inplace = nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(inplace=True),
                            nn.Conv2d(4, 3, 3))
    x = torch.randn(5, 2, 7, 7)
    ours, _ = check_exact(inplace, [x])
    inplace[2].inplace = False
    out_of_place, _ = check_exact(inplace, [x])
    assert torch.equal(ours["0.weight"], out_of_place["0.weight"])        # no in-place op after it
    assert rel_err({"g": ours["1.weight"]}, {"g": out_of_place["1.weight"]}) > 1e-3


def test_unsupported_modules_raise_naming_the_parameter():
    with pytest.raises(ValueError, match="scale.*no per-sample formula for Scaled"):
        local_abs_grad_sums(Scaled(), run, [torch.randn(3, 4)])
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="BatchNorm1d in training mode"):
        local_abs_grad_sums(model.train(), run, [torch.randn(4, 3)])


def test_grads_untouched_hooks_removed_no_graph_and_max_samples():
    torch.manual_seed(4)
    model = ConvNet().eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    x = torch.randn(6, 3, 8, 8)
    graphs = []

    def forward(m, batch):
        graphs.append(m(batch).requires_grad)

    sums, n = local_abs_grad_sums(model, forward, split(x, [4, 2]), max_samples=5)
    ref, _ = loop_local_abs_grad_sums(model, run, [x[:5]])
    assert n == 5 and rel_err(sums, ref) < 1e-10 and graphs == [False, False]
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())


def test_forwards_outside_add_batch_are_not_recorded_and_rows_must_be_samples():
    model = nn.Linear(3, 2)
    with LocalOutputHooks(model) as hooks:
        model(torch.randn(4, 3))
        assert not hooks.calls
    with pytest.raises(RuntimeError, match="3 rows for a batch of 4"):
        local_abs_grad_sums(model, lambda m, x: None if m(x[:3]) is None else None, [torch.randn(4, 3)])
    with pytest.raises(ValueError, match="must return None or a dict.*got Tensor"):
        local_abs_grad_sums(model, lambda m, x: m(x), [torch.randn(4, 3)])
    with pytest.raises(ValueError, match=r"\[B\] = \[4\], got Linear → \(3,\)"):
        local_abs_grad_sums(model, lambda m, x: {m: torch.ones(3)} if m(x) is not None else None,
                            [torch.randn(4, 3)])

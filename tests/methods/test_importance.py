"""MAS importance Ω on the two-branch model: exact against the per-sample loop, raw vs normalized
outputs, the batch approximation, branch separation, and accumulation over tasks."""
from __future__ import annotations

import pytest
import torch

from factmas.methods.mas import (batch_approx_mas_importance, loop_mas_importance, mas_importance,
                                 squared_norm, vmap_mas_importance)
from factmas.methods.quadratic import accumulate_omega, eval_mode
from factmas.persample.hooks import abs_grad_sums
from factmas.space import normalize_slots

VOCAB = 20


def random_facts(n: int, seed: int, length: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens int64 [n, 3, L] with repeated words and pads, order int64 [n]; absent slots empty."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randint(1, 4, (n,), generator=g)
    tokens = torch.randint(1, 6, (n, 3, length), generator=g)
    tokens[torch.rand(n, 3, length, generator=g) < 0.3] = 0
    tokens[:, :, 0] = torch.randint(1, VOCAB, (n, 3), generator=g)     # every slot has a word
    tokens[torch.arange(3)[None, :].expand(n, 3) >= order[:, None]] = 0
    return tokens, order


def batches(x, sizes):
    out, start = [], 0
    for s in sizes:
        sl = slice(start, start + s)
        out.append(tuple(t[sl] for t in x) if isinstance(x, tuple) else x[sl])
        start += s
    return out


def rel_err(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).abs().max() / b[n].abs().max().clamp_min(1e-300)) for n in b)


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(1)
    images = torch.randn(7, 3, 16, 16, dtype=torch.float64)
    return images, random_facts(9, seed=2)


def test_exact_mas_matches_per_sample_loop_on_the_model(data, tiny_model):
    images, facts = data
    model = tiny_model()
    exact = mas_importance(model, batches(images, [4, 3]), batches(facts, [5, 4]))
    loop = loop_mas_importance(model, [images], [facts])
    assert set(exact) == {n for n, p in model.named_parameters()}
    assert rel_err(exact, loop) < 1e-5
    for name, t in loop.items():
        assert float(t.sum()) > 0, f"Ω of {name} is all zero"
        assert float(t.min()) >= 0
    assert float(exact["fact_branch.words.weight"][0].abs().max()) == 0.0    # the pad id


@pytest.mark.slow
def test_exact_mas_matches_loop_on_resnet18(tiny_model):
    torch.manual_seed(3)
    model = tiny_model("resnet18_gn")
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    exact = mas_importance(model, [images], None)
    loop = loop_mas_importance(model, [images], None)
    image_params = [n for n in loop if n.startswith("image_branch.")]
    assert rel_err({n: exact[n] for n in image_params}, {n: loop[n] for n in image_params}) < 1e-5


def test_each_branch_gets_omega_from_its_own_data(data, tiny_model):
    images, facts = data
    model = tiny_model()
    both = mas_importance(model, [images], [facts])
    image_only = mas_importance(model, [images], None)
    fact_only = mas_importance(model, None, [facts])
    for name in both:
        own = image_only if name.startswith("image_branch.") else fact_only
        other = fact_only if name.startswith("image_branch.") else image_only
        assert torch.equal(both[name], own[name]), name
        assert float(other[name].abs().max()) == 0.0, name


def test_omega_is_a_mean_over_samples(data, tiny_model):
    images, _ = data
    model = tiny_model()
    one = mas_importance(model, [images], None)
    two = mas_importance(model, [torch.cat([images, images])], None)
    assert rel_err(two, one) < 1e-12


def test_normalized_embedding_gives_zero_importance(data, tiny_model):
    """‖F̂‖² = 3 for every input once each slot is L2-normalized, so its gradient (and Ω) is zero:
    that is why Ω is taken on the raw output."""
    images, _ = data
    model = tiny_model().eval()

    def raw(m, x):
        return squared_norm(m.image_branch(x))

    def normalized(m, x):
        return squared_norm(normalize_slots(m.image_branch(x)))

    assert torch.allclose(normalized(model, images), torch.full((7,), 3.0, dtype=torch.float64))
    omega_raw, _ = abs_grad_sums(model, raw, [images])
    omega_norm, _ = abs_grad_sums(model, normalized, [images])
    top = max(float(t.max()) for t in omega_raw.values())
    assert top > 1e-3
    assert max(float(t.max()) for t in omega_norm.values()) < 1e-9 * top


def test_batch_approximation_underestimates(data, tiny_model):
    images, facts = data
    model = tiny_model()
    exact = mas_importance(model, [images], [facts])
    approx = batch_approx_mas_importance(model, batches(images, [4, 3]), batches(facts, [9]))
    for name in exact:
        assert bool((approx[name] <= exact[name] * (1 + 1e-9) + 1e-15).all()), name
    total_exact = sum(float(t.sum()) for t in exact.values())
    total_approx = sum(float(t.sum()) for t in approx.values())
    assert total_approx < 0.9 * total_exact
    per_sample = batch_approx_mas_importance(model, batches(images, [1] * 7), None)
    image_names = [n for n in exact if n.startswith("image_branch.")]
    assert rel_err({n: per_sample[n] for n in image_names}, {n: exact[n] for n in image_names}) < 1e-9


def test_vmap_matches_loop_on_image_branch(data, tiny_model):
    images, _ = data
    model = tiny_model()
    assert rel_err(vmap_mas_importance(model, [images], None),
                   loop_mas_importance(model, [images], None)) < 1e-9


def test_max_samples_grads_and_modes(data, tiny_model):
    images, facts = data
    model = tiny_model()
    model.train()
    model.fact_branch.eval()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    capped = mas_importance(model, batches(images, [4, 3]), batches(facts, [5, 4]), max_samples=5)
    first5 = loop_mas_importance(model, [images[:5]], [tuple(t[:5] for t in facts)])
    assert rel_err(capped, first5) < 1e-5
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())
    assert model.training and model.image_branch.training and not model.fact_branch.training
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.image_branch.training and not model.fact_branch.training


def test_empty_branch_raises(data, tiny_model):
    with pytest.raises(ValueError, match="no images"):
        mas_importance(tiny_model(), [], None)


def test_accumulate_sum_alpha_and_errors():
    g = torch.Generator().manual_seed(0)
    old = {"a": torch.rand(3, generator=g), "b": torch.rand(2, 2, generator=g)}
    new = {"a": torch.rand(3, generator=g), "b": torch.rand(2, 2, generator=g)}
    summed = accumulate_omega(old, new)
    blended = accumulate_omega(old, new, "alpha", alpha=0.25)
    for n in old:
        assert torch.allclose(summed[n], old[n] + new[n])
        assert torch.allclose(blended[n], 0.25 * old[n] + 0.75 * new[n])
    first = accumulate_omega(None, new, "alpha", 0.25)
    assert all(torch.equal(first[n], new[n]) and first[n] is not new[n] for n in new)
    assert accumulate_omega({}, new)["a"] is not new["a"]
    with pytest.raises(ValueError, match="unknown mode 'max'"):
        accumulate_omega(old, new, "max")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        accumulate_omega(old, new, "alpha", 1.5)
    with pytest.raises(ValueError, match="different parameters"):
        accumulate_omega(old, {"a": new["a"]})
    with pytest.raises(ValueError, match="shape"):
        accumulate_omega(old, {"a": new["a"], "b": torch.zeros(4)})

"""factmas.space.loss against naive per-sample loops; wildcard gradients; collapse is not a minimum."""
from __future__ import annotations

import math

import pytest
import torch

from factmas.config import LossConfig
from factmas.space.loss import contrastive_loss, fact_loss, regression_loss


def _batch(b: int = 6, d: int = 5, seed: int = 0, orders=None):
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(b, 3, d, generator=g, dtype=torch.float64)
    psi = torch.randn(b, 3, d, generator=g, dtype=torch.float64)
    order = torch.tensor(orders) if orders is not None else torch.randint(1, 4, (b,), generator=g)
    return phi, psi, order


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def _naive_distance(phi_i, psi_j, o_j) -> float:
    return sum(float((_unit(phi_i[s]) - _unit(psi_j[s])).square().sum()) for s in range(o_j)) / o_j


def _naive_contrastive(phi, psi, order, positive, tau) -> float:
    b = len(phi)
    logit = [[-_naive_distance(phi[i], psi[j], int(order[j])) / tau for j in range(b)] for i in range(b)]
    i2f = f2i = 0.0
    for i in range(b):
        den = sum(math.exp(logit[i][j]) for j in range(b) if j == i or not positive[i, j])
        i2f += -logit[i][i] + math.log(den)
    for j in range(b):
        den = sum(math.exp(logit[i][j]) for i in range(b) if i == j or not positive[i, j])
        f2i += -logit[j][j] + math.log(den)
    return 0.5 * (i2f + f2i) / b


def _random_positive(b: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(b, b, generator=g) < 0.3
    return pos | torch.eye(b, dtype=torch.bool)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_matches_per_sample_loop(seed):
    phi, psi, order = _batch(7, 4, seed)
    expected = sum(float((_unit(phi[i, s]) - _unit(psi[i, s])).square().sum())
                   for i in range(7) for s in range(int(order[i]))) / 7
    assert regression_loss(phi, psi, order).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrastive_matches_naive_loop(seed):
    phi, psi, order = _batch(6, 4, seed)
    positive = _random_positive(6, seed)
    assert positive.sum() > 6                                   # some false negatives are excluded
    cfg = LossConfig(regression_weight=0.7, contrastive_weight=1.3, temperature=0.25)
    loss, parts = fact_loss(phi, psi, order, positive, cfg)
    con = _naive_contrastive(phi, psi, order, positive, 0.25)
    reg = regression_loss(phi, psi, order).item()
    assert parts["contrastive"] == pytest.approx(con, rel=1e-10)
    assert loss.item() == pytest.approx(0.7 * reg + 1.3 * con, rel=1e-10)
    assert parts["loss"] == pytest.approx(loss.item())


def test_wildcard_slots_get_exactly_zero_gradient():
    phi, psi, order = _batch(5, 4, 3, orders=[1, 2, 3, 1, 2])
    phi.requires_grad_(True)
    psi.requires_grad_(True)
    loss, _ = fact_loss(phi, psi, order, torch.eye(5, dtype=torch.bool), LossConfig())
    loss.backward()
    # ψ_P, ψ_O of the order-1 facts 0 and 3, and ψ_O of the order-2 facts 1 and 4: no gradient at all
    assert torch.equal(psi.grad[[0, 3], 1:], torch.zeros(2, 2, 4, dtype=torch.float64))
    assert torch.equal(psi.grad[[1, 4], 2], torch.zeros(2, 4, dtype=torch.float64))
    assert psi.grad[2].abs().min() > 0 and psi.grad[0, 0].abs().sum() > 0
    # the regression term gives φ_P, φ_O of an order-1 pair no gradient
    phi.grad = None
    regression_loss(phi, psi, order).backward()
    assert torch.equal(phi.grad[0, 1:], torch.zeros(2, 4, dtype=torch.float64))
    assert torch.equal(phi.grad[1, 2], torch.zeros(4, dtype=torch.float64))
    assert phi.grad[2].abs().sum() > 0


def test_absent_slot_values_do_not_change_the_loss():
    phi, psi, order = _batch(5, 4, 4, orders=[1, 2, 3, 1, 2])
    positive = _random_positive(5, 4)
    base, _ = fact_loss(phi, psi, order, positive, LossConfig())
    psi2 = psi.clone()
    psi2[[0, 3], 1:] = 0.0
    psi2[[1, 4], 2] = torch.randn(2, 4, dtype=torch.float64)
    other, _ = fact_loss(phi, psi2, order, positive, LossConfig())
    assert other.item() == pytest.approx(base.item(), rel=1e-12)


def test_false_negatives_are_excluded_from_both_denominators():
    g = torch.Generator().manual_seed(5)
    dist = (torch.rand(4, 4, generator=g, dtype=torch.float64) * 4).requires_grad_(True)
    positive = torch.eye(4, dtype=torch.bool)
    positive[0, 2] = True                                       # fact 2 is also true for image 0
    contrastive_loss(dist, positive, 0.1).backward()
    assert dist.grad[0, 2] == 0.0                               # masked in row 0 and in column 2
    assert (dist.grad[~positive] != 0).all()
    dist.grad = None
    contrastive_loss(dist, torch.eye(4, dtype=torch.bool), 0.1).backward()
    assert dist.grad[0, 2] != 0.0                               # without the mask it would be pushed apart


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_collapsed_embedding_is_not_a_minimum(seed):
    b, d = 8, 8
    g = torch.Generator().manual_seed(seed)
    order = torch.tensor([3, 2, 1, 3, 3, 2, 1, 3])
    positive = torch.eye(b, dtype=torch.bool)
    cfg = LossConfig()
    v = torch.randn(d, generator=g, dtype=torch.float64)
    collapsed = v.expand(b, 3, d).clone()
    loss_c, parts_c = fact_loss(collapsed, collapsed.clone(), order, positive, cfg)
    assert parts_c["regression"] == pytest.approx(0.0, abs=1e-12)  # regression alone: collapse is optimal
    assert parts_c["contrastive"] == pytest.approx(math.log(b), rel=1e-9)
    # a separated configuration: pair i on its own basis direction in every slot
    sep = torch.eye(b, dtype=torch.float64)[:, None, :].expand(b, 3, d).clone()
    loss_s, _ = fact_loss(sep, sep.clone(), order, positive, cfg)
    assert loss_s.item() < 0.01 * loss_c.item()
    # the exact collapse is a stationary point (cosines at their maximum 1) but not a minimum:
    # gradient descent from a small perturbation of it leaves it, far below log B
    phi = (collapsed + 1e-2 * torch.randn(b, 3, d, generator=g, dtype=torch.float64)).requires_grad_(True)
    psi = (collapsed + 1e-2 * torch.randn(b, 3, d, generator=g, dtype=torch.float64)).requires_grad_(True)
    opt = torch.optim.SGD([phi, psi], lr=2.0)
    for _ in range(50):
        opt.zero_grad()
        loss, _ = fact_loss(phi, psi, order, positive, cfg)
        loss.backward()
        opt.step()
    assert loss.item() < 0.25 * loss_c.item()


def test_single_pair_batch_has_zero_contrastive_term():
    phi, psi, order = _batch(1, 3, 6)
    _, parts = fact_loss(phi, psi, order, torch.ones(1, 1, dtype=torch.bool), LossConfig())
    assert parts["contrastive"] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(parts["neg_distance"])


def test_bad_input_is_rejected():
    phi, psi, order = _batch(4, 3, 7)
    eye = torch.eye(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="positive must be bool"):
        fact_loss(phi, psi, order, eye.long(), LossConfig())
    with pytest.raises(ValueError, match="expected phi, psi"):
        fact_loss(phi, psi[:3], order, eye, LossConfig())
    with pytest.raises(ValueError, match="expected phi, psi"):
        fact_loss(phi, psi, order, eye[:3, :3], LossConfig())
    with pytest.raises(ValueError, match="temperature"):
        fact_loss(phi, psi, order, eye, LossConfig(temperature=0.0))


def test_all_facts_term_matches_a_per_image_loop():
    """L_all = mean_i [−ℓ(x_i, c_i) + log Σ_{allowed c} exp ℓ(x_i, c)], other true facts left out."""
    from factmas.config import LossConfig
    from factmas.space.loss import all_facts_loss, fact_loss
    from factmas.space import wildcard_distance
    g = torch.Generator().manual_seed(7)
    B, C, d, tau = 5, 9, 4, 0.2
    phi, psi_c = torch.randn(B, 3, d, generator=g), torch.randn(C, 3, d, generator=g)
    order_c = torch.randint(1, 4, (C,), generator=g)
    own = torch.randint(0, C, (B,), generator=g)
    positive = torch.rand(B, C, generator=g) < 0.3
    dist = wildcard_distance(phi, psi_c, order_c)
    want = 0.0
    for i in range(B):
        keep = [c for c in range(C) if c == int(own[i]) or not bool(positive[i, c])]
        logits = torch.stack([-dist[i, c] / tau for c in keep])
        want += float(-(-dist[i, own[i]] / tau) + torch.logsumexp(logits, 0))
    got = all_facts_loss(dist, own, positive.clone(), tau)
    assert abs(float(got) - want / B) < 1e-5
    # fact_loss adds it with its weight, and leaves it out at weight 0 or without candidates
    psi, order = psi_c[own], order_c[own]
    pos_bb = positive[:, own] | torch.eye(B, dtype=torch.bool)
    cand = {"psi": psi_c, "order": order_c, "own": own, "positive": positive}
    base, _ = fact_loss(phi, psi, order, pos_bb, LossConfig(temperature=tau))
    with_all, parts = fact_loss(phi, psi, order, pos_bb, LossConfig(temperature=tau, fact_softmax_weight=0.5), cand)
    assert abs(float(with_all) - float(base) - 0.5 * want / B) < 1e-5 and abs(parts["all_facts"] - want / B) < 1e-5
    off, _ = fact_loss(phi, psi, order, pos_bb, LossConfig(temperature=tau, fact_softmax_weight=0.0), cand)
    assert float(off) == float(base)


def _candidate_batch(seed: int):
    from factmas.space import wildcard_distance
    g = torch.Generator().manual_seed(seed)
    B, C, d = 6, 10, 4
    phi, psi_c = torch.randn(B, 3, d, generator=g, dtype=torch.float64), torch.randn(C, 3, d, generator=g, dtype=torch.float64)
    order_c = torch.randint(1, 4, (C,), generator=g)
    own = torch.randint(0, C, (B,), generator=g)
    positive = torch.rand(B, C, generator=g) < 0.3
    return phi, psi_c, order_c, own, positive, wildcard_distance(phi, psi_c, order_c)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigmoid_term_matches_a_per_entry_loop(seed):
    """L_sig = mean_i [mean_{true c} log(1 + e^{−z}) + mean_{other c} log(1 + e^{z})], z = (m − D) / τ,
    the pair's own fact counted true; fact_loss adds it with its weight."""
    from factmas.space.loss import sigmoid_facts_loss
    phi, psi_c, order_c, own, positive, dist = _candidate_batch(seed)
    B, C = dist.shape
    m, tau = 1.3, 0.25
    want = 0.0
    for i in range(B):
        true = [c for c in range(C) if bool(positive[i, c]) or c == int(own[i])]
        other = [c for c in range(C) if c not in true]
        z = [(m - _naive_distance(phi[i], psi_c[c], int(order_c[c]))) / tau for c in range(C)]
        want += sum(math.log1p(math.exp(-z[c])) for c in true) / len(true)
        want += sum(math.log1p(math.exp(z[c])) for c in other) / len(other) if other else 0.0
    got = sigmoid_facts_loss(dist, own, positive, m, tau)
    assert abs(float(got) - want / B) < 1e-9
    before = positive.clone()
    sigmoid_facts_loss(dist, own, positive, m, tau)
    assert torch.equal(before, positive)
    psi, order = psi_c[own], order_c[own]
    pos_bb = positive[:, own] | torch.eye(B, dtype=torch.bool)
    cand = {"psi": psi_c, "order": order_c, "own": own, "positive": positive}
    cfg = dict(temperature=tau, fact_softmax_weight=0.0)
    base, _ = fact_loss(phi, psi, order, pos_bb, LossConfig(**cfg), cand)
    with_sig, parts = fact_loss(phi, psi, order, pos_bb, LossConfig(**cfg, sigmoid_weight=0.7, sigmoid_margin=m), cand)
    assert abs(float(with_sig) - float(base) - 0.7 * want / B) < 1e-9 and abs(parts["sigmoid"] - want / B) < 1e-9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_all_images_term_matches_a_per_fact_loop(seed):
    """L_img = mean over facts true for some batch image of
    [log Σ_i exp ℓ_ic − log Σ_{i: c true for i} exp ℓ_ic], ℓ = −D / τ; facts true for no image skipped."""
    from factmas.space.loss import all_images_loss
    phi, psi_c, order_c, own, positive, dist = _candidate_batch(seed)
    B, C = dist.shape
    tau = 0.3
    total, n = 0.0, 0
    for c in range(C):
        true = [i for i in range(B) if bool(positive[i, c]) or c == int(own[i])]
        if not true:
            continue
        e = [math.exp(-_naive_distance(phi[i], psi_c[c], int(order_c[c])) / tau) for i in range(B)]
        total += math.log(sum(e)) - math.log(sum(e[i] for i in true))
        n += 1
    got = all_images_loss(dist, own, positive, tau)
    assert abs(float(got) - total / n) < 1e-9
    psi, order = psi_c[own], order_c[own]
    pos_bb = positive[:, own] | torch.eye(B, dtype=torch.bool)
    cand = {"psi": psi_c, "order": order_c, "own": own, "positive": positive}
    base, _ = fact_loss(phi, psi, order, pos_bb, LossConfig(temperature=tau, fact_softmax_weight=0.0), cand)
    with_img, parts = fact_loss(phi, psi, order, pos_bb,
                                LossConfig(temperature=tau, fact_softmax_weight=0.0, image_softmax_weight=2.0), cand)
    assert abs(float(with_img) - float(base) - 2.0 * total / n) < 1e-9 and abs(parts["all_images"] - total / n) < 1e-9


def test_one_wildcard_distance_for_loss_and_search(rng):
    """space.distance_from_similarity is D of the loss (torch) and of the FAISS search (numpy)."""
    import numpy as np
    from factmas.evaluation.retrieval import FactIndex
    from factmas.space import distance_from_similarity, normalize_slots, wildcard_distance
    phi = torch.from_numpy(rng.standard_normal((5, 3, 4))).float()
    psi = torch.from_numpy(rng.standard_normal((6, 3, 4))).float()
    order = torch.from_numpy(rng.integers(1, 4, 6))
    a, b = normalize_slots(phi), normalize_slots(psi)
    naive = torch.tensor([[sum(float(((a[n, s] - b[m, s]) ** 2).sum()) for s in range(int(order[m])))
                           / int(order[m]) for m in range(6)] for n in range(5)])
    assert torch.allclose(wildcard_distance(phi, psi, order), naive, atol=1e-5)
    sim = np.array([[float((a[n, :int(order[m])] * b[m, :int(order[m])]).sum()) for m in range(6)]
                    for n in range(5)])
    assert np.allclose(distance_from_similarity(sim, order.numpy()[None, :]), naive.numpy(), atol=1e-5)
    d, i = FactIndex(psi, order).search(phi, 6)
    assert np.allclose(d, np.take_along_axis(naive.numpy(), i, 1), atol=1e-5)


@pytest.mark.parametrize("key,value", [("sigmoid_weight", -1.0), ("sigmoid_margin", 4.5),
                                       ("image_softmax_weight", -0.1)])
def test_bad_candidate_term_settings_are_config_errors(key, value):
    from factmas.config import RunConfig
    from factmas.config_check import ConfigError, validate_config
    cfg = RunConfig()
    setattr(cfg.loss, key, value)
    with pytest.raises(ConfigError, match=f"loss.{key}"):
        validate_config(cfg)

"""EWC: the diagonal empirical Fisher against a per-sample loop, online decay, a run through the trainer."""
from __future__ import annotations

import pytest
import torch

from factmas.config import RunConfig
from factmas.methods.ewc import ewc_fisher, pair_regression_losses
from factmas.methods import EWC, TaskContext, make_method
from factmas.persample.reference import loop_abs_grad_sums
from factmas.space import normalize_slots
from factmas.data.synthetic import make_synthetic_dataset
from factmas.trainer import train

VOCAB = 20
TINY_MODEL = {"backbone": "small_cnn", "width": 8, "embed_dim": 16, "word_dim": 16, "fact_hidden": 32, "norm_groups": 4}


def random_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """images float64 [n, 3, 16, 16], tokens int64 [n, 3, 3] (absent slots empty), order int64 [n]."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64)
    order = torch.randint(1, 4, (n,), generator=g)
    tokens = torch.randint(1, VOCAB, (n, 3, 3), generator=g)
    tokens[torch.rand(n, 3, 3, generator=g) < 0.3] = 0
    tokens[:, :, 0] = torch.randint(1, VOCAB, (n, 3), generator=g)
    tokens[torch.arange(3)[None, :].expand(n, 3) >= order[:, None]] = 0
    return images, tokens, order


def cut(batch, sizes):
    out, lo = [], 0
    for s in sizes:
        out.append(tuple(t[lo:lo + s] for t in batch))
        lo += s
    return out


def naive_fisher(model, batch):
    """(1/N) Σ_k (∂ℓ_k/∂θ)², ℓ_k = o_k Σ_{s<o_k} ‖φ̂_s − ψ̂_s‖² / o_k written out, one sample at a time."""
    params = dict(model.named_parameters())
    out = {n: torch.zeros_like(p) for n, p in params.items()}
    images, tokens, order = batch
    for k in range(len(order)):
        a = normalize_slots(model.image_branch(images[k:k + 1]))[0]
        b = normalize_slots(model.fact_branch(tokens[k:k + 1], order[k:k + 1]))[0]
        loss = sum(((a[s] - b[s]) ** 2).sum() for s in range(int(order[k])))
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for n, g in zip(params, grads):
            if g is not None:
                out[n] += g ** 2
    return {n: t / len(order) for n, t in out.items()}


def test_fisher_matches_a_per_sample_loop(tiny_model):
    model = tiny_model()
    batch = random_pairs(7, seed=1)
    fisher = ewc_fisher(model, cut(batch, [4, 3]))
    reference = naive_fisher(model, batch)
    loop = ewc_fisher(model, cut(batch, [7]), estimator=loop_abs_grad_sums)
    assert set(fisher) == set(reference)
    for n, ref in reference.items():
        scale = float(ref.abs().max())
        assert scale > 0, f"Fisher of {n} is all zero"
        assert float((fisher[n] - ref).abs().max()) <= 1e-8 * scale, n
        assert float((loop[n] - ref).abs().max()) <= 1e-8 * scale, n
    # the batch gradient squared is not the Fisher (a real difference the test could see)
    losses = pair_regression_losses(model, batch)
    w = model.image_branch.heads.s_fc.weight
    g_batch = torch.autograd.grad(losses.sum(), w)[0]
    assert float((g_batch ** 2 / 7 - reference["image_branch.heads.s_fc.weight"]).abs().max()) > 1e-6


def test_fisher_cap_and_empty_input(tiny_model):
    model = tiny_model()
    batch = random_pairs(6, seed=2)
    capped = ewc_fisher(model, cut(batch, [3, 3]), max_samples=4)
    first4 = naive_fisher(model, tuple(t[:4] for t in batch))
    n = "fact_branch.slots.0.0.weight"
    assert torch.allclose(capped[n], first4[n], rtol=1e-8, atol=1e-12)
    with pytest.raises(ValueError, match="no training pairs"):
        ewc_fisher(model, [])


def _ctx(task, batch):
    images, tokens, order = batch
    dicts = [{"images": images, "tokens": tokens, "order": order,
              "positive": torch.eye(len(order), dtype=torch.bool)}]

    def none(*a):
        raise AssertionError("EWC reads only the training pairs")
    return TaskContext(task=task, device=torch.device("cpu"), image_batches=none, fact_batches=none,
                       pair_batches=lambda: iter(dicts))


@pytest.mark.parametrize("gamma", [1.0, 0.3])
def test_ewc_sums_or_decays_the_fisher_over_tasks(gamma, tiny_model):
    model = tiny_model()
    b1, b2 = random_pairs(5, seed=3), random_pairs(5, seed=4)
    method = make_method("ewc", 2.0, gamma=gamma, max_samples=None)
    assert isinstance(method, EWC)
    method.on_task_end(model, _ctx(0, b1))
    f1 = naive_fisher(model, b1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    method.on_task_end(model, _ctx(1, b2))
    f2 = naive_fisher(model, b2)
    for n in f1:
        expected = gamma * f1[n] + f2[n]
        assert torch.allclose(method.omega[n], expected, rtol=1e-7, atol=1e-12), n
        assert torch.equal(method.anchor[n], dict(model.named_parameters())[n].detach())
    with pytest.raises(ValueError, match=r"gamma: expected a finite number >= 0 and <= 1, got 1.5"):
        EWC(1.0, gamma=1.5)


def test_ewc_runs_two_tasks_through_the_trainer(tmp_path):
    data = make_synthetic_dataset(tmp_path / "syn.h5", n_images=60, image_size=16, num_tasks=2)
    cfg = RunConfig.from_dict({"data": str(data), "out": str(tmp_path / "run"), "model": TINY_MODEL,
                               "train": {"split": "random2_seed0", "method": "ewc", "reg_lambda": 10.0,
                                         "epochs": 1, "batch_size": 16, "options": {"ewc": {"gamma": 0.9}}},
                               "eval": {"enabled": True}})
    state = train(cfg, progress=False)
    assert state.completed_tasks == [0, 1]
    pen = [r for r in state.history if r["label"] == "task1"]
    assert pen and (tmp_path / "run" / "results.json").is_file()

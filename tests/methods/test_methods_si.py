"""SI: the path integral on a quadratic problem with a closed form, Ω = ω/(Δ²+ξ), the task-loss-only
gradient under SI's own penalty, and a run through the trainer."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from factmas.config import RunConfig
from factmas.methods.si import si_importance
from factmas.methods import SI, TaskContext, make_method
from factmas.data.synthetic import make_synthetic_dataset
from factmas.trainer import train

TINY_MODEL = {"backbone": "small_cnn", "width": 8, "embed_dim": 16, "word_dim": 16, "fact_hidden": 32, "norm_groups": 4}


class Quadratic(nn.Module):
    """L(θ) = ½ Σ_i a_i θ_i² (a_i > 0)."""

    def __init__(self, theta0: torch.Tensor, a: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta0.clone())
        self.register_buffer("a", a)

    def loss(self) -> torch.Tensor:
        return 0.5 * (self.a * self.theta ** 2).sum()


def ctx(task: int) -> TaskContext:
    def none(*a):
        raise AssertionError("SI reads no data")
    return TaskContext(task=task, device=torch.device("cpu"), image_batches=none, fact_batches=none,
                       pair_batches=none)


def run_task(model: Quadratic, method: SI, task: int, lr: float, steps: int, target=None) -> None:
    """Plain gradient descent through the trainer's hook order (penalty included in the loss)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    method.on_task_start(model, ctx(task))
    for _ in range(steps):
        opt.zero_grad()
        task_loss = model.loss() if target is None else 0.5 * (model.a * (model.theta - target) ** 2).sum()
        (task_loss + method.penalty(model)).backward()
        method.before_step(model)
        opt.step()
        method.after_step(model)


def test_path_integral_of_gradient_descent_on_a_quadratic():
    """θ_{t+1} = (1 − ηa) θ_t, so −g·Δθ = ηa²θ_t² and ω = ηa²θ0² (1 − q^{T}) / (1 − q), q = (1 − ηa)²;
    for small η it tends to L(θ0) − L(θ_T) = ½ a θ0² (1 − q^T)."""
    g = torch.Generator().manual_seed(0)
    theta0 = torch.randn(5, generator=g, dtype=torch.float64)
    a = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    for lr, steps in ((0.1, 30), (1e-3, 3000)):
        model = Quadratic(theta0, a)
        method = SI(reg_lambda=1.0, xi=0.1)
        run_task(model, method, 0, lr, steps)
        q = (1 - lr * a) ** 2
        exact = lr * a ** 2 * theta0 ** 2 * (1 - q ** steps) / (1 - q)
        assert torch.allclose(method.path["theta"], exact, rtol=1e-10)
        drop = 0.5 * a * theta0 ** 2 * (1 - q ** steps)             # L(θ0) − L(θ_T) per coordinate
        assert torch.allclose(method.path["theta"], drop, rtol=lr * float(a.max()))
        theta_T = theta0 * (1 - lr * a) ** steps
        method.on_task_end(model, ctx(0))
        assert torch.allclose(method.omega["theta"], exact / ((theta_T - theta0) ** 2 + 0.1), rtol=1e-10)
        assert torch.equal(method.anchor["theta"], model.theta.detach())


def test_second_task_uses_the_task_loss_gradient_only():
    """Under SI's own penalty the path integral still equals Σ −g_task·Δθ, g_task the gradient of the
    second task's loss alone (recomputed here step by step)."""
    g = torch.Generator().manual_seed(1)
    theta0 = torch.randn(4, generator=g, dtype=torch.float64)
    a = torch.rand(4, generator=g, dtype=torch.float64) + 0.5
    target = torch.randn(4, generator=g, dtype=torch.float64)
    model = Quadratic(theta0, a)
    method = SI(reg_lambda=0.7, xi=0.1)
    run_task(model, method, 0, 0.1, 20)
    method.on_task_end(model, ctx(0))
    omega, anchor = method.omega["theta"].clone(), model.theta.detach().clone()
    # task 2 by hand: θ ← θ − η (g_task + 2λΩ(θ − θ*)), ω += −g_task Δθ
    theta, expected = model.theta.detach().clone(), torch.zeros(4, dtype=torch.float64)
    for _ in range(15):
        g_task = a * (theta - target)
        new = theta - 0.1 * (g_task + 2 * 0.7 * omega * (theta - anchor))
        expected -= g_task * (new - theta)
        theta = new
    run_task(model, method, 1, 0.1, 15, target=target)
    assert torch.allclose(model.theta.detach(), theta, rtol=1e-12)
    assert torch.allclose(method.path["theta"], expected, rtol=1e-10)
    method.on_task_end(model, ctx(1))
    delta = theta - anchor
    assert torch.allclose(method.omega["theta"], omega + (expected / (delta ** 2 + 0.1)).clamp_min(0),
                          rtol=1e-10)


def test_si_importance_formula_and_errors():
    w = {"x": torch.tensor([2.0, -1.0, 0.0])}
    d = {"x": torch.tensor([1.0, 0.5, 3.0])}
    assert torch.allclose(si_importance(w, d, 0.1)["x"], torch.tensor([2.0 / 1.1, 0.0, 0.0]))
    with pytest.raises(ValueError, match="xi"):
        si_importance(w, d, 0.0)
    with pytest.raises(ValueError, match="different"):
        si_importance(w, {"y": d["x"]}, 0.1)
    with pytest.raises(ValueError, match="xi: expected a finite number > 0, got -1.0"):
        make_method("si", 1.0, xi=-1.0)
    with pytest.raises(RuntimeError, match="on_task_start"):
        SI(1.0).on_task_end(Quadratic(torch.zeros(2), torch.ones(2)), ctx(0))


def test_si_runs_two_tasks_through_the_trainer(tmp_path):
    data = make_synthetic_dataset(tmp_path / "syn.h5", n_images=60, image_size=16, num_tasks=2)
    cfg = RunConfig.from_dict({"data": str(data), "out": str(tmp_path / "run"), "model": TINY_MODEL,
                               "train": {"split": "random2_seed0", "method": "si", "reg_lambda": 1.0,
                                         "epochs": 1, "batch_size": 16, "options": {"si": {"xi": 0.01}}},
                               "eval": {"enabled": False}})
    state = train(cfg, progress=False)
    assert state.completed_tasks == [0, 1]
    from factmas.run.checkpoint import last_path, load_checkpoint
    method = load_checkpoint(last_path(tmp_path / "run"))["method"]
    omegas = [t for k, t in method.items() if k.startswith("omega.")]
    assert omegas and all(float(t.min()) >= 0 for t in omegas)
    assert sum(float(t.sum()) for t in omegas) > 0

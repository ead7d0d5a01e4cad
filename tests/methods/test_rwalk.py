"""RWalk (Chaudhry et al., ECCV 2018; FACIL's r_walk.py): Ω = F + s against a naive per-step and
per-sample loop over two tasks, the options, the state, a run through the trainer, and that adding it
took its file, this test and the registry line (the CLI, config checks and paper table follow)."""
from __future__ import annotations

import pytest
import torch

from factmas.config import ConfigError, RunConfig, TrainConfig
from factmas.data.synthetic import make_synthetic_dataset
from factmas.methods import METHODS, TaskContext, make_method
from factmas.methods.rwalk import RWalk, RWalkOptions, rwalk_update
from factmas.space import normalize_slots
from factmas.trainer import train

VOCAB = 20
TINY_MODEL = {"backbone": "small_cnn", "width": 8, "embed_dim": 16, "word_dim": 16, "fact_hidden": 32,
              "norm_groups": 4}


def random_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """images float64 [n, 3, 16, 16], tokens int64 [n, 3, 3] (slots past the order empty), order [n]."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64)
    order = torch.randint(1, 4, (n,), generator=g)
    tokens = torch.randint(1, VOCAB, (n, 3, 3), generator=g)
    tokens[torch.arange(3)[None, :].expand(n, 3) >= order[:, None]] = 0
    return images, tokens, order


def pair_loss(model, images, tokens, order) -> torch.Tensor:
    """ℓ_k = Σ_{s<o_k} ‖φ̂_s − ψ̂_s‖², written out (the per-pair regression loss), float [B]."""
    a = normalize_slots(model.image_branch(images))
    b = normalize_slots(model.fact_branch(tokens, order))
    present = (torch.arange(3)[None, :] < order[:, None]).to(a.dtype)
    return (((a - b) ** 2).sum(-1) * present).sum(-1)


def naive_fisher(model, batch) -> dict[str, torch.Tensor]:
    """(1/N) Σ_k (∂ℓ_k/∂θ)², one sample at a time."""
    params = dict(model.named_parameters())
    out = {n: torch.zeros_like(p) for n, p in params.items()}
    images, tokens, order = batch
    for k in range(len(order)):
        loss = pair_loss(model, images[k:k + 1], tokens[k:k + 1], order[k:k + 1]).sum()
        for n, g in zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)):
            if g is not None:
                out[n] += g ** 2
    return {n: t / len(order) for n, t in out.items()}


def context(task: int, batch) -> TaskContext:
    images, tokens, order = batch
    return TaskContext(task=task, device=torch.device("cpu"), image_batches=lambda which: iter(()),
                       fact_batches=lambda: iter(()),
                       pair_batches=lambda: iter([{"images": images[:5], "tokens": tokens[:5],
                                                   "order": order[:5]},
                                                  {"images": images[5:], "tokens": tokens[5:],
                                                   "order": order[5:]}]))


def run_task(model, method, task, batch, steps=4, lr=0.05):
    """Plain gradient descent on the mean pair loss + the method's penalty, with its hooks."""
    method.on_task_start(model, context(task, batch))
    for _ in range(steps):
        model.zero_grad()
        loss = pair_loss(model, *batch).mean() + method.penalty(model)
        loss.backward()
        method.before_step(model)
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.sub_(lr * p.grad)
        method.after_step(model)
    method.on_task_end(model, context(task, batch))


def reference_run(model, batches, lam, alpha, xi, steps=4, lr=0.05):
    """RWalk written out step by step (FACIL's r_walk.py: train_epoch, post_train_process, criterion):
    returns F, s, Ω = F + s after the tasks."""
    params = dict(model.named_parameters())
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    score = {n: torch.zeros_like(p) for n, p in params.items()}
    older = {n: p.detach().clone() for n, p in params.items()}
    for t, batch in enumerate(batches):
        w = {n: torch.zeros_like(p) for n, p in params.items()}
        for _ in range(steps):
            task_loss = pair_loss(model, *batch).mean()
            unreg = torch.autograd.grad(task_loss, list(params.values()), allow_unused=True,
                                        retain_graph=True)
            reg = sum(((fisher[n] + score[n]) * (p - older[n]) ** 2).sum() for n, p in params.items())
            full = torch.autograd.grad(task_loss + (lam * reg if t > 0 else 0.0), list(params.values()),
                                       allow_unused=True)
            before = {n: p.detach().clone() for n, p in params.items()}
            with torch.no_grad():
                for (n, p), g in zip(params.items(), full):
                    if g is not None:
                        p.sub_(lr * g)
            for (n, p), g in zip(params.items(), unreg):
                if g is not None:
                    w[n] -= g * (p.detach() - before[n])
        f_t = naive_fisher(model, batch)
        for n, p in params.items():
            fisher[n] = alpha * fisher[n] + (1 - alpha) * f_t[n]
            s_t = torch.relu(w[n] / (fisher[n] * (p.detach() - older[n]) ** 2 + xi))
            score[n] = (score[n] + s_t) / 2
        older = {n: p.detach().clone() for n, p in params.items()}
    return fisher, score, {n: fisher[n] + score[n] for n in params}


@pytest.mark.parametrize("alpha, xi", [(0.5, 0.1), (0.2, 0.01)])
def test_omega_is_the_fisher_plus_the_path_score_of_a_naive_loop(tiny_model, alpha, xi):
    batches = [random_pairs(8, seed=1), random_pairs(8, seed=2)]
    model, ref_model = tiny_model(seed=3), tiny_model(seed=3)
    method = RWalk(2.0, fisher_alpha=alpha, xi=xi)
    for t, batch in enumerate(batches):
        run_task(model, method, t, batch)
    fisher, score, omega = reference_run(ref_model, batches, 2.0, alpha, xi)
    for n, p in model.named_parameters():            # the same walk, so the same weights
        assert torch.allclose(p, dict(ref_model.named_parameters())[n], rtol=0, atol=1e-12), n
    assert set(method.omega) == set(omega)
    for n in omega:
        for got, want in ((method.fisher[n], fisher[n]), (method.score[n], score[n]),
                          (method.omega[n], omega[n])):
            scale = float(want.abs().max())
            assert float((got - want).abs().max()) <= 1e-9 * max(scale, 1e-30), n
        assert torch.equal(method.anchor[n], dict(model.named_parameters())[n].detach())
    # both parts matter: F alone or s alone would not pass
    assert sum(float(t.sum()) for t in score.values()) > 0
    assert sum(float(t.sum()) for t in fisher.values()) > 0
    assert any(float((score[n] > 0).sum()) < score[n].numel() for n in score)   # ReLU cut some


def test_update_formula_on_hand_values_and_errors():
    f, s = rwalk_update({}, {}, {"x": torch.tensor([2.0, 4.0])}, {"x": torch.tensor([1.0, -1.0])},
                        {"x": torch.tensor([1.0, 0.0])}, alpha=0.5, xi=0.5)
    assert torch.equal(f["x"], torch.tensor([1.0, 2.0]))                 # 0.5 · 0 + 0.5 · F_t
    assert torch.allclose(s["x"], torch.tensor([1.0 / 1.5 / 2, 0.0]))    # (0 + relu(w / (FΔ² + ξ))) / 2
    f2, s2 = rwalk_update(f, s, {"x": torch.tensor([0.0, 0.0])}, {"x": torch.tensor([3.0, 3.0])},
                          {"x": torch.tensor([0.0, 2.0])}, alpha=0.5, xi=1.0)
    assert torch.equal(f2["x"], torch.tensor([0.5, 1.0]))
    assert torch.allclose(s2["x"], (s["x"] + torch.tensor([3.0, 3.0 / 5.0])) / 2)
    with pytest.raises(ValueError, match="name different"):
        rwalk_update({}, {}, {"x": torch.ones(1)}, {"y": torch.ones(1)}, {"x": torch.ones(1)}, 0.5, 0.1)
    with pytest.raises(ValueError, match="xi: expected"):
        rwalk_update({}, {}, {}, {}, {}, 0.5, 0.0)


def test_options_state_and_registry(tiny_model):
    assert METHODS["rwalk"] is RWalk and isinstance(make_method("rwalk", 1.0).options, RWalkOptions)
    with pytest.raises(ValueError, match="fisher_alpha: expected"):
        RWalk(1.0, fisher_alpha=1.5)
    with pytest.raises(ValueError, match="unknown option 'gamma'"):
        make_method("rwalk", 1.0, gamma=0.9)
    with pytest.raises(RuntimeError, match="on_task_start"):
        RWalk(1.0).on_task_end(tiny_model(), context(0, random_pairs(8, seed=1)))
    model = tiny_model(seed=4)
    method = RWalk(1.0)
    run_task(model, method, 0, random_pairs(8, seed=1), steps=2)
    state = method.state_dict()
    assert {k.partition(".")[0] for k in state} == {"omega", "anchor", "fisher", "score"}
    again = RWalk(1.0)
    again.load_state_dict(state)
    assert all(torch.equal(again.fisher[n], method.fisher[n]) for n in method.fisher)
    assert float(again.penalty(model).detach()) == float(method.penalty(model).detach()) == 0.0
    with pytest.raises(ValueError, match="unknown key 'path.x'"):
        RWalk(1.0).load_state_dict({**state, "path.x": torch.ones(1)})


def test_config_cli_and_paper_table_follow_the_registry():
    from factmas.cli.train_args import METHOD_FLAGS, build_parser
    from factmas.config_check import validate_config
    from factmas.experiments.paper_table import GRIDS, SAME_AT_ZERO, VARIANT
    cfg = RunConfig.from_dict({"train": {"method": "rwalk", "options": {"rwalk": {"xi": 0.2}}}})
    validate_config(cfg)
    bad = RunConfig.from_dict({"train": {"method": "rwalk", "options": {"rwalk": {"xi": 0}}}})
    with pytest.raises(ConfigError, match=r"train.options.rwalk.xi \(--rwalk-xi\)"):
        validate_config(bad)
    assert "rwalk" in build_parser().format_help() and "rwalk_fisher_alpha" in METHOD_FLAGS
    assert "rwalk" in METHOD_FLAGS["omega_max_samples"].defaults
    assert VARIANT["rwalk"].lambda_from == "rwalk" and GRIDS["rwalk"] == RWalk.paper_grid
    assert SAME_AT_ZERO["rwalk"] == "mas"
    from factmas.methods import resolve_options
    tc = TrainConfig(method="rwalk")
    assert resolve_options(tc) == {"rwalk": {"fisher_alpha": 0.5, "xi": 0.1, "max_samples": None}}


def test_rwalk_runs_through_the_trainer_and_at_lambda_zero_trains_the_mas_model(tmp_path):
    """Two tasks; λ = 0 gives MAS λ = 0's weights bit for bit (what the paper table's
    ``SAME_AT_ZERO`` assumes)."""
    from factmas.run.checkpoint import last_path, load_checkpoint
    data = make_synthetic_dataset(tmp_path / "syn.h5", n_images=60, image_size=16, num_tasks=2)

    def run(out, method, lam, options=None):
        cfg = RunConfig.from_dict({"data": str(data), "out": str(tmp_path / out), "model": TINY_MODEL,
                                   "train": {"split": "random2_seed0", "method": method,
                                             "reg_lambda": lam, "epochs": 1, "batch_size": 16,
                                             "options": options or {}},
                                   "eval": {"enabled": False}})
        assert train(cfg, progress=False).completed_tasks == [0, 1]
        return load_checkpoint(last_path(tmp_path / out))

    ck = run("rwalk", "rwalk", 1.0, {"rwalk": {"max_samples": 20}})
    assert ck["config"]["train"]["options"] == {"rwalk": {"fisher_alpha": 0.5, "xi": 0.1,
                                                          "max_samples": 20}}
    omegas = [t for k, t in ck["method"].items() if k.startswith("omega.")]
    assert omegas and all(float(t.min()) >= 0 for t in omegas) and sum(float(t.sum()) for t in omegas) > 0
    a, b = run("mas0", "mas", 0.0)["model"], run("rwalk0", "rwalk", 0.0)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

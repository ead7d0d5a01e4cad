"""QuadraticAnchor (penalty λ Σ Ω (θ − θ*)², accumulation, state) and MAS / the method registry."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from factmas.config import ModelConfig, TrainConfig
from factmas.methods.mas import mas_importance
from factmas.methods import MAS, METHODS, Method, QuadraticAnchor, TaskContext, make_method
from factmas.model import build_model


class Fixed(QuadraticAnchor):
    """Importance given from outside (one dict per task)."""
    name = "fixed"

    def __init__(self, omegas, **kw):
        super().__init__(**kw)
        self.omegas = list(omegas)

    def estimate_importance(self, model, ctx):
        return self.omegas.pop(0)


def ctx_for(task: int = 0, **kw) -> TaskContext:
    def none(*a):
        raise AssertionError("not used")
    return TaskContext(task=task, device=torch.device("cpu"), image_batches=kw.pop("images", none),
                       fact_batches=kw.pop("facts", none), pair_batches=none, **kw)


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def random_omega(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}


def test_penalty_zero_at_anchor_and_gradient_formula():
    model = small_net()
    omega = random_omega(model, 1)
    method = Fixed([omega], reg_lambda=0.7)
    assert method.penalty(model) == 0.0                     # before any task
    method.on_task_end(model, ctx_for())
    assert float(method.penalty(model).detach()) == 0.0
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    pen = method.penalty(model)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(pen, list(params.values()))
    expected = sum(float((omega[n] * (params[n].detach() - anchor[n]) ** 2).sum()) for n in params) * 0.7
    assert abs(float(pen.detach()) - expected) < 1e-5 * expected
    for (n, p), g in zip(params.items(), grads):
        assert torch.allclose(g, 2 * 0.7 * omega[n] * (p.detach() - anchor[n]), atol=1e-6), n
    assert all(p.grad is None for p in model.parameters())


def test_accumulation_over_tasks_sum_and_alpha():
    model = small_net()
    o1, o2 = random_omega(model, 1), random_omega(model, 2)
    summed = Fixed([o1, o2], reg_lambda=1.0)
    blended = Fixed([o1, o2], reg_lambda=1.0, accumulate="alpha", alpha=0.3)
    for task in range(2):
        summed.on_task_end(model, ctx_for(task))
        blended.on_task_end(model, ctx_for(task))
        with torch.no_grad():
            model[0].bias.add_(1.0)
    for n in o1:
        assert torch.allclose(summed.omega[n], o1[n] + o2[n])
        assert torch.allclose(blended.omega[n], 0.3 * o1[n] + 0.7 * o2[n])
    assert torch.allclose(summed.anchor["0.bias"], model[0].bias.detach() - 1.0)  # θ* after task 2


def test_state_dict_round_trip_through_a_checkpoint():
    model = small_net()
    method = Fixed([random_omega(model, 3)], reg_lambda=2.0)
    method.on_task_end(model, ctx_for())
    with torch.no_grad():
        model[2].weight.mul_(1.5)
    state = method.state_dict()
    assert sorted(state) == sorted([f"omega.{n}" for n, _ in model.named_parameters()] +
                                   [f"anchor.{n}" for n, _ in model.named_parameters()])
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = Fixed([], reg_lambda=2.0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    restored_penalty = float(restored.penalty(model).detach())
    assert restored_penalty == pytest.approx(float(method.penalty(model).detach()), rel=1e-6)
    assert restored_penalty > 0


def test_bad_state_options_and_importance_raise():
    model = small_net()
    with pytest.raises(ValueError, match="disagree"):
        Fixed([]).load_state_dict({"omega.w": torch.ones(2)})
    with pytest.raises(ValueError, match="unknown keys"):
        Fixed([]).load_state_dict({"omega.w": torch.ones(2), "anchor.w": torch.ones(2), "x": torch.ones(1)})
    with pytest.raises(ValueError, match=r"accumulate: expected one of \['sum', 'alpha'\], got 'mean'"):
        Fixed([], accumulate="mean")
    with pytest.raises(ValueError, match="alpha: expected a finite number >= 0 and <= 1"):
        Fixed([], alpha=2.0)
    with pytest.raises(ValueError, match="reg_lambda"):
        Fixed([], reg_lambda=-1.0)
    with pytest.raises(ValueError, match="'nope'"):
        Fixed([{"nope": torch.ones(1)}]).on_task_end(model, ctx_for())
    with pytest.raises(NotImplementedError):
        QuadraticAnchor().on_task_end(model, ctx_for())
    method = Fixed([random_omega(model, 1)])
    method.on_task_end(model, ctx_for())
    with pytest.raises(ValueError, match="the model has not"):
        method.penalty(small_net()[:1])


def test_registry_and_make_method():
    assert METHODS["finetune"] is Method and METHODS["mas"] is MAS
    assert type(make_method("finetune", 0.0)) is Method
    mas = make_method("mas", 3.0, accumulate="alpha", alpha=0.2, data="train+test", max_samples=4)
    assert (mas.reg_lambda, mas.options.accumulate, mas.options.alpha, mas.image_splits) == \
        (3.0, "alpha", 0.2, ["train", "test"])
    with pytest.raises(ValueError, match=r"unknown method 'nosuch'; valid: \[.*'finetune', .*'mas'"):
        make_method("nosuch", 1.0)
    with pytest.raises(ValueError, match="data: expected image splits"):
        make_method("mas", 1.0, data="train+dev")


def test_mas_on_task_end_uses_task_images_and_facts():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="small_cnn", width=8, embed_dim=8, word_dim=8, fact_hidden=16), vocab_size=20)
    images = {"train": torch.randn(5, 3, 16, 16), "test": torch.randn(3, 3, 16, 16)}
    tokens = torch.randint(1, 20, (6, 3, 2))
    order = torch.full((6,), 3)
    asked = []

    def image_batches(which):
        asked.append(which)
        return iter([images[which][:3], images[which][3:]])

    ctx = ctx_for(images=image_batches, facts=lambda: iter([(tokens, order)]))
    method = make_method("mas", 1.0, data="train+test", max_samples=4)
    method.on_task_end(model, ctx)
    assert asked == ["train", "test"]
    expected = mas_importance(model, [images["train"][:4]], [(tokens[:4], order[:4])])
    for n, t in expected.items():                          # float32, other batch cuts: ~1e-7
        assert float((method.omega[n] - t).abs().max()) < 1e-5 * float(t.abs().max()), n
        assert torch.equal(method.anchor[n], dict(model.named_parameters())[n].detach())
    assert float(method.penalty(model).detach()) == 0.0


def test_each_method_owns_its_typed_options_and_refuses_others():
    from factmas.methods import EWCOptions, MASOptions, SIOptions, options_for
    assert isinstance(make_method("ewc", 1.0, gamma=0.9).options, EWCOptions)
    with pytest.raises(ValueError, match=r"method 'ewc': unknown option 'data'"):
        make_method("ewc", 1.0, data="train")                  # MAS's option, not EWC's
    with pytest.raises(ValueError, match=r"method 'mas': unknown option 'xi'"):
        make_method("mas", 1.0, xi=0.1)
    with pytest.raises(ValueError, match=r"method 'finetune': unknown option 'alpha'; its options: none"):
        make_method("finetune", 0.0, alpha=0.1)
    with pytest.raises(ValueError, match="give either"):
        make_method("si", 1.0, MASOptions())                   # another method's options object
    # each method reads its own section train.options.<method>; fields left out take the defaults
    options = {"mas": {"accumulate": "alpha", "alpha": 0.25, "data": "train+test", "max_samples": 7},
               "l-mas": {"data": "test"}, "ewc": {"gamma": 0.5}, "si": {"xi": 0.2}}
    tc = lambda method: TrainConfig(method=method, options=options)      # noqa: E731
    assert options_for(tc("mas")) == MASOptions("alpha", 0.25, "train+test", 7)
    assert options_for(tc("l-mas")) == MASOptions(data="test")
    assert options_for(tc("ewc")) == EWCOptions(gamma=0.5)
    assert options_for(tc("si")) == SIOptions(xi=0.2)
    assert options_for(tc("lwf")) == options_for(tc("finetune"))


def test_old_flat_keys_map_onto_the_method_and_a_foreign_one_is_named_in_a_warning(caplog):
    """config.json of earlier versions: the flat keys the method read become its options; another
    method's key is ignored (a warning when it is not at its old default), as the old trainer did."""
    from factmas.config import RunConfig
    from factmas.methods import MASOptions
    from factmas.trainer import build_method
    with caplog.at_level("INFO"):
        cfg = RunConfig.from_dict({"train": {"method": "mas", "si_xi": 0.3, "ewc_gamma": 1.0,
                                             "omega_data": "test", "omega_alpha": 0.5}})
        method = build_method(cfg.train)
    assert isinstance(method, MAS) and method.options == MASOptions(data="test")
    assert "train.si_xi = 0.3" in caplog.text and "ewc_gamma = " not in caplog.text
    assert "old flat keys" in caplog.text
    assert cfg.train.options == {"mas": {"accumulate": "sum", "alpha": 0.5, "data": "test",
                                         "max_samples": None, "output": "raw"}}

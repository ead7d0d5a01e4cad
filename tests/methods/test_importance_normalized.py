"""The normalized-output MAS ablation (``train.omega_output: normalized``): exact per sample against a
naive autograd loop with the same directions, its expectation against the Jacobian column norms,
the option's checks, and the Ω estimator objects the option selects."""
from __future__ import annotations

import math

import pytest
import torch

from factmas.methods.lmas import LocalMAS
from factmas.methods import TaskContext
from factmas.methods.mas import (DIRECTION_SEED, MAS, OUTPUTS, MASOptions, NormalizedOutputOmega,
                                 OutputOmega, direction_generator, loop_mas_importance,
                                 mas_importance, normalized_mas_importance)
from factmas.methods.quadratic import eval_mode
from factmas.persample.reference import loop_abs_grad_sums
from factmas.space import normalize_slots

from test_importance import batches, random_facts, rel_err   # pytest puts tests/methods on the path


def naive_normalized_omega(model, images, facts, sizes_i, sizes_f, key):
    """(1/N) Σ_k |∂(u_k · F̂(x_k))/∂θ| by autograd, one sample at a time, drawing u_k batch by
    batch from each branch's generator (``direction_generator(*key, 0 | 1)``) as the estimator."""
    params = dict(model.named_parameters())
    omega = {n: torch.zeros_like(p) for n, p in params.items()}
    d = model.fact_branch.embed_dim
    with eval_mode(model):
        for b_index, (branch, sizes) in enumerate((("image", sizes_i), ("fact", sizes_f))):
            gen = direction_generator(*key, b_index)
            start, total = 0, sum(sizes)
            for b in sizes:
                u = torch.randn(b, 3, d, generator=gen)
                for k in range(b):
                    i = start + k
                    if branch == "image":
                        f = normalize_slots(model.image_branch(images[i:i + 1]))
                    else:
                        f = normalize_slots(model.fact_branch(facts[0][i:i + 1], facts[1][i:i + 1]))
                    out = (u[k:k + 1].to(f.dtype) * f).sum()
                    grads = torch.autograd.grad(out, list(params.values()), allow_unused=True)
                    for (n, _), g in zip(params.items(), grads):
                        if g is not None:
                            omega[n] += g.abs() / total
                start += b
    return omega


@pytest.fixture()
def data():
    g = torch.Generator().manual_seed(5)
    return torch.randn(6, 3, 16, 16, dtype=torch.float64, generator=g), random_facts(7, seed=6)


def test_normalized_omega_is_exact_per_sample(data, tiny_model):
    images, facts = data
    model = tiny_model()
    key = (11, 2)
    omega = normalized_mas_importance(model, batches(images, [4, 2]), batches(facts, [3, 4]), key=key)
    naive = naive_normalized_omega(model, images, facts, [4, 2], [3, 4], key)
    assert rel_err(omega, naive) < 1e-6
    loop = normalized_mas_importance(model, batches(images, [4, 2]), batches(facts, [3, 4]), key=key,
                                     estimator=loop_abs_grad_sums)
    assert rel_err(omega, loop) < 1e-6
    for name, t in omega.items():
        if name != "fact_branch.words.weight":
            assert float(t.sum()) > 0, f"Ω of {name} is all zero"
    # not the raw-output Ω (a different quantity, not a rescaling of it)
    raw = loop_mas_importance(model, [images], [facts])
    ratios = torch.cat([(omega[n] / raw[n]).flatten() for n in raw])
    ratios = ratios[torch.isfinite(ratios)]
    assert float(ratios.max() / ratios.min()) > 2.0


def test_normalized_omega_expectation_is_the_jacobian_column_norm(tiny_model):
    """E_u |u · g| = √(2/π) ‖g‖ for u ~ N(0, I): one image repeated many times (fresh u each)."""
    model = tiny_model()
    g = torch.Generator().manual_seed(7)
    image = torch.randn(1, 3, 16, 16, dtype=torch.float64, generator=g)
    reps = 3000
    omega = normalized_mas_importance(model, [image.expand(reps, -1, -1, -1).contiguous()], None,
                                      key=(8,))
    params = {n: p for n, p in model.named_parameters() if n.startswith("image_branch.")}
    with eval_mode(model):
        out = normalize_slots(model.image_branch(image)).flatten()
        sq = {n: torch.zeros_like(p) for n, p in params.items()}
        for j in range(out.numel()):                       # Jacobian row by row
            grads = torch.autograd.grad(out[j], list(params.values()), retain_graph=True,
                                        allow_unused=True)
            for (n, _), gr in zip(params.items(), grads):
                if gr is not None:
                    sq[n] += gr ** 2
    for n in params:
        want = math.sqrt(2 / math.pi) * sq[n].sqrt()
        big = want > want.max() * 0.05
        if big.any():
            err = ((omega[n][big] - want[big]).abs() / want[big]).median()
            assert float(err) < 0.06, f"{n}: median relative error {float(err):.3f}"


def test_normalized_omega_output_option_is_checked():
    with pytest.raises(ValueError, match=r"output: expected one of \['raw', 'normalized'\]"):
        MASOptions(output="unit")
    assert MASOptions(output="normalized").output == "normalized"
    assert MAS(1.0, output="normalized").options.output == "normalized"
    with pytest.raises(ValueError, match=r"omega_output: 'normalized' has no Ω estimator in method 'l-mas'"):
        LocalMAS(1.0, output="normalized")         # refused once, by MAS.__init__ (no ℓ-MAS branch)


def test_directions_are_keyed_and_the_facts_do_not_depend_on_the_images(data, tiny_model):
    images, facts = data
    model = tiny_model()
    a = normalized_mas_importance(model, [images], [facts])
    b = normalized_mas_importance(model, [images], [facts], key=(DIRECTION_SEED,))
    assert rel_err(a, b) == 0.0
    c = normalized_mas_importance(model, [images], [facts], key=(DIRECTION_SEED, 1))
    assert rel_err(a, c) > 1e-3                                   # another task: other directions
    facts_only = normalized_mas_importance(model, None, [facts], max_samples=3, key=(5,))
    capped = normalized_mas_importance(model, batches(images, [4, 2]), [facts], max_samples=3, key=(5,))
    fact_params = [n for n in facts_only if n.startswith("fact_branch.")]
    assert rel_err({n: capped[n] for n in fact_params}, {n: facts_only[n] for n in fact_params}) == 0.0
    assert all(float(capped[n].abs().sum()) > 0 for n in capped if n.startswith("image_branch."))


@pytest.mark.parametrize("output", ["raw", "normalized"])
def test_omega_output_selects_an_estimator_with_the_same_numbers(data, tiny_model, output):
    """``omega_output`` picks ``MAS.estimators[output]``; through ``on_task_end`` of task 2 it gives
    exactly the function's Ω (normalized: directions keyed by (DIRECTION_SEED, task, rank 0))."""
    images, facts = data
    model = tiny_model()

    def none(*a):
        raise AssertionError("not used")
    ctx = TaskContext(task=2, device=torch.device("cpu"), image_batches=lambda which: iter([images]),
                      fact_batches=lambda: iter([facts]), pair_batches=none)
    method = MAS(1.0, output=output)
    assert method.estimator is MAS.estimators[output]
    assert isinstance(method.estimator, OutputOmega if output == "raw" else NormalizedOutputOmega)
    method.on_task_end(model, ctx)
    if output == "raw":
        expected = mas_importance(model, [images], [facts])
    else:
        expected = normalized_mas_importance(model, [images], [facts], key=(DIRECTION_SEED, 2, 0))
        assert rel_err(normalized_mas_importance(model, [images], [facts]), expected) > 1e-3   # keyed by task
    assert set(method.omega) == set(expected)
    assert all(torch.equal(method.omega[n], expected[n]) for n in expected)


def test_local_mas_has_one_estimator_and_no_refusal_of_its_own():
    """ℓ-MAS declares only its estimator; the refusal of "normalized" is MAS.__init__'s, not a branch
    of the subclass."""
    assert sorted(LocalMAS.estimators) == ["raw"] and "__init__" not in vars(LocalMAS)
    assert set(MAS.estimators) == set(OUTPUTS)          # every value MASOptions accepts has one

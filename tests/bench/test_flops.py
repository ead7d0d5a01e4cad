"""bench/flops.py: the hand-derived convolution / linear FLOP formulas against a brute-force count of
the multiplications of a convolution and its two gradients computed by loops (groups 1, 2 and
depthwise; strides 1 and 2), and both counters (FlopCounterMode with the grouped formula, forward
hooks) against the same count. bench/ is not a package, so the check runs in a subprocess started in
bench/ (where ``import flops`` resolves, as for the benchmark scripts themselves)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

CHECK = r'''
import json, sys
import numpy as np, torch
import flops

def brute(x, w, dy, stride, pad, groups):
    """Loop-computed y, dL/dx, dL/dw of a padded, strided, grouped conv; and the multiplications."""
    B, C, H, W = x.shape; O, Cg, K, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = dy.shape[2:]
    y = np.zeros((B, O, Ho, Wo)); gx = np.zeros_like(xp); gw = np.zeros_like(w)
    n = {"forward": 0, "grad_input": 0, "grad_weight": 0}
    og = O // groups
    for b in range(B):
        for o in range(O):
            g = o // og
            for i in range(Ho):
                for j in range(Wo):
                    for c in range(Cg):
                        for p in range(K):
                            for q in range(K):
                                xi = xp[b, g * Cg + c, i * stride + p, j * stride + q]
                                y[b, o, i, j] += w[o, c, p, q] * xi; n["forward"] += 1
                                gx[b, g * Cg + c, i * stride + p, j * stride + q] += dy[b, o, i, j] * w[o, c, p, q]
                                n["grad_input"] += 1
                                gw[o, c, p, q] += dy[b, o, i, j] * xi; n["grad_weight"] += 1
    return y, gx[:, :, pad:pad + H, pad:pad + W], gw, n

out = []
rng = np.random.default_rng(int(sys.argv[1]))
for groups, stride, c_in, c_out in ((1, 1, 4, 6), (2, 2, 4, 6), (4, 1, 4, 4), (4, 2, 4, 8)):
    conv = torch.nn.Conv2d(c_in, c_out, 3, stride, 1, groups=groups, bias=False).double()
    x = torch.tensor(rng.standard_normal((2, c_in, 5, 5)), requires_grad=True)
    y = conv(x)
    dy = torch.tensor(rng.standard_normal(tuple(y.shape)))
    y.backward(dy)
    yb, gxb, gwb, n = brute(x.detach().numpy(), conv.weight.detach().numpy(), dy.numpy(), stride, 1, groups)
    values_ok = bool(np.allclose(yb, y.detach().numpy()) and np.allclose(gxb, x.grad.numpy())
                     and np.allclose(gwb, conv.weight.grad.numpy()))
    formula = flops.conv2d_flops(2, c_in, c_out, tuple(y.shape[2:]), (3, 3), groups)
    def step():
        x.grad = None; conv.weight.grad = None
        conv(x).backward(dy)
    counted, _, _ = flops.count_flops(step)
    with flops.module_flops(conv) as hooks:
        step()
    out.append({"groups": groups, "stride": stride, "values_ok": values_ok, "brute": n, "formula": formula,
                "counted": counted, "hooks": hooks.total(), "torch": flops.torch_count_flops(step),
                "c_in": c_in})
lin = torch.nn.Linear(5, 3).double()
xl = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
counted, _, _ = flops.count_flops(lambda: lin(xl).sum().backward())
with flops.module_flops(lin) as hooks:
    lin(xl).sum().backward()
out.append({"linear": True, "formula": flops.linear_flops(4, 5, 3), "counted": counted, "hooks": hooks.total()})
try:
    flops.conv2d_flops(1, 3, 4, (2, 2), (3, 3), 2)
    out.append({"bad_groups_refused": False})
except ValueError as e:
    out.append({"bad_groups_refused": "groups" in str(e)})
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def results():
    done = subprocess.run([sys.executable, "-c", CHECK, "0"], cwd=BENCH, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_conv_formulas_equal_the_brute_force_multiplication_count(results):
    for r in results[:4]:
        assert r["values_ok"], r                           # the loops compute what torch computes
        assert r["formula"] == {k: 2 * v for k, v in r["brute"].items()}, r


def test_counters_agree_with_the_count_and_torch_overcounts_grouped_weight_grads(results):
    for r in results[:4]:
        total = 2 * sum(r["brute"].values())
        assert r["counted"] == total and r["hooks"] == total, r
        if r["groups"] == 1:
            assert r["torch"] == total, r
        else:                                  # torch counts the weight gradient with C_in, not C_in/g
            assert r["torch"] == total + (r["groups"] - 1) * 2 * r["brute"]["grad_weight"], r


def test_linear_formula_and_bad_groups(results):
    lin = results[4]
    assert lin["formula"]["forward"] == 2 * 4 * 5 * 3
    assert lin["counted"] == lin["hooks"] == 3 * 2 * 4 * 5 * 3
    assert results[5]["bad_groups_refused"] is True

"""Per-sample parameter gradients of single layers, from the layer input and its output gradient.

For a layer y = f(a; θ) applied to a batch whose samples are independent, the gradient of the summed
loss Σ_k l_k with respect to the layer output, δ = ∂(Σ_k l_k)/∂y, holds in row k exactly ∂l_k/∂y_k.
The per-sample parameter gradient g_k = ∂l_k/∂θ is then a closed form in (a_k, δ_k) (the same
formulas Opacus' GradSampleModule uses, Yousefpour et al. 2021, and Goodfellow 2015 for Linear):

    Linear     W: g_k = Σ_t δ_kt a_ktᵀ        b: Σ_t δ_kt          (t: extra sequence positions)
               no extra positions: Σ_k |δ_k a_kᵀ| = |Δ|ᵀ |A|   (one matrix product, nothing per sample)
    Conv1d/2d  W: g_k = δ_k · unfold(a_k)ᵀ  per group, over the L output positions;  b: Σ_l δ_kl
               (or, equivalently, the weight gradient of a grouped convolution, one group a sample)
    GroupNorm, LayerNorm, BatchNorm (eval)   γ: Σ_positions δ_k ⊙ x̂_k,   β: Σ_positions δ_k
               with x̂ the normalized input before the affine map, recomputed from a_k.
    Embedding  W: g_k = Σ_{positions t of sample k, id_t ≠ padding_idx} e_{id_t} δ_ktᵀ  (sparse rows;
               a word used twice by one sample adds its two rows *before* any absolute value).

Row grouping: a layer may see N = B·r rows for a batch of B samples (e.g. a [B, 3, ...] tensor
flattened to [3B, ...]); rows are assigned to samples in row-major order, row n → sample n // r, as
``x.reshape(B * r, ...)`` / ``x.flatten(0, 1)`` produce. A layout with the sample index inner (e.g.
``torch.cat`` over slots) would be mis-assigned; the tests against the per-sample loop catch that.

Every function returns a dict attribute name ('weight', 'bias') → tensor: with ``reduce=True`` the sum
over the batch of |g_k|^power (shape of the parameter; power 1 for MAS, 2 for a Fisher diagonal), else
the per-sample g_k (shape [B, *param.shape]; used when a layer is called several times).

Speed (CPU): per-sample weight gradients hold B times the parameters, so when reducing they are formed
in pieces that stay in cache (CACHE_ELEMENTS) and summed at once: ``tiled_abs_sum`` for Linear with
positions and for convolutions with few output positions, per-sample-grouped convolutions (the
library's weight-gradient kernel) for convolutions with many. Inputs unfolded for a convolution are
prepared for at most ``budget // (elements per sample)`` samples at once.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding) + _NORMS


def unsupported_reason(m: nn.Module) -> str | None:
    """Why the closed forms above do not apply to module ``m`` (None: they apply)."""
    if not isinstance(m, SUPPORTED):
        return f"no per-sample formula for {type(m).__name__}"
    if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.padding_mode != "zeros":
        return f"{type(m).__name__} with padding_mode={m.padding_mode!r}"
    if isinstance(m, nn.Embedding) and (m.max_norm is not None or m.scale_grad_by_freq):
        return "Embedding with max_norm or scale_grad_by_freq"
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None):
        return (f"{type(m).__name__} in training mode or without running statistics couples the "
                "samples of a batch (call model.eval())")
    return None


CACHE_ELEMENTS = 1 << 18         # per-sample gradients reduced at once, per thread: 1 MiB of float32
                                 # stays in a core's L2


def cache_elements() -> int:
    """Elements of per-sample gradient reduced at once: CACHE_ELEMENTS per torch thread (each core
    has its own L2; fewer, larger pieces also mean fewer thread synchronizations)."""
    return CACHE_ELEMENTS * max(1, torch.get_num_threads())


def _chunks(B: int, step: int) -> list[slice]:
    """Consecutive slices of range(B) of at most max(1, step) samples."""
    step = max(1, step)
    return [slice(i, min(B, i + step)) for i in range(0, B, step)]


def magnitude(t: torch.Tensor, power: int) -> torch.Tensor:
    """|t|^power elementwise (power 1 or 2)."""
    return t.abs() if power == 1 else t.square() if power == 2 else t.abs().pow(power)


def sum_magnitude(t: torch.Tensor, power: int, inplace: bool = False) -> torch.Tensor:
    """Σ_k |t_k|^power over dim 0; ``inplace`` overwrites ``t`` (a temporary) instead of copying."""
    if inplace:
        t = t.abs_() if power == 1 else t.abs_().pow_(power)
        return t[0] if t.shape[0] == 1 else t.sum(0)
    return magnitude(t, power).sum(0)


def _per_sample(fn: Callable[[slice, int], Iterator[torch.Tensor]], B: int, per_sample: int,
                budget: int, reduce: bool, power: int, out_size: int) -> torch.Tensor:
    """Per-sample gradients from ``fn`` by chunks; Σ_k |g_k|^power if ``reduce``, else [B, ...].

    ``fn(outer, step)`` prepares the samples ``outer`` (at most ``budget // per_sample`` of them, e.g.
    their unfolded input) and yields their per-sample gradients [b, ...] in consecutive pieces of at
    most ``step`` samples. When reducing, ``step`` keeps a piece within CACHE_ELEMENTS, so |g_k| is
    summed while g_k is still in cache (measured: 2–4× faster than pieces of 64 samples for the
    128→128 3×3 convolutions of the default model).
    """
    outer = _chunks(B, budget // max(1, per_sample))
    if not reduce:
        return torch.cat([g for s in outer for g in fn(s, B)])
    step = max(1, cache_elements() // max(1, out_size))
    total = None
    for s in outer:
        for g in fn(s, step):
            part = sum_magnitude(g, power, inplace=True)
            total = part if total is None else total.add_(part)
    return total


def _finish(g: torch.Tensor, reduce: bool, power: int) -> torch.Tensor:
    """[B, ...] per-sample gradient → itself, or Σ_k |g_k|^power when ``reduce``."""
    return sum_magnitude(g, power) if reduce else g


def tiled_abs_sum(d: torch.Tensor, u: torch.Tensor, power: int) -> torch.Tensor:
    """Σ_k |d_k u_kᵀ|^power for d float [n, O, T], u float [n, I, T] → float [O, I].

    Computed by tiles of output rows, sample after sample, so that the tile of the sum and of the
    per-sample product stay in cache (CACHE_ELEMENTS): memory traffic does not grow with n·O·I
    (measured 3–5× faster than whole per-sample products for resnet18's 512→512 convolutions).
    """
    n, O, _ = d.shape
    I = u.shape[1]
    total = d.new_zeros(O, I)
    cache = cache_elements()
    tile = min(O, max(1, cache // (2 * I)))
    step = max(1, cache // (2 * tile * I))
    ut = u.transpose(1, 2)                                    # [n, T, I]
    for o in range(0, O, tile):
        acc = total[o:o + tile]
        for k in range(0, n, step):
            part = torch.bmm(d[k:k + step, o:o + tile], ut[k:k + step])
            acc.add_(sum_magnitude(part, power, inplace=True))
    return total


def linear_grads(m: nn.Linear, a: torch.Tensor, d: torch.Tensor, B: int, reduce: bool,
                 budget: int, power: int = 1) -> dict[str, torch.Tensor]:
    """a float [N, ..., in], d float [N, ..., out] (N = B·r) → grads of 'weight' [out, in], 'bias'.
    (``budget`` is unused: the reduction is tiled, the per-sample form is [B, out, in] anyway.)"""
    a = a.reshape(B, -1, a.shape[-1])
    d = d.reshape(B, -1, d.shape[-1])
    out = {}
    if reduce and a.shape[1] == 1:                         # Σ_k |δ_k a_kᵀ|^p = (|Δ|^p)ᵀ |A|^p
        out["weight"] = magnitude(d[:, 0], power).t() @ magnitude(a[:, 0], power)
    elif reduce:                                          # g_k = Σ_t δ_kt a_ktᵀ, summed by tiles
        out["weight"] = tiled_abs_sum(d.transpose(1, 2), a.transpose(1, 2), power)
    else:
        out["weight"] = torch.bmm(d.transpose(1, 2), a)  # [B, out, in]
    if m.bias is not None:
        out["bias"] = _finish(d.sum(1), reduce, power)
    return out


GROUPED_MIN_POSITIONS = 128     # conv outputs with ≥ this many positions use the grouped-conv route


def conv_grads(m: nn.Conv1d | nn.Conv2d, a: torch.Tensor, d: torch.Tensor, B: int, reduce: bool,
               budget: int, power: int = 1) -> dict[str, torch.Tensor]:
    """a float [N, C_in, (H,) W], d float [N, C_out, (H',) W'] → grads of 'weight', 'bias'.

    Two exact routes to g_k (chosen by single-thread CPU time on the default model and resnet18 at
    64×64: grouped is 1.2–2.3× faster at L ≥ 256, 1.1–1.2× slower at L = 64; for grouped and
    depthwise convolutions it is 4.6× faster at L = 64: EfficientNet-Lite0's 5×5 depthwise
    convolutions over 1152 channels of 8×8, 181 ms against 828 ms for the unfold, batch of 32):
    - many output positions (L ≥ GROUPED_MIN_POSITIONS, early layers) or a grouped / depthwise
      convolution: the samples of a piece become the groups of one grouped convolution, whose weight
      gradient (``aten.convolution_backward``, the library's optimized kernel) is the stack of the
      per-sample weight gradients;
    - few positions: unfold (im2col) of a_k and products δ_k · unfold(a_k)ᵀ, summed in cache-sized
      tiles (``tiled_abs_sum``) when reducing and the convolution is not grouped.
    """
    pad = list(m._reversed_padding_repeated_twice)
    kernel, stride, dilation = m.kernel_size, m.stride, m.dilation
    if isinstance(m, nn.Conv1d):                              # as a 2-d conv of height 1
        a, d = a.unsqueeze(2), d.unsqueeze(2)
        kernel, stride, dilation, pad = (1,) + kernel, (1,) + stride, (1,) + dilation, pad + [0, 0]
    if pad[0::2] != pad[1::2]:                                # padding="same" with an even kernel
        a, pad = F.pad(a, pad), [0, 0, 0, 0]
    padding = (pad[2], pad[0])
    r = a.shape[0] // B
    g, c_out = m.groups, d.shape[1]
    L = d.shape[2] * d.shape[3]
    cols = m.weight[0].numel() * m.groups                    # C_in · kh · kw
    shape = m.weight.shape
    pointwise = (tuple(kernel) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0))

    def prepare(outer: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """δ [n, C_out, r·L] and unfold(a) [n, C_in·kh·kw, r·L] of the samples ``outer``: the r rows
        of a sample side by side, so that one product sums their contributions."""
        rows = slice(outer.start * r, outer.stop * r)
        if pointwise:                                         # 1×1, stride 1: unfold is a view
            u = a[rows].reshape(rows.stop - rows.start, a.shape[1], -1)
        else:
            u = F.unfold(a[rows], kernel, dilation=dilation, padding=padding, stride=stride)
        if u.shape[2] != L:                                   # u: [rows, C_in·kh·kw, L]
            raise RuntimeError(f"{m}: unfold gives {u.shape[2]} positions, output has {L}")
        dd = d[rows].reshape(-1, c_out, L)
        if r > 1:
            n = outer.stop - outer.start
            u = u.view(n, r, cols, L).transpose(1, 2).reshape(n, cols, r * L)
            dd = dd.view(n, r, c_out, L).transpose(1, 2).reshape(n, c_out, r * L)
        return dd, u

    def unfolded(outer: slice, step: int) -> Iterator[torch.Tensor]:
        dd, u = prepare(outer)
        for s in _chunks(outer.stop - outer.start, step):
            n = s.stop - s.start
            w = torch.matmul(dd[s].view(n, g, c_out // g, -1),
                             u[s].view(n, g, cols // g, -1).transpose(2, 3))
            yield w.view(n, *shape)                           # [n, C_out, C_in/g, kh, kw]

    def grouped(outer: slice, step: int) -> Iterator[torch.Tensor]:
        for s in _chunks(outer.stop - outer.start, step):
            rows = slice((outer.start + s.start) * r, (outer.start + s.stop) * r)
            n = rows.stop - rows.start
            x = a[rows].reshape(1, n * a.shape[1], *a.shape[2:])
            dy = d[rows].reshape(1, n * c_out, *d.shape[2:])
            w = m.weight.new_zeros(n * shape[0], shape[1], *kernel)     # Conv1d: as [.., 1, k]
            grads = torch.ops.aten.convolution_backward(
                dy, x, w, None, list(stride), list(padding), list(dilation), False, [0, 0], n * g,
                [False, True, False])
            yield grads[1].view(n, *shape)

    def fn(outer: slice, step: int) -> Iterator[torch.Tensor]:
        if L < GROUPED_MIN_POSITIONS and g == 1:
            yield from unfolded(outer, step)
            return
        for w in grouped(outer, step):
            yield w if r == 1 else w.view(-1, r, *shape).sum(1)

    per = r * (cols * L + c_out * L)
    if reduce and g == 1 and L < GROUPED_MIN_POSITIONS:
        total = None
        for outer in _chunks(B, budget // per):
            part = tiled_abs_sum(*prepare(outer), power)
            total = part if total is None else total.add_(part)
        out = {"weight": total.view(shape)}
    else:
        out = {"weight": _per_sample(fn, B, per, budget, reduce, power, m.weight.numel())}
    if m.bias is not None:
        out["bias"] = _finish(d.reshape(B, r, c_out, -1).sum((1, 3)), reduce, power)
    return out


def norm_grads(m: nn.Module, a: torch.Tensor, d: torch.Tensor, B: int, reduce: bool,
               budget: int, power: int = 1) -> dict[str, torch.Tensor]:
    """GroupNorm / BatchNorm (eval): a, d [N, C, *]; LayerNorm: a, d [N, ..., *normalized_shape]."""
    if isinstance(m, nn.LayerNorm):
        shape = tuple(m.normalized_shape)
        xh = F.layer_norm(a, shape, eps=m.eps)
        gw, gb = (d * xh).reshape(B, -1, *shape).sum(1), d.reshape(B, -1, *shape).sum(1)
    else:
        if isinstance(m, nn.GroupNorm):
            xh = F.group_norm(a, m.num_groups, eps=m.eps)
        else:
            view = (1, -1) + (1,) * (a.ndim - 2)
            xh = (a - m.running_mean.view(view)) * torch.rsqrt(m.running_var.view(view) + m.eps)
        c = a.shape[1]
        gw = (d * xh).reshape(B, -1, c, d[0, 0].numel()).sum((1, 3))
        gb = d.reshape(B, -1, c, d[0, 0].numel()).sum((1, 3))
    out = {}
    if m.weight is not None:
        out["weight"] = _finish(gw, reduce, power)
    if m.bias is not None:
        out["bias"] = _finish(gb, reduce, power)
    return out


def embedding_entries(m: nn.Embedding, idx: torch.Tensor, d: torch.Tensor,
                      B: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse per-sample gradient of an Embedding call.

    Args:
        idx: int [N, ...] word ids (N = B·r).  d: float [N, ..., D] output gradient.
    Returns:
        (keys int64 [E], rows float [E, D]): entry e adds ``rows[e]`` to row ``keys[e] % V`` of
        sample ``keys[e] // V``'s gradient (V = num_embeddings); padding ids are left out.
    """
    V = m.num_embeddings
    ids = idx.reshape(-1).long()
    sample = torch.arange(ids.numel(), device=ids.device) // (ids.numel() // B)
    rows = d.reshape(ids.numel(), -1)
    if m.padding_idx is not None:
        keep = ids != m.padding_idx
        ids, sample, rows = ids[keep], sample[keep], rows[keep]
    return sample * V + ids, rows


def embedding_abs_sum(m: nn.Embedding, keys: torch.Tensor, rows: torch.Tensor,
                      power: int = 1) -> torch.Tensor:
    """Σ_k |g_k|^power [V, D] from all entries of ``embedding_entries`` (of one or more calls)."""
    out = torch.zeros_like(m.weight, dtype=rows.dtype)
    if keys.numel():
        uniq, inverse = torch.unique(keys, return_inverse=True)
        per_sample = torch.zeros(len(uniq), rows.shape[1], dtype=rows.dtype, device=rows.device)
        per_sample.index_add_(0, inverse, rows)             # same word, same sample: sum first
        out.index_add_(0, uniq % m.num_embeddings, magnitude(per_sample, power))
    return out


def layer_grads(m: nn.Module, a: torch.Tensor, d: torch.Tensor, B: int, reduce: bool,
                budget: int, power: int = 1) -> dict[str, torch.Tensor]:
    """Dispatch to the formula for ``m`` (not Embedding, which is sparse: see embedding_entries)."""
    if isinstance(m, nn.Linear):
        return linear_grads(m, a, d, B, reduce, budget, power)
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return conv_grads(m, a, d, B, reduce, budget, power)
    if isinstance(m, _NORMS):
        return norm_grads(m, a, d, B, reduce, budget, power)
    raise TypeError(f"no per-sample formula for {type(m).__name__}")

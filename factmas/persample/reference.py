"""Reference and alternative estimators of Σ_k |∂l_k/∂θ|, next to the hook method of ``persample``.

- ``loop_abs_grad_sums``: the naive exact reference, one forward and one backward per sample.
- ``vmap_abs_grad_sums``: exact, ``torch.func`` (functional_call + grad + vmap) per-sample gradients.
  Fails on a forward that reads tensor values in Python (``int(t)``, ``bool(t.any())``), as the fact
  branch's input checks do.
- ``loop_local_abs_grad_sums``: the naive exact reference of ``persample.local`` (each layer's own
  output norm): per sample, per layer, one backward of Σ_calls w_k ‖F_l(x_k)‖² to that layer's
  parameters.
- ``batch_abs_grad_sums``: the approximation Σ_batches |∂(Σ_{k∈batch} l_k)/∂θ| that the official MAS
  code (batch size > 1), Avalanche and FACIL compute; by the triangle inequality it is ≤ the exact
  Σ_k |∂l_k/∂θ| elementwise, with equality only for batches of one sample.

All share the signature of ``persample.abs_grad_sums``: (model, loss_fn, batches, max_samples,
power) → (name → Σ_k |g_k|^power shaped like the parameter, number of samples); ``p.grad`` stays
untouched.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from factmas.persample.hooks import LossFn, batch_size, capped, check_losses, take, trainable
from factmas.persample.layers import magnitude


def _zeros(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    return {n: torch.zeros_like(p, memory_format=torch.contiguous_format) for n, p in params.items()}


def _add_abs(sums: dict[str, torch.Tensor], names: list[str], grads: Iterable, power: int) -> None:
    for n, g in zip(names, grads):
        if g is not None:
            sums[n].add_(magnitude(g, power))


def _chunked_abs_grad_sums(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any],
                           max_samples: int | None, power: int,
                           progress: Callable[[int], None] | None, per_sample: bool):
    """Σ over chunks of |∂(Σ_{k∈chunk} l_k)/∂θ|^power; a chunk is one sample or one whole batch."""
    params = trainable(model)
    names, tensors = list(params), list(params.values())
    sums, n = _zeros(params), 0
    with torch.enable_grad():
        for batch in capped(batches, max_samples):
            B = batch_size(batch)
            chunks = [take(batch, slice(k, k + 1)) for k in range(B)] if per_sample else [batch]
            for chunk in chunks:
                loss = loss_fn(model, chunk)
                check_losses(loss, chunk)
                grads = torch.autograd.grad(loss.sum(), tensors, allow_unused=True)
                _add_abs(sums, names, grads, power)
            n += B
            if progress is not None:
                progress(B)
    return sums, n


def loop_abs_grad_sums(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any],
                       max_samples: int | None = None, power: int = 1,
                       progress: Callable[[int], None] | None = None):
    """Exact Σ_k |∂l_k/∂θ| by a loop: each sample alone through forward and backward (slow)."""
    return _chunked_abs_grad_sums(model, loss_fn, batches, max_samples, power, progress, True)


def batch_abs_grad_sums(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any],
                        max_samples: int | None = None, power: int = 1,
                        progress: Callable[[int], None] | None = None):
    """Approximate Σ_batches |∂(Σ_{k∈batch} l_k)/∂θ| (≤ the exact sum; depends on the batch size)."""
    return _chunked_abs_grad_sums(model, loss_fn, batches, max_samples, power, progress, False)


class _Call(nn.Module):
    """Wraps (model, loss_fn) so that ``torch.func.functional_call`` can swap the model's tensors."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def vmap_abs_grad_sums(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any],
                       max_samples: int | None = None, power: int = 1,
                       progress: Callable[[int], None] | None = None):
    """Exact Σ_k |∂l_k/∂θ| with ``torch.func.vmap(grad(...))`` over the samples of each batch.

    Raises:
        RuntimeError (from torch.func): the forward reads tensor values in Python.
    """
    from torch.func import functional_call, grad, vmap

    params = trainable(model)
    wrapper = _Call(model, loss_fn)
    theta = {f"model.{n}": p.detach() for n, p in params.items()}
    buffers = {f"model.{n}": b for n, b in model.named_buffers()}

    def one_loss(theta: dict, sample: Any) -> torch.Tensor:
        batch = torch.utils._pytree.tree_map(lambda t: t.unsqueeze(0), sample)
        return functional_call(wrapper, (theta, buffers), (batch,)).sum()

    per_sample = vmap(grad(one_loss), in_dims=(None, 0))
    sums, n = _zeros(params), 0
    for batch in capped(batches, max_samples):
        with torch.enable_grad():
            g = per_sample(theta, batch)
        for name in params:
            sums[name].add_(magnitude(g[f"model.{name}"], power).sum(0))
        B = next(iter(g.values())).shape[0]
        n += B
        if progress is not None:
            progress(B)
    return sums, n


def loop_local_abs_grad_sums(model: nn.Module, forward: Callable[[nn.Module, Any], Any],
                             batches: Iterable[Any], max_samples: int | None = None, power: int = 1,
                             progress: Callable[[int], None] | None = None):
    """Exact Σ_k |∂(w_kl Σ_calls ‖F_l(x_k)‖²)/∂θ_l|^power of every module l owning parameters, by a
    loop (slow): each sample alone through ``forward`` (as ``persample.local.local_abs_grad_sums``:
    (model, batch) → None or module → sample weights [B]), the outputs of every call of l kept by a
    forward hook, one backward per module to its own parameters only. Local: each call's input is
    held fixed (a forward pre-hook detaches it), so a layer called on its own output counts each
    call's direct dependence on θ_l, not the path through its earlier call."""
    params = trainable(model)
    name_of = {id(p): n for n, p in params.items()}
    owners = [(m, {a: p for a, p in m.named_parameters(recurse=False) if id(p) in name_of})
              for m in model.modules()]
    owners = [(m, own) for m, own in owners if own]
    sums, n = _zeros(params), 0
    for batch in capped(batches, max_samples):
        B = batch_size(batch)
        for k in range(B):
            seen: dict[nn.Module, list[torch.Tensor]] = {m: [] for m, _ in owners}
            handles = [m.register_forward_hook(lambda mod, i, o: seen[mod].append(o)) for m, _ in owners]
            handles += [m.register_forward_pre_hook(lambda mod, i: (i[0].detach(),) + tuple(i[1:]))
                        for m, _ in owners]
            try:
                with torch.enable_grad():
                    weights = forward(model, take(batch, slice(k, k + 1)))
            finally:
                for h in handles:
                    h.remove()
            for m, own in owners:
                if not seen[m]:
                    continue
                with torch.enable_grad():
                    loss = sum(y.pow(2).sum() for y in seen[m])
                    if weights is not None and m in weights:
                        loss = loss * weights[m].to(loss.dtype).reshape(())
                    grads = torch.autograd.grad(loss, list(own.values()), retain_graph=True,
                                                allow_unused=True)
                _add_abs(sums, [name_of[id(p)] for p in own.values()], grads, power)
        n += B
        if progress is not None:
            progress(B)
    return sums, n

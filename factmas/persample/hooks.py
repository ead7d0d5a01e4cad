"""Exact sums of per-sample absolute gradients, Σ_k |∂l_k/∂θ|^p, by forward and gradient hooks.

Used by MAS (``factmas.methods.mas.mas_importance``): Ω = (1/N) Σ_k |∂‖F(x_k)‖²/∂θ| (Aljundi et al., ECCV 2018,
Eq. 2) needs the absolute value of every sample's gradient, not of the batch gradient (p = 1); a
Fisher diagonal (EWC, Kirkpatrick et al. 2017) needs Σ_k g_k² (p = 2, ``power=2``).

How: each supported layer (``factmas.persample.layers``: Linear, Conv1d/2d, Embedding, GroupNorm,
LayerNorm, BatchNorm in eval mode) gets a forward hook that keeps its input a and adds a zero probe
scalar to its output y, whose gradient hook receives δ = ∂(Σ_k l_k)/∂y. One backward pass of Σ_k l_k
(``torch.autograd.grad`` with respect to the probes only, so the batch parameter gradients are never
formed and ``p.grad`` is never touched) delivers δ for every call of every layer; the per-layer closed
forms turn (a, δ) into Σ_k |g_k| directly (Linear: |Δ|ᵀ|A|, one matrix product) or into per-sample
g_k when a layer is called several times in one forward (their g_k are summed before |.|).

Requirements: samples must be independent in the forward (no BatchNorm in training mode, no
cross-sample ops); a parameter must be used only inside the forward of the module owning it.
Parameters of other module types (or shared by several modules) fall back to an exact per-sample loop
of backward passes on the batch's graph (``fallback="loop"``, slow, logged), or raise ValueError
(``fallback="error"``).

Why not Opacus (1.6, installed) or torch.func: measured with ``bench/omega.py`` on the default model
(64×64 images, batches of 64, one thread of the shared 2-core CPU, ratios within one run), this module
ran at 0.6× the batch approximation and 2.2× the per-sample loop on images; vmap and Opacus at about
1.0× the loop. Opacus' GradSampleModule materializes per-sample gradients [B, *θ] for every layer (a
dense [B, V, D] one for Embedding), writes ``p.grad``, records activations in training mode only,
and gives the Embedding's padding row a gradient (its Ω for the fact branch's words was 29× off the
loop); vmap cannot run the fact branch, whose forward checks its input values in Python.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Callable, Iterable

import torch
from torch import nn

from factmas.persample.layers import (embedding_abs_sum, embedding_entries, layer_grads, magnitude,
                                      sum_magnitude, unsupported_reason)

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], torch.Tensor]
DEFAULT_BUDGET = 1 << 21           # elements of per-sample work held at once (8 MiB of float32)


def batch_size(batch: Any) -> int:
    """Number of samples of ``batch`` (a tensor, or a tuple/list/dict whose tensors share dim 0)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    items = batch.values() if isinstance(batch, dict) else batch
    for x in items:
        if isinstance(x, torch.Tensor):
            return x.shape[0]
    raise ValueError(f"a batch must hold at least one tensor, got {type(batch).__name__}")


def take(batch: Any, rows: slice) -> Any:
    """The samples ``rows`` of every tensor in ``batch`` (same structure as ``batch``)."""
    if isinstance(batch, torch.Tensor):
        return batch[rows]
    if isinstance(batch, dict):
        return {k: take(v, rows) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(take(v, rows) for v in batch)
    return batch


def capped(batches: Iterable[Any], max_samples: int | None) -> Iterable[Any]:
    """Yield the batches, the last one cut so that at most ``max_samples`` samples come out."""
    left = max_samples
    for batch in batches:
        if left is not None:
            if left <= 0:
                return
            batch = take(batch, slice(0, left))
            left -= batch_size(batch)
        yield batch


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """name → parameter of ``model`` that requires grad (shared parameters once, first name)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def check_losses(losses: torch.Tensor, batch: Any) -> int:
    """Raise ValueError unless ``losses`` is float [B] for a batch of B samples; return B."""
    B = batch_size(batch)
    if losses.shape != (B,):
        raise ValueError(f"the per-sample loss must be float [B] = [{B}], got {tuple(losses.shape)}")
    return B


def owned_layers(model: nn.Module) -> tuple[dict[str, nn.Parameter], dict[nn.Module, dict[str, str]],
                                             dict[str, str]]:
    """The ownership scan: which module's closed form (``factmas.persample.layers``) gives each
    trainable parameter its per-sample gradients.

    Returns:
        (``trainable(model)``; hooked: module → attribute → parameter name, for every module that owns
        trainable parameters and has a formula; unsupported: parameter name → why it has none, for a
        module without a formula or a parameter owned by several modules).
    """
    params = trainable(model)
    name_of = {id(p): n for n, p in params.items()}
    owners: dict[int, list[nn.Module]] = defaultdict(list)
    for m in model.modules():
        for p in m.parameters(recurse=False):
            if id(p) in name_of:
                owners[id(p)].append(m)
    hooked: dict[nn.Module, dict[str, str]] = {}
    why: dict[str, str] = {}
    for m in model.modules():
        own = {a: name_of[id(p)] for a, p in m.named_parameters(recurse=False) if id(p) in name_of}
        if not own:
            continue
        reason = unsupported_reason(m)
        if reason is None and any(len(owners[id(getattr(m, a))]) > 1 for a in own):
            reason = "parameter shared by several modules"
        if reason is None:
            hooked[m] = own
        else:
            why.update({n: reason for n in own.values()})
    return params, hooked, why


def describe(why: dict[str, str]) -> str:
    """'name (reason); ...' of ``owned_layers``' unsupported parameters."""
    return "; ".join(f"{n} ({r})" for n, r in why.items())


class LayerSums:
    """Accumulates one batch: the (input a, output gradient δ) of each call of each hooked layer →
    Σ_k |g_k|^power added to ``sums``.

    A layer called once is reduced at once (``layer_grads(reduce=True)``); a layer called several
    times keeps its per-sample g_k [B, *θ], summed over the calls before |.| (``finish``), as are the
    sparse entries of an Embedding (``embedding_abs_sum``).

    Args:
        hooked: module → attribute → parameter name (``owned_layers``).
        sums: parameter name → float tensor shaped like the parameter, added to in place.
        B: the batch's number of samples.  budget, power: as ``PerSampleHooks``.
    """

    def __init__(self, hooked: dict[nn.Module, dict[str, str]], sums: dict[str, torch.Tensor], B: int,
                 budget: int, power: int) -> None:
        self.hooked, self.sums, self.B, self.budget, self.power = hooked, sums, B, budget, power
        self.per_sample: dict[nn.Module, dict[str, torch.Tensor]] = {}
        self.emb: dict[nn.Module, list] = defaultdict(list)

    def add(self, m: nn.Module, a: torch.Tensor, d: torch.Tensor, single: bool) -> None:
        """One call of layer ``m``: input a [N, ...] and δ [N, ...] (N = B·r rows, sample-major);
        ``single``: ``m`` is called once in the batch. Raises RuntimeError if N is not a multiple of B."""
        B = self.B
        if a.shape[0] % B:
            raise RuntimeError(f"per-sample gradients: {m} saw {a.shape[0]} rows for a batch of {B} "
                               "samples; rows must be the samples, or B·r rows in sample-major order")
        if isinstance(m, nn.Embedding):
            self.emb[m].append(embedding_entries(m, a, d, B))
            return
        grads = layer_grads(m, a, d, B, reduce=single, budget=self.budget, power=self.power)
        names = self.hooked[m]
        if single:
            for attr, g in grads.items():
                self.sums[names[attr]].add_(g)
        else:                                                 # several calls: Σ_calls g_k, then |.|
            acc = self.per_sample.setdefault(m, {})
            for attr, g in grads.items():
                acc[attr] = g if attr not in acc else acc[attr].add_(g)

    def finish(self) -> None:
        """Add the layers called several times and the Embeddings (after the batch's last ``add``)."""
        for m, acc in self.per_sample.items():
            for attr, g in acc.items():
                self.sums[self.hooked[m][attr]].add_(sum_magnitude(g, self.power, inplace=True))
        for m, entries in self.emb.items():
            keys = torch.cat([k for k, _ in entries])
            rows = torch.cat([r for _, r in entries])
            self.sums[self.hooked[m]["weight"]].add_(embedding_abs_sum(m, keys, rows, self.power))
        self.per_sample, self.emb = {}, defaultdict(list)


class PerSampleHooks:
    """Context manager holding the hooks; ``add_batch`` adds Σ_k |g_k|^power of a batch to ``sums``.

    Args:
        model: the module whose trainable parameters get sums (keys: ``model.named_parameters()``).
        fallback: "loop" (per-sample backward passes for unsupported modules) or "error".
        budget: elements of per-sample work held at once.
        power: 1 (Σ|g_k|, MAS) or 2 (Σ g_k², a Fisher diagonal).
    Raises:
        ValueError: unsupported parameters with ``fallback="error"``, or an unknown ``fallback``.
    """

    def __init__(self, model: nn.Module, fallback: str = "loop", budget: int = DEFAULT_BUDGET,
                 power: int = 1):
        if fallback not in ("loop", "error"):
            raise ValueError(f"fallback must be 'loop' or 'error', got {fallback!r}")
        self.model, self.budget, self.power = model, budget, power
        self.params, self.hooked, why = owned_layers(model)
        self.fallback_names = list(why)
        if why and fallback == "error":
            raise ValueError("no per-sample formula for parameters: " + describe(why))
        if why:
            log.warning("per-sample gradients: %d parameter(s) use the slow per-sample loop: %s",
                        len(why), describe(why))
        self._handles: list[Any] = []
        self._reset()

    def _reset(self) -> None:
        self.recording = False
        self.capturing = False
        self.probes: list[torch.Tensor] = []
        self.acts: dict[nn.Module, list] = defaultdict(list)
        self.layer_sums: LayerSums | None = None

    def __enter__(self) -> "PerSampleHooks":
        self._handles = [m.register_forward_hook(self._forward_hook) for m in self.hooked]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._reset()

    def _forward_hook(self, m: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not self.recording:
            return None
        a = inputs[0]
        call = len(self.acts[m])
        self.acts[m].append((a.detach(), a._version))
        probe = torch.zeros((), dtype=output.dtype, device=output.device, requires_grad=True)
        self.probes.append(probe)
        out = output + probe
        out.register_hook(lambda d, m=m, call=call: self._on_grad(m, call, d))
        return out

    def _on_grad(self, m: nn.Module, call: int, d: torch.Tensor) -> None:
        if not self.capturing:
            return
        a, version = self.acts[m][call]
        if a._version != version:
            raise RuntimeError(f"per-sample gradients: the input of {m} was modified in place after "
                               "the layer used it; use out-of-place operations there")
        self.acts[m][call] = (None, version)                 # free the activation early
        self.layer_sums.add(m, a, d, single=len(self.acts[m]) == 1)

    def add_batch(self, loss_fn: LossFn, batch: Any, sums: dict[str, torch.Tensor]) -> int:
        """Forward ``loss_fn(model, batch)`` → float [B] per-sample losses l_k, add Σ_k |∂l_k/∂θ| to
        ``sums`` (name → tensor shaped like the parameter). Returns B. Raises ValueError on a loss
        that is not float [B]."""
        self._reset()
        with torch.enable_grad():
            self.recording = True
            try:
                losses = loss_fn(self.model, batch)
            finally:
                self.recording = False
            self.B = check_losses(losses, batch)
            self.layer_sums = LayerSums(self.hooked, sums, self.B, self.budget, self.power)
            fb = [self.params[n] for n in self.fallback_names]
            if self.probes:
                self.capturing = True
                try:
                    torch.autograd.grad(losses.sum(), self.probes, retain_graph=bool(fb),
                                        allow_unused=True)
                finally:
                    self.capturing = False
            self.layer_sums.finish()
            for k in range(self.B if fb else 0):              # exact, slow: one backward per sample
                grads = torch.autograd.grad(losses[k], fb, retain_graph=k + 1 < self.B,
                                            allow_unused=True)
                for n, g in zip(self.fallback_names, grads):
                    if g is not None:
                        sums[n].add_(magnitude(g, self.power))
        self._reset()
        return self.B


def abs_grad_sums(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any],
                  max_samples: int | None = None, fallback: str = "loop",
                  budget: int = DEFAULT_BUDGET, power: int = 1,
                  progress: Callable[[int], None] | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """Exact Σ_k |∂l_k/∂θ|^power over all samples of ``batches``, by hooks (module docstring).

    Args:
        model: its trainable parameters get sums; ``p.grad`` is left untouched, hooks are removed.
        loss_fn: (model, batch) → float [B] per-sample losses l_k (samples must be independent).
        batches: iterable of batches (tensors or tuples/dicts of tensors, samples along dim 0).
        max_samples: use at most this many samples (None: all).
        fallback: "loop" or "error" for parameters of modules without a per-sample formula.
        power: 1 (MAS) or 2 (squared gradients, e.g. an empirical Fisher diagonal).
        progress: called with the batch size after each batch (e.g. ``tqdm.update``).
    Returns:
        (name → float tensor shaped like the parameter, dtype of the parameter; N samples used).
    """
    sums = {n: torch.zeros_like(p, memory_format=torch.contiguous_format)
            for n, p in trainable(model).items()}
    n = 0
    with PerSampleHooks(model, fallback=fallback, budget=budget, power=power) as hooks:
        for batch in capped(batches, max_samples):
            b = hooks.add_batch(loss_fn, batch, sums)
            n += b
            if progress is not None:
                progress(b)
    return sums, n

"""Exact sums of per-sample gradients of each layer's own output norm, Σ_k |∂‖F_l(x_k)‖₂²/∂θ_l|^p.

Used by ℓ-MAS (``factmas.methods.lmas``; Aljundi et al., ECCV 2018, Sec. 4.3 "local"): every
parametrized layer l gets the per-sample gradient of the squared norm of its own output y = F_l(a; θ_l)
with respect to its own parameters θ_l only. The gradient at the output is known in closed form,

    δ_k = ∂‖y_k‖₂²/∂y_k = 2 y_k,

so no backward pass is needed: forward hooks keep (a, y) of every call of every layer, and δ = 2y goes
into the same per-layer closed forms and the same accumulation as the backward mode of
``factmas.persample.hooks`` (``owned_layers``, ``LayerSums``: a layer called several times sums its
calls' g_k before |.|, an Embedding its repeated words). For a Linear layer this is the paper's
Hebbian product |2 y_k a_kᵀ|.

Sample weights: the forward may return, per module, a weight w_k per sample (float or bool [B]);
that module's δ_k becomes w_k · 2 y_k (0: sample k does not count for that layer, e.g. an absent fact
slot whose MLP still ran on padding).

y is read after the whole forward, as a view of the layer's output: where an in-place operation
follows the layer (``nn.ReLU(inplace=True)``, timm's in-place ReLU6 after a BatchNorm), F_l is the
output after that operation, as a per-layer loop of ``‖F_l‖²`` backward passes through the same
forward computes it (``tests/methods/test_methods_lmas.py``).

Requirements: samples independent in the forward (as ``hooks``); every trainable parameter owned by
a module with a closed form (``factmas.persample.layers``), else ValueError (there is no per-sample
loop fallback here).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from factmas.persample.hooks import (DEFAULT_BUDGET, LayerSums, batch_size, capped, describe,
                                     owned_layers, trainable)

# (model, batch) → None, after running the forward whose layers count, or module → weight [B]
LocalForward = Callable[[nn.Module, Any], Optional[dict[nn.Module, torch.Tensor]]]


def check_weights(weights: Any, B: int) -> None:
    """Raise ValueError unless ``weights`` is None or a dict module → tensor [B]."""
    if weights is None:
        return
    if not isinstance(weights, dict):
        raise ValueError("the forward must return None or a dict module → sample weights [B], got "
                         f"{type(weights).__name__}")
    for m, w in weights.items():
        if not isinstance(m, nn.Module) or not isinstance(w, torch.Tensor) or w.shape != (B,):
            raise ValueError(f"sample weights must be module → tensor [B] = [{B}], got "
                             f"{type(m).__name__} → {tuple(getattr(w, 'shape', ())) or type(w).__name__}")


class LocalOutputHooks:
    """Context manager holding forward hooks; ``add_batch`` adds Σ_k |∂‖F_l(x_k)‖²/∂θ_l|^power of a
    batch to ``sums`` (module docstring).

    Args:
        model: the module whose trainable parameters get sums (keys: ``model.named_parameters()``).
        budget: elements of per-sample work held at once.  power: 1 (ℓ-MAS) or 2.
    Raises:
        ValueError: a trainable parameter without a per-sample formula (named, with the reason).
    """

    def __init__(self, model: nn.Module, budget: int = DEFAULT_BUDGET, power: int = 1) -> None:
        self.model, self.budget, self.power = model, budget, power
        self.params, self.hooked, why = owned_layers(model)
        if why:
            raise ValueError("local output norm: no per-sample formula for parameters: " + describe(why))
        self.recording = False
        self.calls: dict[nn.Module, list] = defaultdict(list)
        self._handles: list[Any] = []

    def __enter__(self) -> "LocalOutputHooks":
        self._handles = [m.register_forward_hook(self._hook) for m in self.hooked]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self.calls, self.recording = [], defaultdict(list), False

    def _hook(self, m: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self.recording:
            self.calls[m].append((inputs[0].detach(), output.detach()))

    def add_batch(self, forward: LocalForward, batch: Any, sums: dict[str, torch.Tensor]) -> int:
        """Run ``forward(model, batch)`` (no autograd graph), add the batch's Σ_k |g_k|^power of every
        layer it called to ``sums`` (name → tensor shaped like the parameter). Returns B.

        Raises:
            ValueError: ``batch`` holds no tensor, or ``forward`` returned something else than None
            or module → weights [B].  RuntimeError: a layer saw a number of rows that is not a
            multiple of B.
        """
        B = batch_size(batch)
        self.calls = defaultdict(list)
        with torch.no_grad():
            self.recording = True
            try:
                weights = forward(self.model, batch)
            finally:
                self.recording = False
            check_weights(weights, B)
            layer_sums = LayerSums(self.hooked, sums, B, self.budget, self.power)
            for m, calls in self.calls.items():
                for a, y in calls:                            # in call order
                    d = 2.0 * y                               # ∂‖y_k‖²/∂y_k
                    if weights is not None and m in weights:
                        keep = weights[m].to(d.dtype)
                        d = d * keep.repeat_interleave(d.shape[0] // B).view(-1, *[1] * (d.ndim - 1))
                    layer_sums.add(m, a, d, single=len(calls) == 1)
            layer_sums.finish()
        self.calls = defaultdict(list)
        return B


def local_abs_grad_sums(model: nn.Module, forward: LocalForward, batches: Iterable[Any],
                        max_samples: int | None = None, budget: int = DEFAULT_BUDGET, power: int = 1,
                        progress: Callable[[int], None] | None = None
                        ) -> tuple[dict[str, torch.Tensor], int]:
    """Exact Σ_k |∂‖F_l(x_k)‖₂²/∂θ_l|^power of every layer l over all samples of ``batches``
    (module docstring); the signature of ``factmas.persample.hooks.abs_grad_sums`` with ``forward``
    in place of the per-sample loss.

    Args:
        model: its trainable parameters get sums; ``p.grad`` untouched, hooks removed afterwards.
        forward: (model, batch) → None or module → sample weights float/bool [B]; runs the forward.
        batches: iterable of batches (tensors or tuples/dicts of tensors, samples along dim 0).
        max_samples: use at most this many samples (None: all).
        power: 1 (ℓ-MAS) or 2.  progress: called with the batch size after each batch.
    Returns:
        (name → float tensor shaped like the parameter, zero for layers never called; N samples).
    Raises:
        ValueError: a trainable parameter without a per-sample formula.
    """
    sums = {n: torch.zeros_like(p, memory_format=torch.contiguous_format)
            for n, p in trainable(model).items()}
    n = 0
    with LocalOutputHooks(model, budget=budget, power=power) as hooks:
        for batch in capped(batches, max_samples):
            b = hooks.add_batch(forward, batch, sums)
            n += b
            if progress is not None:
                progress(b)
    return sums, n

"""Stochastic weight averaging within a task (``train.swa_start_epoch``).

SWA (Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization", UAI 2018,
Algorithm 1): the weights after each optimizer step of the averaged epochs are kept as a running
mean, θ_SWA ← (n · θ_SWA + θ) / (n + 1), and at the end of the task the model takes θ_SWA before the
method's end-of-task update (MAS's Ω and θ* are then taken at the averaged weights). The running
mean is torch's ``torch.optim.swa_utils.AveragedModel``. Only parameters are averaged, not buffers:
the backbones' BatchNorm statistics are frozen (ImageNet's), so SWA's BatchNorm update is not needed.
The mean restarts at every task, and a run resumes only at task boundaries, so nothing of it is
checkpointed.

May import: torch.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class WeightAverage:
    """The running mean of ``model``'s parameters over the steps of epochs ``start_epoch`` (1-based)
    and later of one task.

    Args:
        model: the model being trained (its parameters are copied once, here).
        start_epoch: the first averaged epoch, 1 ≤ start_epoch (an epoch index e is 0-based in the
            trainer: averaged when e + 1 ≥ start_epoch).
    Raises:
        ValueError: start_epoch < 1.
    """

    def __init__(self, model: nn.Module, start_epoch: int) -> None:
        if start_epoch < 1:
            raise ValueError(f"train.swa_start_epoch must be >= 1, got {start_epoch}")
        self.start_epoch = start_epoch
        self.average = AveragedModel(model)

    @property
    def steps(self) -> int:
        """How many steps' weights the mean holds."""
        return int(self.average.n_averaged)

    def averaging(self, epoch: int) -> bool:
        """True when the steps of 0-based ``epoch`` are averaged."""
        return epoch + 1 >= self.start_epoch

    def update(self, model: nn.Module) -> None:
        """Add ``model``'s current parameters to the mean (call after an optimizer step)."""
        self.average.update_parameters(model)

    @torch.no_grad()
    def apply(self, model: nn.Module) -> int:
        """Copy the mean into ``model``'s trainable parameters (frozen ones are equal anyway); returns
        the number of steps averaged, 0 (and the model unchanged) when none was."""
        if self.steps == 0:
            return 0
        for p, q in zip(model.parameters(), self.average.module.parameters(), strict=True):
            if p.requires_grad:
                p.copy_(q)
        return self.steps

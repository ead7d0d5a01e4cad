"""Choosing the torch device of a run or a command, and the error for a setting that names nothing.

``resolve_device("auto" | "cpu" | "cuda") -> torch.device``; ``UsageError`` (also raised by the trainer
for an unknown split or method; defined in ``factmas.errors``, importable from here by its old name). Used by ``factmas.trainer``, ``factmas.run.load`` and the commands.
"""
from __future__ import annotations

import torch

from factmas.errors import UsageError  # noqa: F401 (its old home; factmas.errors is the new)

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """"auto" → cuda if available else cpu. Raises UsageError for "cuda" without a GPU or a bad name."""
    if name not in DEVICES:
        raise UsageError(f"unknown device {name!r}; valid: {list(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)

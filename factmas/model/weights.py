"""Reading a weights file a user or a package hands over: ``torch.load(..., weights_only=True)``,
never unpickling anything else, with errors that name the file.

May import: torch.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch


def load_state_file(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (loaded on the CPU, tensors only).

    Args:
        path: the file.  what: what it should hold, for messages (e.g. "efficientnet_lite0 weights").
    Raises:
        ValueError: the file is missing or unreadable, or holds something other than a dict.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError, EOFError) as e:
        # UnpicklingError: weights_only refused the file (e.g. a pickled object, not a state dict)
        raise ValueError(f"{path}: cannot load {what}: not a weights-only state dict file "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict of {what} (a {type(state).__name__})")
    return state

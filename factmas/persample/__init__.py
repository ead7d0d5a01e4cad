"""Exact per-sample gradient sums Σ_k |∂l_k/∂θ|^p: the math under MAS's importance Ω.

- ``hooks``: the hook method (forward + gradient hooks, one backward per batch).
- ``layers``: per-sample gradients of single layers from the layer input and output gradient.
- ``reference``: the naive per-sample loop and alternative estimators the tests compare against.

May import: torch and ``factmas.persample`` itself; nothing else of factmas (pure math).
"""

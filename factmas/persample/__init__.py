"""Exact per-sample gradient sums Σ_k |∂l_k/∂θ|^p: the math under the importance Ω of MAS and ℓ-MAS.

- ``hooks``: the hook method (forward + gradient hooks, one backward per batch); its ownership scan
  (``owned_layers``) and per-batch accumulation (``LayerSums``) are shared with ``local``.
- ``local``: per-sample gradients of each layer's own output norm ‖F_l‖² (ℓ-MAS), forward hooks only.
- ``layers``: per-sample gradients of single layers from the layer input and output gradient.
- ``reference``: the naive per-sample loop and alternative estimators the tests compare against.

May import: torch and ``factmas.persample`` itself; nothing else of factmas (pure math).
"""

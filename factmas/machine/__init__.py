"""The machine a command runs on: the torch device and the C allocator.

- ``device``: ``resolve_device("auto" | "cpu" | "cuda[:N]")`` and its refusal when CUDA is missing.
- ``cpu_memory``: glibc's allocator thresholds, set first by the ``factmas`` command (standard library
  only, so it can run before torch is imported).

May import: ``factmas.errors`` only. Never ``factmas.cli``.
"""

"""How the C allocator hands memory back, for torch's CPU tensors (glibc only; a no-op elsewhere).

torch allocates each CPU tensor with ``malloc``; glibc serves blocks above its mmap threshold (at most
32 MB, adapted at run time) with a fresh ``mmap`` and gives them back on ``free``. A convolution at
112×112 on a batch makes such blocks in every layer, so every forward pays for zeroing new pages in
the kernel: building the 224-px feature cache of EfficientNet-Lite0 spent 572 s of system time for
281 s of user time (380 million minor page faults). ``keep_freed_memory()`` raises both thresholds so
freed blocks stay in the process and are reused: 2.2–2.8× the images/s of that build
(``bench/cpu_memory.py``). The price is a resident size that stays at its peak instead of shrinking.

Imports: the standard library only. Called by the ``factmas`` command before any work, and by each
worker process of the paper table (``factmas.experiments.paper_table.init_worker``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1     # glibc malloc.h: bytes free at the top of the heap before it is returned
M_MMAP_THRESHOLD = -3     # glibc malloc.h: requests at or above this size get their own mmap
KEEP_BYTES = 1 << 30      # 1 GiB: larger than any activation block factmas makes on a CPU


def keep_freed_memory(keep_bytes: int = KEEP_BYTES) -> bool:
    """Ask glibc to keep freed blocks below ``keep_bytes`` (bytes) for reuse (``mallopt(3)``).

    Returns True when both settings were accepted, False where the C library is not glibc (macOS,
    musl, Windows) or refused them; never raises.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, keep_bytes) == 1 and mallopt(M_TRIM_THRESHOLD, keep_bytes) == 1
    if not ok:
        log.debug("mallopt refused the thresholds; the allocator keeps its defaults")
    return ok

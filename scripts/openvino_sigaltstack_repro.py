"""Reproduce, without factmas or torch, the segmentation fault that made OpenVINO an opt-in stem engine.

    python scripts/openvino_sigaltstack_repro.py [--cores per-model|one]

On a CPU with AMX, OpenVINO's CPU plugin (one per ``openvino.Core``) mmaps a signal stack, installs
it on the calling thread with ``sigaltstack`` and, when destroyed, unmaps it and restores the stack it
found if its own is still installed (``SigAltStackSetup``, openvinotoolkit/openvino PR 11894). This
script compiles two tiny models, each through its own Core ("per-model", factmas before the fix) or
through one Core ("one", ``factmas.model.stem_engine.openvino_core``), drops them in the order they
were made, prints the thread's signal stack after each step (its address, size and whether it is
still mapped) and then sends itself SIGTERM with a Python handler installed. With "per-model" the
thread is left on the first plugin's unmapped stack and the process dies with SIGSEGV (exit 139
from a shell) inside CPython's signal handler; with "one" it prints "handled [15]" and exits 0.
Without AMX the plugin installs no stack and both forms exit 0.

Linux only (ctypes ``sigaltstack``, /proc/self/maps). Seen with openvino 2026.4.1, glibc 2.36,
Linux 6.18 on an "Intel(R) Xeon(R) Processor" with amx_tile (2026-12-06).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import signal

import numpy as np


class _Stack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def signal_stack() -> str:
    """This thread's alternate signal stack: address, size, and whether the address is mapped."""
    s = _Stack()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(s))
    sp = s.ss_sp or 0
    with open("/proc/self/maps") as f:
        spans = [line.split()[0].split("-") for line in f]
    mapped = any(int(a, 16) <= sp < int(b, 16) for a, b in spans)
    return f"sp={sp:#x} size={s.ss_size} mapped={mapped}" if sp else "none"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cores", choices=["per-model", "one"], default="per-model")
    args = ap.parse_args()
    import openvino as ov
    from openvino import opset13 as ops

    shared = ov.Core() if args.cores == "one" else None
    compiled = []
    print("start      ", signal_stack(), flush=True)
    for i in range(2):
        x = ops.parameter([1, 4], np.float32)
        core = shared or ov.Core()
        compiled.append(core.compile_model(ov.Model([ops.relu(x)], [x]), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32"}))
        del core
        print(f"compiled {i + 1} ", signal_stack(), flush=True)
    while compiled:
        compiled.pop(0)                         # the first made is the first dropped
        gc.collect()
        print("dropped one", signal_stack(), flush=True)
    got: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    os.kill(os.getpid(), signal.SIGTERM)
    print("handled", got, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""factmas.machine.cpu_memory: the glibc thresholds are accepted where the C library is glibc, and the call is
a harmless False elsewhere (a library without ``mallopt``)."""
from __future__ import annotations

import ctypes
import platform

import pytest

import factmas.machine.cpu_memory as cpu_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_glibc_accepts_the_thresholds():
    assert cpu_memory.keep_freed_memory() is True


def test_a_library_without_mallopt_gives_false(monkeypatch):
    class NoMallopt:
        def __init__(self, name):
            pass

        def __getattr__(self, name):
            raise AttributeError(name)

    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)
    assert cpu_memory.keep_freed_memory() is False


def test_a_refusing_mallopt_gives_false(monkeypatch):
    class Refuses:
        def __init__(self, name):
            self.mallopt = lambda option, value: 0

    monkeypatch.setattr(ctypes, "CDLL", Refuses)
    assert cpu_memory.keep_freed_memory() is False

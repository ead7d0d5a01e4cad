"""The feature cache's file (issue 28): written in chunks to a memory-mapped .npy, bit for bit equal to
one in-memory pass, resumed after an exception or a SIGKILL from the last complete chunk, never used
half-written, restarted when the sidecar's key differs, read memory-mapped with the same float32 rows
as the in-memory cache gave, and the pixel key unchanged by hashing row ranges."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import factmas.model.features as features
from factmas.config import ModelConfig
from factmas.data.dataset import read_dataset
from factmas.data.synthetic import make_synthetic_dataset
from factmas.model import build_model
from factmas.model.feature_file import PartialFile, partial_paths
from factmas.model.features import CachedInputs, build_file, cache_file, compute_features, load_or_build

LITE = {"backbone": "efficientnet_lite0", "embed_dim": 8, "word_dim": 8, "fact_hidden": 16,
        "freeze_stages": 5}
N = 43                                   # not a multiple of the batch or the chunk


@pytest.fixture()
def data(tmp_path):
    path = make_synthetic_dataset(tmp_path / "syn.h5", n_images=N, image_size=32, num_tasks=2)
    return read_dataset(path)


@pytest.fixture(scope="module")
def stem():
    torch.manual_seed(0)
    return build_model(ModelConfig(**LITE), 50).eval().image_stem


@pytest.fixture()
def small_chunks(monkeypatch):
    """Chunks of 8 images (batch 4): 6 chunks for 43 images, the last one of 3."""
    monkeypatch.setattr(features, "CHUNK_IMAGES", 6)
    return 8


def bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).view(np.uint16)


def test_pixels_hash_by_row_ranges_equals_the_whole_array_hash(monkeypatch, tmp_path):
    """The cache key of files written before (one update over all bytes) is kept, and an h5py dataset
    (sliceable, never read whole) hashes as its array does."""
    rng = np.random.default_rng(int(os.environ.get("FACTMAS_TEST_SEED", 0)))
    images = rng.integers(0, 256, (23, 5, 4, 3), dtype=np.uint8)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(images.shape).encode())
    h.update(images.tobytes())
    monkeypatch.setattr(features, "HASH_ROWS", 7)
    assert features.pixels_hash(images) == h.hexdigest()
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["images"] = images
        assert features.pixels_hash(f["images"]) == h.hexdigest()
    images[22, 4, 3, 2] ^= 1                         # the last row of the short last range counts
    assert features.pixels_hash(images) != h.hexdigest()


def test_chunked_file_equals_one_in_memory_pass_bit_for_bit(data, stem, small_chunks, tmp_path):
    want = compute_features(stem, data.images, batch=4, progress=False)
    path = tmp_path / "c.npy"
    build_file(stem, data.images, path, batch=4, progress=False)
    got = np.load(path)
    assert got.shape == want.shape == (N, 2, 112, 2, 2)
    assert np.array_equal(bits(got), bits(want))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("c.")) == ["c.npy"]


def test_a_build_interrupted_after_k_chunks_resumes_there_and_gives_the_same_bits(data, stem, small_chunks,
                                                                                    tmp_path, monkeypatch):
    want = compute_features(stem, data.images, batch=4, progress=False)
    path = tmp_path / "c.npy"
    partial, side, lock = partial_paths(path)
    real, calls = features.feature_rows, []

    def failing(*a, **k):
        if len(calls) == 3:
            raise KeyboardInterrupt          # e.g. Ctrl-C during chunk 3
        calls.append(a[2])
        return real(*a, **k)

    monkeypatch.setattr(features, "feature_rows", failing)
    with pytest.raises(KeyboardInterrupt):
        build_file(stem, data.images, path, batch=4, progress=False)
    assert not path.exists() and partial.exists()                # never under the final name
    assert json.loads(side.read_text())["done"] == 3
    monkeypatch.setattr(features, "feature_rows", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    build_file(stem, data.images, path, batch=4, progress=False)
    assert calls == [0, 8, 16, 24, 32, 40]                       # chunks 3.. only, once each
    assert np.array_equal(bits(np.load(path)), bits(want))
    assert not partial.exists() and not side.exists() and not lock.exists()


def test_a_sidecar_of_another_key_or_a_damaged_one_starts_over(data, stem, small_chunks, tmp_path, monkeypatch):
    path = tmp_path / "c.npy"
    partial, side, _ = partial_paths(path)
    real, calls = features.feature_rows, []

    def stop_after(k):
        def rows(*a, **kw):
            if len(calls) == k:
                raise RuntimeError("stop")
            calls.append(a[2])
            return real(*a, **kw)
        return rows

    monkeypatch.setattr(features, "feature_rows", stop_after(2))
    with pytest.raises(RuntimeError):
        build_file(stem, data.images, path, batch=4, progress=False)      # 2 chunks of batch 4
    calls.clear()
    monkeypatch.setattr(features, "feature_rows", stop_after(1))
    with pytest.raises(RuntimeError):                                     # batch 2: another key
        build_file(stem, data.images, path, batch=2, progress=False)
    assert calls == [0] and json.loads(side.read_text())["key"].endswith("batch2")
    side.write_text("{not json")
    calls.clear()
    monkeypatch.setattr(features, "feature_rows", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    build_file(stem, data.images, path, batch=2, progress=False)
    assert calls == list(range(0, N, 6))                                  # from the start
    want = compute_features(stem, data.images, batch=2, progress=False)
    assert np.array_equal(bits(np.load(path)), bits(want))


def test_a_partial_file_of_another_shape_starts_over(tmp_path):
    path = tmp_path / "c.npy"
    with pytest.raises(RuntimeError):
        with PartialFile(path, "k", rows=5, chunk=2) as part:
            part.write(0, np.ones((2, 3), np.float16))
            raise RuntimeError("killed")
    partial, side, _ = partial_paths(path)
    with open(partial, "wb") as f:                             # replaced by something else
        np.save(f, np.zeros((5, 4), np.float16))
    with PartialFile(path, "k", rows=5, chunk=2) as part:
        assert part.start == 0 and not partial.exists()
    with PartialFile(path, "k", rows=5, chunk=2) as part:
        part.write(0, np.ones((2, 3), np.float16))
    with PartialFile(path, "k", rows=5, chunk=2) as part:        # resumed
        assert part.start == 2
        with pytest.raises(ValueError, match="chunk at row 0 of 2 rows; expected row 2, 2 rows"):
            part.write(0, np.ones((2, 3), np.float16))
        with pytest.raises(ValueError, match=r"rows \(4,\) float16, expected \(3,\) float16"):
            part.write(2, np.ones((2, 4), np.float16))
        part.write(2, np.full((2, 3), 2, np.float16))
        with pytest.raises(ValueError, match="4 of 5 rows written; not finished"):
            part.finish()
        assert not path.exists()
        part.write(4, np.full((1, 3), 3, np.float16))
        part.finish()
    assert np.array_equal(np.load(path), np.repeat(np.array([1, 1, 2, 2, 3], np.float16)[:, None], 3, 1))


def test_a_half_written_cache_is_never_read_by_load_or_build(data, small_chunks, monkeypatch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**LITE), 50).eval()
    path = cache_file(data, model)
    real = features.feature_rows
    monkeypatch.setattr(features, "feature_rows",
                        lambda *a, **k: (_ for _ in ()).throw(MemoryError()) if a[2] >= 16 else real(*a, **k))
    with pytest.raises(MemoryError):
        load_or_build(model, data, progress=False)
    assert not path.exists() and partial_paths(path)[0].exists()
    monkeypatch.setattr(features, "feature_rows", real)
    feats = load_or_build(model, data, progress=False)          # resumes, then reads the whole file
    assert isinstance(feats, np.memmap) and feats.shape[0] == N
    want = compute_features(model.image_stem, data.images, progress=False)
    assert np.array_equal(bits(feats), bits(want))


def _old_get(features_array: np.ndarray, ids, flip):
    """CachedInputs.get before issue 28 (the whole cache as a torch tensor in memory)."""
    t = torch.from_numpy(np.array(features_array))
    ids = torch.as_tensor(np.asarray(ids, np.int64))
    side = torch.zeros_like(ids) if flip is None else torch.as_tensor(np.asarray(flip, np.int64))
    return t[ids, side].to(torch.float32)


def test_memory_mapped_rows_equal_the_in_memory_cache_rows(data, stem, tmp_path):
    path = tmp_path / "c.npy"
    build_file(stem, data.images, path, progress=False)
    mapped = features.feature_file.read(path)
    assert isinstance(mapped, np.memmap) and mapped.mode == "r"
    inputs = CachedInputs(mapped)
    rng = np.random.default_rng(int(os.environ.get("FACTMAS_TEST_SEED", 0)))
    for _ in range(20):
        ids = rng.integers(0, N, rng.integers(1, 12))
        flip = rng.random(len(ids)) < 0.5
        got = inputs.get(ids, flip)
        assert got.dtype == torch.float32 and torch.equal(got, _old_get(mapped, ids, flip))
        assert torch.equal(inputs.get(ids), _old_get(mapped, ids, None))
    assert torch.equal(inputs.get(np.array([5, 5, 0]), np.array([True, False, True])),
                       torch.stack([torch.from_numpy(np.array(mapped[5, 1])), torch.from_numpy(np.array(mapped[5, 0])),
                                    torch.from_numpy(np.array(mapped[0, 1]))]).float())


def test_a_second_builder_waits_for_the_first_and_reuses_its_file(tmp_path):
    path = tmp_path / "c.npy"
    seen = {}
    entered = threading.Event()

    def second():
        entered.set()
        with PartialFile(path, "k", rows=2, chunk=2) as part:       # blocks on the lock
            seen["complete"] = part.complete

    with PartialFile(path, "k", rows=2, chunk=2) as part:
        t = threading.Thread(target=second)
        t.start()
        entered.wait()
        time.sleep(0.3)
        assert "complete" not in seen                                # still waiting
        part.write(0, np.ones((2, 1), np.float16))
        part.finish()
    t.join(10)
    assert seen == {"complete": True}


CHILD = r"""
import sys, time
import numpy as np, torch
torch.set_num_threads(1)
import factmas.model.features as F
from factmas.config import ModelConfig
from factmas.data.dataset import read_dataset
from factmas.model import build_model
F.CHUNK_IMAGES = 6
real = F.feature_rows
F.feature_rows = lambda *a, **k: (time.sleep(0.4), real(*a, **k))[1]
torch.manual_seed(0)
stem = build_model(ModelConfig(**{lite}), 50).eval().image_stem
F.build_file(stem, read_dataset(sys.argv[1]).images, F.Path(sys.argv[2]), batch=4, progress=False)
"""


def test_a_build_killed_with_sigkill_resumes_from_its_last_complete_chunk(data, stem, small_chunks, tmp_path,
                                                                            monkeypatch):
    path = tmp_path / "c.npy"
    _, side, _ = partial_paths(path)
    root = str(Path(features.__file__).resolve().parents[2])     # this checkout first, the rest kept: the
    env = {**os.environ, "OMP_NUM_THREADS": "1",                  # child must find the same stem engine
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    child = subprocess.Popen([sys.executable, "-c", CHILD.replace("{lite}", repr(LITE)), str(data.path), str(path)],
                             env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    done = 0
    while done < 2 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
        try:
            done = json.loads(side.read_text())["done"]
        except (OSError, ValueError):
            pass
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    assert not path.exists()
    done = json.loads(side.read_text())["done"]
    assert 2 <= done < 6
    real, calls = features.feature_rows, []
    monkeypatch.setattr(features, "feature_rows", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    build_file(stem, data.images, path, batch=4, progress=False)
    assert calls == list(range(8 * done, N, 8))
    want = compute_features(stem, data.images, batch=4, progress=False)
    assert np.array_equal(bits(np.load(path)), bits(want))


def _rss_file_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/self/status (Linux)")
def test_release_drops_a_memory_map_from_the_rss_and_get_releases(tmp_path, monkeypatch):
    path = tmp_path / "big.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(64, 2, 16, 32, 32))
    mm[:] = 1
    mm.flush()
    del mm
    mapped = features.feature_file.read(path)
    before = _rss_file_kib()
    assert float(mapped.astype(np.float32).sum()) == 64 * 2 * 16 * 32 * 32       # touches all 4 MiB
    assert _rss_file_kib() - before > 3 * 1024
    assert features.feature_file.release(mapped)
    assert _rss_file_kib() - before < 1024
    assert float(mapped[63, 1].astype(np.float32).sum()) == 16 * 32 * 32          # still readable
    assert not features.feature_file.release(np.zeros(3))                         # not a map: nothing
    calls = []
    monkeypatch.setattr(features.feature_file, "release", lambda a: calls.append(a is mapped))
    CachedInputs(mapped).get(np.array([1, 2]))
    assert calls == [True]


def test_training_and_evaluation_through_the_memory_map_equal_the_in_memory_cache(tmp_path, monkeypatch):
    """A MAS run on the default backbone gives the same weights, Ω and metrics, bit for bit, reading
    the cache memory-mapped as reading it whole into memory (what factmas did before issue 28)."""
    from factmas.config import RunConfig
    from factmas.trainer import train
    path = make_synthetic_dataset(tmp_path / "syn.h5", n_images=48, image_size=32, num_tasks=2)

    def cfg(out):
        return RunConfig.from_dict({"data": str(path), "out": str(out), "model": LITE,
                                    "train": {"split": "random2_seed0", "method": "mas", "epochs": 1,
                                              "batch_size": 16, "threads": 1},
                                    "eval": {"embed_batch": 16}})

    mapped = train(cfg(tmp_path / "mapped"), progress=False)
    real_read = features.feature_file.read
    kinds = []
    monkeypatch.setattr(features.feature_file, "read",
                        lambda p: kinds.append(1) or np.load(p, allow_pickle=False))   # whole, in memory
    whole = train(cfg(tmp_path / "whole"), progress=False)
    assert kinds and real_read is not features.feature_file.read
    a = torch.load(tmp_path / "mapped" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)
    for part in ("model", "method"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            if isinstance(a[part][k], torch.Tensor):
                assert torch.equal(a[part][k], b[part][k]), (part, k)
    strip = lambda row: {k: v for k, v in row["retrieval"].items() if k != "timing"}  # noqa: E731
    assert [strip(r) for r in mapped.history] == [strip(r) for r in whole.history]


def test_a_build_killed_between_its_last_chunk_and_the_rename_only_renames(tmp_path):
    path = tmp_path / "c.npy"
    with pytest.raises(RuntimeError):
        with PartialFile(path, "k", rows=3, chunk=2) as part:
            part.write(0, np.ones((2, 1), np.float16))
            part.write(2, np.full((1, 1), 2, np.float16))
            raise RuntimeError("killed before finish")
    assert not path.exists()
    with PartialFile(path, "k", rows=3, chunk=2) as part:
        assert part.start == 3 and not part.complete
        part.finish()
    assert np.array_equal(np.load(path)[:, 0], np.array([1, 1, 2], np.float16))
    assert [p.name for p in tmp_path.iterdir()] == ["c.npy"]


def test_a_redirected_build_logs_its_rate_and_a_resumed_one_says_where_it_starts(tmp_path, monkeypatch, capsys):
    import factmas.progress as progress
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    monkeypatch.setattr(features, "CHUNK_IMAGES", 8)
    stem = torch.nn.Conv2d(3, 2, 3, stride=4)
    images = np.random.default_rng(0).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "c.npy"
    real = features.feature_rows
    monkeypatch.setattr(features, "feature_rows",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError()) if a[2] >= 8 else real(*a, **k))
    with pytest.raises(RuntimeError):
        build_file(stem, images, path, batch=4, progress=True)
    capsys.readouterr()
    monkeypatch.setattr(features, "feature_rows", real)
    build_file(stem, images, path, batch=4, progress=True)
    lines = [x for x in capsys.readouterr().err.splitlines() if "feature cache" in x]
    assert len(lines) >= 2 and all("feature cache (from image 8)" in x and " img/s" in x for x in lines), lines
    assert "/24 img" in lines[-2]                  # the 12 images left, both orientations
    assert "feature cache (from image 8) done: 24 img in " in lines[-1], lines   # and its mean rate
    assert np.array_equal(bits(np.load(path)), bits(compute_features(stem, images, batch=4, progress=False)))


def test_memory_mapped_inputs_pickle_by_path_and_read_the_same_rows(data, stem, tmp_path):
    """For DataLoader workers started by spawn: the pickle names the file instead of holding the cache."""
    import pickle
    path = tmp_path / "c.npy"
    build_file(stem, data.images, path, progress=False)
    inputs = CachedInputs(features.feature_file.read(path))
    blob = pickle.dumps(inputs)
    assert len(blob) < 2000 < path.stat().st_size
    again = pickle.loads(blob)
    assert isinstance(again.features, np.memmap)
    ids, flip = np.array([4, 0, 42, 4]), np.array([True, False, False, False])
    assert torch.equal(again.get(ids, flip), inputs.get(ids, flip))
    whole = CachedInputs(np.load(path))                          # an in-memory cache pickles whole
    assert torch.equal(pickle.loads(pickle.dumps(whole)).get(ids, flip), inputs.get(ids, flip))

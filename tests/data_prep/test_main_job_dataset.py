"""scripts/main_job.sh's dataset step: an existing data/flickr8k.h5 is reused only when it has the
default (hash) image split; an older file (provenance without image_split: the seeded permutation)
is kept aside with its feature cache and rebuilt, saying so; an unreadable one stops the job (exit
2). The script runs in a copy of the repository layout with a stand-in environment: setup_env.sh
does nothing, the stand-in python runs data_prep.inspect for real, "builds" by copying a prepared
hash-split file, and stops the job at the feature cache (exit 3), after the dataset step."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_prep.build import BuildOptions, assemble
from factmas.data.dataset import read_dataset

REPO = Path(__file__).resolve().parents[2]

FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = -m ] && [ "$2" = data_prep.inspect ]; then
  PYTHONPATH="$REPO" exec "$REAL_PY" "$@"
elif [ "$1" = -m ] && [ "$2" = data_prep.flickr8k ]; then
  echo "$@" >> "$BUILT"
  while [ $# -gt 0 ]; do [ "$1" = --out ] && out="$2"; shift; done
  cp "$HASH_FILE" "$out"
else
  echo "stand-in python: stop at $*" >&2; exit 3
fi
"""


def _file(path: Path, image_split: str, drop_option: bool = False) -> Path:
    rng = np.random.default_rng(0)
    names = [f"{i}_{rng.integers(1e9)}.jpg" for i in range(80)]
    facts = [(f"s{j}", "", "") for j in range(6)]
    image_facts = [{facts[i % 6], facts[(i // 6) % 6]} for i in range(80)]
    assemble(path, rng.integers(0, 256, (80, 4, 4, 3), dtype=np.uint8), names, image_facts,
             BuildOptions(image_size=4, min_images=2, max_image_frac=1.0, semantic=False,
                          disjoint=False, image_split=image_split), {"builder": "test"}, [])
    if drop_option:                                     # as a file built before --image-split
        with h5py.File(path, "r+") as h:
            prov = json.loads(h.attrs["provenance"])
            del prov["options"]["image_split"]
            h.attrs["provenance"] = json.dumps(prov)
    return path


@pytest.fixture
def job(tmp_path):
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "main_job.sh", root / "scripts" / "main_job.sh")
    (root / "scripts" / "setup_env.sh").write_text("exit 0\n")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(FAKE_PYTHON)
    (venv / "bin" / "python").chmod(0o755)
    src = tmp_path / "flickr8k"
    (src / "images").mkdir(parents=True)
    (src / "captions.txt").write_text("image,caption\n")
    (root / "data").mkdir()
    env = {**os.environ, "FACTMAS_VENV": str(venv), "REAL_PY": sys.executable, "REPO": str(REPO),
           "BUILT": str(tmp_path / "built.txt"), "FACTMAS_OUT": str(tmp_path / "runs"),
           "HASH_FILE": str(_file(tmp_path / "hash_source.h5", "hash"))}

    def run():
        return subprocess.run(["bash", str(root / "scripts" / "main_job.sh"), str(src)], env=env,
                              capture_output=True, text=True, timeout=120)
    return root / "data" / "flickr8k.h5", tmp_path / "built.txt", run


def test_an_older_seed_split_file_is_kept_aside_and_rebuilt(job):
    h5, built, run = job
    _file(h5, "seed", drop_option=True)
    before = read_dataset(h5).image_split
    (Path(f"{h5}.features")).mkdir()
    (Path(f"{h5}.features") / "cache.npy").write_bytes(b"x")
    done = run()
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]   # stopped at the cache
    assert "has the 'seed' image split, not the default stable 'hash' split" in done.stdout
    aside = list(h5.parent.glob("flickr8k.seed-split-*.h5"))
    assert len(aside) == 1 and f"kept as {aside[0]}" in done.stdout
    assert np.array_equal(read_dataset(aside[0]).image_split, before)        # nothing lost
    assert (Path(f"{aside[0]}.features") / "cache.npy").read_bytes() == b"x"
    assert not Path(f"{h5}.features").exists()
    assert built.read_text().count("--out") == 1 and f"--out {h5}" in built.read_text()
    assert read_dataset(h5).provenance["options"]["image_split"] == "hash"
    assert "image split: hash" in done.stdout                                 # the inspect summary


def test_a_hash_split_file_is_reused(job):
    h5, built, run = job
    _file(h5, "hash")
    done = run()
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    assert "(image split: hash, the default): reusing it" in done.stdout
    assert not built.exists() and not list(h5.parent.glob("*-split-*"))


def test_an_unreadable_file_stops_the_job(job):
    h5, built, run = job
    h5.write_bytes(b"not hdf5")
    done = run()
    assert done.returncode == 2 and "cannot be read" in done.stderr and "Traceback" not in done.stderr
    assert h5.read_bytes() == b"not hdf5" and not built.exists()

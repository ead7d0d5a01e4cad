"""data_prep.word2vec: Sherlock's word vectors from the training images' captions only (issue 27)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gensim")
pytest.importorskip("lemminflect")

from data_prep import word2vec  # noqa: E402
from factmas.data.dataset import read_dataset  # noqa: E402
from factmas.data.synthetic import make_synthetic_dataset  # noqa: E402
from factmas.model.word_targets import load_word_vectors  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _captions(data, path, others="a {s} is there ."):
    """Two captions per image naming its facts' words; val/test images get ``others``."""
    d = read_dataset(data, load_images=False)
    lines = ["image,caption"]
    by_image = {}
    for i, f in d.pairs:
        by_image.setdefault(int(i), []).append(f)
    for i, name in enumerate(d.image_ids):
        spo = max(by_image[i], key=lambda f: bool(d.predicate[f]) + bool(d.object[f]))
        s, p, o = d.subject[spo], d.predicate[spo], d.object[spo]
        man = {"person": "men"}.get(s, s + "s")
        if d.image_split[i] == 0:
            lines += [f"{name},two {man} {p}ing a {o} near the {s} .".replace("ing a", " a"),
                      f"{name},a {s} {p} {o} ."]
        else:
            lines += [f"{name},{others.format(s=s)}"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("w2v") / "syn.h5", n_images=120,
                                  image_size=8, num_tasks=2)


def _run(data, captions, out, *extra):
    return word2vec.main(["--data", str(data), "--captions", str(captions), "--out", str(out),
                          "--dim", "12", "--epochs", "2", "-q", *extra])


def test_vectors_cover_the_vocabulary_and_ignore_val_and_test_captions(data, tmp_path, capsys):
    assert _run(data, _captions(data, tmp_path / "a.txt"), tmp_path / "a.npz") == 0
    wv = load_word_vectors(tmp_path / "a.npz")
    assert wv.words == read_dataset(data, load_images=False).vocab
    assert wv.vectors.shape == (len(wv.words), 12) and not wv.vectors[0].any()
    assert np.all(np.abs(wv.vectors[1:]).sum(1) > 0)
    assert wv.meta["images"] == "train" and wv.meta["dim"] == 12 and wv.meta["sha256"] == wv.sha256
    # other words in the val/test captions change nothing: only training captions are read
    other = _captions(data, tmp_path / "b.txt", others="zebra zebra {s} giraffe on a boat")
    assert _run(data, other, tmp_path / "b.npz") == 0
    assert np.array_equal(load_word_vectors(tmp_path / "b.npz").vectors, wv.vectors)
    assert "sha256" in capsys.readouterr().err
    # ... while a change in a training caption does
    text = (tmp_path / "a.txt").read_text().replace(" near the ", " beside the ", 1)
    (tmp_path / "c.txt").write_text(text)
    assert _run(data, tmp_path / "c.txt", tmp_path / "c.npz") == 0
    assert not np.array_equal(load_word_vectors(tmp_path / "c.npz").vectors, wv.vectors)


def test_same_seed_same_vectors():
    sentences = word2vec.corpus([f"a dog runs through the grass {i % 7} times" for i in range(60)] +
                                ["two men ride a horse on the beach"] * 30, word2vec.FactForms())
    a, b, c = (word2vec.train_vectors(sentences, dim=8, seed=s, epochs=2) for s in (0, 0, 1))
    assert np.array_equal(a.vectors, b.vectors) and a.index_to_key == b.index_to_key
    assert not np.array_equal(a.vectors, c.vectors)


@pytest.mark.slow
def test_same_seed_same_vectors_in_another_process(data, tmp_path):
    """Two processes with different string hashing (PYTHONHASHSEED) give identical vectors; another
    --seed gives others."""
    captions = _captions(data, tmp_path / "a.txt")
    outs = []
    for i, (hashseed, seed) in enumerate([("1", "0"), ("2", "0"), ("1", "1")]):
        out = tmp_path / f"v{i}.npz"
        env = {**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        r = subprocess.run([sys.executable, "-m", "data_prep.word2vec", "--data", str(data),
                            "--captions", str(captions), "--out", str(out), "--dim", "12",
                            "--epochs", "2", "--seed", seed, "-q"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        outs.append(load_word_vectors(out))
    assert np.array_equal(outs[0].vectors, outs[1].vectors) and outs[0].sha256 == outs[1].sha256
    assert not np.array_equal(outs[0].vectors, outs[2].vectors)
    # the command pinned OpenBLAS's kernel (it restarted itself with OPENBLAS_CORETYPE) where it can
    pinned = (sys.platform.startswith("linux") and "OPENBLAS_CORETYPE" not in os.environ
              and word2vec.pinned_blas_env({}, platform.machine(), word2vec.cpu_flags()) is not None)
    if pinned:
        assert outs[0].meta["blas"]["coretype_env"] == word2vec.BLAS_KERNEL
        assert outs[0].meta["blas"]["kernel"] == word2vec.BLAS_KERNEL


def test_blas_kernel_is_pinned_only_where_it_can_run_and_the_user_did_not_choose():
    flags = {"sse4_2", "avx", "avx2", "fma"}
    env = word2vec.pinned_blas_env({"PATH": "/bin"}, "x86_64", flags)
    assert env == {"PATH": "/bin", "OPENBLAS_CORETYPE": word2vec.BLAS_KERNEL}
    assert word2vec.pinned_blas_env({"OPENBLAS_CORETYPE": "Zen"}, "x86_64", flags) is None
    assert word2vec.pinned_blas_env({}, "aarch64", flags) is None
    assert word2vec.pinned_blas_env({}, "x86_64", {"sse4_2", "avx"}) is None      # no AVX2: would crash
    assert word2vec.pinned_blas_env({}, "x86_64", {"avx2"}) is None               # no FMA
    assert word2vec.pinned_blas_env({}, "AMD64", flags) is None                   # Windows: unpinned


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the restart is for Linux only")
def test_the_command_restarts_itself_as_it_was_started_with_the_kernel_pinned(monkeypatch):
    calls = []

    def execve(path, args, env):
        calls.append((path, args, env))
        raise SystemExit(0)

    monkeypatch.setattr(word2vec.os, "execve", execve)
    monkeypatch.setattr(word2vec.sys, "orig_argv", ["python3", "-X", "utf8", "-m", "data_prep.word2vec",
                                                    "--data", "d.h5", "--out", "v.npz"])
    monkeypatch.setattr(word2vec.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(word2vec, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    with pytest.raises(SystemExit):
        word2vec.restart_pinned()
    (path, args, env), = calls
    assert path == sys.executable and env["OPENBLAS_CORETYPE"] == word2vec.BLAS_KERNEL
    assert args == [sys.executable, "-X", "utf8", "-m", "data_prep.word2vec", "--data", "d.h5",
                    "--out", "v.npz"]
    # the restarted process (the variable set) and a CPU without AVX2 go on without a restart
    monkeypatch.setenv("OPENBLAS_CORETYPE", word2vec.BLAS_KERNEL)
    word2vec.restart_pinned()
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    monkeypatch.setattr(word2vec, "cpu_flags", lambda: {"avx"})
    word2vec.restart_pinned()
    assert len(calls) == 1


def test_cpu_flags_reads_the_first_flags_line(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 fma\n\nflags\t\t: other\n")
    assert word2vec.cpu_flags(str(f)) == {"fpu", "avx2", "fma"}
    assert word2vec.cpu_flags(str(tmp_path / "missing")) == set()


def test_the_blas_kernel_is_recorded(data, tmp_path):
    assert _run(data, _captions(data, tmp_path / "a.txt"), tmp_path / "a.npz") == 0
    blas = load_word_vectors(tmp_path / "a.npz").meta["blas"]       # scipy's wheels bundle OpenBLAS
    assert isinstance(blas["kernel"], str) and blas["kernel"] and "openblas" in blas["library"]
    assert blas["coretype_env"] == os.environ.get("OPENBLAS_CORETYPE")      # in-process: no restart


def test_fact_forms_and_corpus():
    forms = word2vec.FactForms()
    assert [forms(w) for w in ["men", "riding", "dogs", "glasses", "grass"]] == \
        ["person", "ride", "dog", "glasses", "grass"]
    assert word2vec.corpus(["Two men riding.", "  ", "a dog"], forms) == \
        [["two", "men", "riding"], ["two", "person", "ride"], ["a", "dog"]]
    assert word2vec.corpus(["A b"]) == [["a", "b"]]


def test_bad_inputs_exit_2_with_a_message(data, tmp_path, capsys):
    captions = _captions(data, tmp_path / "a.txt")
    # a fact word that no training caption holds
    text = captions.read_text().replace("horse", "pony")
    (tmp_path / "nohorse.txt").write_text(text)
    assert _run(data, tmp_path / "nohorse.txt", tmp_path / "x.npz") == 2
    assert "never occur in the training captions: ['horse']" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
    (tmp_path / "other.txt").write_text("image,caption\nnot_in_data.jpg,a dog\n")
    assert _run(data, tmp_path / "other.txt", tmp_path / "x.npz") == 2
    assert "none of the" in capsys.readouterr().err
    assert _run(data, captions, tmp_path / "y.npz") == 0
    assert _run(data, captions, tmp_path / "y.npz") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _run(tmp_path / "missing.h5", captions, tmp_path / "z.npz") == 2
    assert "missing.h5" in capsys.readouterr().err
    assert _run(data, captions, tmp_path / "z.npz", "--dim", "0") == 2

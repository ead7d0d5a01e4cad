"""Word2vec vectors of a dataset's fact words, learned on its TRAINING images' captions (issue 27).

    python -m data_prep.word2vec --data data/flickr8k.h5 --out data/flickr8k.w2v.npz
        [--captions FILE | $FACTMAS_FLICKR8K/captions.txt] [--dim 300] [--seed 0] [--epochs 5]
        [--window 5] [--overwrite] [-q]

Sherlock's fact targets (``model.fact_targets = "word2vec"``, ``factmas.model.word_targets``): the
vector of each word of the dataset's vocabulary, from gensim's ``Word2Vec`` (CBOW, Mikolov et al.
2013; the well-kept library, optional extra ``sherlock``) trained here on the captions of the
training images only (``image_split == 0``: val and test captions are never read), seeded, one
worker thread and a fixed string hash, so the same inputs and seed give the same vectors in any
process. Sherlock used the published GoogleNews vectors; these come from Flickr8k's own captions.

Corpus: each caption, lower-cased and split into words ``[a-z]+``, twice: as written, and with each
word replaced by its fact form (people words → ``person``, the verb lemma, else the noun lemma, as
``data_prep.mining`` names slots: "riding" → ride, "dogs" → dog), so that every fact word has
contexts. A vocabulary word without a vector is an error naming it.

Output: the ``.npz`` of ``factmas.model.word_targets`` (words = the dataset's vocabulary, vectors
float32 [V, dim], pad row zero, meta with the settings, gensim's version, the counts, the captions'
SHA-256, the BLAS kernel and the vectors' fingerprint ``sha256``), written atomically. Exit 0, or 2
on bad input.

One BLAS kernel on every Linux x86-64 CPU: gensim's training loop calls scipy's BLAS (``sdot``,
``saxpy``), and OpenBLAS picks its kernel by CPU; the vectors' bits differ between kernels (on one
AMD EPYC the kernels Haswell, Sandybridge, Nehalem and Prescott gave four different fingerprints,
and an Intel machine with its own default kernel had made a fifth from the same captions and
seed). The command therefore runs with ``OPENBLAS_CORETYPE=Haswell`` (``BLAS_KERNEL``) on Linux
x86-64 CPUs with AVX2 and FMA: it starts itself again with that variable set (``restart_pinned``),
unless it is set already (a user's own choice is kept). That one kernel gives one result is
expected (the same instructions in the same order), not yet checked on a second CPU model. The
kernel used is recorded in the meta (``blas``); other systems and BLAS builds run unpinned.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import platform
import re
import sys
import time
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from factmas.io import atomic_write_bytes

log = logging.getLogger(__name__)
WORD = re.compile(r"[a-z]+")


class Word2VecError(ValueError):
    """Bad input for the vectors (the message names the file or setting)."""


def stable_hash(text: str) -> int:
    """CRC-32 of ``text`` (UTF-8): gensim's ``hashfxn`` for the initial vectors. Python's ``hash`` of
    a string changes between processes (PYTHONHASHSEED), which made gensim's vectors unrepeatable."""
    return zlib.crc32(text.encode("utf-8"))


class FactForms:
    """word → its fact form (module docstring), memoized. Uses ``lemminflect`` (extra ``data``)."""

    def __init__(self) -> None:
        from .mining import PEOPLE, PLURALIA
        self.people, self.pluralia, self.memo = PEOPLE, PLURALIA, {}

    def __call__(self, word: str) -> str:
        if word not in self.memo:
            from lemminflect import getAllLemmas
            if word in self.people:
                form = "person"
            elif word in self.pluralia:
                form = word
            else:
                lemmas = getAllLemmas(word)
                form = (lemmas.get("VERB") or lemmas.get("NOUN") or (word,))[0]
            self.memo[word] = form
        return self.memo[word]


def corpus(captions: Iterable[str], forms: FactForms | None = None) -> list[list[str]]:
    """Sentences for Word2Vec: each caption's words ``[a-z]+`` (lower-cased), then, when ``forms``
    is given, the same words in fact form (only when that differs). Empty captions are skipped."""
    out = []
    for c in captions:
        words = WORD.findall(c.lower())
        if not words:
            continue
        out.append(words)
        if forms is not None:
            lemma = [forms(w) for w in words]
            if lemma != words:
                out.append(lemma)
    return out


def train_vectors(sentences: Sequence[Sequence[str]], dim: int = 300, seed: int = 0, epochs: int = 5,
                  window: int = 5):
    """gensim ``Word2Vec`` (CBOW, min_count 1, one worker, ``stable_hash``) on ``sentences``; returns
    its ``KeyedVectors``. Deterministic for the same sentences, settings and gensim version.

    Raises:
        Word2VecError: gensim is not installed (the message names the extra), or no sentences.
    """
    try:
        from gensim.models import Word2Vec
    except ImportError as e:
        raise Word2VecError("gensim is not installed: pip install 'factmas[sherlock]' "
                            "(gensim==4.4.0)") from e
    if not sentences:
        raise Word2VecError("no caption words to learn vectors from")
    model = Word2Vec(sentences=[list(s) for s in sentences], vector_size=dim, window=window,
                     min_count=1, workers=1, seed=seed, epochs=epochs, hashfxn=stable_hash)
    return model.wv


def vocab_vectors(wv, vocab: Sequence[str]) -> np.ndarray:
    """float32 [V, dim]: the vector of each ``vocab`` word (row 0, the pad, zeros).

    Raises:
        Word2VecError: a vocabulary word has no vector (names them).
    """
    missing = [w for w in vocab[1:] if w not in wv.key_to_index]
    if missing:
        raise Word2VecError(f"{len(missing)} fact word(s) never occur in the training captions: "
                            f"{missing[:20]}; these facts cannot have word2vec targets")
    out = np.zeros((len(vocab), wv.vector_size), dtype=np.float32)
    for i, w in enumerate(vocab[1:], start=1):
        out[i] = wv[w]
    return out


#: OpenBLAS kernel the vectors are trained with on x86-64 CPUs that have AVX2 and FMA (module docstring)
BLAS_KERNEL = "Haswell"


def pinned_blas_env(environ: dict[str, str], machine: str, cpu_flags: set[str]) -> dict[str, str] | None:
    """The environment to start the command again with, so that OpenBLAS uses ``BLAS_KERNEL``;
    None when no restart is needed: ``OPENBLAS_CORETYPE`` already set (the user's choice, or this
    command's restart), not an x86-64 ``machine`` (``platform.machine()`` on Linux), or a CPU without the
    kernel's instructions (``cpu_flags`` lacks avx2 or fma; forcing it would crash)."""
    if environ.get("OPENBLAS_CORETYPE") or machine != "x86_64":
        return None
    if not {"avx2", "fma"} <= cpu_flags:
        return None
    return {**environ, "OPENBLAS_CORETYPE": BLAS_KERNEL}


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``'s first ``flags`` line); empty elsewhere."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def blas_record() -> dict | None:
    """{"library", "kernel", "coretype_env"} of the OpenBLAS that scipy (gensim's BLAS) loaded, from
    threadpoolctl, with the ``OPENBLAS_CORETYPE`` it ran under (None: OpenBLAS's own choice); None
    when it cannot be told (another BLAS, or no threadpoolctl)."""
    try:
        import scipy.linalg.blas  # noqa: F401  (loads scipy's BLAS, as gensim does)
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    libs = [i for i in threadpool_info() if i.get("internal_api") == "openblas"]
    libs.sort(key=lambda i: "scipy.libs" not in str(i.get("filepath", "")))
    if not libs:
        return None
    return {"library": Path(str(libs[0].get("filepath", ""))).name, "kernel": libs[0].get("architecture"),
            "coretype_env": os.environ.get("OPENBLAS_CORETYPE")}


def build(args: argparse.Namespace) -> dict:
    """Run the command for parsed arguments; returns the meta written."""
    from factmas.data.dataset import read_dataset
    from factmas.model.word_targets import word_vectors_bytes
    from .flickr8k import ENV, read_captions, resolve_paths

    if args.dim < 1 or args.epochs < 1 or args.window < 1 or args.seed < 0:
        raise Word2VecError("need --dim, --epochs, --window >= 1 and --seed >= 0")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    captions_path = Path(args.captions) if args.captions else None
    if captions_path is None:
        try:
            captions_path = resolve_paths(None, None)[1]
        except ValueError:
            raise Word2VecError(f"no captions: give --captions FILE or set {ENV}") from None
    data = read_dataset(args.data, load_images=False)
    captions = read_captions(captions_path)
    train = [n for n, s in zip(data.image_ids, data.image_split) if s == 0]
    without = [n for n in train if n not in captions]
    if len(without) == len(train):
        raise Word2VecError(f"{captions_path}: none of the {len(train)} training images of {args.data} "
                            "has a caption; is it the dataset's captions file?")
    texts = [c for n in train for c in captions.get(n, [])]
    t0 = time.perf_counter()
    sentences = corpus(texts, FactForms())
    wv = train_vectors(sentences, args.dim, args.seed, args.epochs, args.window)
    seconds = time.perf_counter() - t0
    vectors = vocab_vectors(wv, data.vocab)
    import gensim
    meta = {"data": str(Path(args.data).resolve()), "captions": str(captions_path.resolve()),
            "captions_sha256": hashlib.sha256(captions_path.read_bytes()).hexdigest(),
            "images": "train", "training_images": len(train), "training_images_without_caption":
            len(without), "captions_used": len(texts), "sentences": len(sentences),
            "corpus_words": len(wv.key_to_index), "dim": args.dim, "seed": args.seed,
            "epochs": args.epochs, "window": args.window, "min_count": 1, "sg": 0, "workers": 1,
            "hashfxn": "zlib.crc32", "gensim": gensim.__version__, "seconds": round(seconds, 2),
            "blas": blas_record(), "builder": "data_prep.word2vec"}
    blob = word_vectors_bytes(data.vocab, vectors, meta)
    atomic_write_bytes(out, blob)
    from factmas.model.word_targets import fingerprint
    meta["sha256"] = fingerprint(data.vocab, vectors)
    return meta


def restart_pinned() -> None:
    """Start this command again, the same way it was started (``sys.orig_argv``: the interpreter's
    flags, ``-m data_prep.word2vec`` or the script path, the arguments), with ``pinned_blas_env``,
    when that is needed and possible: on Linux only (``/proc/cpuinfo`` tells the CPU's flags, and
    ``os.execve`` replaces the process). Returns when no restart is needed; otherwise never."""
    if not sys.platform.startswith("linux"):
        return
    env = pinned_blas_env(dict(os.environ), platform.machine(), cpu_flags())
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def main(argv: list[str] | None = None) -> int:
    """Command line entry; returns the exit status (0 ok, 2 bad input). Run as a command, the
    ``__main__`` block first calls ``restart_pinned``; a caller of ``main`` runs with its own BLAS."""
    p = argparse.ArgumentParser(prog="python -m data_prep.word2vec", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="the dataset .h5 (its vocabulary and image split)")
    p.add_argument("--captions", help="captions CSV 'image,caption' (default $FACTMAS_FLICKR8K/captions.txt)")
    p.add_argument("--out", required=True, help="output .npz (written atomically)")
    p.add_argument("--dim", type=int, default=300, help="vector size (300, as Sherlock's word2vec)")
    p.add_argument("--seed", type=int, default=0, help="gensim seed (0)")
    p.add_argument("--epochs", type=int, default=5, help="passes over the corpus (5, gensim's default)")
    p.add_argument("--window", type=int, default=5, help="context window (5, gensim's default)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("-q", "--quiet", action="store_true", help="no info logging")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("gensim").setLevel(logging.WARNING)      # its per-epoch progress lines
    try:
        meta = build(args)
    except (ValueError, OSError) as e:          # DatasetError, CaptionsError, Word2VecError, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {meta['dim']}-d vectors of the dataset's words from "
          f"{meta['captions_used']} training captions ({meta['training_images']} images) in "
          f"{meta['seconds']:.1f} s; OpenBLAS kernel {(meta['blas'] or {}).get('kernel', 'unknown')}; "
          f"sha256 {meta['sha256']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    restart_pinned()
    from factmas.errors import guarded_main
    sys.exit(guarded_main("data_prep.word2vec", main))

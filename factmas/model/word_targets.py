"""Sherlock's fixed fact targets: each slot of a fact is the mean of its words' word2vec vectors.

Sherlock (Elhoseiny et al., AAAI 2017, Sec. 4) and Lifelong Fact Learning (Elhoseiny et al., ACCV
2018; ``code/utils/sherlock_model_utils.py`` of their code) do not learn a fact branch: the image's
S, P and O outputs regress onto fixed word2vec vectors, one per slot (``model.fact_targets =
"word2vec"``). With W[w] the vector of word w (float32 [V, D], W[0] = 0 for the pad id):

    t_s(f) = (1 / n_s) Σ_{w ∈ slot s of f} W[w]     for s < order(f)     (a slot's words averaged)
    t_s(f) = 0                                       for s ≥ order(f)     (wildcard: no target)

``WordVectorTargets`` has the fact branch's interface (tokens, order → float32 [B, 3, D]) and no
parameters: the targets stay fixed during training, MAS/EWC/SI find nothing to protect on the fact
side and every change happens in the image branch. W is a buffer, saved in every checkpoint.

The vectors file (``.npz``, written by ``data_prep.word2vec``; read with ``allow_pickle=False``):
``words`` str [V] (the dataset's vocabulary, id order, ``<pad>`` first), ``vectors`` float32 [V, D],
``meta`` a JSON string (how they were trained). Its fingerprint (``fingerprint``) is the SHA-256 of
the words (UTF-8, one per line) and the vectors (little-endian float32, row-major).
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from factmas.space import NUM_SLOTS, slot_mask

FACT_TARGETS = ("learned", "word2vec")     # model.fact_targets
WORD_VECTORS_FORMAT = 1


@dataclass
class WordVectors:
    """Word vectors aligned with a dataset's vocabulary.

    Attributes:
        words: the V words, id order (``words[0]`` the pad).  vectors: float32 [V, D], row 0 zeros.
        meta: how they were made (JSON object).  sha256: ``fingerprint(words, vectors)``.
    """
    words: list[str]
    vectors: np.ndarray
    meta: dict = field(default_factory=dict)
    sha256: str = ""


def fingerprint(words: Sequence[str], vectors: np.ndarray) -> str:
    """SHA-256 (hex) of the words (UTF-8, each followed by a newline) then the vectors (float32,
    little-endian, C order)."""
    h = hashlib.sha256()
    h.update("".join(f"{w}\n" for w in words).encode("utf-8"))
    h.update(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
    return h.hexdigest()


def word_vectors_bytes(words: Sequence[str], vectors: np.ndarray, meta: dict) -> bytes:
    """The ``.npz`` file's bytes for ``words`` str [V], ``vectors`` float [V, D] and ``meta``.

    Raises:
        ValueError: shapes that disagree, a non-finite vector, or a pad row that is not zero.
    """
    import io as _io

    vec = np.asarray(vectors, dtype=np.float32)
    if vec.ndim != 2 or vec.shape[0] != len(words) or vec.shape[1] < 1:
        raise ValueError(f"word vectors: expected float [V, D] with V = {len(words)} words, got "
                         f"{vec.shape}")
    if not np.isfinite(vec).all() or (len(vec) and np.any(vec[0] != 0)):
        raise ValueError("word vectors: need finite values and a zero row 0 (the pad)")
    meta = {"format": WORD_VECTORS_FORMAT, **meta, "sha256": fingerprint(words, vec)}
    buf = _io.BytesIO()
    np.savez(buf, words=np.asarray(list(words), dtype=str), vectors=vec,
             meta=np.asarray(json.dumps(meta, sort_keys=True)))
    return buf.getvalue()


def load_word_vectors(path: str | Path) -> WordVectors:
    """Read a vectors file (module docstring), checking it.

    Raises:
        ValueError: the file is missing, not an ``.npz`` of this format, its arrays have the wrong
            dtype or shape, or its recorded fingerprint does not match its content (the message
            names the file and what to do).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model.word_vectors: {path}: no such file (make one with python -m "
                         "data_prep.word2vec --data DATA.h5 --out VECTORS.npz)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("words", "vectors", "meta") if k in z.files}
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:   # ValueError: not an .npz
        raise ValueError(f"model.word_vectors: {path}: not a readable .npz file of word vectors "
                         f"({str(e)[:120]})") from e
    missing = {"words", "vectors", "meta"} - set(arrays)
    if missing:
        raise ValueError(f"model.word_vectors: {path}: lacks {sorted(missing)}; expected a file "
                         "written by data_prep.word2vec")
    words, vectors, meta = arrays["words"], arrays["vectors"], str(arrays["meta"])
    try:
        meta = json.loads(meta)
    except json.JSONDecodeError as e:
        raise ValueError(f"model.word_vectors: {path}: meta is not JSON ({e})") from e
    if words.dtype.kind != "U" or words.ndim != 1 or vectors.dtype != np.float32 or vectors.ndim != 2 \
            or vectors.shape[0] != len(words):
        raise ValueError(f"model.word_vectors: {path}: expected words str [V] and vectors float32 "
                         f"[V, D], got {words.dtype} {words.shape} and {vectors.dtype} {vectors.shape}")
    words = [str(w) for w in words]
    sha = fingerprint(words, vectors)
    if meta.get("sha256") != sha:
        raise ValueError(f"model.word_vectors: {path}: content does not match its recorded "
                         "fingerprint (file changed or damaged); write it again with data_prep.word2vec")
    return WordVectors(words, vectors, meta, sha)


class WordVectorTargets(nn.Module):
    """Fixed fact targets t(f) of the module docstring, with the fact branch's interface.

    Args:
        vectors: float [V, D] word vectors by word id (row 0, the pad, is zero).
        sha256: their fingerprint, recorded in the run (``record``).

    ``embed_dim`` is D; the image branch must output [B, 3, D] (``model.embed_dim`` = D).
    Attribute ``check_inputs`` as ``FactBranch``'s.
    """

    def __init__(self, vectors: torch.Tensor | np.ndarray, sha256: str = "") -> None:
        super().__init__()
        vec = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
        if vec.ndim != 2 or vec.shape[0] < 2:
            raise ValueError(f"word vector targets: expected float [V >= 2, D], got {tuple(vec.shape)}")
        self.register_buffer("vectors", vec.clone())
        self.vocab_size, self.embed_dim = vec.shape
        self.sha256 = sha256
        self.check_inputs = True

    def record(self) -> dict:
        """What a run records about its targets: {"fact_targets", "word_vectors_sha256", "dim"}."""
        return {"fact_targets": "word2vec", "word_vectors_sha256": self.sha256, "dim": self.embed_dim}

    def forward(self, tokens: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Targets of facts.

        Args:
            tokens: int [B, 3, L] word ids (0 = pad) of the S, P, O slots.
            order: int [B] number of present slots (1, 2 or 3).
        Returns:
            float32 [B, 3, D]: the mean word vector of each present slot; zeros for absent slots.
            No gradient (a buffer).
        Raises:
            ValueError: bad shapes, an order outside 1..3, a word id outside the vocabulary, or a
                present slot without any word.
        """
        if tokens.ndim != 3 or tokens.shape[1] != NUM_SLOTS or order.shape != tokens.shape[:1]:
            raise ValueError(f"word vector targets: expected tokens [B, 3, L] and order [B], got "
                             f"{tuple(tokens.shape)} and {tuple(order.shape)}")
        tokens, order = tokens.long(), order.long()
        present = slot_mask(order)
        counts = (tokens != 0).sum(-1)
        if self.check_inputs:
            if len(order) and (int(order.min()) < 1 or int(order.max()) > NUM_SLOTS):
                raise ValueError(f"word vector targets: order must be in 1..3, got "
                                 f"{sorted(set(order.tolist()))}")
            if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
                raise ValueError(f"word vector targets: word ids must be in [0, {self.vocab_size}), "
                                 f"got [{int(tokens.min())}, {int(tokens.max())}]")
            if bool((present & (counts == 0)).any()):
                raise ValueError("word vector targets: a present slot (index < order) has no word")
        mean = self.vectors[tokens].sum(2) / counts.clamp_min(1).unsqueeze(-1).to(self.vectors.dtype)
        return torch.where(present.unsqueeze(-1), mean, torch.zeros((), dtype=mean.dtype,
                                                                    device=mean.device))


def build_word_targets(path: str | Path | None, vocab_size: int, embed_dim: int,
                       vocab: Sequence[str] | None = None) -> WordVectorTargets:
    """``WordVectorTargets`` from the vectors file ``path`` (``model.word_vectors``).

    Args:
        vocab_size: the dataset's number of word ids.  embed_dim: ``model.embed_dim``.
        vocab: the dataset's words, when known: they must be the file's words, in the same order.
    Raises:
        ValueError: no path, an unreadable file, another vocabulary (size or words), or a vector
            size other than ``embed_dim`` (the message says which key to set).
    """
    if not path:
        raise ValueError("model.fact_targets = 'word2vec' needs model.word_vectors, the file written "
                         "by python -m data_prep.word2vec --data DATA.h5 --out VECTORS.npz")
    wv = load_word_vectors(path)
    diff = ""
    if vocab is not None and list(vocab) != wv.words:
        i = next((i for i, (a, b) in enumerate(zip(vocab, wv.words)) if a != b),
                 min(len(vocab), len(wv.words)))
        diff = f"; word {i}: dataset {_at(vocab, i)!r}, file {_at(wv.words, i)!r}"
    if len(wv.words) != vocab_size or diff:
        raise ValueError(f"model.word_vectors: {path}: made for another vocabulary ({len(wv.words)} "
                         f"words, the dataset has {vocab_size}{diff}); run python -m "
                         "data_prep.word2vec on this dataset")
    d = wv.vectors.shape[1]
    if d != embed_dim:
        raise ValueError(f"model.embed_dim = {embed_dim}: with fact_targets 'word2vec' it must equal "
                         f"the word vectors' size {d} ({path}); set model.embed_dim to {d}")
    return WordVectorTargets(wv.vectors, wv.sha256)


def _at(words: Sequence[str], i: int) -> str | None:
    return words[i] if i < len(words) else None

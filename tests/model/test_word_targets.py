"""Sherlock's fixed fact targets (factmas.model.word_targets), their loss (factmas.space.loss) and a
training run with them (issue 27)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from factmas.config import LossConfig, ModelConfig, RunConfig
from factmas.config_check import validate_config
from factmas.config import ConfigError
from factmas.data.dataset import read_dataset
from factmas.data.synthetic import make_synthetic_dataset
from factmas.model import build_model
from factmas.model.word_targets import (WordVectorTargets, fingerprint, load_word_vectors,
                                        word_vectors_bytes)
from factmas.space.loss import fact_loss, pair_target_losses, target_regression_loss

TINY = {"backbone": "small_cnn", "width": 8, "word_dim": 16, "fact_hidden": 32, "norm_groups": 4}


def _random_facts(rng, b, vocab, length=4):
    order = torch.as_tensor(rng.integers(1, 4, b))
    tokens = torch.zeros(b, 3, length, dtype=torch.long)
    for i in range(b):
        for s in range(int(order[i])):
            n = int(rng.integers(1, length + 1))
            tokens[i, s, :n] = torch.as_tensor(rng.integers(1, vocab, n))
    return tokens, order


def test_targets_are_the_mean_word_vector_of_each_present_slot():
    rng = np.random.default_rng(0)
    vocab, d = 30, 7
    vec = rng.normal(size=(vocab, d)).astype(np.float32)
    vec[0] = 0
    t = WordVectorTargets(vec, "abc")
    tokens, order = _random_facts(rng, 25, vocab)
    out = t(tokens, order)
    assert out.shape == (25, 3, d) and out.dtype == torch.float32
    for i in range(25):                                              # hand loop
        for s in range(3):
            words = [int(w) for w in tokens[i, s] if w != 0]
            want = np.mean(vec[words], 0) if s < int(order[i]) else np.zeros(d)
            np.testing.assert_allclose(out[i, s].numpy(), want, rtol=1e-6, atol=1e-6)
    assert list(t.parameters()) == [] and "vectors" in t.state_dict()    # fixed, saved in checkpoints
    assert t.record() == {"fact_targets": "word2vec", "word_vectors_sha256": "abc", "dim": d}
    with pytest.raises(ValueError, match="order must be in 1..3"):
        t(tokens, torch.full_like(order, 4))
    with pytest.raises(ValueError, match="word ids"):
        t(tokens + vocab, order)
    empty = tokens.clone()
    empty[0, 0] = 0
    with pytest.raises(ValueError, match="has no word"):
        t(empty, order)


def test_sherlock_loss_matches_a_hand_loop():
    rng = np.random.default_rng(1)
    for _ in range(3):
        b, d = int(rng.integers(2, 20)), int(rng.integers(1, 9))
        phi = torch.as_tensor(rng.normal(size=(b, 3, d)))
        target = torch.as_tensor(rng.normal(size=(b, 3, d)))
        order = torch.as_tensor(rng.integers(1, 4, b))
        naive = []
        for i in range(b):
            total = 0.0
            for s in range(int(order[i])):
                total += sum((float(phi[i, s, k]) - float(target[i, s, k])) ** 2 for k in range(d))
            naive.append(total)
        np.testing.assert_allclose(pair_target_losses(phi, target, order).numpy(), naive, rtol=1e-10)
        assert abs(float(target_regression_loss(phi, target, order)) - np.mean(naive)) < 1e-10
        # fact_loss with kind "sherlock" is that loss, whatever the contrastive weights say
        cfg = LossConfig(kind="sherlock", contrastive_weight=5.0, fact_softmax_weight=3.0)
        positive = torch.eye(b, dtype=torch.bool)
        loss, parts = fact_loss(phi.float(), target.float(), order, positive, cfg)
        assert abs(float(loss) - np.mean(naive)) < 1e-4 * max(1.0, np.mean(naive))
        assert parts["regression"] == parts["loss"] and np.isfinite(parts["contrastive"])


def test_a_wildcard_slot_gives_no_gradient():
    rng = np.random.default_rng(2)
    b, d = 12, 5
    phi = torch.as_tensor(rng.normal(size=(b, 3, d)), dtype=torch.float32).requires_grad_(True)
    target = torch.as_tensor(rng.normal(size=(b, 3, d)), dtype=torch.float32)
    order = torch.as_tensor(rng.integers(1, 4, b))
    order[0], order[1], order[2] = 1, 2, 3
    loss, _ = fact_loss(phi, target, order, torch.eye(b, dtype=torch.bool), LossConfig(kind="sherlock"))
    loss.backward()
    absent = torch.arange(3)[None, :] >= order[:, None]
    assert absent.any() and (~absent).any()
    assert torch.all(phi.grad[absent] == 0)                          # exact zeros
    assert torch.all(phi.grad[~absent].abs().sum(-1) > 0)
    # and the loss does not see what an absent slot holds, of the output or of the target
    moved_phi, moved_target = phi.detach().clone(), target.clone()
    moved_phi[absent] += 100.0
    moved_target[absent] -= 50.0
    assert torch.equal(target_regression_loss(moved_phi, moved_target, order),
                       target_regression_loss(phi.detach(), target, order))


def _vectors_file(path, words, d, seed=0):
    vec = np.random.default_rng(seed).normal(size=(len(words), d)).astype(np.float32)
    vec[0] = 0
    path.write_bytes(word_vectors_bytes(words, vec, {"note": "test"}))
    return vec


def test_vectors_file_round_trip_and_its_errors(tmp_path):
    words = ["<pad>", "dog", "grass", "run"]
    vec = _vectors_file(tmp_path / "v.npz", words, 4)
    wv = load_word_vectors(tmp_path / "v.npz")
    assert wv.words == words and np.array_equal(wv.vectors, vec)
    assert wv.sha256 == fingerprint(words, vec) == wv.meta["sha256"] and wv.meta["note"] == "test"
    assert fingerprint(words, vec + np.float32(1e-6) * (np.arange(4)[:, None] > 0)) != wv.sha256
    # a changed file no longer matches its fingerprint
    with np.load(tmp_path / "v.npz") as z:
        arrays = dict(z)
    arrays["vectors"] = arrays["vectors"] * 2
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="fingerprint"):
        load_word_vectors(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="no such file"):
        load_word_vectors(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        load_word_vectors(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="zero row 0"):
        word_vectors_bytes(words, np.ones((4, 3)), {})
    # the model: the vocabulary and embed_dim must fit the file
    cfg = ModelConfig(**TINY, embed_dim=4, fact_targets="word2vec", word_vectors=str(tmp_path / "v.npz"))
    m = build_model(cfg, 4, words)
    assert isinstance(m.fact_branch, WordVectorTargets) and m.fact_branch.sha256 == wv.sha256
    with pytest.raises(ValueError, match="another vocabulary.*word 2: dataset 'cat', file 'grass'"):
        build_model(cfg, 4, ["<pad>", "dog", "cat", "run"])
    with pytest.raises(ValueError, match="another vocabulary"):
        build_model(cfg, 5)
    with pytest.raises(ValueError, match="set model.embed_dim to 4"):
        build_model(ModelConfig(**{**cfg.__dict__, "embed_dim": 8}), 4, words)


def test_learned_targets_keep_the_default_model_bit_for_bit():
    """fact_targets 'learned' (the default) builds the same initial weights as before the option."""
    from factmas.model.fact_branch import FactBranch
    from factmas.model.image_branch import build_image_branch
    cfg = ModelConfig(**TINY, embed_dim=16)
    torch.manual_seed(3)
    m = build_model(cfg, 12)
    torch.manual_seed(3)
    _, image = build_image_branch(cfg)
    fact = FactBranch(cfg, 12)
    for a, b in zip(list(m.image_branch.state_dict().values()) + list(m.fact_branch.state_dict().values()),
                    list(image.state_dict().values()) + list(fact.state_dict().values())):
        assert torch.equal(a, b)


def test_config_rules(tmp_path):
    def cfg(**kw):
        return RunConfig.from_dict({"model": kw.get("model", {}), "loss": kw.get("loss", {})})
    validate_config(cfg())
    with pytest.raises(ConfigError, match="needs model.fact_targets = 'word2vec'"):
        validate_config(cfg(loss={"kind": "sherlock"}))
    with pytest.raises(ConfigError, match="needs model.word_vectors"):
        validate_config(cfg(model={"fact_targets": "word2vec"}))
    with pytest.raises(ConfigError, match="model.fact_targets"):
        validate_config(cfg(model={"fact_targets": "glove"}))
    with pytest.raises(ConfigError, match="loss.kind"):
        validate_config(cfg(loss={"kind": "l1"}))


@pytest.mark.parametrize("method", ["mas", "lwf", "finetune"])
def test_a_run_with_word2vec_targets_trains_the_image_branch_only(tmp_path, method):
    from factmas.trainer import resume, train
    data = make_synthetic_dataset(tmp_path / "syn.h5", n_images=160, image_size=16, num_tasks=2)
    vocab = read_dataset(data, load_images=False).vocab
    _vectors_file(tmp_path / "v.npz", vocab, 16)
    cfg = RunConfig.from_dict({
        "data": str(data), "out": str(tmp_path / "run"),
        "model": {**TINY, "embed_dim": 16, "fact_targets": "word2vec",
                  "word_vectors": str(tmp_path / "v.npz")},
        "loss": {"kind": "sherlock"},
        "train": {"split": "random2_seed0", "method": method, "reg_lambda": 1.0, "epochs": 1,
                  "batch_size": 32, "threads": 1},
        "eval": {"enabled": True, "calibrate": False}})
    state = train(cfg, progress=False)
    h = state.history
    assert [r["label"] for r in h] == ["initial", "task0", "task1"]
    assert h[1]["val_loss"][0] < h[0]["val_loss"][0]                # task 1 was learned
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["fact_targets"]["word_vectors_sha256"] == load_word_vectors(tmp_path / "v.npz").sha256
    assert record["config"]["model"]["fact_targets"] == "word2vec"
    # resuming with other vectors is refused
    _vectors_file(tmp_path / "v.npz", vocab, 16, seed=1)
    from factmas.run.rundir import RunDirError
    with pytest.raises(RunDirError, match="word vectors"):
        resume(tmp_path / "run", progress=False)

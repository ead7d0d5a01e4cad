"""Evaluator metrics against a brute-force evaluation (torch wildcard distances, sklearn AP, loops)."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from torch import nn

from factmas.config import EvalConfig
from factmas.data.dataset import read_dataset
from factmas.evaluation.evaluator import METRICS, RECALL_METRICS, Evaluator
from factmas.model import preprocess
from factmas.space import wildcard_distance
from factmas.data.synthetic import make_synthetic_dataset

SPLIT = "random3_seed0"


class TinyModel(nn.Module):
    """A random stand-in for the two-branch model: raw [B, 3, d] from pixels and from word ids."""

    def __init__(self, vocab_size, d=6):
        super().__init__()
        self.img = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                 nn.Flatten(), nn.Linear(16, 3 * d))
        self.words = nn.Embedding(vocab_size, 3 * d, padding_idx=0)
        self.d = d

    def image_branch(self, x):
        return self.img(x).view(len(x), 3, self.d)

    def fact_branch(self, tokens, order):
        e = self.words(tokens).sum(2).view(len(tokens), 3, 3, self.d)    # [B, slot, 3, d]
        z = torch.stack([e[:, s, s] for s in range(3)], 1)
        return z * (torch.arange(3)[None, :] < order[:, None])[..., None]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = make_synthetic_dataset(tmp_path_factory.mktemp("d") / "s.h5", n_images=150, image_size=16,
                                  num_tasks=3, seed=int(np.random.default_rng().integers(1000)))
    data = read_dataset(path)
    torch.manual_seed(int(np.random.default_rng().integers(1 << 31)))
    return data, TinyModel(len(data.vocab)).eval()


def _brute_force(model, data, pool, k, flip):
    test = np.flatnonzero(data.image_split == 2)
    with torch.no_grad():
        x = preprocess(data.images[test])
        phi = model.image_branch(x)
        if flip:                                    # the mean with the mirror image's embedding
            phi = (phi + model.image_branch(torch.flip(x, dims=[3]))) / 2
        order = torch.as_tensor(data.order.astype(np.int64))
        psi = model.fact_branch(torch.as_tensor(data.tokens.astype(np.int64)), order)
    dist = wildcard_distance(phi, psi, order).numpy().astype(np.float64)     # [N, F]
    rel = np.zeros(dist.shape, bool)
    pos = {int(i): j for j, i in enumerate(test)}
    for i, f in data.pairs:
        if int(i) in pos:
            rel[pos[int(i)], f] = True
    task = data.splits[SPLIT]
    ap, apk = np.full(data.num_facts, np.nan), np.full(data.num_facts, np.nan)
    for f in range(data.num_facts):
        rows = np.arange(len(test)) if pool == "all" else np.flatnonzero(rel[:, task == task[f]].any(1))
        r, s = rel[rows, f], -dist[rows, f]
        if r.any():
            ap[f] = average_precision_score(r, s)
            ranked = r[np.argsort(-s, kind="stable")][:k]
            prec = np.cumsum(ranked) / np.arange(1, len(ranked) + 1)
            apk[f] = (prec * ranked).sum() / min(k, r.sum())
    out = {m: {} for m in METRICS + RECALL_METRICS}
    f_hits = {k: np.full(data.num_facts, np.nan) for k in (1, 5, 10)}     # R@K: first true image
    for f in range(data.num_facts):                                      # within the top K
        rows = np.arange(len(test)) if pool == "all" else np.flatnonzero(rel[:, task == task[f]].any(1))
        r = rel[rows, f]
        if r.any():
            ranked = r[np.argsort(dist[rows, f], kind="stable")]
            for kk in f_hits:
                f_hits[kk][f] = float(np.argmax(ranked) < kk)
    for key in [0, 1, 2, "all"]:
        facts = np.arange(data.num_facts) if key == "all" else np.flatnonzero(task == key)
        out["fact_to_image_map"][key] = np.nanmean(ap[facts])
        out["fact_to_image_map_at_k"][key] = np.nanmean(apk[facts])
        for kk in (1, 5, 10):
            out[f"fact_to_image_recall_at_{kk}"][key] = np.nanmean(f_hits[kk][facts])
        t1, t5, aps, first = [], [], [], []
        for n in range(len(test)):
            r = rel[n, facts]
            if not r.any():
                continue
            ranked = r[np.argsort(dist[n, facts], kind="stable")]
            t1.append(ranked[:1].any())
            t5.append(ranked[:5].any())
            first.append(np.argmax(ranked))                 # 0-based rank of the first true fact
            aps.append(average_precision_score(r, -dist[n, facts]))
        out["image_to_fact_top1"][key] = np.mean(t1)
        out["image_to_fact_top5"][key] = np.mean(t5)
        out["image_to_fact_map"][key] = np.mean(aps)
        for kk in (1, 5, 10):
            out[f"image_to_fact_recall_at_{kk}"][key] = np.mean(np.array(first) < kk)
    return out


@pytest.mark.parametrize("pool,k,flip", [("all", 100, True), ("task", 4, True), ("all", 100, False)])
def test_evaluator_equals_brute_force(setup, pool, k, flip):
    data, model = setup
    got = Evaluator(data, SPLIT, EvalConfig(image_pool=pool, ap_k=k, search_batch=7, embed_batch=16,
                                            flip_average=flip)).evaluate(model)
    ref = _brute_force(model, data, pool, k, flip)
    for m in METRICS + RECALL_METRICS:
        for key in [0, 1, 2, "all"]:
            assert got[m][key] == pytest.approx(ref[m][key], rel=1e-5), (m, key)
    assert got["image_to_fact_recall_at_1"] == got["image_to_fact_top1"]      # the same definition
    assert got["image_to_fact_recall_at_5"] == got["image_to_fact_top5"]
    r = [got[f"fact_to_image_recall_at_{k}"]["all"] for k in (1, 5, 10)]
    assert 0 <= r[0] <= r[1] <= r[2] and r[2] > 0                # not all misses (a random model)
    assert set(got["timing"]) == {"embed_s", "search_s", "metrics_s"}
    assert got["counts"]["facts"]["all"] == sum(got["counts"]["facts"][t] for t in range(3))


def test_evaluator_bad_config(setup):
    data, _ = setup
    with pytest.raises(ValueError, match="image_pool"):
        Evaluator(data, SPLIT, EvalConfig(image_pool="some"))
    with pytest.raises(ValueError, match="unknown split"):
        Evaluator(data, "nope", EvalConfig())

"""The training loss: Sherlock's wildcard regression plus a contrastive term over the batch.

Notation: a batch of B aligned image–fact pairs (x_i, f_i); φ(x), ψ(f) raw float [B, 3, d]; hats are
per-slot L2-normalized (``factmas.space.normalize_slots``); o_i ∈ {1, 2, 3} the order of f_i; slot s
of f is present when s < o_f. D is the wildcard distance of ``factmas.space``:

    D(x, f) = (1 / o_f) Σ_{s < o_f} ‖φ̂_s(x) − ψ̂_s(f)‖²                                   ∈ [0, 4]

Regression (Sherlock's wildcard loss, Elhoseiny et al., AAAI 2017, Sec. 4, Eq. 2: the ℓ2 loss between
image and fact embeddings summed over the slots the fact has; absent P, O are wildcards that add no loss
and no gradient), on normalized slots:

    L_reg = (1 / B) Σ_i Σ_{s < o_i} ‖φ̂_s(x_i) − ψ̂_s(f_i)‖²  =  (1 / B) Σ_i o_i · D(x_i, f_i)

Both branches learn, so L_reg alone has trivial minima (every φ̂_s and ψ̂_s the same unit vector gives
L_reg = 0). The contrastive term pushes each pair apart from the other pairs of the batch (Sherlock's
code adds a weighted contrastive loss for the same reason). It is the symmetric InfoNCE loss
(van den Oord et al., 2018, Eq. 4; both directions as in CLIP, Radford et al., ICML 2021) on the logits

    ℓ_ij = −D(x_i, f_j) / τ,

where fact j counts as a negative of image i only if it is not true for image i (``positive[i, j]``
False); the false negatives (facts true for the image, other than its own pair) are left out of both
denominators. With A_ij = [i = j or not positive[i, j]]:

    L_i→f = (1 / B) Σ_i [ −ℓ_ii + log Σ_{j: A_ij} exp ℓ_ij ]          (image → facts)
    L_f→i = (1 / B) Σ_j [ −ℓ_jj + log Σ_{i: A_ij} exp ℓ_ij ]          (fact → images)
    L_con = (L_i→f + L_f→i) / 2

    L = regression_weight · L_reg + contrastive_weight · L_con + fact_softmax_weight · L_all

In-batch negatives are drawn in proportion to how often a fact occurs, so L_i→f alone learns how much
*more* likely a fact is given the image than overall (the pointwise mutual information of InfoNCE,
van den Oord et al. 2018, Eq. 5), not which facts are likely: ranking all facts for an image it
lands at the level of a ranking by frequency. L_all ranks each image against *every* candidate fact
of the task being learned (C facts; the candidates given to ``fact_loss``), false negatives excluded
as above (A'_ic = [c = c_i or fact c not true for image i], c_i the pair's own fact):
    L_all = (1 / B) Σ_i [ −ℓ(x_i, c_i) + log Σ_{c: A'_ic} exp ℓ(x_i, c) ],   ℓ(x, c) = −D(x, c) / τ
— the softmax over the fact vocabulary of a classifier, with the fact branch's embeddings as class
weights. Its cost is one fact-branch pass over the C candidates per step.

Two optional terms on the same [B, C] distances (weights 0 by default; ``sigmoid_facts_loss`` and
``all_images_loss`` give their formulas): L_sig, a balanced sigmoid loss asking every image to hold
its true facts inside distance m and the other candidates outside (one threshold for all images,
the comparison fact→image retrieval makes), and L_img, each candidate fact against the batch's images
(the fact→image counterpart of L_all):
    L = ... + sigmoid_weight · L_sig + image_softmax_weight · L_img

Sherlock's fixed targets (``LossConfig.kind = "sherlock"``, with ``model.fact_targets = "word2vec"``):
ψ(f) = t(f) is fixed (the mean word2vec vector of each slot), and the loss is Sherlock's Euclidean
regression on the raw outputs, wildcard slots masked (``target_regression_loss``):
    L_sherlock = (1 / B) Σ_i Σ_{s < o_i} ‖φ_s(x_i) − t_s(f_i)‖²
Fixed targets cannot collapse, so no contrastive term is needed; retrieval still ranks by D.

At a collapsed embedding every ℓ_ij = 0, so L_con = mean log |{j: A_ij}| (log B without false
negatives), above the value of any embedding that separates the pairs: collapse is not a minimum of L
(it is a stationary point, all cosines at their maximum, that gradient descent leaves from any small
perturbation; tests/test_loss.py shows both).
"""
from __future__ import annotations

import torch

from factmas.config import LossConfig
from factmas.space import paired_wildcard_distance, slot_mask, wildcard_distance


def pair_regression_losses(phi: torch.Tensor, psi: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The summands of L_reg, o_i · D(x_i, f_i) = Σ_{s < o_i} ‖φ̂_s(x_i) − ψ̂_s(f_i)‖², one per pair:
    phi, psi float [B, 3, d] raw, order int [B] → float [B] (samples independent; EWC's per-pair
    loss, ``factmas.methods.ewc``)."""
    return order.to(phi.dtype) * paired_wildcard_distance(phi, psi, order)


def regression_loss(phi: torch.Tensor, psi: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """L_reg of the module docstring: phi, psi float [B, 3, d] raw, order int [B] → float scalar,
    the mean of ``pair_regression_losses``.

    Absent slots (s ≥ order) contribute neither loss nor gradient.
    """
    return pair_regression_losses(phi, psi, order).mean()


def contrastive_loss(distance: torch.Tensor, positive: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_con of the module docstring (symmetric InfoNCE with false negatives excluded).

    Args:
        distance: float [B, B], D(x_i, f_j) (row: image of pair i, column: fact of pair j).
        positive: bool [B, B], positive[i, j] = fact j is true for image i; the diagonal is always
            treated as True.
        temperature: τ > 0.
    Returns:
        float scalar.
    """
    b = distance.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=distance.device)
    allowed = ~positive | eye                                               # A_ij
    logits = (-distance / temperature).masked_fill(~allowed, float("-inf"))
    diag = logits.diagonal()
    i2f = torch.logsumexp(logits, dim=1) - diag
    f2i = torch.logsumexp(logits, dim=0) - diag
    return 0.5 * (i2f.mean() + f2i.mean())


def all_facts_loss(distance: torch.Tensor, own: torch.Tensor, positive: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """L_all of the module docstring.

    Args:
        distance: float [B, C], D(x_i, candidate c).  own: int [B], the column of pair i's own fact.
        positive: bool [B, C], candidate c is true for image i (other true facts are left out).
        temperature: τ > 0.
    Returns:
        float scalar.
    """
    rows = torch.arange(distance.shape[0], device=distance.device)
    allowed = ~positive
    allowed[rows, own] = True
    logits = (-distance / temperature).masked_fill(~allowed, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - logits[rows, own]).mean()


def _with_own(positive: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """bool [B, C]: ``positive`` with each row's own fact (column ``own[i]``) set True (a copy)."""
    pos = positive.clone()
    pos[torch.arange(positive.shape[0], device=positive.device), own] = True
    return pos


def sigmoid_facts_loss(distance: torch.Tensor, own: torch.Tensor, positive: torch.Tensor,
                       margin: float, temperature: float) -> torch.Tensor:
    """L_sig of the module docstring: balanced binary cross-entropy of every (image, candidate fact).

    With z_ic = (m − D(x_i, c)) / τ and P_i the candidates true for image i (its own fact included),
    N_i the others (sigmoid loss of SigLIP, Zhai et al., ICCV 2023, Eq. 1, here with a fixed margin m
    in place of the learned bias and each row's positives and negatives averaged separately):
        L_sig = (1 / B) Σ_i [ mean_{c ∈ P_i} log(1 + e^{−z_ic}) + mean_{c ∈ N_i} log(1 + e^{z_ic}) ]
    Unlike the softmaxes, it asks every image to place its true facts inside distance m and the
    others outside, one threshold for all images: the comparison fact→image retrieval makes.

    Args:
        distance: float [B, C], D(x_i, candidate c) ∈ [0, 4].  own: int [B], pair i's own fact column.
        positive: bool [B, C], candidate c is true for image i.  margin: m.  temperature: τ > 0.
    Returns:
        float scalar (a row without negatives adds only its positive term).
    """
    pos = _with_own(positive, own)
    z = (margin - distance) / temperature
    p = pos.to(z.dtype)
    n = 1.0 - p
    lp = (torch.nn.functional.softplus(-z) * p).sum(1) / p.sum(1).clamp_min(1.0)
    ln = (torch.nn.functional.softplus(z) * n).sum(1) / n.sum(1).clamp_min(1.0)
    return (lp + ln).mean()


def all_images_loss(distance: torch.Tensor, own: torch.Tensor, positive: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """L_img of the module docstring: each candidate fact against the batch's images.

    With ℓ_ic = −D(x_i, c) / τ and P_c the batch images for which fact c is true (pair i's own fact
    counts for image i), over the C' candidates with P_c non-empty (the multi-positive L_in of
    Khosla et al., NeurIPS 2020, Eq. 3, up to its constant log |P_c|):
        L_img = (1 / C') Σ_{c: P_c ≠ ∅} [ log Σ_i exp ℓ_ic − log Σ_{i ∈ P_c} exp ℓ_ic ]

    Args: as ``sigmoid_facts_loss`` (no margin).  Returns: float scalar.
    """
    pos = _with_own(positive, own)
    logits = -distance / temperature
    has = pos.any(0)
    lse_all = torch.logsumexp(logits, dim=0)
    lse_pos = torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=0)
    return (lse_all - lse_pos)[has].mean()


def pair_target_losses(phi: torch.Tensor, target: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Sherlock's wildcard Euclidean loss per pair (Elhoseiny et al., AAAI 2017, Sec. 4, Eq. 2, with
    the wildcard masks of the released code, LFL ``code/utils/sherlock_model_utils.py``), on the
    *raw* outputs against fixed targets:

        ℓ_i = Σ_{s < o_i} ‖φ_s(x_i) − t_s(f_i)‖²

    Args:
        phi: float [B, 3, d] raw image outputs.  target: float [B, 3, d] the facts' fixed targets
            (``factmas.model.word_targets``; absent slots are ignored whatever they hold).
        order: int [B] fact orders 1..3.
    Returns:
        float [B]; absent slots (s ≥ o_i) add neither loss nor gradient.
    """
    mask = slot_mask(order).to(phi.dtype)                                   # [B, 3]
    diff = phi - target.to(phi.dtype)
    return (diff.pow(2).sum(-1) * mask).sum(-1)


def target_regression_loss(phi: torch.Tensor, target: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """L_sherlock = (1 / B) Σ_i ℓ_i, the mean of ``pair_target_losses``: float scalar."""
    return pair_target_losses(phi, target, order).mean()


def uses_candidates(cfg: LossConfig) -> bool:
    """Whether a term of ``cfg`` scores images against all of the task's facts (L_all, L_sig, L_img):
    the trainer then passes ``candidates`` to ``fact_loss``. Never for ``kind = "sherlock"``."""
    if cfg.kind == "sherlock":
        return False
    return cfg.fact_softmax_weight > 0 or cfg.sigmoid_weight > 0 or cfg.image_softmax_weight > 0


def fact_loss(phi: torch.Tensor, psi: torch.Tensor, order: torch.Tensor, positive: torch.Tensor,
              cfg: LossConfig, candidates: dict | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The task loss L = w_reg · L_reg + w_con · L_con (+ the candidate terms L_all, L_sig, L_img
    whose weights are > 0) on a batch of aligned pairs; with ``cfg.kind == "sherlock"``,
    L_sherlock of ``target_regression_loss`` (ψ: the fixed targets) instead.

    Args:
        phi: float [B, 3, d] raw image embeddings (image of pair i in row i).
        psi: float [B, 3, d] raw fact embeddings (fact of pair i in row i).
        order: int [B] order (1..3) of each fact.
        positive: bool [B, B], positive[i, j] = fact j is true for image i (diagonal True).
        cfg: ``regression_weight``, ``contrastive_weight``, ``fact_softmax_weight``, ``temperature`` τ.
        candidates: for L_all, L_sig and L_img (used when ``uses_candidates(cfg)``):
            {"psi": float [C, 3, d] raw embeddings of the task's facts, "order": int [C], "own":
            int [B] column of each pair's fact, "positive": bool [B, C]}; None: those terms are
            left out.
    Returns:
        (loss float scalar with gradient, parts) where parts holds floats ``loss``, ``regression``
        (L_reg), ``contrastive`` (L_con), ``pos_distance`` (mean D over the pairs) and
        ``neg_distance`` (mean D over the true negatives, nan when there is none).
    Raises:
        ValueError: mismatched shapes, a non-boolean ``positive``, τ ≤ 0 or an unknown ``kind``.
    """
    b = phi.shape[0]
    if phi.ndim != 3 or psi.shape != phi.shape or order.shape != (b,) or positive.shape != (b, b):
        raise ValueError(f"fact_loss: expected phi, psi [B, 3, d], order [B], positive [B, B]; got "
                         f"{tuple(phi.shape)}, {tuple(psi.shape)}, {tuple(order.shape)}, "
                         f"{tuple(positive.shape)}")
    if positive.dtype != torch.bool:
        raise ValueError(f"fact_loss: positive must be bool, got {positive.dtype}")
    if cfg.temperature <= 0:
        raise ValueError(f"loss.temperature must be > 0, got {cfg.temperature}")
    if cfg.kind == "sherlock":
        return _sherlock_loss(phi, psi, order, positive, cfg)
    if cfg.kind != "contrastive":
        raise ValueError(f"loss.kind: {cfg.kind!r}; valid: ['contrastive', 'sherlock']")
    dist = wildcard_distance(phi, psi, order)                               # [B, B]
    reg = regression_loss(phi, psi, order)
    con = contrastive_loss(dist, positive, cfg.temperature)
    loss = cfg.regression_weight * reg + cfg.contrastive_weight * con
    every = None
    sig = img = None
    if candidates is not None and uses_candidates(cfg):
        d_all = wildcard_distance(phi, candidates["psi"], candidates["order"])
        own, cpos = candidates["own"], candidates["positive"]
        if cfg.fact_softmax_weight > 0:
            every = all_facts_loss(d_all, own, cpos, cfg.temperature)
            loss = loss + cfg.fact_softmax_weight * every
        if cfg.sigmoid_weight > 0:
            sig = sigmoid_facts_loss(d_all, own, cpos, cfg.sigmoid_margin, cfg.temperature)
            loss = loss + cfg.sigmoid_weight * sig
        if cfg.image_softmax_weight > 0:
            img = all_images_loss(d_all, own, cpos, cfg.temperature)
            loss = loss + cfg.image_softmax_weight * img
    with torch.no_grad():
        neg = ~positive & ~torch.eye(b, dtype=torch.bool, device=dist.device)
        parts = {"loss": float(loss), "regression": float(reg), "contrastive": float(con),
                 "all_facts": float(every) if every is not None else float("nan"),
                 **({"sigmoid": float(sig)} if sig is not None else {}),
                 **({"all_images": float(img)} if img is not None else {}),
                 "pos_distance": float(dist.diagonal().mean()),
                 "neg_distance": float(dist[neg].mean()) if bool(neg.any()) else float("nan")}
    return loss, parts


def _sherlock_loss(phi: torch.Tensor, target: torch.Tensor, order: torch.Tensor, positive: torch.Tensor,
                   cfg: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """``fact_loss`` for ``kind = "sherlock"``: (L_sherlock, parts). The parts are ``fact_loss``'s:
    ``regression`` is L_sherlock; ``contrastive`` (L_con at τ, not trained on), ``pos_distance`` and
    ``neg_distance`` on the wildcard distance D are logged to compare with the contrastive runs."""
    loss = target_regression_loss(phi, target, order)
    b = phi.shape[0]
    with torch.no_grad():
        dist = wildcard_distance(phi, target, order)
        neg = ~positive & ~torch.eye(b, dtype=torch.bool, device=dist.device)
        parts = {"loss": float(loss), "regression": float(loss),
                 "contrastive": float(contrastive_loss(dist, positive, cfg.temperature)),
                 "all_facts": float("nan"),
                 "pos_distance": float(dist.diagonal().mean()),
                 "neg_distance": float(dist[neg].mean()) if bool(neg.any()) else float("nan")}
    return loss, parts

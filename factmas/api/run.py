"""``Run``: a finished (or partly trained) run directory, opened from Python.

``load_run(path)`` reads ``config.json`` at once (so a folder that is not a run is refused there, with
the message ``factmas query``/``evaluate`` give) and loads the dataset and the model's weights only
when a method needs them (``factmas.run.load.load_run``: ``torch.load(..., weights_only=True)``).
A ``Run`` never writes into its folder: ``evaluate`` returns the report, ``query``/``search``/``embed_*``
return values (a folder search saves its photo index inside the photo folder, as ``factmas search``).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from factmas.api.records import Answer, CheckpointMetrics, Embeddings, Hit, Results

if TYPE_CHECKING:
    import numpy as np
    import torch

    from factmas.config import RunConfig
    from factmas.data.dataset import FactData


class Run:
    """One run directory of ``factmas train`` (see ``factmas.run.rundir`` for its files).

    Args:
        path: the run directory.  data: a dataset file to use instead of the one in config.json
            (the facts and vocabulary come from the dataset).  checkpoint: the weights ``query``,
            ``search`` and ``embed_*`` use: "last.pt" (default), "task2", or a file.
        device: "auto" (CUDA when present), "cpu" or "cuda".
    Raises:
        RunLoadError: no config.json ("PATH: no config.json; is this a factmas run directory?"), or
            an invalid one (names the file and key).
    """

    def __init__(self, path: str | Path, *, data: str | Path | None = None,
                 checkpoint: str | None = None, device: str = "auto") -> None:
        from factmas.config import ConfigError
        from factmas.run.load import RunLoadError
        from factmas.run.rundir import RunDir, RunDirError
        self.path = Path(path)
        self.data_path = None if data is None else str(data)
        self.checkpoint = checkpoint or "last.pt"
        self.device = device
        try:
            self._config, self.record = RunDir(self.path).read_config()
        except (RunDirError, ConfigError) as e:
            raise RunLoadError(str(e)) from e
        self._loaded: tuple | None = None          # (cfg, FactData, model), images or not
        self._with_images = False
        self.state: Any = None                      # the trainer's RunState after train / resume

    def __repr__(self) -> str:
        c = self._config.train
        return (f"Run({str(self.path)!r}: method {c.method}, λ {c.reg_lambda:g}, split {c.split}, "
                f"seed {c.seed})")

    # ---- what the folder says ----------------------------------------------------------------
    @property
    def config(self) -> RunConfig:
        """The run's ``RunConfig`` (config.json; a copy is not made: treat it as read-only)."""
        return self._config

    @property
    def results(self) -> Results:
        """The run's own report (RUN_DIR/results.json) as arrays (``Results``).

        Raises:
            ValueError: no results.json (a run still training, or trained with evaluation off) or
                not a factmas results file; the message names the file.
        """
        from factmas.evaluation.report import read_results
        return Results.from_dict(read_results(self.path))

    @property
    def completed_tasks(self) -> list[int]:
        """The tasks trained so far (the trainer's state after ``train``/``resume``; otherwise read
        from the latest checkpoint)."""
        if self.state is not None:
            return list(self.state.completed_tasks)
        from factmas.run.checkpoint import load_checkpoint
        from factmas.run.rundir import RunDir
        last = RunDir(self.path).latest_checkpoint()
        return [] if last is None else list(load_checkpoint(last, map_location="cpu").get("completed_tasks", []))

    # ---- the loaded parts ----------------------------------------------------------------------
    def _parts(self, images: bool = False) -> tuple:
        """(cfg, FactData, model in eval mode), loaded once (again with pixels when ``images``)."""
        from factmas.run.load import load_run as _load
        if self._loaded is None or (images and not self._with_images):
            self._loaded = _load(self.path, self.data_path, self.checkpoint, self.device,
                                 load_images=images)[:3]
            self._with_images = images
        return self._loaded

    @property
    def model(self) -> torch.nn.Module:
        """The ``TwoBranchModel`` with the weights of ``checkpoint``, in eval mode (loaded on first
        use). Raises RunLoadError."""
        return self._parts()[2]

    @property
    def dataset(self) -> FactData:
        """The run's dataset (``FactData``; pixels loaded once a method needs them). Raises RunLoadError."""
        return self._parts()[1]

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self, data: str | Path | None = None, image_split: str | None = "test", *,
                 image_pool: str | None = None, stages: Sequence[int] | str | None = None,
                 progress: bool = False, other_data: bool = False) -> Results:
        """Measure the initial model and every stage checkpoint again; writes nothing into the run.

        Args:
            data: another dataset file of the same facts (default: the run's).
            image_split: the images evaluated, "test" or "val" (None: the run's ``eval.image_split``).
            image_pool: "all" or "task" (None: the run's ``eval.image_pool``).
            stages: evaluate only these stages (default: all, which must all have checkpoints).
            other_data: ``data`` is a dataset other than the run's on purpose (refused otherwise;
                its fingerprint is recorded in the results' "evaluated").
        Returns:
            ``Results`` (R matrices as arrays; ``Results.write(folder)`` saves the report).
        Raises:
            RunLoadError, CheckpointError: the run, a checkpoint or the dataset cannot be used.
            EvaluateError: stage checkpoints missing or bad ``stages``.  ValueError: bad settings.
        Source: ``factmas.evaluation.evaluator`` (retrieval metrics), ``factmas.evaluation.report``.
        """
        from factmas.api.evaluate import evaluate_run
        return evaluate_run(self.path, str(data) if data else self.data_path, image_split, image_pool,
                            stages, self.device, progress, other_data)

    def evaluate_checkpoint(self, checkpoint: str | None = None, data: str | Path | None = None,
                            image_split: str | None = "test", *, image_pool: str | None = None,
                            progress: bool = False, other_data: bool = False) -> CheckpointMetrics:
        """Every metric of one checkpoint (default: the run's ``checkpoint``); writes nothing.
        ``other_data`` as in ``evaluate``. Raises RunLoadError, RunDirError, ValueError."""
        from factmas.api.evaluate import evaluate_checkpoint
        return evaluate_checkpoint(self.path, checkpoint or self.checkpoint,
                                   str(data) if data else self.data_path, image_split, image_pool,
                                   self.device, progress, other_data)

    # ---- image → fact, fact → image --------------------------------------------------------------
    def calibrator(self, path: str | Path | None = None) -> tuple[Any, str | None]:
        """The run's calibrator of P(fact true | D) for the loaded weights, and why there is none.

        Args:
            path: a calibration file; None: RUN_DIR/calibration.json (``factmas calibrate``, or
                written by training after the last task).
        Returns:
            (``factmas.evaluation.calibration.Calibrator`` or None, None or the reason: no file, an
            invalid file, a file fitted for other weights). Never raises for a bad file.
        Source: isotonic regression on the val images' top-k facts (``factmas.explore.calibrate``).
        """
        from factmas.explore.calibrate import run_calibrator
        return run_calibrator(self.path, self.model.state_dict(), path)

    def calibrate(self, k: int | None = None, target_precision: float | None = None,
                  out: str | Path | None = None) -> tuple[Path, Any]:
        """Fit the calibrator of P(fact true | D) for this run's checkpoint on its dataset's val
        images and write it (default RUN_DIR/calibration.json, atomically, under the run's lock;
        training writes one itself after the last task).

        Args:
            k: candidate facts per val image (default the run's ``eval.calibration_k``).
            target_precision: the precision the shown answers must reach on val, which chooses the
                abstention threshold p* (default ``eval.calibration_precision``).
            out: write here instead of into the run.
        Returns:
            (the file written, the ``Calibrator``).
        Raises:
            RunLoadError, RunDirError (another process holds the run), CalibrationError (no val
            images), ValueError (an unusable feature cache).
        Source: isotonic regression (scikit-learn's ``IsotonicRegression``), ``factmas.explore.calibrate``.
        """
        from factmas.explore.calibrate import calibrate_run
        return calibrate_run(self.path, self.checkpoint, self.data_path, self.device, k,
                             target_precision, out)

    def query_records(self, images: Sequence[str | Path], k: int = 5,
                      calibrator: Any = "run") -> list[dict]:
        """``factmas query --json``'s records: per image {"image", "threshold", "abstain", "facts":
        [{"rank", "fact_id", "text", "subject", "predicate", "object", "order", "distance",
        "probability", ...}]} or {"image", "error"} for a file that cannot be read.
        ``calibrator``: "run" (the run's own, ``calibrator()``), None (no probabilities) or a
        ``Calibrator``. Raises RunLoadError, ValueError (k < 1)."""
        from factmas.explore.query import answer
        from factmas.model.embedder import RunEmbedder
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        cfg, data, model = self._parts()
        if isinstance(calibrator, str) and calibrator == "run":
            calibrator = self.calibrator()[0]
        return answer(RunEmbedder.for_run(model, cfg), data, [str(p) for p in images], k,
                      calibrator=calibrator)

    def query(self, images: str | Path | Sequence[str | Path], k: int = 5) -> list[Answer]:
        """The top-``k`` facts of each image file (image → fact), closest first.

        Args:
            images: one image file or several (any format and size PIL reads; converted to RGB and
                resized to the dataset's image size as in training).  k: facts per image.
        Returns:
            ``Answer``s, image by image in the given order, ``k`` per image (fewer if the dataset has
            fewer facts), each with its wildcard distance D ∈ [0, 4] (smaller = closer) and
            ``probability`` where the library computes one.
        Raises:
            ValueError: an image that cannot be read (all such files named), or k < 1.
            RunLoadError: the run, its checkpoint or its dataset cannot be used.
        Source: exact FAISS search of every fact (``factmas.explore.query.answer``) with the wildcard distance
        of ``factmas.space``.
        """
        paths = [images] if isinstance(images, (str, Path)) else list(images)
        records = self.query_records(paths, k)
        bad = [r["error"] for r in records if "error" in r]
        if bad:
            raise ValueError("; ".join(bad))
        return [Answer.from_record(r["image"], f) for r in records for f in r["facts"]]

    def search_record(self, fact: str, images: str | Path | None = None, k: int = 10,
                      image_split: str = "test", calibration: str | Path | None = None) -> dict:
        """``factmas search --json``'s result (``factmas.explore.search.search_run``), with probabilities
        from the run's calibrator (or the file ``calibration``) where one fits the weights.
        Raises SearchError, RunLoadError, ValueError (k < 1)."""
        from factmas.explore.search import search_run
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        cfg, data, model = self._parts(images=images is None)
        from factmas.run.load import checkpoint_file
        cal, why = self.calibrator(calibration)
        return search_run(cfg, data, model, checkpoint_file(self.path, self.checkpoint), fact,
                          images, image_split, k, calibrator=cal, calibration_note=why)

    def search(self, fact: str, images: str | Path | None = None, k: int = 10,
               image_split: str = "test") -> list[Hit]:
        """The ``k`` images that fit a fact best (fact → image), closest first.

        Args:
            fact: "S", "S, P" or "S, P, O" in words (lower-cased, lemmatized, people words → person,
                as the dataset's facts were mined).  images: a folder of photos (its index is saved
                in the folder and reused); None: the dataset's ``image_split`` images ("train",
                "val", "test" or "all").  k: images returned.
        Returns:
            ``Hit``s with the wildcard distance D ∈ [0, 4]; for a dataset search of one of the
            dataset's facts, ``true`` says whether the image carries it.
        Raises:
            SearchError: words outside the run's vocabulary (named), a bad fact, an unusable folder.
            RunLoadError: the run cannot be used.
        """
        return [Hit.from_record(r) for r in self.search_record(fact, images, k, image_split)["results"]]

    # ---- embeddings --------------------------------------------------------------------------------
    def embed_images(self, images: Any = None, image_split: str = "test") -> Embeddings:
        """Raw image embeddings φ (Sherlock's image branch; the mean with the mirror image when the
        run's ``eval.flip_average``), as float32 [N, 3·d] with the slot layout [S | P | O].

        Args:
            images: None: the dataset's ``image_split`` images ("train", "val", "test", "all"; ids:
                the dataset's image ids); a list of image files (ids: the paths); or uint8 pixels
                [N, H, W, 3] at the dataset's size (ids: 0..N-1).
        Raises:
            ValueError: an unreadable file or pixels of the wrong shape.  RunLoadError.
        """
        import numpy as np

        from factmas.model import load_image_file
        from factmas.model.embedder import RunEmbedder
        from factmas.explore.search import dataset_embeddings
        if images is None:
            cfg, data, model = self._parts(images=True)
            ids, phi = dataset_embeddings(RunEmbedder.for_run(model, cfg, data), data, image_split)
            return Embeddings.from_phi(phi, [data.image_ids[int(i)] for i in ids])
        cfg, data, model = self._parts()
        size = int(data.images.shape[1])
        if isinstance(images, np.ndarray):
            if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
                raise ValueError(f"images: expected uint8 [N, {size}, {size}, 3], got {images.dtype} "
                                 f"{list(images.shape)}")
            pixels, ids = images, list(range(len(images)))
        else:
            paths = [images] if isinstance(images, (str, Path)) else list(images)
            pixels = np.stack([load_image_file(str(p), size) for p in paths]) if paths else \
                np.zeros((0, size, size, 3), np.uint8)
            ids = [str(p) for p in paths]
        return Embeddings.from_phi(RunEmbedder.for_run(model, cfg).pixels(pixels), ids)

    def embed_facts(self, facts: Sequence[str] | None = None) -> Embeddings:
        """Raw fact embeddings ψ (Sherlock's fact branch) as float32 [N, 3·d], slots [S | P | O];
        the slots a fact lacks hold what the branch gives them (compare a fact on its own
        ``order`` slots, ``factmas.space.wildcard_distance``).

        Args:
            facts: None: every fact of the dataset (ids: their texts "<S, P, O>"); or typed facts
                "S", "S, P", "S, P, O" (parsed as ``search`` does).
        Raises:
            SearchError: a typed fact outside the vocabulary.  RunLoadError.
        """
        import numpy as np

        from factmas.explore.search import parse_fact
        from factmas.model.embedder import RunEmbedder
        cfg, data, model = self._parts()
        if facts is None:
            tokens, order = data.tokens, data.order.astype(np.int64)
            ids = [data.fact_text(f) for f in range(data.num_facts)]
        else:
            parsed = [parse_fact(f, data.vocab, data.tokens.shape[2]) for f in facts]
            tokens = (np.concatenate([t for _, t, _ in parsed]) if parsed
                      else np.zeros((0, 3, data.tokens.shape[2]), np.int64))
            order = np.array([o for *_, o in parsed], np.int64)
            ids = ["<" + ", ".join(s) + ">" for s, _, _ in parsed]
        if not len(tokens):
            return Embeddings.from_phi(np.zeros((0, 3, int(cfg.model.embed_dim)), np.float32), [], order)
        return Embeddings.from_phi(RunEmbedder.for_run(model, cfg).facts(tokens, order), ids, order)


def load_run(path: str | Path, *, data: str | Path | None = None, checkpoint: str | None = None,
             device: str = "auto") -> Run:
    """Open a run directory of ``factmas train`` (``Run``; reads config.json now, the rest on use).

    Raises:
        RunLoadError: the folder is not a run ("PATH: no config.json; is this a factmas run
            directory?", the message of ``factmas query`` and ``factmas evaluate``) or its
            config.json is invalid.
    """
    return Run(path, data=data, checkpoint=checkpoint, device=device)

"""Measuring a model (FAISS retrieval, the metrics, the evaluator) and recording it (R, report files).

- ``retrieval``: exact FAISS indexes of facts and images (wildcard distance), for top-k search.
- ``ranking``: exact ranks of the true items in blocked score matrices (what the evaluator's full-ranking
  metrics need, without sorting rankings); ``count_kernel``: the compiled counting it uses where numba
  is installed (the ``fast`` extra; then no row is sorted but a popular fact's); ``column_ranks``: the
  fact → image ranks counted in the image → fact blocks' columns (one score matrix for both);
  ``column_exact``: their second pass against exact own values where the first would keep too
  many window entries (crowded scores, ``column_ranks.WINDOW_BUDGET``);
  ``shard_ranks``: those counts for one rank's share of the images, merged exactly across ranks;
  ``shard_eval``: the sharded evaluation under torchrun (each rank scores its own images against
  every fact; ``Evaluator.evaluate_sharded``); ``image_to_fact``: the image → fact scores per image
  and their means; ``lfl_stream``: LFL's member ranks block by block (only each test pair's first
  member kept: evaluation memory flat in the test images).
- ``metrics``: mAP, top-k, forgetting and the other pure metric functions.
- ``metric_specs``: one ``Metric`` record per reported metric (name, label, direction, where shown);
  every list of metric names, labels and table columns derives from it.
- ``evaluator``: embeds a split's images and facts and measures every metric per task.
- ``recorder``: ``Recorder``, the rows of every R of a run and the report written from them.
- ``report``: results.json, the R matrix, Markdown tables and plots of a run.
- ``baselines``: the untrained model's numbers next to a run's.
- ``calibration``: P(fact true | distance) by isotonic regression, the abstention threshold, its JSON;
  ``calibration_fit``: the candidate pairs of held-out images it is fitted on.

May import: ``factmas.config``, ``factmas.space``, ``factmas.io``, ``factmas.data``, ``factmas.model``,
``factmas.progress``, ``factmas.distributed`` (embeddings gathered by shares).
Never ``factmas.trainer``, ``factmas.cli`` or ``factmas.experiments``.
"""

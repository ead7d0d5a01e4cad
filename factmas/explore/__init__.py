"""Exploring a trained run: ask it about photos, search its images, calibrate it, show it.

- ``query``: image → facts (the answer of ``factmas query``), with calibrated probabilities.
- ``calibrate``: a run's calibrator (fit on val images, ``calibration.json``; the one that fits the
  loaded weights).
- ``search`` + ``search_index``: fact → images over a dataset split or a folder of photos (the
  folder's embeddings are cached by content).
- ``gallery`` + ``gallery_html`` + ``gallery_plots``: the HTML gallery of a run (queries both ways,
  its R matrices and curves).

May import: ``factmas.config``, ``factmas.errors``, ``factmas.io``, ``factmas.outdir``,
``factmas.progress``, ``factmas.data``, ``factmas.model``, ``factmas.evaluation``, ``factmas.run``.
Never ``factmas.trainer``, ``factmas.experiments`` or ``factmas.cli``.
"""

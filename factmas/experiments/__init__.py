"""Experiments built from runs: the MAS paper's facts comparison and the table of methods × seeds.

- ``paper_table``: λ search on val images, the plan of runs, running them.
- ``paper_resume``: which finished or unfinished runs a table reuses (same settings, data, vectors).
- ``paper_run``: the whole comparison: λ search bracketed by grid extensions, final runs, report.
- ``paper_report``: the paper-style tables, CSV, plot and results.json.
- ``regime_table``: issue 27's regime × method table (MAS − finetune with its pooled std) and the
  pilot table (``regime_pilot``) and its PNG (``regime_plot``), from the regimes' paper-table folders
  (``python eval/regime_table.py``).
- ``compare``: one table of runs, mean ± std over seeds (command line ``factmas.cli.compare``,
  ``python eval/compare.py``).

May import: ``factmas.trainer``, ``factmas.evaluation``, ``factmas.run``, ``factmas.config``, ``factmas.io``,
``factmas.machine.cpu_memory``, ``factmas.errors``, ``factmas.outdir``, ``factmas.data`` (each worker reads the dataset),
``factmas.methods`` (the registry: the paper table's rows, λ grids and each run's options),
``factmas.model.word_targets`` (the fingerprint of a run's word vectors).
Never ``factmas.cli``.
"""

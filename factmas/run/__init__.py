"""A run directory: config.json, checkpoints, the lock, and loading a trained run.

- ``rundir``: ``RunDir``, how every command reads and writes a run directory (paths, config.json,
  its meta record, checkpoints by stage, metrics.jsonl).
- ``checkpoint``: writing and safely loading ``checkpoints/*.pt`` (weights_only).
- ``lock``: one process per run directory.
- ``load``: ``load_run`` (config, dataset, model with its weights): what every command uses to read a run.

May import: ``factmas.config``, ``factmas.io``, ``factmas.errors``, ``factmas.outdir``, ``factmas.data``, and for ``load`` only ``factmas.model``
and ``factmas.machine.device``. Never ``factmas.trainer`` (the trainer builds on this folder) or ``factmas.cli``.
"""

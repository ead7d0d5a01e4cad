"""Training on several processes with PyTorch's own engine: torchrun, process groups (gloo on CPUs,
NCCL on GPUs) and DistributedDataParallel. Nothing here is a home-made transport.

What lives here:

- ``world.py``: the process group of the run (``start_from_env`` reads torchrun's environment),
  ``rank()``, ``size()``, ``is_main()``, ``shard_bounds``/``shard`` (each rank's contiguous share of a
  list), ``agree``/``main_first`` (an error on one rank is raised on every rank instead of leaving the
  others waiting), ``broadcast``.
- ``collect.py``: ``reduce_sums`` (all-reduce of per-sample sums and their count: MAS's Ω, EWC's
  Fisher) and ``gather_rows`` (each rank embeds its share of a list of items; every rank gets all the
  rows, in order), ``all_reduce_array`` / ``gather_to_main`` (the counts and ranks of the sharded
  evaluation, ``factmas.evaluation.evaluator``).
- ``step.py``: the data-parallel training step: ``shard_batcher`` (each rank loads only its rows of a
  global batch), ``DistributedForward`` (the model wrapped in DDP; the embeddings of the global batch
  gathered with ``torch.distributed.nn.functional.all_gather`` so that the loss, whose contrastive
  terms couple the samples of a batch, is the one-process loss of the global batch).

With one process (no torchrun, or ``--nproc-per-node 1``) every function here is the identity or the
obvious one-process answer, so the trainer calls them unconditionally.

May import: torch, numpy, ``factmas.space.loss`` (the loss of the gathered batch), ``factmas.errors`` and
nothing else of factmas; ``factmas.trainer``, ``factmas.methods`` and ``factmas.evaluation`` import from here, never the
reverse.
"""
from factmas.distributed.collect import all_reduce_array, gather_rows, gather_to_main, reduce_sums
from factmas.distributed.world import (DistributedError, agree, barrier, broadcast, is_main, main_first,
                                       rank, shard, shard_bounds, size, start_from_env, stop)

__all__ = ["DistributedError", "agree", "all_reduce_array", "barrier", "broadcast", "gather_rows",
           "gather_to_main", "is_main", "main_first",
           "rank", "reduce_sums", "shard", "shard_bounds", "size", "start_from_env", "stop"]

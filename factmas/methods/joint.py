"""Joint training, the upper bound of the comparison: every task's training pairs in one stage.

The method itself is finetune (no penalty); what makes it joint is ``trains_jointly``: the trainer
(``factmas.train.plan_stages``) then plans a single stage holding all tasks, so the union of the tasks'
training pairs is shuffled together, and the evaluation after that stage gives R one row (every task
evaluated the same way as in the sequential runs; forgetting and BWT are undefined).
"""
from __future__ import annotations

from factmas.methods.base import Method


class Joint(Method):
    """All tasks together (no regularization; ``reg_lambda`` is ignored)."""
    name = "joint"
    trains_jointly = True

"""Joint training, the upper bound of the comparison: every task's training pairs in one experience.

The method is finetune (no penalty) over another stream: ``stream`` merges the tasks' experiences
into one (``factmas.data.experience.merge``), so the union of the tasks' training pairs is shuffled
together, and the evaluation after that one stage gives R one row (every task evaluated the same
way as in the sequential runs; forgetting and BWT are undefined).
"""
from __future__ import annotations

from factmas.data.experience import Experience, merge
from factmas.methods.base import Method


class Joint(Method):
    """All tasks together (no regularization; ``reg_lambda`` is ignored)."""
    name = "joint"
    title = "Joint (upper bound)"
    upper_bound = True

    def stream(self, experiences: list[Experience]) -> list[Experience]:
        """[merge(experiences)]: one experience of every task (none when there are no tasks)."""
        return [merge(experiences)] if experiences else []

"""How long the gold replies are in the default model's tokens, so that a reply budget can be shown to let every
skill be won: a reply cut before its closing fence runs nothing, and a task whose every solution is longer than
`max_tokens` scores 0 whatever the model learned.

A gold reply here is a model turn of the gold trajectory that can be written without running the task (each
environment's `gold_texts`: OS's first reply, DB's operation and its answer, coding's code block). Each is counted
as the tokens the model would generate: the reply's tokens plus the end-of-turn token that closes it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cycleqd.envs.registry import Task, environment

FIT_SHARE = 0.95  # the share of gold replies a demo budget must fit, in every split
TOKEN_STEP = 32  # budgets are rounded up to a multiple of this


def reply_tokens(tokenizer: Any, reply: str) -> int:
    return len(tokenizer.encode(reply, add_special_tokens=False)) + 1  # + the end-of-turn token


def task_lengths(tokenizer: Any, env: str, tasks: Iterable[Task]) -> list[int]:
    """Per task with a countable gold, the tokens of its longest gold reply (every reply must fit)."""
    lengths = []
    for task in tasks:
        replies = environment(env).gold_texts(task)
        if replies:
            lengths.append(max(reply_tokens(tokenizer, r) for r in replies))
    return lengths


@dataclass(frozen=True)
class Fit:
    label: str  # env/split
    tasks: int  # tasks whose gold was counted
    fitting: int  # of those, the ones whose every gold reply fits the budget
    longest: int

    @property
    def share(self) -> float:
        return self.fitting / self.tasks if self.tasks else 1.0

    def describe(self) -> str:
        return f"{self.label}: {self.fitting}/{self.tasks} fit ({self.share:.0%}, longest {self.longest})"


def fit(label: str, lengths: Sequence[int], max_tokens: int) -> Fit:
    return Fit(label, len(lengths), sum(1 for n in lengths if n <= max_tokens), max(lengths, default=0))


def needed_tokens(lengths: Sequence[int], share: float = FIT_SHARE) -> int:
    """The smallest multiple of TOKEN_STEP that at least `share` of `lengths` fit in."""
    if not lengths:
        return TOKEN_STEP
    ordered = sorted(lengths)
    at = ordered[max(0, math.ceil(share * len(ordered)) - 1)]
    return TOKEN_STEP * math.ceil(at / TOKEN_STEP)

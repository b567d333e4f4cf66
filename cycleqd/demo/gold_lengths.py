"""How long the gold replies are in the default model's tokens, so that a reply budget can be shown to let every
skill be won: a reply cut before its closing fence runs nothing, and a task whose every solution is longer than
`max_tokens` scores 0 whatever the model learned.

A gold reply here is a model turn of the gold trajectory that can be written without running the task: OS's first
reply (thought and bash block; the answer that follows depends on the sandbox's output and is short), DB's
operation and its answer, coding's code block. Each is counted as the tokens the model would generate: the reply's
tokens plus the end-of-turn token that closes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cycleqd.envs.db_env import db_answer_reply, db_operation_reply
from cycleqd.envs.db_tasks import DBTask
from cycleqd.envs.errors import ScriptUnavailableError
from cycleqd.envs.os_env import gold_replies
from cycleqd.envs.os_tasks import OSTask

FIT_SHARE = 0.95  # the share of gold replies a demo budget must fit, in every split
TOKEN_STEP = 32  # budgets are rounded up to a multiple of this


def os_gold(task: OSTask) -> list[str]:
    try:
        replies = gold_replies(task, None)
    except ScriptUnavailableError:  # its example is a script file this data does not ship: nothing to count
        return []
    return replies or []


def db_gold(task: DBTask) -> list[str]:
    replies = [db_operation_reply(task, task.gold_sql or "")] if task.modifies or task.gold_sql else []
    return [*replies, db_answer_reply(task, [str(v) for v in task.label], bool(task.gold_sql))]


def coding_gold(task: Any) -> list[str]:
    return [f"```python\n{task.gold}\n```"]  # as the coding environment's gold replay sends it


GOLD_REPLIES: dict[str, Callable[[Any], list[str]]] = {"os": os_gold, "db": db_gold, "coding": coding_gold}
GOLD_ROUNDS = {"os": 2, "db": 2, "coding": 1}  # OS: the bash action, then the answer its output gives


def reply_tokens(tokenizer: Any, reply: str) -> int:
    return len(tokenizer.encode(reply, add_special_tokens=False)) + 1  # + the end-of-turn token


def task_lengths(tokenizer: Any, env: str, tasks: Iterable[Any]) -> list[int]:
    """Per task with a countable gold, the tokens of its longest gold reply (every reply must fit)."""
    lengths = []
    for task in tasks:
        replies = GOLD_REPLIES[env](task)
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

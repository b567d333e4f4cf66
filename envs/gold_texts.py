"""The gold replies of a task as texts, per environment, without running anything: what a reply budget must fit
(cycleqd/demo/gold_lengths.py counts them in the model's tokens).

A gold reply here is a model turn of the gold trajectory that can be written without running the task: OS's first
reply (thought and bash block; the answer that follows depends on the sandbox's output and is short), DB's
operation and its answer, coding's code block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cycleqd.envs.db_env import db_answer_reply, db_operation_reply
from cycleqd.envs.db_tasks import DBTask
from cycleqd.envs.errors import ScriptUnavailableError
from cycleqd.envs.os_env import gold_replies
from cycleqd.envs.os_tasks import OSTask


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

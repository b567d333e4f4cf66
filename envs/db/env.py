"""The DB environment (AgentBench's DBBench on MariaDB) as a registered object, with its gold replies.

One MariaDB server per runtime (its shared service), a database and a user per episode. Gold replay: a
modification runs its gold SQL (the label) as an operation, then answers; a SELECT-like task runs its `sql.query`
and answers with the result, or, when that SQL does not run on MariaDB or its result does not score (DBBench's
SELECT gold SQL is SQLite-flavoured), answers its label.
"""

from __future__ import annotations

import ast
import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cycleqd.envs.db.episode import DBSettings, db_episode, dbbench_metrics
from cycleqd.envs.db.mariadb import MariaDBServer
from cycleqd.envs.db.tasks import DBTask, load_db_tasks, load_db_tasks_leniently
from cycleqd.envs.episode import AgentProtocol, Episode, Message
from cycleqd.envs.errors import EpisodeSetupError
from cycleqd.envs.registry import TEXT_ROUNDS, EnvironmentBase, Runtime, closing
from cycleqd.envs.replay import RecordedEpisode, TaskVerdict
from cycleqd.envs.tool_calls import gold_turn

# Text: CycleQD's 5 operations; tools: AgentBench FC's 15 replies (configs/tasks/dbbench.yaml:5).
ROUND_LIMITS = MappingProxyType({AgentProtocol.TEXT: TEXT_ROUNDS, AgentProtocol.TOOLS: 15})


def result_values(observation: str) -> list[str] | None:
    """The values of an operation's result as answer strings, or None when it is not a plain list of tuples."""
    try:
        rows = ast.literal_eval(observation)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(rows, list) or not all(isinstance(row, tuple) for row in rows):
        return None
    return [str(value) for row in rows for value in row]


def _operation_thought(task: DBTask) -> str:
    purpose = "change" if task.modifies else "read"
    return f"I need to {purpose} the rows of the table {task.table_name} to do this, with one SQL statement."


def _answer_thought(task: DBTask, after_query: bool) -> str:
    if task.modifies:
        return "The table is changed as asked, so I am done."
    return "The result above is the answer." if after_query else "I know the answer."


def db_operation_reply(task: DBTask, sql: str, protocol: AgentProtocol = AgentProtocol.TEXT, turn: int = 0) -> Message:
    thought = _operation_thought(task)
    text = f"{thought}\nAction: Operation\n```sql\n{sql}\n```"
    return gold_turn(protocol, text, thought, "execute_sql", {"query": sql}, turn)


def db_answer_reply(task: DBTask, answer: list[str], after_query: bool, protocol: AgentProtocol = AgentProtocol.TEXT,
                    turn: int = 0) -> Message:  # fmt: skip
    given = ["done"] if task.modifies else answer  # a modification is scored by its table; the answer field is free
    thought = _answer_thought(task, after_query)
    text = f"{thought}\nAction: Answer\nFinal Answer: {json.dumps(given)}"
    return gold_turn(protocol, text, thought, "commit_final_answer", {"answers": given}, turn)


async def replay_db_gold(task: DBTask, server: MariaDBServer, settings: DBSettings | None = None,
                         protocol: AgentProtocol = AgentProtocol.TEXT) -> TaskVerdict:  # fmt: skip
    """A modification runs its gold SQL then answers. A SELECT-like task first tries its gold SQL and answers with
    what came back (what an agent would do); when that SQL fails on MariaDB or its result does not score, it
    answers the label directly, so that verification still tells whether the task itself is sound."""
    if not task.modifies and task.gold_sql:
        verdict = await _replay_db(task, server, settings, protocol, query_first=True)
        if verdict.passed:
            return verdict
    return await _replay_db(task, server, settings, protocol, query_first=False)


async def _replay_db(task: DBTask, server: MariaDBServer, settings: DBSettings | None, protocol: AgentProtocol, *,
                     query_first: bool) -> TaskVerdict:  # fmt: skip
    episode = RecordedEpisode(db_episode(task, server, settings or DBSettings(), protocol))
    try:
        await episode.begin()
        answer = [str(value) for value in task.label]
        turn = 0
        if task.modifies or query_first:
            shown = await episode.act(db_operation_reply(task, task.gold_sql or "", protocol, turn))
            turn += 1
        if query_first:
            observation = shown[0]["content"] if shown else None
            values = result_values(observation or "")
            if values is None:
                return TaskVerdict(task.task_id, False, f"gold SQL gave no plain result: {observation!r}")
            answer = values
        await episode.act(db_answer_reply(task, answer, query_first, protocol, turn))
        outcome = await episode.outcome()
    except EpisodeSetupError as exc:
        return TaskVerdict(task.task_id, False, f"environment error: {exc}")
    finally:
        await episode.episode.close()
    return episode.verdict(task.task_id, outcome, f"{outcome.status}: {outcome.detail}")


class DBEnvironment(EnvironmentBase[DBTask]):
    name = "db"
    gold_format = 2
    gold_rounds = 2  # an operation, then the answer
    round_limits = ROUND_LIMITS

    def images(self) -> tuple[str, ...]:
        return ("mariadb",)

    def episode_images(self, tasks: Iterable[DBTask]) -> set[str]:
        return set()  # episodes run on the shared server, not in sandboxes of their own

    load_tasks = staticmethod(load_db_tasks)
    load_tasks_leniently = staticmethod(load_db_tasks_leniently)

    def recognizes(self, record: dict[str, Any], file: Path) -> bool:
        return "table" in record

    def start_service(self, runtime: Runtime) -> MariaDBServer:
        return MariaDBServer(runtime.start_sandbox)

    @asynccontextmanager
    async def open_episode(self, task: DBTask, runtime: Runtime) -> AsyncIterator[Episode]:
        server: MariaDBServer = runtime.service(self.name)
        await server.ensure_running()  # a server killed under earlier episodes is restarted here
        episode = db_episode(task, server, self._settings(runtime), runtime.settings.protocol)
        async with closing(episode):
            yield episode

    async def replay_gold(self, task: DBTask, runtime: Runtime) -> TaskVerdict:
        return await replay_db_gold(
            task, runtime.service(self.name), self._settings(runtime), runtime.settings.protocol
        )

    def describe(self, task: DBTask) -> str:
        return task.description

    def gold_texts(self, task: DBTask) -> list[str]:
        operation = [db_operation_reply(task, task.gold_sql or "")] if task.modifies or task.gold_sql else []
        replies = [*operation, db_answer_reply(task, [str(v) for v in task.label], bool(task.gold_sql))]
        return [reply["content"] for reply in replies]

    def metrics(self, results: Iterable[tuple[DBTask, float]]) -> dict[str, float]:
        return dbbench_metrics(results)

    @staticmethod
    def _settings(runtime: Runtime) -> DBSettings:
        return DBSettings(round_limit=runtime.settings.rounds(ROUND_LIMITS))


ENVIRONMENT = DBEnvironment()

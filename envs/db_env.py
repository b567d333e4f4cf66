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
from typing import Any

from cycleqd.envs.db_tasks import DBTask, load_db_tasks, load_db_tasks_leniently
from cycleqd.envs.dbbench import DBBenchEpisode, DBSettings, dbbench_metrics
from cycleqd.envs.episode import Episode
from cycleqd.envs.errors import EpisodeSetupError
from cycleqd.envs.mariadb_server import MariaDBServer
from cycleqd.envs.registry import EnvironmentBase, Runtime, closing
from cycleqd.envs.replay import RecordedEpisode, TaskVerdict


def result_values(observation: str) -> list[str] | None:
    """The values of an operation's result as answer strings, or None when it is not a plain list of tuples."""
    try:
        rows = ast.literal_eval(observation)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(rows, list) or not all(isinstance(row, tuple) for row in rows):
        return None
    return [str(value) for row in rows for value in row]


def db_operation_reply(task: DBTask, sql: str) -> str:
    purpose = "change" if task.modifies else "read"
    return (f"I need to {purpose} the rows of the table {task.table_name} to do this, with one SQL statement.\n"
            f"Action: Operation\n```sql\n{sql}\n```")  # fmt: skip


def db_answer_reply(task: DBTask, answer: list[str], after_query: bool) -> str:
    if task.modifies:  # scored by the table's contents; the answer field is free
        return 'The table is changed as asked, so I am done.\nAction: Answer\nFinal Answer: ["done"]'
    thought = "The result above is the answer." if after_query else "I know the answer."
    return f"{thought}\nAction: Answer\nFinal Answer: {json.dumps(answer)}"


async def replay_db_gold(task: DBTask, server: MariaDBServer, settings: DBSettings | None = None) -> TaskVerdict:
    """A modification runs its gold SQL then answers. A SELECT-like task first tries its gold SQL and answers with
    what came back (what an agent would do); when that SQL fails on MariaDB or its result does not score, it
    answers the label directly, so that verification still tells whether the task itself is sound."""
    if not task.modifies and task.gold_sql:
        verdict = await _replay_db(task, server, settings, query_first=True)
        if verdict.passed:
            return verdict
    return await _replay_db(task, server, settings, query_first=False)


async def _replay_db(task: DBTask, server: MariaDBServer, settings: DBSettings | None, *,
                     query_first: bool) -> TaskVerdict:  # fmt: skip
    episode = RecordedEpisode(DBBenchEpisode(task, server, settings))
    try:
        await episode.begin()
        answer = [str(value) for value in task.label]
        if task.modifies or query_first:
            observation = await episode.step(db_operation_reply(task, task.gold_sql or ""))
        if query_first:
            values = result_values(observation or "")
            if values is None:
                return TaskVerdict(task.task_id, False, f"gold SQL gave no plain result: {observation!r}")
            answer = values
        await episode.step(db_answer_reply(task, answer, query_first))
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
        async with closing(DBBenchEpisode(task, server, self._settings(runtime))) as episode:
            yield episode

    async def replay_gold(self, task: DBTask, runtime: Runtime) -> TaskVerdict:
        return await replay_db_gold(task, runtime.service(self.name), self._settings(runtime))

    def describe(self, task: DBTask) -> str:
        return task.description

    def gold_texts(self, task: DBTask) -> list[str]:
        operation = [db_operation_reply(task, task.gold_sql or "")] if task.modifies or task.gold_sql else []
        return [*operation, db_answer_reply(task, [str(v) for v in task.label], bool(task.gold_sql))]

    def metrics(self, results: Iterable[tuple[DBTask, float]]) -> dict[str, float]:
        return dbbench_metrics(results)

    @staticmethod
    def _settings(runtime: Runtime) -> DBSettings:
        return DBSettings(round_limit=runtime.settings.round_limit)


ENVIRONMENT = DBEnvironment()

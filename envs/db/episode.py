"""The AgentBench DBBench episode on MariaDB.

Set-up: the episode's own database gets the task's table, every column TEXT as AgentBench creates it, rows
inserted with parameters. The model sees AgentBench's prompt, "Ok.", then the question. Each reply either
operates (`Action: Operation` + the first ```sql block, one statement, whose first result set comes back as the
string of a list of tuples, or the server's error message) or answers (`Final Answer: [...]`, read with
ast.literal_eval, never eval). What the agent reads is cut as v0.2 cuts it: past 800 characters, the first 800
and `[TRUNCATED]`; rows are fetched unbuffered and reading stops once 800 characters are known, so a huge SELECT
costs at most one row (≤ the server's max_allowed_packet) beyond them. Error texts name MySQL, as the prompt does.

Rules as AgentBench v0.2 (src/server/tasks/dbbench/__init__.py) has them:
- up to `round_limit` operations (15, v0.2's configured max_round); the reply after the last one is read for a
  `Final Answer` but not executed;
- a modification (INSERT, UPDATE, DELETE) is scored by a hash of the table's rows afterwards, whatever the
  episode's ending (an answer, an invalid reply, the round limit);
- a SELECT-like task is scored by its answer when one was given (compared with the label as v0.2 does);
- `dbbench_metrics` counts DELETE tasks in SELECT's accuracy, as v0.2's metric does.

Under the tools protocol (`DBBenchToolsEpisode`, AgentBench FC) the prompt, the reading of a reply (every tool call, in
order) and the round (every reply) are FC's, and only a committed answer is judged; the table, what a query shows
and the comparisons are the ones above.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pymysql

from cycleqd.envs.db.mariadb import EpisodeDatabase, MariaDBServer, quote_identifier
from cycleqd.envs.db.tasks import DBTask
from cycleqd.envs.episode import AgentProtocol, Episode, EpisodeStatus, Message, Outcome
from cycleqd.envs.errors import EpisodeSetupError
from cycleqd.envs.tool_calls import (
    ARGUMENT_ERRORS,
    ActsByCalls,
    calls_of,
    first_value,
    function_of,
    function_tool,
    string_property,
    tool_result,
    user_message,
)

PROMPT = (
    "\nI will ask you a question, then you should help me operate a MySQL database with SQL to answer the question.\n"
    "You have to explain the problem and your solution to me and write down your thoughts.\n"
    "After thinking and explaining thoroughly, every round you can choose to operate or to answer.\n"
    "your operation should be like this:\nAction: Operation\n```sql\nSELECT * FROM table WHERE condition;\n```\n"
    "You MUST put SQL in markdown format without any other comments. Your SQL should be in one line.\n"
    "Every time you can only execute one SQL statement. I will only execute the statement in the first SQL code "
    "block. Every time you write a SQL, I will execute it for you and give you the output.\n"
    "If you are done operating, and you want to commit your final answer, then write down:\n"
    'Action: Answer\nFinal Answer: ["ANSWER1", "ANSWER2", ...]\n'
    "DO NOT write this pattern unless you are sure about your answer. I expect an accurate and correct answer.\n"
    "Your answer should be accurate. Your answer must be exactly the same as the correct answer.\n"
    "If the question is about modifying the database, then after done operation, your answer field can be "
    "anything.\nIf your response cannot match any pattern I mentioned earlier, you will be judged as FAIL "
    "immediately.\nYour input will be raw MySQL response, you have to deal with it by yourself.\n"
)
# AgentBench FC's prompt (src/server/tasks/dbbench/task.py:23-34), word for word, as its system message.
FC_SYSTEM_PROMPT = (
    "I will ask you a question, then you should help me operate a MySQL database with SQL to answer the question.\n"
    "You have to explain the problem and your solution to me and write down your thoughts.\n"
    "After thinking and explaining thoroughly, every round you can choose to operate or to answer with the two "
    "specific tools provided.\n"
    "If you should execute a SQL query, use the `execute_sql` function, Your SQL should be in one line.\n"
    "Every time you can only execute one SQL statement. I will only execute the statement in the first SQL code "
    "block. Every time you write a SQL, I will execute it for you and give you the output.\n"
    "If you are done operating, and you want to commit your final answer, then use the `commit_final_answer` "
    "function.\n"
    "DO NOT use this tool unless you are sure about your answer. I expect an accurate and correct answer.\n"
    "Your answer should be accurate. Your answer must be exactly the same as the correct answer.\n"
    "If the question is about modifying the database, then after done operation, your answer field can be "
    "anything.\n"
    "If your response cannot match any pattern I mentioned earlier, you will be judged as FAIL immediately.\n"
    "You should always use the tools provided to submit your answer. Be careful not to write it in the content "
    "field.\n"
    "Your input will be raw MySQL response, you have to deal with it by yourself."
)
# FC's tools (configs/tasks/dbbench.yaml:7-34), in its order.
DB_TOOLS: tuple[dict[str, Any], ...] = (
    function_tool("execute_sql", "Executes a given SQL statement on the database and returns the result.",
                  {"query": string_property("The SQL query to be executed.")}),
    function_tool("commit_final_answer", "Commits the final answer after all operations are completed.",
                  {"answers": {"type": "array", "items": {"type": "string"},
                               "description": "The list of final answers to commit."}}),
)  # fmt: skip
# FC's words (dbbench/task.py:129, 143, 155, 232).
NO_TOOL_CALLS = "Internal error: No tool calls found despite finish reason."
UNPARSED_CALL = "Error: Failed to parse tool call. Tool call format is incorrect."
NO_RESPONSE = "No response from database."
INVALID_FUNCTION_CALL = "Invalid function call. Please call a tool instead."


def fc_question(task: DBTask) -> str:
    """FC's user message (task.py:108-113). Our task files carry no `evidence`, so its line never appears."""
    extra = f"Additional table information about the question: {task.add_description}\n" if task.add_description else ""
    return f"{extra}Question: {task.description}\n"


_ACTION = re.compile(r"Action: (.*?)\n")
_SQL = re.compile(r"```sql\n([\s\S]*?)\n```")
_FINAL = re.compile(r"\nFinal Answer:(.*)")
# MySQL's default group_concat_max_len, under which DBBench's answer_md5 values were computed.
HASH_GROUP_CONCAT_LEN = 1024
SERVER_GONE = (0, 2002, 2003, 2006, 2013)  # client codes: cannot connect, gone away, lost during the query
SHOWN_CHARS = 800  # v0.2's cut: the first 800 characters, then TRUNCATED_MARK
TRUNCATED_MARK = "[TRUNCATED]"


@dataclass(frozen=True)
class DBSettings:
    round_limit: int = 15  # AgentBench's configured max_round (configs/tasks/dbbench.yaml); its code default is 5


@dataclass(frozen=True)
class DBAction:
    kind: str  # operation, answer, invalid
    content: str | None = None


def parse_db_action(reply: str) -> DBAction:
    action = _ACTION.search(reply)
    if action and action.group(1) == "Operation":
        sql = _SQL.search(reply)
        return DBAction("operation", sql.group(1).strip().replace("\n", " ")) if sql else DBAction("invalid")
    answer = _FINAL.search(reply)
    return DBAction("answer", answer.group(1)) if answer else DBAction("invalid")


def parse_final_answer(text: str) -> list[Any]:
    """The answer as a list: a Python literal if it is one (never evaluated as code), else the text itself."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return [text]
    try:
        return list(value)
    except TypeError:
        return [text]


def select_answer_correct(answer: str, label: Sequence[Any]) -> bool:
    return select_values_correct(parse_final_answer(answer), label)


def select_values_correct(given: Sequence[Any], label: Sequence[Any]) -> bool:
    """AgentBench v0.2: one value each side compares as floats if both parse, else as given; otherwise sets."""
    if len(given) == 1 and len(label) == 1:
        try:
            return float(given[0]) == float(label[0])
        except (ValueError, TypeError):
            return given[0] == label[0]
    try:
        return set(given) == set(label)
    except TypeError:  # unhashable items (nested lists) cannot match
        return False


def table_hash_sql(task: DBTask) -> str:
    columns = ", ".join(quote_identifier(c) for c in task.columns)
    return (
        "SELECT md5(group_concat(rowhash ORDER BY rowhash)) AS hash FROM (SELECT "
        f"substring(MD5(CONCAT_WS(',', {columns})), 1, 5) AS rowhash FROM {quote_identifier(task.table_name)}) AS sub"
    )


def format_result(rows: Iterable[tuple[Any, ...]]) -> str:
    return str([tuple(row) for row in rows])


def cut_for_display(text: str) -> str:
    return text[:SHOWN_CHARS] + TRUNCATED_MARK if len(text) > SHOWN_CHARS else text


def as_mysql_text(message: str) -> str:
    """The prompt promises MySQL: the server's own name does not show through its messages."""
    return message.replace("MariaDB", "MySQL").replace("mariadb", "mysql")


class DBBenchEpisode(Episode):
    def __init__(self, task: DBTask, server: MariaDBServer, settings: DBSettings | None = None) -> None:
        self.task = task
        self.server = server
        self.settings = settings or DBSettings()
        self.messages: list[Message] = []
        self.operations = 0
        self.rounds = 0
        self.answer: str | None = None
        self.status: EpisodeStatus | None = None
        self._db: EpisodeDatabase | None = None
        self._connection: pymysql.Connection | None = None

    async def begin(self) -> list[Message]:
        try:
            self._db = await self.server.create_episode_database()
            self._connection = await asyncio.to_thread(
                self.server.connect, self._db.user, self._db.password, self._db.database
            )
            await asyncio.to_thread(self._create_table)
        except pymysql.MySQLError as exc:
            await self._release()
            raise EpisodeSetupError(f"{self.task.task_id}: could not set up the table: {exc}") from exc
        self.messages = self._first_messages()
        return list(self.messages)

    def _first_messages(self) -> list[Message]:
        return [
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": "Ok."},
            {"role": "user", "content": self.task.description + "\n" + self.task.add_description},
        ]

    def _create_table(self) -> None:
        task = self.task
        assert self._connection is not None
        table = quote_identifier(task.table_name)
        with self._connection.cursor() as cursor:
            cursor.execute(f"CREATE TABLE {table} ({', '.join(f'{quote_identifier(c)} TEXT' for c in task.columns)})")
            if task.rows:
                # The driver formats parameters with %, so a % in a name (a column called "% Change") is doubled.
                names = ", ".join(quote_identifier(c) for c in task.columns).replace("%", "%%")
                slots = ", ".join(["%s"] * len(task.columns))
                insert = f"INSERT INTO {table.replace('%', '%%')} ({names}) VALUES ({slots})"
                cursor.executemany(insert, [list(r) for r in task.rows])

    async def step(self, reply: str) -> str | None:
        if self.status is not None:
            raise RuntimeError("step() after the episode ended")
        self.rounds += 1
        self.messages.append({"role": "assistant", "content": reply})
        action = parse_db_action(reply)
        asked = _ACTION.search(reply)
        if asked is not None and asked.group(1) == "Operation" and self.operations < self.settings.round_limit:
            if action.kind == "invalid":  # an operation without its ```sql block
                self.status = EpisodeStatus.INVALID_ACTION
                return None
            self.operations += 1
            observation = await asyncio.to_thread(self._execute, action.content or "")
            self.messages.append({"role": "user", "content": observation})
            return observation
        final = _FINAL.search(reply)  # v0.2 reads the answer from whichever reply ended the loop
        if final:
            self.answer, self.status = final.group(1), EpisodeStatus.COMPLETED
        elif self.operations >= self.settings.round_limit:
            self.status = EpisodeStatus.ROUND_LIMIT
        else:
            self.status = EpisodeStatus.INVALID_ACTION
        return None

    def _execute(self, sql: str) -> str:
        try:
            return cut_for_display(self._run_capped(sql))
        except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
            if exc.args and exc.args[0] in SERVER_GONE:  # not the model's doing
                raise EpisodeSetupError(f"{self.task.task_id}: lost the database connection: {exc}") from exc
            return cut_for_display(self._error_text(exc))
        except pymysql.MySQLError as exc:
            return cut_for_display(self._error_text(exc))

    def _run_capped(self, sql: str) -> str:
        """The first result set as v0.2 prints it, read row by row only until more than SHOWN_CHARS characters
        are known (they fix what the agent sees); the rest is never read: the connection is dropped and
        reopened, which makes the server abandon the query."""
        assert self._connection is not None and self._db is not None
        text, complete = "[", True
        cursor = self._connection.cursor(pymysql.cursors.SSCursor)
        try:
            cursor.execute(sql)
            first = True
            while (row := cursor.fetchone()) is not None:
                text += ("" if first else ", ") + repr(tuple(row))
                first = False
                if len(text) > SHOWN_CHARS:
                    complete = False
                    break
        finally:
            if complete:
                cursor.close()
        if not complete:
            if cursor._result is not None:  # else pymysql reads every remaining row when the result is collected
                cursor._result.unbuffered_active = False
            self._connection.close()
            self._connection = self.server.connect(self._db.user, self._db.password, self._db.database)
        return text + "]"

    @staticmethod
    def _error_text(exc: pymysql.MySQLError) -> str:
        """The server's message as the agent sees it: 'code: message'."""
        code, message = (exc.args + ("",))[:2] if exc.args else ("", str(exc))
        return as_mysql_text(f"{code}: {message}" if message else str(exc))

    def _judged(self) -> bool:
        """Whether the ending is scored: v0.2 scores a modification whatever the ending (a SELECT needs its answer)."""
        return True

    def _given(self) -> list[Any] | None:
        """The answer's values, None without an answer."""
        return None if self.answer is None else parse_final_answer(self.answer)

    async def outcome(self) -> Outcome:
        if self.status is None:
            raise RuntimeError("outcome() before the episode ended")
        try:
            if not self._judged():
                passed, detail = False, f"not judged: {self.status}"
            elif self.task.modifies:  # whatever the answer
                table_hash = await asyncio.to_thread(self._table_hash)
                passed = table_hash == self.task.answer_md5
                detail = "" if passed else f"table hash {table_hash}, expected {self.task.answer_md5}"
            else:
                given = self._given()
                passed = given is not None and select_values_correct(given, self.task.label)
                detail = "" if passed else f"answer {self.answer!r}, expected {list(self.task.label)!r}"
        except pymysql.MySQLError as exc:
            raise EpisodeSetupError(f"{self.task.task_id}: scoring failed: {exc}") from exc
        finally:
            await self._release()
        expected = f"table hash {self.task.answer_md5}" if self.task.modifies else repr(list(self.task.label))
        return Outcome(self.status, 1.0 if passed else 0.0, self.rounds, self.answer, detail, expected)

    async def table_hash(self) -> str:
        """The hash of the task's table as it stands, as `answer_md5` is compared (what generators record)."""
        return await asyncio.to_thread(self._table_hash)

    def _table_hash(self) -> str:
        assert self._db is not None
        # As root: the agent may have dropped its own privileges' table; the hash is computed whatever happened.
        with self.server.connect(database=self._db.database) as connection, connection.cursor() as cursor:
            cursor.execute("SET SESSION group_concat_max_len = %s", (HASH_GROUP_CONCAT_LEN,))
            try:
                cursor.execute(table_hash_sql(self.task))
            except pymysql.err.ProgrammingError:  # the agent dropped or renamed the table
                return format_result([(None,)])
            return format_result(cursor.fetchall())

    async def close(self) -> None:
        await self._release()

    async def _release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.open:
            await asyncio.to_thread(connection.close)
        database, self._db = self._db, None
        if database is not None:
            try:
                await self.server.drop_episode_database(database)
            except pymysql.MySQLError as exc:  # the server died under the episode: the environment's failure
                raise EpisodeSetupError(f"{self.task.task_id}: could not drop the episode's database: {exc}") from exc


class DBBenchToolsEpisode(ActsByCalls, DBBenchEpisode):
    """The DB episode under AgentBench FC's tools protocol (src/server/tasks/dbbench/task.py:103-237): its prompt and
    tools; every call of a reply answered in order until a commit, which ends the episode; every reply a round. The
    table, the server, what a query shows (v0.2's rendering: FC's is the same list of tuples cut at 800 characters,
    interaction.py:84-105) and the scoring are the text episode's, but only a committed answer is judged, as in FC:
    the round limit scores 0 whatever the table holds."""

    tools = DB_TOOLS

    def __init__(self, task: DBTask, server: MariaDBServer, settings: DBSettings | None = None) -> None:
        super().__init__(task, server, settings)
        self._values: list[Any] | None = None

    def _first_messages(self) -> list[Message]:
        return [{"role": "system", "content": FC_SYSTEM_PROMPT}, {"role": "user", "content": fc_question(self.task)}]

    async def act(self, reply: Message) -> list[Message] | None:
        self._take(reply)
        calls = calls_of(reply)
        answers = [] if calls else [user_message(NO_TOOL_CALLS)]
        for call in calls:
            call_id = call.get("id", "")
            try:
                name, arguments = function_of(call)
                parsed = json.loads(arguments)
            except ARGUMENT_ERRORS:
                answers.append(tool_result(call_id, UNPARSED_CALL))
                continue
            if name == "commit_final_answer":  # the calls after it are never answered (task.py:216)
                self.messages.extend(answers)
                self._commit(parsed)
                return None
            shown = await self._sql_result(parsed) if name == "execute_sql" else INVALID_FUNCTION_CALL
            answers.append(tool_result(call_id, shown))
        self.messages.extend(answers)
        if self.rounds >= self.settings.round_limit:
            self.status = EpisodeStatus.ROUND_LIMIT
            return None
        return answers

    async def _sql_result(self, arguments: Any) -> str:
        try:
            sql = first_value(arguments)
        except (AttributeError, IndexError) as exc:  # task.py:150 and 162-164
            return f"Error executing query: {exc}"
        # A query that is not a string is sent as its text, which the server rejects as MySQL would.
        shown = await asyncio.to_thread(self._execute, sql if isinstance(sql, str) else str(sql))
        return shown or NO_RESPONSE

    def _commit(self, arguments: Any) -> None:
        """FC reads the answer outside its handler (task.py:172, 176): arguments without a value, or an answer that
        is neither a list nor a string nor empty, raise there and end the sample as a task error scored 0
        (task.py:242-245). Here that is an invalid action, scored 0 and the model's failure, never retried."""
        try:
            value = first_value(arguments)
        except (AttributeError, IndexError):
            self.status = EpisodeStatus.INVALID_ACTION
            return
        if value and not isinstance(value, str | list):
            self.status = EpisodeStatus.INVALID_ACTION
            return
        self.answer = json.dumps(value)
        # A list is the answer's values; a string is read as a v0.2 `Final Answer` is, so both compare alike.
        self._values = value if isinstance(value, list) else parse_final_answer(value) if value else [value]
        self.status = EpisodeStatus.COMPLETED

    def _judged(self) -> bool:
        return self.status == EpisodeStatus.COMPLETED

    def _given(self) -> list[Any] | None:
        return self._values


def db_episode(task: DBTask, server: MariaDBServer, settings: DBSettings, protocol: AgentProtocol) -> DBBenchEpisode:
    return (DBBenchToolsEpisode if protocol == AgentProtocol.TOOLS else DBBenchEpisode)(task, server, settings)


def dbbench_metrics(results: Iterable[tuple[DBTask, float]]) -> dict[str, float]:
    """Accuracy per kind (SELECT, INSERT, UPDATE), per category, `overall_cat_accuracy` (the mean of the SELECT,
    INSERT and UPDATE accuracies, as AgentBench reports) and plain `accuracy`. As in v0.2's metric, SELECT's
    accuracy counts every task that is neither an INSERT nor an UPDATE, DELETE included."""
    by_kind: dict[str, list[float]] = {}
    by_category: dict[str, list[float]] = {}
    scores = []
    for task, score in results:
        by_kind.setdefault(task.kind, []).append(score)
        if task.kind == "DELETE":
            by_kind.setdefault("SELECT", []).append(score)
        by_category.setdefault(task.category, []).append(score)
        scores.append(score)
    metrics = {f"{k}_accuracy": sum(v) / len(v) for k, v in {**by_category, **by_kind}.items()}
    kinds = [sum(by_kind[k]) / len(by_kind[k]) if by_kind.get(k) else 0.0 for k in ("SELECT", "INSERT", "UPDATE")]
    metrics["overall_cat_accuracy"] = sum(kinds) / 3
    metrics["accuracy"] = sum(scores) / len(scores) if scores else 0.0
    return metrics

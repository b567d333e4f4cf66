"""`cycleqd suite verify`: replay each task's gold solution through the environment exactly as a model's replies
would go, and report the pass rate per file with the reason for every failure.

OS: the task's `example` script as a bash action, then its output as the answer (or `finish` when the output
spans several lines); a match task without an example answers its expected string. Tasks whose scripts are not
available, or that have no gold, are listed apart with the reason, not counted as failures.
DB: a modification runs its gold SQL (the label) as an operation, then answers; a SELECT-like task runs its
`sql.query` and answers with the result, or, when that SQL does not run on MariaDB or its result does not score
(DBBench's SELECT gold SQL is SQLite-flavoured), answers its label.
The transcripts are also `cycleqd sft`'s training data, so every reply reads as a competent agent's would.
"""

from __future__ import annotations

import ast
import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from envs.coding import CodingEpisode, CodingTask, load_coding_tasks_leniently
from envs.db_tasks import DBTask, load_db_tasks_leniently
from envs.dbbench import DBBenchEpisode
from envs.episode import Episode, Message, Outcome
from envs.errors import EpisodeSetupError, ScriptUnavailableError, TaskFormatError
from envs.mariadb_server import MariaDBServer
from envs.os_checks import check_scripts_available, script_source
from envs.os_interaction import OSInteractionEpisode, OSSettings
from envs.os_tasks import OSTask, load_os_tasks_leniently, network_commands
from envs.task_files import read_task_records
from sandboxes.docker_sandbox import DockerSandbox
from sandboxes.images import image_tag
from sandboxes.limits import SandboxLimits

T = TypeVar("T")
# Bumped whenever the gold replies change, so that anything trained on them (the demo's cached experts) is redone.
GOLD_REPLY_FORMAT = 2


@dataclass
class TaskVerdict:
    task_id: str
    passed: bool | None  # None: not run (unavailable)
    reason: str = ""
    transcript: list[Message] = field(default_factory=list)  # the replay as a model would have seen it
    prompt_messages: int = 0  # the first messages are the env's prompt (one-shot turns included), not replies
    expected: str = ""  # for a failure: what the grader expected, beside the reason



class RecordedEpisode:
    """An episode whose messages (prompts, gold replies, observations) are kept as a chat transcript."""

    def __init__(self, episode: Episode) -> None:
        self.episode = episode
        self.messages: list[Message] = []
        self.prompt_messages = 0

    async def begin(self) -> list[Message]:
        self.messages = list(await self.episode.begin())
        self.prompt_messages = len(self.messages)
        return self.messages

    async def step(self, reply: str) -> str | None:
        self.messages.append({"role": "assistant", "content": reply})
        observation = await self.episode.step(reply)
        if observation is not None:
            self.messages.append({"role": "user", "content": observation})
        return observation

    async def outcome(self) -> Outcome:
        return await self.episode.outcome()


def graded(task_id: str, outcome: Outcome, reason: str, episode: RecordedEpisode) -> TaskVerdict:
    """The verdict of a replay that reached its outcome; a failure carries what the grader expected."""
    passed = outcome.score == 1.0
    return TaskVerdict(task_id, passed, "" if passed else reason, episode.messages, episode.prompt_messages,
                       "" if passed else outcome.expected)  # fmt: skip


@dataclass
class FileReport:
    path: str
    load_error: str = ""
    task_errors: list[str] = field(default_factory=list)
    verdicts: list[TaskVerdict] = field(default_factory=list)

    @property
    def run(self) -> list[TaskVerdict]:
        return [v for v in self.verdicts if v.passed is not None]

    @property
    def passed(self) -> int:
        return sum(1 for v in self.run if v.passed)

    def to_json(self) -> dict[str, object]:
        verdicts = [{k: v for k, v in asdict(verdict).items() if k != "transcript"} for verdict in self.verdicts]
        return {**asdict(self), "verdicts": verdicts, "passed": self.passed, "run": len(self.run)}


def verify_total(reports: list[FileReport]) -> str:
    """The pass rate over every task found, the ones that could not be loaded or run included: a suite whose bad
    tasks are left out of the denominator looks better than it is. A file that could not be read counts as one."""
    passed = sum(r.passed for r in reports)
    ran = sum(len(r.run) for r in reports)
    not_run = sum(len(r.verdicts) - len(r.run) for r in reports)
    unloadable = sum(len(r.task_errors) + bool(r.load_error) for r in reports)
    total = ran + not_run + unloadable
    if not total:
        return "no tasks found"
    return (f"gold passes {passed}/{total} ({passed / total:.1%}) of the tasks: {ran} ran ({passed} passed), "
            f"{not_run} not run, {unloadable} could not be loaded")  # fmt: skip


def task_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.name.endswith((".json", ".jsonl", ".jsonl.gz")) and p.is_file())


def guess_env(path: Path) -> str:
    """os, db or coding, from the fields of the first task found under `path` (os when nothing tells)."""
    for file in task_files(path):
        try:
            records = read_task_records(file) if not file.name.endswith(".gz") else []
        except (TaskFormatError, OSError, UnicodeDecodeError):
            continue
        first = records[0] if records and isinstance(records[0], dict) else {}
        if "table" in first:
            return "db"
        if "entry_point" in first or "test_list" in first or file.name.endswith(".gz"):
            return "coding"
        if first:
            return "os"
    return "os"


def asks_a_question(task: OSTask) -> bool:
    return task.description.rstrip().endswith("?") or "answer" in task.description.lower()


def gold_replies(task: OSTask, scripts_dir: Path | None) -> list[str] | None:
    """The first gold reply (the rest depends on what the sandbox printed); None if the task has no gold.

    The thought says what a competent agent would think, never "the reference solution": an expert fine-tuned on
    these replies should learn the behaviour, not a phrase that only makes sense in a replay."""
    if task.example is not None:
        source = script_source(task.example, scripts_dir)
        thought = ("To answer this I need to look at the system, so I run a command that prints what is asked."
                   if asks_a_question(task) else "I can do this with a shell command.")  # fmt: skip
        return [f"Think: {thought}\n\nAct: bash\n\n```bash\n{source}\n```"]
    if task.match is not None and task.match.answer is not None:
        return [f"Think: I already know the answer, it is {task.match.answer}.\n\nAct: answer({task.match.answer})"]
    return None


def answer_reply(output: str) -> str:
    text = output.strip()
    if "\n" in text or not text:
        return "Think: The command ran without errors, so the task is done.\n\nAct: finish"
    return f"Think: Now I get the answer, it is {text}.\n\nAct: answer({text})"


async def replay_os_gold(task: OSTask, settings: OSSettings) -> TaskVerdict:
    try:
        check_scripts_available(task, settings.scripts_dir)
        replies = gold_replies(task, settings.scripts_dir)
    except ScriptUnavailableError as exc:
        return TaskVerdict(task.task_id, None, f"unavailable: {exc}")
    if replies is None:
        return TaskVerdict(task.task_id, None, "unavailable: no gold solution (no example, no literal answer)")
    if needs := network_commands(task):
        return TaskVerdict(task.task_id, None, f"unavailable: its set-up needs the network ({', '.join(needs)})")
    limits = SandboxLimits(command_timeout_s=settings.command_timeout_s)
    async with await DockerSandbox.start(image_tag(task.image), limits=limits) as sandbox:
        os_episode = OSInteractionEpisode(task, sandbox, settings)
        episode = RecordedEpisode(os_episode)
        try:
            await episode.begin()
            observation = await episode.step(replies[0])
            if observation is not None:
                await episode.step(answer_reply(os_episode.last_output))
            outcome = await episode.outcome()
        except EpisodeSetupError as exc:
            return TaskVerdict(task.task_id, False, f"environment error: {exc}")
    return graded(task.task_id, outcome, f"{outcome.status}: {outcome.detail or f'answer {outcome.answer!r}'}", episode)


async def verify_os(
    path: Path,
    *,
    scripts_dir: Path | None,
    concurrency: int = 4,
    progress: Callable[[TaskVerdict], None] = lambda _: None,
) -> list[FileReport]:
    settings = OSSettings(round_limit=5, scripts_dir=scripts_dir, command_timeout_s=30.0)
    reports, jobs = _load(path, load_os_tasks_leniently)
    await _replay_all(jobs, lambda task: replay_os_gold(task, settings), concurrency, progress)
    return reports


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


async def replay_db_gold(task: DBTask, server: MariaDBServer) -> TaskVerdict:
    """A modification runs its gold SQL then answers. A SELECT-like task first tries its gold SQL and answers with
    what came back (what an agent would do); when that SQL fails on MariaDB or its result does not score, it
    answers the label directly, so that verification still tells whether the task itself is sound."""
    if not task.modifies and task.gold_sql:
        verdict = await _replay_db(task, server, query_first=True)
        if verdict.passed:
            return verdict
    return await _replay_db(task, server, query_first=False)


async def _replay_db(task: DBTask, server: MariaDBServer, *, query_first: bool) -> TaskVerdict:
    episode = RecordedEpisode(DBBenchEpisode(task, server))
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
    return graded(task.task_id, outcome, f"{outcome.status}: {outcome.detail}", episode)


async def verify_db(
    path: Path, *, concurrency: int = 4, progress: Callable[[TaskVerdict], None] = lambda _: None
) -> list[FileReport]:
    reports, jobs = _load(path, load_db_tasks_leniently)
    async with MariaDBServer() as server:
        await _replay_all(jobs, lambda task: replay_db_gold(task, server), concurrency, progress)
    return reports


async def replay_coding_gold(task: CodingTask, image: str) -> TaskVerdict:
    async with await DockerSandbox.start(image) as sandbox:
        episode = RecordedEpisode(CodingEpisode(task, sandbox))
        await episode.begin()
        await episode.step(f"```python\n{task.gold}\n```")
        try:
            outcome = await episode.outcome()
        except EpisodeSetupError as exc:
            return TaskVerdict(task.task_id, False, f"environment error: {exc}")
    return graded(task.task_id, outcome, outcome.detail, episode)


async def verify_coding(
    path: Path, *, concurrency: int = 4, progress: Callable[[TaskVerdict], None] = lambda _: None
) -> list[FileReport]:
    reports, jobs = _load(path, load_coding_tasks_leniently)
    image = image_tag("os-default")
    await _replay_all(jobs, lambda task: replay_coding_gold(task, image), concurrency, progress)
    return reports


def _load(
    path: Path, loader: Callable[[Path], tuple[list[T], list[TaskFormatError]]]
) -> tuple[list[FileReport], list[tuple[FileReport, T]]]:
    reports: list[FileReport] = []
    jobs: list[tuple[FileReport, T]] = []
    for file in task_files(path):
        report = FileReport(str(file))
        reports.append(report)
        try:
            tasks, errors = loader(file)
        except (TaskFormatError, OSError, UnicodeDecodeError) as exc:
            report.load_error = str(exc)
            continue
        report.task_errors = [str(e) for e in errors]
        jobs.extend((report, task) for task in tasks)
    return reports, jobs


async def _replay_all(
    jobs: list[tuple[FileReport, T]],
    replay: Callable[[T], Awaitable[TaskVerdict]],
    concurrency: int,
    progress: Callable[[TaskVerdict], None],
) -> None:
    """Replay every job, `concurrency` at a time, filing each verdict in its file's report (in task order)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(report: FileReport, task: T) -> None:
        async with gate:
            verdict = await replay(task)
        report.verdicts.append(verdict)
        progress(verdict)

    await asyncio.gather(*(one(report, task) for report, task in jobs))
    for report in {id(r): r for r, _ in jobs}.values():
        report.verdicts.sort(key=lambda v: v.task_id)


__all__ = ["Episode", "FileReport", "TaskVerdict", "verify_coding", "verify_db", "verify_os"]

"""`cycleqd suite verify`: replay each task's gold solution through its environment exactly as a model's replies
would go, and report the pass rate per file with the reason for every failure.

Each environment writes its own gold replies and replays them (`Environment.replay_gold`, beside the
environment: `os_env.py`, `db_env.py`, `coding_env.py`); this module loads the files, runs the replays on a
runtime the caller provides, and files the verdicts per file. Tasks that could not run (missing scripts, no gold,
network) are listed apart with the reason, not counted as failures. The transcripts are also `cycleqd sft`'s
training data, so every reply reads as a competent agent's would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cycleqd.envs.errors import TaskFormatError
from cycleqd.envs.registry import Environment, Runtime, Task, TaskT
from cycleqd.envs.replay import TaskVerdict
from cycleqd.envs.suites import task_files


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


Job = tuple[FileReport, Task]


def load_reports(path: Path, env: Environment[Task]) -> tuple[list[FileReport], list[Job]]:
    """A report per task file under `path` (a file that does not load says why), and the tasks to replay."""
    reports: list[FileReport] = []
    jobs: list[Job] = []
    for file in task_files(path):
        report = FileReport(str(file))
        reports.append(report)
        try:
            tasks, errors = env.load_tasks_leniently(file)
        except (TaskFormatError, OSError, UnicodeDecodeError) as exc:
            report.load_error = str(exc)
            continue
        report.task_errors = [str(e) for e in errors]
        jobs.extend((report, task) for task in tasks)
    return reports, jobs


async def replay_gold_all(
    env: Environment[TaskT],
    tasks: list[TaskT],
    runtime: Runtime,
    concurrency: int,
    progress: Callable[[TaskVerdict], None] = lambda _: None,
) -> list[TaskVerdict]:
    """The gold replay of every task, `concurrency` at a time, in task order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(task: TaskT) -> TaskVerdict:
        async with gate:
            verdict = await env.replay_gold(task, runtime)
        progress(verdict)
        return verdict

    return list(await asyncio.gather(*(one(task) for task in tasks)))


async def verify_jobs(
    env: Environment, jobs: list[Job], runtime: Runtime, concurrency: int,
    progress: Callable[[TaskVerdict], None] = lambda _: None,
) -> None:  # fmt: skip
    """Replay every job, filing each verdict in its file's report (sorted by task id)."""
    verdicts = await replay_gold_all(env, [task for _, task in jobs], runtime, concurrency, progress)
    for (report, _), verdict in zip(jobs, verdicts, strict=True):
        report.verdicts.append(verdict)
    for report in {id(r): r for r, _ in jobs}.values():
        report.verdicts.sort(key=lambda v: v.task_id)


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


__all__ = ["FileReport", "TaskVerdict", "load_reports", "replay_gold_all", "verify_jobs", "verify_total"]

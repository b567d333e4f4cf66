"""`cycleqd export RUN`: a run's episodes out of the store, as JSONL (OpenAI chat messages + the result, ready for
SFT or `datasets`), CSV (one row per episode) or inspect_ai logs (`inspect view` shows them).

Episodes are read from the store a batch at a time and written as they come, so a large run never sits in memory
(except for inspect logs, which inspect_ai's public API writes whole, one log per environment, split and
model). A file is written beside its destination and renamed into place at the end: an interrupted export leaves
no half file.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cycleqd.db.schema import Episode, Model, Run, Task
from cycleqd.db.store import EpisodeFilter, Store
from cycleqd.envs.episode import EpisodeStatus
from cycleqd.envs.errors import UnknownEnvironmentError
from cycleqd.envs.registry import environment
from cycleqd.errors import BadOptionError, UserError
from cycleqd.results.lookup import (
    ModelRole,
    candidate_model_ids,
    find_run,
    model_label,
    model_roles,
    open_existing_store,
)

FORMATS = ("jsonl", "csv", "inspect")
# The CSV row is the JSONL record without the conversation (kept as its length): one flat line per episode.
CSV_FIELDS = (
    "run", "episode", "env", "suite", "split", "task", "repeat", "model", "model_identity", "model_label", "role",
    "status", "score", "rounds", "prompt_tokens", "completion_tokens", "latency_s", "answer", "expected",
    "grader_detail", "error", "messages", "context_messages",
)  # fmt: skip


@dataclass(frozen=True)
class ExportRequest:
    run: str  # an id or a unique prefix
    format: str = "jsonl"
    out: Path | None = None  # None: standard output (jsonl, csv); a folder for inspect logs
    candidate: str = "all"  # evolutions: all, final, or a candidate id
    env: str | None = None
    status: str | None = None
    min_score: float | None = None

    def __post_init__(self) -> None:
        """A filter that names nothing would export nothing and look like success; a file that cannot be written
        would fail only after the store was read. (--candidate is checked against the run's candidates, once the
        run is found, still before anything is written.)"""
        if self.env is not None:
            try:
                environment(self.env)
            except UnknownEnvironmentError as exc:
                raise BadOptionError("--env", self.env, f"one of {', '.join(exc.known)}") from None
        if self.status is not None and self.status not in set(EpisodeStatus):
            raise BadOptionError("--status", self.status, f"one of {', '.join(EpisodeStatus)}")
        # Every environment scores from 0 to 1; a bound past 1 (or NaN, which SQL compares with nothing) matches
        # no episode.
        if self.min_score is not None and not (math.isfinite(self.min_score) and 0 <= self.min_score <= 1):
            raise BadOptionError("--min-score", self.min_score, "a score from 0 to 1")
        if self.format != "inspect" and self.out is not None and str(self.out) != "-":
            folder = Path(self.out).expanduser().parent
            if not folder.is_dir():
                raise UserError(f"--out {self.out}: the folder {folder} does not exist")
            if Path(self.out).is_dir():
                raise UserError(f"--out {self.out}: a folder; give a file name for the {self.format} export")


def episode_record(
    run: Run, episode: Episode, task: Task, model: Model, roles: dict[int, ModelRole] | None = None
) -> dict[str, Any]:
    """One episode as one JSON object: `messages` is the whole conversation in OpenAI chat form (the first
    `context_messages` were written by the environment: its prompt and any one-shot example). In an evolution,
    `role` is what its model was (base, expert, child, merge, final, search, baseline: `model_roles`) and
    `model_label` names it so (`CycleQD final@1a2b3c4d`); an eval run's models have no role."""
    verdict = episode.verdict or {}
    role = (roles or {}).get(model.id)
    return {
        "messages": list(episode.transcript), "context_messages": episode.context_messages,
        "run": run.id, "episode": episode.id, "env": task.env, "suite": task.suite, "split": task.split,
        "task": task.task_key, "repeat": episode.repeat, "model": model.reference, "model_identity": model.identity,
        "model_label": readable_model(model, role), "role": role.kind.value if role else None,
        "status": episode.status, "score": episode.score, "rounds": episode.rounds,
        "prompt_tokens": episode.prompt_tokens, "completion_tokens": episode.completion_tokens,
        "latency_s": episode.latency_s, "answer": verdict.get("answer"), "expected": verdict.get("expected"),
        "grader_detail": verdict.get("detail"), "error": episode.error,
    }  # fmt: skip


def readable_model(model: Model, role: ModelRole | None) -> str:
    """The model as a reader knows it, never a checkpoint's path: an evolution's role with the model's short hash
    (`CycleQD final@1a2b3c4d`, `expert shell@…`), else the folder or model name (`model_label`)."""
    short = model_label(model.reference, model.identity)
    if role is None:
        return short
    # A checkpoint's or genome's label ends in @ and its hash prefix; a hub or endpoint name has none to borrow.
    return f"{role.label}@{short.rsplit('@', 1)[1]}" if "@" in short else f"{role.label} ({short})"


def csv_row(record: dict[str, Any]) -> dict[str, Any]:
    return {**{k: record[k] for k in CSV_FIELDS if k != "messages"}, "messages": len(record["messages"])}


@contextmanager
def _destination(out: Path | None) -> Iterator[IO[str]]:
    """Standard output, or a temporary file beside `out` renamed onto it once everything was written."""
    if out is None or str(out) == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    partial = out.with_name(f".{out.name}.partial")
    with open(partial, "w", encoding="utf-8", newline="") as handle:
        yield handle
    os.replace(partial, out)


def _progress(total: int, err: Console) -> Progress:
    columns = (TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    progress = Progress(*columns, console=err, transient=True, disable=total < 200)
    progress.add_task("export", total=total)
    return progress


def run_export(store: Store, request: ExportRequest, db_path: Path, err: Console) -> tuple[int, list[Path]]:
    """Write the export; how many episodes went out, and the files written (none for standard output)."""
    run = find_run(store, request.run, db_path)
    where = EpisodeFilter(
        model_ids=candidate_model_ids(store, run, request.candidate), env=request.env, status=request.status,
        min_score=request.min_score,
    )  # fmt: skip
    total = store.count_episodes(run.id, where)
    roles = model_roles(store, run)
    records = (episode_record(run, *row, roles) for row in store.iter_episodes(run.id, where))
    with _progress(total, err) as progress:
        counted = _counted(records, lambda: progress.advance(progress.task_ids[0]))
        if request.format == "inspect":
            from cycleqd.results.inspect_log import write_inspect_logs

            folder = request.out or Path(f"inspect-{run.id}")
            files = write_inspect_logs(run, counted, folder)
            return total, files
        with _destination(request.out) as handle:
            if request.format == "csv":
                writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
                writer.writeheader()
                for record in counted:
                    writer.writerow(csv_row(record))
            else:
                for record in counted:
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return total, [] if request.out is None or str(request.out) == "-" else [request.out]


def _counted(records: Iterator[dict[str, Any]], tick: Callable[[], None]) -> Iterator[dict[str, Any]]:
    for record in records:
        yield record
        tick()


def export_command(request: ExportRequest, db_path: Path, err: Console) -> int:
    store = open_existing_store(db_path)
    total, files = run_export(store, request, db_path, err)
    for path in files:
        err.print(f"wrote {path}", highlight=False, soft_wrap=True)
    err.print(f"{total} episode(s) exported", highlight=False)
    return 0

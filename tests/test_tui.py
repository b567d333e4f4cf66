"""The monitor (`cycleqd tui`, `python tui.py`) driven through Textual's pilot, on a store filled by a real
`cycleqd eval` and by an evolution's rows written through the evolution store API; snapshots at 80 × 24 on a
store whose ids and times are fixed."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Static, TabbedContent

from cycleqd.db import EpisodeRecord, open_store
from cycleqd.db.evolution_store import ArchiveSpec, CellUpdate, EvolutionStore
from cycleqd.db.monitor_store import open_monitor_store
from cycleqd.db.schema import Episode, Run, RunStatus, ServerState, Task
from cycleqd.db.store import EpisodeKey, EpisodeProgress, Store, StoreOpenError
from cycleqd.envs.os.prompt import first_messages
from cycleqd.monitor import episode_screen, eval_screen, evolution_screen, runs_screen
from cycleqd.monitor import format as fmt
from cycleqd.monitor.app import MonitorApp
from cycleqd.monitor.command import run_tui
from cycleqd.monitor.episode_screen import EpisodeScreen
from cycleqd.monitor.episodes_table import EpisodesTable
from cycleqd.monitor.eval_screen import EvalScreen
from cycleqd.monitor.evolution_screen import EvolutionScreen
from cycleqd.monitor.heatmap import Heatmap
from cycleqd.monitor.lineage import LineageTree
from cycleqd.monitor.qd_chart import QDChart
from cycleqd.monitor.queries.evolution_run import ArchiveView, CellView
from cycleqd.monitor.runs_table import RunsTable
from cycleqd.monitor.score_table import ENDINGS, ScoreTable
from cycleqd.monitor.servers_table import ServersTable
from cycleqd.monitor.transcript import MessageBlock, Transcript
from tests.cli_process import CYCLEQD

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)  # the monitor's clock in the snapshot tests
TASKS = ("os", "db", "coding")
BINS = 5


# -- an evolution written through the store API ------------------------------------------------------------------


def cell_of(scores: dict[str, float], bc_tasks: list[str]) -> str:
    """The cell of `scores` in an archive whose BCs range over [0, 1] in BINS bins (as evolver/archive.py bins)."""
    return ",".join(str(min(int(scores[t] * BINS), BINS - 1)) for t in bc_tasks)


@dataclass
class Evolution:
    run_id: str
    evolution: EvolutionStore
    archive_ids: dict[str, int]
    candidates: dict[str, int]  # name given here → candidate id
    elites: dict[str, dict[str, tuple[int, float]]]  # archive → cell → (candidate id, quality)


SCORES = {
    "base": {"os": 0.10, "db": 0.10, "coding": 0.10},
    "os-expert": {"os": 0.55, "db": 0.15, "coding": 0.05},
    "db-expert": {"os": 0.12, "db": 0.62, "coding": 0.08},
    "coding-expert": {"os": 0.08, "db": 0.11, "coding": 0.48},
    "child-1": {"os": 0.61, "db": 0.45, "coding": 0.21},
    "child-2": {"os": 0.42, "db": 0.70, "coding": 0.33},
    "child-3": {"os": 0.73, "db": 0.66, "coding": 0.25},  # the os elite of cell (3, 1): db 0.66 → 3, coding → 1
    "child-4": {"os": 0.35, "db": 0.52, "coding": 0.64},
}
BREEDING = {  # child: (parents, ω, the task its mutation served = the generation's active task)
    "child-1": (["os-expert", "db-expert"], [0.512, 0.488], "os"),
    "child-2": (["child-1", "db-expert"], [0.47, 0.53], "db"),
    "child-3": (["child-1", "child-2"], [0.601, 0.399], "os"),
    "child-4": (["child-3", "coding-expert"], [0.45, 0.55], "coding"),
}


class EvolutionWriter:
    """Writes an evolution through EvolutionStore as the loop does: candidates, scores, then a generation's cells,
    insertion reports and QD metrics in one commit. Each archive keeps the best candidate of each cell."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.run_id = run_id
        self.evolution = EvolutionStore(store, run_id)
        specs = [ArchiveSpec(i, t, BINS, [b for b in TASKS if b != t], [[0.0, 1.0]] * 2) for i, t in enumerate(TASKS)]
        self.archives = {a.task_name: a for a in self.evolution.create_archives(specs)}
        self.ids: dict[str, int] = {}
        self.elites: dict[str, dict[str, tuple[int, float]]] = {t: {} for t in TASKS}

    def add(self, name: str, kind: str, generation: int, slot: int = 0) -> int:
        parents, omegas, task = BREEDING.get(name, ([], [], None))
        mutation = {"kind": "svd", "seed": 1000 + generation, "task": task} if task else {}
        if kind == "expert":
            mutation = {"expert": name.removesuffix("-expert")}  # as cycleqd/evolution/loop.py records an expert
        candidate = self.evolution.add_candidate(
            kind,
            generation,
            slot,
            genome_hash=f"{len(self.ids):064x}",
            parents=[self.ids[p] for p in parents],
            omegas=omegas,
            mutation=mutation,
            active_task=TASKS.index(task) if task else None,
        )
        self.ids[name] = candidate.id
        self.evolution.record_scores(candidate.id, None, SCORES[name], test=False)
        return candidate.id

    def offer(self, name: str) -> tuple[list[CellUpdate], list[dict[str, object]]]:
        updates, report = [], []
        for task, archive in self.archives.items():
            cell, quality = cell_of(SCORES[name], archive.bc_tasks), SCORES[name][task]
            old = self.elites[task].get(cell)
            status = "new" if old is None else "improved" if quality > old[1] else "rejected"
            if status != "rejected":
                self.elites[task][cell] = (self.ids[name], quality)
                updates.append(CellUpdate(archive.id, cell, self.ids[name], quality))
            report.append({"archive": task, "cell": cell, "status": status, "old": old and old[1], "new": quality})
        return updates, report

    def metrics(self) -> list[dict[str, object]]:
        return [
            {
                "archive": t,
                "coverage": len(cells) / BINS**2,
                "qd_score": sum(q for _, q in cells.values()),
                "best": max(q for _, q in cells.values()),
            }
            for t, cells in self.elites.items()
        ]

    def seed(self) -> None:
        """The base, and the experts as generation 0 (CycleQD starts its archives from the experts)."""
        self.add("base", "base", 0)
        updates, reports = [], {}
        for slot, task in enumerate(TASKS):
            candidate = self.add(f"{task}-expert", "expert", 0, slot)
            cells, reports[candidate] = self.offer(f"{task}-expert")
            updates += cells
        self.evolution.commit_generation(0, 0, reports, updates, self.metrics())

    def generation(self, number: int) -> None:
        name = f"child-{number}"
        candidate = self.add(name, "child", number)
        updates, report = self.offer(name)
        active = TASKS.index(BREEDING[name][2])
        self.evolution.commit_generation(number, active, {candidate: report}, updates, self.metrics())
        self.evolution.set_server(0, candidate, f"genome {number:08x}", 2.4)


def write_evolution(store: Store, run_id: str | None = None, generations: int = 3) -> EvolutionWriter:
    if run_id is None:
        run_id = store.create_run("evolve", {"tasks": [{"name": t} for t in TASKS], "generations": 10}).id
    writer = EvolutionWriter(store, run_id)
    writer.seed()
    writer.evolution.set_server(1, writer.ids["coding-expert"], "coding expert", 1.1)
    for number in range(1, generations + 1):
        writer.generation(number)
    return writer


# -- a store with fixed ids and times, for the snapshots -----------------------------------------------------------

EVAL_RUN, RUNNING_RUN, EVOLVE_RUN = "5eed0eva1001", "5eed0eva1002", "5eed0e701001"
TRANSCRIPT = [
    {
        "role": "user",
        "content": "You are an assistant that will act like a person. I will play the role of a Linux "
        "(Ubuntu) operating system.\nHow many files are in /etc? Answer with a number.",
    },
    {"role": "assistant", "content": "Think: I should count them.\n\nAct: bash\n\n```bash\nls -1 /etc | wc -l\n```"},
    {"role": "user", "content": "The output of the OS:\n\n87"},
    {"role": "assistant", "content": "Think: the output is the count.\n\nAct: answer(87)"},
]
# An OS episode as the environment writes it: AgentBench's prompt and one-shot (context), then the model's turns.
OS_CONTEXT = first_messages("How many files are in /etc? Answer with a number.")
OS_TRANSCRIPT = [*OS_CONTEXT, *TRANSCRIPT[1:]]
OS_VERDICT = {"answer": "87", "expected": "the answer '87'", "detail": ""}


def write_snapshot_store(path: Path) -> Store:
    store = open_store(path)
    start = NOW - timedelta(hours=3)
    with store.session() as session:
        session.add(
            Run(
                id=EVAL_RUN,
                kind="eval",
                status="completed",
                created_at=start,
                finished_at=start + timedelta(minutes=7, seconds=12),
                config={"model": "default", "tasks": ["os", "coding"], "split": "dev", "limit": 2, "repeats": 1},
            )
        )
        session.add(
            Run(
                id=RUNNING_RUN,
                kind="eval",
                status="running",
                created_at=NOW - timedelta(minutes=5),
                config={"model": "default", "tasks": ["db"], "split": "dev", "limit": 4, "repeats": 1},
            )
        )
        session.add(
            Run(
                id=EVOLVE_RUN,
                kind="evolve",
                status="running",
                created_at=NOW - timedelta(hours=2),
                config={"tasks": [{"name": t} for t in TASKS], "generations": 10},
            )
        )
    model = store.model_id("sha256:" + "ab" * 32, "default")
    episodes = [  # run, env, key, status, score, transcript
        (EVAL_RUN, "os", "os-dev-3", "completed", 1.0, OS_TRANSCRIPT),
        (EVAL_RUN, "os", "os-dev-7", "round_limit", 0.0, TRANSCRIPT[:3]),
        (EVAL_RUN, "coding", "HumanEval/0", "completed", 0.0, TRANSCRIPT[:2]),
        (EVAL_RUN, "coding", "HumanEval/4", "env_error", None, []),
        (RUNNING_RUN, "db", "db-dev-1", "completed", 1.0, TRANSCRIPT[:2]),
    ]
    for number, (run_id, env, key, status, score, transcript) in enumerate(episodes):
        task = store.task_id(env, "builtin", "dev", key, f"{number:064x}")
        started = (start if run_id == EVAL_RUN else NOW - timedelta(minutes=4)) + timedelta(seconds=30 * number)
        context = len(OS_CONTEXT) if transcript is OS_TRANSCRIPT else 0
        episode_id = store.record_episode(
            EpisodeRecord(
                run_id,
                model,
                task,
                0,
                status,
                score,
                rounds=sum(m["role"] == "assistant" for m in transcript[context:]),
                prompt_tokens=300 + number,
                completion_tokens=40 + number,
                latency_s=2.5 + number,
                transcript=transcript,
                started_at=started,
                error="sandbox did not start" if score is None else None,
                context_messages=context,
                verdict=OS_VERDICT if transcript is OS_TRANSCRIPT else {},
            )
        )
        with store.session() as session:
            session.execute(
                update(Episode).where(Episode.id == episode_id).values(finished_at=started + timedelta(seconds=20))
            )
    write_evolution(store, EVOLVE_RUN)
    with store.session() as session:
        session.execute(update(ServerState).values(updated_at=NOW - timedelta(seconds=42)))
    return store


@pytest.fixture(scope="session")
def snapshot_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("snapshots") / "cycleqd.db"
    write_snapshot_store(path).engine.dispose()
    return path


def pinned_app(db: Path, refresh_s: float = 60.0) -> MonitorApp:
    """The monitor on `db` with its clock and zone pinned, so that nothing on screen depends on when it runs."""
    return MonitorApp(open_monitor_store(db), source=db.name, refresh_s=refresh_s, clock=lambda: NOW, zone=UTC)


# -- a store filled by a real eval, then an evolution ------------------------------------------------------------


@dataclass(frozen=True)
class FilledStore:
    path: Path
    eval_run: str
    evolution: EvolutionWriter


@pytest.fixture(scope="session")
def filled_store(docker_engine, default_model, tmp_path_factory: pytest.TempPathFactory) -> FilledStore:  # noqa: ANN001
    """A real `cycleqd eval` (SmolLM2 on two HumanEval tasks in sandboxes), then an evolution in the same file."""
    path = tmp_path_factory.mktemp("tui") / "cycleqd.db"
    args = ["eval", "--tasks", "coding", "--limit", "2", "--max-tokens", "32", "--db", str(path), "--json"]
    done = subprocess.run([CYCLEQD, *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    writer = write_evolution(open_store(path))
    return FilledStore(path, json.loads(done.stdout)["run"], writer)


async def wait_until(pilot, condition, timeout_s: float = 10.0) -> None:  # noqa: ANN001
    """Let the app run (and poll) until `condition()` holds."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the monitor did not show it in time"
        await pilot.pause(0.05)


def table_rows(table: DataTable) -> dict[str, list[str]]:
    return {row.key.value: [str(cell) for cell in table.get_row(row.key)] for row in table.ordered_rows}


async def open_run(pilot, run_id: str) -> None:  # noqa: ANN001
    table = pilot.app.screen.query_one(RunsTable)
    table.move_cursor(row=table.get_row_index(run_id))
    await pilot.press("enter")
    await pilot.pause()


async def test_the_runs_table_shows_every_run_with_its_kind_status_and_progress(filled_store: FilledStore) -> None:
    app = MonitorApp(open_monitor_store(filled_store.path), source="test")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        rows = table_rows(app.screen.query_one(RunsTable))
    evolve_run = filled_store.evolution.run_id
    assert set(rows) == {filled_store.eval_run, evolve_run}
    assert rows[filled_store.eval_run][:4] == [filled_store.eval_run, "eval", "completed", "2/2"]
    assert rows[evolve_run][:4] == [
        evolve_run,
        "evolve",
        "running",
        "3/10",
    ]  # generations 1–3 of 10 (0 inserts the experts)
    assert rows[evolve_run][4].endswith("gen/h") and rows[filled_store.eval_run][4].endswith(("ep/m", "ep/s"))


async def test_an_eval_run_and_an_episode_show_scores_and_the_whole_transcript(filled_store: FilledStore) -> None:
    store = open_store(filled_store.path)
    stored = {e.id: e for e in store.episodes(filled_store.eval_run)}
    with store.session() as session:
        keys = {e.id: session.get_one(Task, e.task_id).task_key for e in stored.values()}
    app = MonitorApp(open_monitor_store(filled_store.path), source="test")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await open_run(pilot, filled_store.eval_run)
        assert isinstance(app.screen, EvalScreen)
        scores = table_rows(app.screen.query_one(ScoreTable))
        mean = sum(e.score or 0.0 for e in stored.values()) / len(stored)
        (seconds,) = store.wall_times(filled_store.eval_run).values()  # the figure eval's table and `show` give
        row = ["coding", "dev", "2", f"{mean:.3f}", fmt.duration(seconds), "0", *ending_counts(stored)]
        assert scores == {"coding/dev": row}
        episodes = app.screen.query_one(EpisodesTable)
        assert list(table_rows(episodes)) == [str(i) for i in sorted(stored, reverse=True)]  # newest first
        newest = stored[max(stored)]
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, EpisodeScreen) and app.screen.episode_id == newest.id
        blocks = list(app.screen.query(MessageBlock))
        assert [b.text for b in blocks] == [m["content"] for m in newest.transcript]
        assert [b.border_title for b in blocks][:2] == ["prompt", "action 1"]
        meta = str(app.screen.query_one("#episode-meta", Static).content)
        assert f"{newest.status} · score {newest.score:.2f}" in meta and keys[newest.id] in meta
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, EvalScreen)


def ending_counts(episodes: dict[int, Episode]) -> list[str]:
    return [str(sum(e.status == s for e in episodes.values())) for s in ENDINGS]


def heatmap_of(screen: EvolutionScreen, archive: str) -> Heatmap:
    return next(h for h in screen.query(Heatmap) if h.archive.task_name == archive)


def tree_labels(tree: LineageTree) -> list[str]:
    labels, stack = [], [tree.root]
    while stack:
        node = stack.pop(0)
        labels.append(str(node.label))
        stack[:0] = list(node.children)
    return labels


async def test_a_known_elite_shows_its_quality_on_the_heatmap_and_its_lineage(filled_store: FilledStore) -> None:
    ids = filled_store.evolution.ids
    app = MonitorApp(open_monitor_store(filled_store.path), source="test")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await open_run(pilot, filled_store.evolution.run_id)
        screen = app.screen
        assert isinstance(screen, EvolutionScreen)
        os_map = heatmap_of(screen, "os")
        # The cursor starts on the archive's best elite: child 3 (os 0.73) in cell (3, 1).
        assert os_map.has_focus and os_map.cursor == (3, 1)
        assert os_map.caption() == f"(3,1) 0.730 #{ids['child-3']} g3"
        grid = os_map.render().plain.splitlines()
        assert grid[BINS - 1 - 1] == " ·  ·  61 73 · "  # the row of coding bin 1: child 1 (0.61), child 3 (0.73)
        assert grid[BINS - 1] == " 55 ·  ·  12 · "  # the os expert in cell (0, 0), the db expert in (3, 0)
        await pilot.press("left", "left", "left", "down")
        assert os_map.caption() == f"(0,0) 0.550 #{ids['os-expert']} g0"
        await pilot.press("right", "right", "right", "up", "enter")  # back to child 3, and show its lineage
        # the lineage is read in a worker thread: wait until it is shown, as a user would
        child_3 = f"elite of os: #{ids['child-3']} child g3"
        await wait_until(pilot, lambda: tree_labels(screen.query_one(LineageTree))[0].startswith(child_3))
        assert str(screen.query_one(TabbedContent).active) == "lineage"
        labels = tree_labels(screen.query_one(LineageTree))
        assert labels[0].startswith(f"elite of os: #{ids['child-3']} child g3 · os 0.73 db 0.66 coding 0.25")
        assert labels[1] == "mutation svd (seed 1003, task os)"
        assert labels[2].startswith(f"ω 0.601 ← #{ids['child-1']} child g1")
        assert f"ω 0.512 ← #{ids['os-expert']} expert g0 · os 0.55 db 0.15 coding 0.05" in labels
        assert any(label.startswith(f"ω 0.399 ← #{ids['child-2']} child g2") for label in labels)
        await pilot.press("m")  # the QD chart's next metric: coverage (os: 5 of 25 cells after generation 3)
        chart = screen.query_one(QDChart)
        assert str(screen.query_one(TabbedContent).active) == "metrics"
        assert (
            chart.render().plain.startswith("coverage, generations 0–3") and "os       cov  20%" in chart.render().plain
        )
        # Another archive's heatmap takes the lineage view along with the focus.
        db_map = heatmap_of(screen, "db")
        db_map.focus()
        child_2 = f"elite of db: #{ids['child-2']} child g2"
        await wait_until(pilot, lambda: tree_labels(screen.query_one(LineageTree))[0].startswith(child_2))


async def test_rows_written_while_the_monitor_runs_appear_without_a_restart(tmp_path: Path) -> None:
    store = open_store(tmp_path / "live.db")
    writer = write_evolution(store, generations=2)
    app = MonitorApp(open_monitor_store(tmp_path / "live.db"), source="test", refresh_s=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        runs = app.screen.query_one(RunsTable)
        assert list(table_rows(runs)) == [writer.run_id]
        late = store.create_run("eval", {"tasks": ["os"], "limit": 3, "repeats": 1})
        await wait_until(pilot, lambda: late.id in table_rows(runs))
        assert table_rows(runs)[late.id][1:4] == ["eval", "running", "0/≤3"]
        await open_run(pilot, writer.run_id)
        screen = app.screen
        assert isinstance(screen, EvolutionScreen)
        os_map = heatmap_of(screen, "os")
        assert os_map.cells[(3, 1)].candidate_id == writer.ids["child-2"] and os_map.best == pytest.approx(0.61)
        assert len(screen.query_one(QDChart).history) == 3
        started = time.monotonic()
        writer.generation(3)  # child 3 (os 0.73) improves on child 2 (os 0.42) in cell (3, 1) of the os archive
        # The writer never waits on the monitor, which reads ten times a second here (the writer's busy timeout,
        # 30 s, would hide a lock behind a slow commit rather than an error).
        assert time.monotonic() - started < 2.0
        await wait_until(pilot, lambda: os_map.cells[(3, 1)].candidate_id == writer.ids["child-3"])
        assert os_map.cells[(3, 1)].quality == pytest.approx(0.73)
        assert " 73" in os_map.render().plain and os_map.border_title == "os · best 0.73"
        assert [g.number for g in screen.query_one(QDChart).history] == [0, 1, 2, 3]
        # the summary and the servers are read apart from the archives, so they may come a refresh later
        summary = screen.query_one("#evolution-summary", Static)
        await wait_until(pilot, lambda: "gen 3/10 ·" in str(summary.content))
        assert "active os" in str(summary.content)
        servers = screen.query_one(ServersTable)
        await wait_until(pilot, lambda: table_rows(servers)["0"][1] == f"#{writer.ids['child-3']} child g3")


async def test_a_finished_evolution_s_servers_hold_nothing(tmp_path: Path) -> None:
    store = open_store(tmp_path / "done.db")
    writer = write_evolution(store, generations=1)  # slot 0 last held child 1, slot 1 the coding expert
    store.set_run_status(writer.run_id, RunStatus.COMPLETED)
    app = MonitorApp(open_monitor_store(tmp_path / "done.db"), source="test")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await open_run(pilot, writer.run_id)
        servers = table_rows(app.screen.query_one(ServersTable))
        assert {slot: row[1:3] for slot, row in servers.items()} == {"0": ["released", "–"], "1": ["released", "–"]}


async def test_an_eval_s_header_names_only_the_environments_it_plays(tmp_path: Path) -> None:
    from cycleqd.eval.evaluate import _Evaluation
    from cycleqd.eval_request import EvalRequest
    from cycleqd.events import ignore

    path = tmp_path / "ids.db"
    store = open_store(path)
    # Written as evaluate writes its run: --task-ids picked one DB task of a request naming every environment.
    request = EvalRequest(task_ids=("dev.jsonl#1",))
    assert request.tasks == ("os", "db", "coding")
    newer = _Evaluation(request, request.planned_tasks(), path, store, None, ignore)._open_run("test")[1]
    # A run stored before runs recorded their planned environments: only those with episodes are named.
    older = store.create_run("eval", {"model": "default", "tasks": ["os", "db", "coding"], "split": "dev",
                                      "task_ids": ["dev.json#0"], "repeats": 1})  # fmt: skip
    task = store.task_id("os", "builtin", "dev", "dev.json#0", "0" * 64)
    store.record_episode(EpisodeRecord(older.id, store.model_id("sha256:" + "cd" * 32, "default"), task, 0,
                                       "completed", 1.0))  # fmt: skip
    app = MonitorApp(open_monitor_store(path), source="test")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        for run_id, envs in ((newer, "db"), (older.id, "os")):
            await open_run(pilot, run_id)
            summary = str(app.screen.query_one("#eval-summary", Static).content)
            assert f"default on {envs} (dev)" in summary, summary
            await pilot.press("escape")
            await pilot.pause()


async def test_an_episode_in_flight_is_a_running_row_with_its_round_and_tokens_until_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "flight.db"
    store = open_store(path)
    run = store.create_run("eval", {"model": "default", "tasks": ["os"], "split": "dev", "planned_episodes": 2})
    model = store.model_id("sha256:" + "ef" * 32, "default")
    done, long = (store.task_id("os", "builtin", "dev", key, "0" * 64) for key in ("os-dev-3", "os-dev-7"))
    store.record_episode(EpisodeRecord(run.id, model, done, 0, "completed", 1.0, rounds=2, prompt_tokens=300,
                                       completion_tokens=40))  # fmt: skip
    # Written as the orchestrator writes it after the model's third reply, 4m12s after the episode began.
    key = EpisodeKey(run.id, model, long, 0)
    store.record_in_flight(key, EpisodeProgress(3, 1200, 1536, NOW - timedelta(minutes=4, seconds=12)))
    app = pinned_app(path, refresh_s=0.1)
    said: list[str] = []
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        monkeypatch.setattr(app, "notify", lambda message, **_: said.append(message))
        await open_run(pilot, run.id)
        episodes = app.screen.query_one(EpisodesTable)
        rows = list(table_rows(episodes).values())
        assert rows[0] == ["–", "os", "os-dev-7", "0", "running", "–", "3", "2736", "–"]  # first, above the committed
        assert [row[4] for row in rows[1:]] == ["completed"]
        summary = str(app.screen.query_one("#eval-summary", Static).content)
        assert "episodes 1/2 · " in summary and summary.endswith(" · in flight 1, longest 4m12s")
        episodes.move_cursor(row=0)
        await pilot.press("enter")  # nothing of it is stored yet: said so, and the screen stays
        assert isinstance(app.screen, EvalScreen) and said == [
            "this episode is still running: its transcript is stored when it ends"
        ]
        store.record_episode(EpisodeRecord(run.id, model, long, 0, "episode_timeout", 0.0, rounds=3,
                                           prompt_tokens=1200, completion_tokens=1536))  # fmt: skip
        await wait_until(pilot, lambda: all(row[4] != "running" for row in table_rows(episodes).values()))
        assert [row[4:7] for row in table_rows(episodes).values()] == [
            ["episode_timeout", "0.00", "3"], ["completed", "1.00", "2"]]  # fmt: skip

        def summary_now() -> str:
            return str(app.screen.query_one("#eval-summary", Static).content)

        await wait_until(pilot, lambda: "episodes 2/2 · " in summary_now())  # it refreshes apart from the table
        assert "in flight" not in summary_now()


# -- reads off the UI loop ------------------------------------------------------------------------------------------


@dataclass
class QueryLog:
    """The store's queries that the screens call, wrapped where each screen's module looks them up: which threads ran
    each, and the most that ran at once. Each wrapped query takes `hold_s` longer, so that reads allowed to overlap
    would."""

    hold_s: float = 0.0
    threads: dict[str, set[int]] = field(default_factory=dict)
    most_at_once: int = 0
    running: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wrap(self, monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str) -> None:
        query: Callable[..., object] = getattr(module, name)

        def logged(*args: object, **kwargs: object) -> object:
            with self.lock:
                self.running += 1
                self.most_at_once = max(self.most_at_once, self.running)
                self.threads.setdefault(name, set()).add(threading.get_ident())
            try:
                time.sleep(self.hold_s)
                return query(*args, **kwargs)
            finally:
                with self.lock:
                    self.running -= 1

        monkeypatch.setattr(module, name, logged)


async def test_every_screen_reads_the_store_in_a_worker_thread_one_read_at_a_time(
    snapshot_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = QueryLog(hold_s=0.01)
    for module, name in [
        (runs_screen, "run_summaries"),
        (eval_screen, "recent_episodes"),
        (episode_screen, "episode_detail"),
        (evolution_screen, "archive_views"),
        (evolution_screen, "lineage"),
    ]:
        log.wrap(monkeypatch, module, name)
    app = pinned_app(snapshot_db, refresh_s=0.02)  # polls all the while, beside each screen's first read
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await open_run(pilot, EVAL_RUN)
        await pilot.press("down", "down", "down", "enter")
        assert isinstance(app.screen, EpisodeScreen) and app.screen.query(Transcript)
        await pilot.press("escape", "escape")
        await open_run(pilot, EVOLVE_RUN)
        assert isinstance(app.screen, EvolutionScreen)
        await pilot.press("left", "enter")  # cell (2, 1) holds child 1: its lineage is read
        await wait_until(pilot, lambda: " child g1 " in tree_labels(app.screen.query_one(LineageTree))[0])
        await pilot.pause(0.1)
    ui_loop = threading.get_ident()  # this test runs on the app's loop
    assert set(log.threads) == {"run_summaries", "recent_episodes", "episode_detail", "archive_views", "lineage"}
    assert all(ui_loop not in threads for threads in log.threads.values()), log.threads
    assert log.most_at_once == 1 and app.poll_errors == 0


async def test_a_failed_read_is_shown_and_counted_and_the_next_poll_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(tmp_path / "flaky.db")
    first = store.create_run("eval", {"tasks": ["os"], "limit": 1, "repeats": 1})
    failing = threading.Event()
    read_runs = runs_screen.run_summaries

    def flaky(*args: object, **kwargs: object) -> object:
        if failing.is_set():
            raise OperationalError("SELECT runs", {}, sqlite3.OperationalError("disk I/O error"))
        return read_runs(*args, **kwargs)

    monkeypatch.setattr(runs_screen, "run_summaries", flaky)
    app = MonitorApp(open_monitor_store(tmp_path / "flaky.db"), source="test", refresh_s=60)  # polled by `r` only
    said: list[str] = []
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        monkeypatch.setattr(app, "notify", lambda message, **_: said.append(message))
        runs = app.screen.query_one(RunsTable)
        assert list(table_rows(runs)) == [first.id]
        failing.set()
        late = store.create_run("eval", {"tasks": ["db"], "limit": 1, "repeats": 1})
        await pilot.press("r")
        assert app.poll_errors == 1 and len(said) == 1
        assert said[0].startswith("reading the store failed: OperationalError: (sqlite3.OperationalError) disk I/O")
        assert list(table_rows(runs)) == [first.id]  # what was shown stays until a read succeeds
        failing.clear()
        await pilot.press("r")
        assert list(table_rows(runs)) == [late.id, first.id] and app.poll_errors == 1


async def test_a_read_that_ends_after_its_screen_was_covered_is_not_shown_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(tmp_path / "slow.db")
    first = store.create_run("eval", {"tasks": ["os"], "limit": 1, "repeats": 1})
    entered, release = threading.Event(), threading.Event()
    read_runs = runs_screen.run_summaries

    def slow(*args: object, **kwargs: object) -> object:
        if not release.is_set():
            entered.set()
            release.wait(timeout=10)
        return read_runs(*args, **kwargs)

    app = MonitorApp(open_monitor_store(tmp_path / "slow.db"), source="test", refresh_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        runs = app.screen.query_one(RunsTable)
        monkeypatch.setattr(runs_screen, "run_summaries", slow)
        late = store.create_run("eval", {"tasks": ["db"], "limit": 1, "repeats": 1})
        poll = asyncio.create_task(app.poll())
        await asyncio.to_thread(entered.wait, 10)
        app.push_screen(EvalScreen(first.id, app.live_source))  # its first read waits for the poll's turn to end
        release.set()
        await poll
        await pilot.pause()
        assert isinstance(app.screen, EvalScreen)
        assert str(app.screen.query_one("#eval-summary", Static).content).startswith(first.id)
        assert list(table_rows(runs)) == [first.id]  # the runs list was covered before its read ended
        await pilot.press("escape")
        assert list(table_rows(runs)) == [late.id, first.id]  # and is read again as it comes back


class OneHeatmap(App[None]):
    def __init__(self, archive: ArchiveView, width: int) -> None:
        super().__init__()
        self.archive, self.width = archive, width

    def compose(self) -> ComposeResult:
        yield Heatmap(self.archive)

    def on_mount(self) -> None:
        self.query_one(Heatmap).styles.width = self.width
        self.query_one(Heatmap).focus()


async def test_a_paper_sized_archive_fits_in_half_blocks_and_one_bc_is_one_row() -> None:
    cells = {(0, 0): CellView(1, 0.2, 1), (14, 14): CellView(2, 0.9, 5), (7, 3): CellView(3, 0.5, 2)}
    square = ArchiveView(1, 0, "os", 15, ["db", "coding"], [[0.0, 1.0]] * 2, cells)
    async with OneHeatmap(square, width=26).run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        heatmap = pilot.app.query_one(Heatmap)
        lines = heatmap.render().plain.splitlines()
        assert heatmap.cursor == (14, 14) and heatmap.size.height == 8 + 1  # 15 rows in 8 lines, and the caption
        assert lines[:8] == ["▀" * 15] * 8 and lines[8] == "(14,14) 0.900 #2 g5"
        await pilot.press(*["left"] * 7, *["down"] * 11)
        assert heatmap.caption() == "(7,3) 0.500 #3 g2"
    row = ArchiveView(2, 1, "db", 5, ["os"], [[0.0, 1.0]], {(3,): CellView(4, 0.42, 3)})
    async with OneHeatmap(row, width=26).run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        heatmap = pilot.app.query_one(Heatmap)
        assert heatmap.render().plain.splitlines() == [" ·  ·  ·  42 · ", "(3) 0.420 #4 g3"]
        assert heatmap.border_subtitle == "x os · 20%"


async def test_a_long_transcript_scrolls_to_its_end(snapshot_db: Path) -> None:
    app = pinned_app(snapshot_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("down", "down", "enter", "down", "down", "down", "enter")
        await pilot.pause()
        transcript = app.screen.query_one(Transcript)
        assert transcript.has_focus and transcript.max_scroll_y > 0 and transcript.scroll_y == 0
        await pilot.press("end")
        await wait_until(pilot, lambda: transcript.scroll_y == transcript.max_scroll_y)
        assert transcript.query(MessageBlock).last().text == TRANSCRIPT[-1]["content"]


def test_the_monitor_cannot_write_to_the_store(tmp_path: Path) -> None:
    open_store(tmp_path / "ro.db").create_run("eval", {})
    monitor = open_monitor_store(tmp_path / "ro.db")
    with pytest.raises(OperationalError, match="readonly"), monitor.session() as session:
        session.add(Run(id="x", kind="eval", config={}))
        session.flush()


def test_a_missing_or_foreign_store_is_a_clear_error_and_nothing_is_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tui.py"), "--db", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and f"{missing}: no such store" in " ".join(done.stderr.split())
    assert not missing.exists() and not (tmp_path / "cycleqd.db").exists()
    foreign = tmp_path / "other.sqlite"
    sqlite3.connect(foreign).execute("CREATE TABLE notes (body TEXT)").connection.commit()
    with pytest.raises(StoreOpenError, match="not a cycleqd store"):
        open_monitor_store(foreign)
    (tmp_path / "junk.db").write_text("not a database at all\n" * 50)
    with pytest.raises(StoreOpenError, match="not an SQLite database"):
        open_monitor_store(tmp_path / "junk.db")
    with pytest.raises(SystemExit) as exited:
        run_tui(missing)
    assert exited.value.code == 2 and not missing.exists()


# -- snapshots at 80 × 24 ------------------------------------------------------------------------------------------


def test_snapshot_runs_list(snap_compare, snapshot_db: Path) -> None:  # noqa: ANN001
    assert snap_compare(pinned_app(snapshot_db), terminal_size=(80, 24))


def test_snapshot_eval_run(snap_compare, snapshot_db: Path) -> None:  # noqa: ANN001
    assert snap_compare(pinned_app(snapshot_db), press=["down", "down", "enter"], terminal_size=(80, 24))


def test_snapshot_episode(snap_compare, snapshot_db: Path) -> None:  # noqa: ANN001
    keys = ["down", "down", "enter", "down", "down", "down", "enter"]
    assert snap_compare(pinned_app(snapshot_db), press=keys, terminal_size=(80, 24))


def test_snapshot_episode_keys(snap_compare, snapshot_db: Path) -> None:  # noqa: ANN001
    keys = ["down", "down", "enter", "down", "down", "down", "enter", "question_mark"]
    assert snap_compare(pinned_app(snapshot_db), press=keys, terminal_size=(100, 30))


async def test_the_one_shot_is_context_and_the_verdict_says_why(snapshot_db: Path) -> None:
    app = pinned_app(snapshot_db)
    async with app.run_test(size=(80, 24)) as pilot:
        for key in ["down", "down", "enter", "down", "down", "down", "enter"]:
            await pilot.press(key)
        await pilot.pause()
        assert isinstance(app.screen, EpisodeScreen)
        [context] = app.screen.query("#context")
        folded = [b.border_title for b in context.query(MessageBlock)]
        assert folded == ["prompt", *["example reply", "example observation"] * 2, "example reply"]
        titles = [b.border_title for b in app.screen.query(MessageBlock)]
        assert titles[len(folded) :] == ["task", "action 1", "observation 1", "action 2"]  # the model acted twice
        meta = str(app.screen.query_one("#episode-meta", Static).content)
        assert "PASSED · answer '87' · expected the answer '87'" in meta
        await pilot.press("question_mark")
        await pilot.pause()
        assert app.screen.query("HelpPanel")
        await pilot.press("question_mark")
        await pilot.pause()
        assert not app.screen.query("HelpPanel")


def test_snapshot_evolution(snap_compare, snapshot_db: Path) -> None:  # noqa: ANN001
    assert snap_compare(pinned_app(snapshot_db), press=["down", "enter"], terminal_size=(80, 24))


def test_snapshot_evolution_lineage(snap_compare, snapshot_db: Path) -> None:  # noqa: ANN001
    assert snap_compare(pinned_app(snapshot_db), press=["down", "enter", "enter"], terminal_size=(80, 24))

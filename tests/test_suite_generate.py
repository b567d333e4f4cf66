"""`cycleqd suite generate db` says where it stands and keeps its defaults proportionate; MariaDB is replaced by a
stand-in that keeps every draft, so this needs no Docker (tests/test_training_data.py generates on the real one)."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cycleqd.envs.db import generate as db_generate
from cycleqd.suite import generate
from tests.cli_in_process import Run


class NoServer:
    """Where the MariaDB server would be: the stand-in `solve` never asks it anything."""

    def __init__(self, *_: object) -> None:
        pass

    async def __aenter__(self) -> NoServer:
        return self

    async def __aexit__(self, *_: object) -> None:
        pass


@pytest.fixture
def solved(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each draft's description as the stand-in solves it (every draft is kept, its label a made-up value)."""
    calls: list[str] = []

    async def solve(record: dict[str, Any], _server: object) -> dict[str, Any]:
        calls.append(record["description"])
        await asyncio.sleep(0)
        return {**record, "label": ["1"]}

    monkeypatch.setattr(db_generate, "solve", solve)
    monkeypatch.setattr(db_generate, "MariaDBServer", NoServer)
    monkeypatch.setattr(generate, "build_images", lambda *_: None)
    monkeypatch.setattr(generate, "docker_client", lambda: None)
    monkeypatch.setattr(generate, "docker_starter", lambda *_: None)
    return calls


def test_a_generation_says_when_each_split_begins_and_ends(solved: list[str], tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    counts = {"train": 12, "dev": 3, "test": 4}
    generate.run_generate(tmp_path / "suite", counts, 0, Console(file=out), Console(file=err))
    lines = err.getvalue().splitlines()
    said = [re.sub(r"\d+s\b", "Ns", line) for line in lines]  # how long each took is the clock's
    assert said == [
        "test: generating 4 tasks (about Ns)", "test: 4 tasks in Ns",
        "dev: generating 3 tasks (about Ns)", "dev: 3 tasks in Ns",
        "train: generating 12 tasks (about Ns)", "train: 12 tasks in Ns",
    ]  # fmt: skip
    assert lines[4] == f"train: generating 12 tasks (about {int(12 / generate.TASKS_PER_SECOND)}s)"
    assert out.getvalue().splitlines() == [f"{tmp_path}/suite/{s}.jsonl: {n} tasks" for s, n in counts.items()]


def test_each_task_is_reported_as_it_is_kept_and_no_surplus_draft_is_solved(solved: list[str]) -> None:
    """Drafts were solved in one gather of count x 5/4: the bar stood at 0 until the last of them (eleven minutes
    for the default train), and a quarter more databases were made than a split that keeps every draft needs."""
    events: list[tuple[str, int]] = []
    real_solve = db_generate.solve

    async def counted(record: dict[str, Any], server: object) -> dict[str, Any] | None:
        events.append(("solve", len(solved)))
        return await real_solve(record, server)

    db_generate.solve = counted  # restored by the fixture's monkeypatch
    count, concurrency = 40, 4
    tasks = asyncio.run(db_generate.generate_split(count, 5, None, set(), concurrency=concurrency,  # type: ignore[arg-type]
                                                   progress=lambda n: events.append(("kept", n))))  # fmt: skip
    assert len(tasks) == count
    assert [n for kind, n in events if kind == "kept"] == list(range(1, count + 1))
    solves = [i for i, (kind, _) in enumerate(events) if kind == "solve"]
    assert events.index(("kept", 1)) < solves[-1]  # reported while drafts were still being solved
    assert count <= len(solves) <= count + concurrency  # was count * 5 // 4 + 1 = 51


def test_the_defaults_are_what_help_says(run_cli: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    asked: list[dict[str, int]] = []
    monkeypatch.setattr(generate, "run_generate", lambda _out, counts, *_: asked.append(counts) or 0)
    code, text, _ = run_cli("suite", "generate", "--help")
    help_text = " ".join(text.split())
    defaults = {o: int(n) for o, n in re.findall(r"--(train|dev|test) INTEGER .*?\[default: (\d+)\]", help_text)}
    assert run_cli("suite", "generate", "db", "--out", str(tmp_path / "suite"))[0] == 0
    assert asked == [defaults] and defaults == {"train": 300, "dev": 60, "test": 120}
    minutes = round(sum(defaults.values()) / generate.TASKS_PER_SECOND / 60)
    large = round((2000 + defaults["dev"] + defaults["test"]) / generate.TASKS_PER_SECOND / 60)
    assert f"the defaults take about {minutes} minutes, --train 2000 about {large})" in help_text

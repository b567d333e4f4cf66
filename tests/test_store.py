"""The results store on a real SQLite file: schema by migration, WAL, keys that forbid double counting, and
commits that survive a killed writer."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from cycleqd.db import DuplicateEpisodeError, EpisodeRecord, open_store
from cycleqd.db.schema import Aggregate, Base
from cycleqd.db.store import MIGRATIONS, EpisodeKey, StoreOpenError, check_store_file


@pytest.fixture
def store(tmp_path: Path):  # noqa: ANN201
    return open_store(tmp_path / "cycleqd.db")


def seed(store) -> tuple[str, int, int]:  # noqa: ANN001
    run = store.create_run("eval", {"tasks": ["os"], "limit": 3})
    model = store.model_id("sha256:abc", "/models/default")
    task = store.task_id("os", "builtin", "dev", "dev.json#0", "c0ffee")
    return run.id, model, task


def newest_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def test_a_new_file_gets_the_migrated_schema_in_wal_mode(tmp_path: Path) -> None:
    store = open_store(tmp_path / "fresh.db")
    with store.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == newest_revision()
        # The migration and the ORM models describe the same schema.
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    open_store(tmp_path / "fresh.db")  # opening again migrates nothing and loses nothing


def test_opening_a_store_leaves_nothing_beside_it(tmp_path: Path) -> None:
    store = open_store(tmp_path / "fresh.db")  # a new file: migrated under the lock
    seed(store)
    store.engine.dispose()  # the last connection gone: SQLite removes its -wal and -shm
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.db"]


def test_the_migration_lock_excludes_a_waiter_across_its_removal(tmp_path: Path) -> None:
    """The holder removes the lock file before letting go; one that waited on that file must not take the
    removed one for the lock while a third process locks a new file at the same path."""
    from cycleqd.db.store import _migration_lock

    path = tmp_path / "s.db"
    holding, release, inside = threading.Event(), threading.Event(), []

    def first() -> None:
        with _migration_lock(path):
            holding.set()
            release.wait(10)
            inside.append("first out")

    def second() -> None:
        with _migration_lock(path):  # flock is per open file: a thread of this process waits as a process would
            # its own: a new file where the first one's was, not the removed one it waited on
            inside.append(f"second in, lock file there: {Path(f'{path}.migrate-lock').is_file()}")

    one = threading.Thread(target=first)
    one.start()
    assert holding.wait(10)
    two = threading.Thread(target=second)
    two.start()
    two.join(0.3)
    assert inside == []  # still waiting
    release.set()
    one.join(10)
    two.join(10)
    assert inside == ["first out", "second in, lock file there: True"]
    assert list(tmp_path.iterdir()) == []


def test_episodes_round_trip_with_their_transcripts(store) -> None:  # noqa: ANN001
    run_id, model, task = seed(store)
    transcript = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Act: answer(3)"}]
    record = EpisodeRecord(run_id, model, task, 0, "completed", 1.0, rounds=2, prompt_tokens=120,
                           completion_tokens=9, latency_s=0.7, transcript=transcript)  # fmt: skip
    store.record_episode(record)
    [episode] = store.episodes(run_id)
    assert (episode.status, episode.score, episode.rounds, episode.prompt_tokens) == ("completed", 1.0, 2, 120)
    assert episode.transcript == transcript and episode.finished_at >= episode.started_at
    assert store.model_id("sha256:abc", "elsewhere") == model  # one row per identity
    assert store.task_id("os", "builtin", "dev", "dev.json#0", "c0ffee") == task
    assert store.task_id("os", "builtin", "dev", "dev.json#0", "changed") != task  # edited task: a new row


def test_an_episode_cannot_be_counted_twice(store) -> None:  # noqa: ANN001
    run_id, model, task = seed(store)
    store.record_episode(EpisodeRecord(run_id, model, task, 0, "completed", 1.0))
    with pytest.raises(DuplicateEpisodeError, match=f"run {run_id}"):
        store.record_episode(EpisodeRecord(run_id, model, task, 0, "completed", 0.0))
    store.record_episode(EpisodeRecord(run_id, model, task, 1, "env_error", None, error="init failed"))
    assert store.done_keys(run_id) == {EpisodeKey(run_id, model, task, 0), EpisodeKey(run_id, model, task, 1)}
    assert [e.score for e in store.episodes(run_id)] == [1.0, None]


def test_foreign_keys_are_enforced(store) -> None:  # noqa: ANN001
    _, model, task = seed(store)
    with pytest.raises(IntegrityError):
        store.record_episode(EpisodeRecord("no-such-run", model, task, 0, "completed", 1.0))


def test_runs_and_aggregates(store) -> None:  # noqa: ANN001
    run_id, model, _ = seed(store)
    store.set_run_status(run_id, "completed")
    assert store.get_run(run_id).status == "completed" and store.get_run(run_id).finished_at is not None
    assert [r.id for r in store.list_runs()] == [run_id]
    store.save_aggregate(Aggregate(run_id=run_id, model_id=model, env="os", split="dev", episodes=3, score=0.5))
    store.save_aggregate(Aggregate(run_id=run_id, model_id=model, env="os", split="dev", episodes=4, score=0.75))
    [aggregate] = store.aggregates(run_id)
    assert (aggregate.episodes, aggregate.score) == (4, 0.75)
    with pytest.raises(KeyError, match="no run"):
        store.set_run_status("nope", "failed")


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    run_id, model, _ = seed(open_store(path))
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        mine = open_store(path)  # its own engine, as another process would have
        try:
            for i in range(50):
                task = mine.task_id("os", "s", "dev", f"w{worker}-{i}", "h")
                mine.record_episode(EpisodeRecord(run_id, model, task, 0, "completed", 1.0))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(open_store(path).episodes(run_id)) == 200


def test_a_store_is_known_as_one_while_another_process_checkpoints_it(tmp_path: Path) -> None:
    """Each new engine first asks whether the file is a store, without a lock; a checkpoint copying the WAL into
    the file under it made SQLite call the file malformed, and `open_store` refused a good store (seen in CI)."""
    path = tmp_path / "busy.db"
    store = open_store(path)
    run_id, model, _ = seed(store)
    writing = threading.Event()
    writing.set()

    def checkpoint_in_a_loop() -> None:
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as other:
            while writing.is_set():
                other.execute("PRAGMA wal_checkpoint(PASSIVE)")

    checkpointer = threading.Thread(target=checkpoint_in_a_loop)
    checkpointer.start()
    refused: list[str] = []
    try:
        for i in range(400):
            task = store.task_id("os", "s", "dev", f"t{i}", "h")
            store.record_episode(EpisodeRecord(run_id, model, task, 0, "completed", 1.0))
            try:
                check_store_file(path)
            except StoreOpenError as exc:
                refused.append(str(exc))
    finally:
        writing.clear()
        checkpointer.join()
    assert refused == []


def test_a_damaged_store_is_named_so_and_a_foreign_file_is_not_a_store(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.db"
    open_store(damaged).engine.dispose()  # the last connection's close copies the WAL into the file
    page = bytearray(damaged.read_bytes())
    page[100:4096] = b"\xff" * (4096 - 100)  # the header stays; the schema page after it is gone
    damaged.write_bytes(bytes(page))
    with pytest.raises(StoreOpenError, match="the store is damaged"):
        open_store(damaged, create=False)
    foreign = tmp_path / "notes.db"
    foreign.write_bytes(b"not a database " * 500)
    with pytest.raises(StoreOpenError, match="not an SQLite database"):
        open_store(foreign, create=False)


def test_committed_episodes_survive_a_killed_writer(tmp_path: Path) -> None:
    path = tmp_path / "killed.db"
    run_id, model, task = seed(open_store(path))
    script = textwrap.dedent(
        f"""
        import sys, time
        from cycleqd.db import EpisodeRecord, open_store
        store = open_store({str(path)!r})
        for repeat in range(5):
            store.record_episode(EpisodeRecord({run_id!r}, {model}, {task}, repeat, "completed", 1.0))
        print("committed", flush=True)
        time.sleep(600)
        """
    )
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stdout.readline().strip() == "committed"
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    assert sorted(e.repeat for e in open_store(path).episodes(run_id)) == [0, 1, 2, 3, 4]


@contextlib.contextmanager
def store_at_revision(path: Path, revision: str) -> Iterator[Connection]:
    """A store migrated only up to `revision`, with run 'r' and model 1, for a test to fill as it stood then."""
    from alembic import command

    from cycleqd.db.store import make_engine

    engine = make_engine(path)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.execute(text("INSERT INTO runs (id, kind, status, config, created_at) VALUES "
                                "('r', 'eval', 'completed', '{}', '2026-01-01')"))  # fmt: skip
        connection.execute(text("INSERT INTO models (id, identity, reference, created_at) VALUES "
                                "(1, 'sha256:x', '/m', '2026-01-01')"))  # fmt: skip
        yield connection
    engine.dispose()


def test_episodes_stored_before_0019_get_their_context_length_by_environment(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with store_at_revision(path, "0002") as connection:
        for task_id, env in enumerate(("os", "db", "coding"), 1):
            connection.execute(text(f"INSERT INTO tasks (id, env, suite, split, task_key, content_hash) VALUES "
                                    f"({task_id}, '{env}', 'builtin', 'dev', 'k{task_id}', 'h')"))  # fmt: skip
            connection.execute(text(
                "INSERT INTO episodes (run_id, model_id, task_id, repeat, status, score, rounds, prompt_tokens, "
                "completion_tokens, latency_s, transcript, started_at, finished_at) VALUES "
                f"('r', 1, {task_id}, 0, 'completed', 1.0, 1, 1, 1, 0.1, '[]', '2026-01-01', '2026-01-01')"
            ))  # fmt: skip
    store = open_store(path)  # migrates to the head
    contexts = {store.tasks()[e.task_id - 1].env: (e.context_messages, e.verdict) for e in store.episodes("r")}
    assert contexts == {"os": (7, {}), "db": (3, {}), "coding": (1, {})}
    # The revision's numbers are what the environments write today (a change there needs no migration, but a check).
    from cycleqd.envs.os.prompt import first_messages

    assert len(first_messages("a task")) == 7


def test_aggregates_stored_before_0020_with_nothing_scored_lose_their_mean(tmp_path: Path) -> None:
    """They held 0.0, as if the model had failed every task; an environment with no scored episode has no mean."""
    path = tmp_path / "old.db"
    with store_at_revision(path, "0019") as connection:
        for env, episodes, errors, score in (("os", 3, 3, 0.0), ("db", 3, 1, 0.0), ("coding", 2, 0, 0.5)):
            connection.execute(text(
                "INSERT INTO aggregates (run_id, model_id, env, split, episodes, errors, score, metrics, wall_s) "
                f"VALUES ('r', 1, '{env}', 'dev', {episodes}, {errors}, {score}, '{{}}', 1.0)"
            ))  # fmt: skip
    store = open_store(path)  # migrates to the head
    assert {a.env: a.score for a in store.aggregates("r")} == {"os": None, "db": 0.0, "coding": 0.5}


async def test_an_eval_interrupted_before_0022_resumes_on_the_migrated_store(tmp_path: Path, echo_environment) -> None:  # noqa: ANN001
    """A run stored under revision 0021, its request without an episode time limit and one of its two episodes in:
    the store migrates, the request reads back with the default limit, the resume clears a row in flight that a
    killed process left, and plays only the other episode, through a row in flight that its commit removes."""
    from datetime import UTC, datetime

    from cycleqd.db.monitor_store import open_monitor_store
    from cycleqd.db.schema import RunStatus
    from cycleqd.db.store import EpisodeProgress
    from cycleqd.envs.registry import EPISODE_TIME_LIMIT_S
    from cycleqd.eval.orchestrator import EpisodeRound, Orchestrator
    from cycleqd.eval.runtime import EnvRuntime
    from cycleqd.eval_request import EvalRequest
    from cycleqd.monitor.queries.eval_run import episodes_in_flight
    from cycleqd.serving.model_ref import ExternalEndpoint
    from tests.memory_sandbox import MemoryStarter
    from tests.scripted_model import ScriptedModel

    path = tmp_path / "old.db"
    old_request = {k: v for k, v in EvalRequest(tasks=("echo",)).snapshot().items() if k != "episode_timeout"}
    tasks = EvalRequest.from_snapshot(old_request).planned_tasks()  # banana, river
    with store_at_revision(path, "0021") as connection:
        connection.execute(text("UPDATE runs SET status = 'interrupted', config = :config"),
                           {"config": json.dumps(old_request)})  # fmt: skip
        for task_id, task in enumerate(tasks, 1):
            connection.execute(text("INSERT INTO tasks (id, env, suite, split, task_key, content_hash) VALUES "
                                    "(:id, :env, :suite, :split, :key, :hash)"),
                               {"id": task_id, "env": task.env, "suite": task.suite, "split": task.split,
                                "key": task.key, "hash": task.content_hash})  # fmt: skip
        connection.execute(text(
            "INSERT INTO episodes (run_id, model_id, task_id, repeat, status, score, rounds, prompt_tokens, "
            "completion_tokens, latency_s, transcript, started_at, finished_at) VALUES "
            "('r', 1, 1, 0, 'completed', 1.0, 1, 1, 1, 0.1, '[]', '2026-01-01', '2026-01-01')"
        ))  # fmt: skip
    assert episodes_in_flight(open_monitor_store(path), "r") == []  # the monitor reads it as it is, unmigrated
    store = open_store(path)  # migrates to the head
    request = EvalRequest.from_snapshot(store.get_run("r").config)
    assert request.episode_timeout == EPISODE_TIME_LIMIT_S == request.settings().episode.time_limit_s
    killed = EpisodeProgress(4, 900, 512, datetime(2026, 1, 1, tzinfo=UTC))  # what a process killed mid-episode left
    store.record_in_flight(EpisodeKey("r", 1, 2, 0), killed)
    store.set_run_status("r", RunStatus.RUNNING)  # as a resume does: nothing of the run is in flight yet
    assert episodes_in_flight(store, "r") == []
    model = ScriptedModel(lambda messages: messages[-1]["content"].split()[-1])
    await model.serve(ExternalEndpoint("scripted://", "m"))
    rows_seen: list[int] = []

    def heard(event: EpisodeRound) -> None:
        rows_seen.append(len(episodes_in_flight(store, "r")))

    settings = request.settings()
    async with EnvRuntime.of(tasks, run_id="r", max_sandboxes=2, settings=settings.episode,
                             start_sandbox=MemoryStarter()) as runtime:  # fmt: skip
        await Orchestrator(store, "r", model, 1, settings, on_round=heard).run(tasks, runtime)
    assert model.requests == 1 and rows_seen == [1, 1]  # the one episode left, in flight as it began and replied
    assert [(e.task_id, e.score) for e in store.episodes("r")] == [(1, 1.0), (2, 1.0)]
    assert episodes_in_flight(store, "r") == []


def test_moments_come_back_in_utc_and_statuses_as_enums(store, tmp_path: Path) -> None:  # noqa: ANN001
    from datetime import UTC, datetime, timedelta, timezone

    from sqlalchemy.exc import StatementError

    from cycleqd.db.schema import Run, RunKind, RunStatus

    run_id, _, _ = seed(store)
    run = store.get_run(run_id)
    assert run.created_at.tzinfo is UTC and abs(datetime.now(UTC) - run.created_at) < timedelta(minutes=1)
    assert run.status is RunStatus.RUNNING and run.kind is RunKind.EVAL  # the enums, not their strings
    with store.engine.connect() as connection:  # stored as before: the value in a VARCHAR, the moment in UTC
        stored = connection.execute(text("SELECT status, created_at FROM runs")).one()
    assert stored[0] == "running" and stored[1].startswith(run.created_at.strftime("%Y-%m-%d %H:%M"))
    east = datetime(2026, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=9)))
    with store.session() as session:
        session.get(Run, run_id).finished_at = east
    assert store.get_run(run_id).finished_at == east and store.get_run(run_id).finished_at.hour == 3
    # naive; not a status; not a kind
    for bad in ({"finished_at": datetime(2026, 6, 1, 12, 0)}, {"status": "finshed"}, {"kind": "evolution"}):
        with pytest.raises(StatementError), store.session() as session:
            for field, value in bad.items():
                setattr(session.get(Run, run_id), field, value)
    from cycleqd.db.evolution_store import EvolutionStore
    from cycleqd.db.schema import CandidateKind, CandidateStatus

    evo = EvolutionStore(store, run_id)
    child = evo.add_candidate("child", 1, 0)  # a string of the vocabulary is taken, and read back as the enum
    assert evo.candidate(child.id).kind is CandidateKind.CHILD and child.status is CandidateStatus.PENDING
    with pytest.raises(StatementError):
        evo.add_candidate("chlid", 1, 1)

"""DBBench on a real MariaDB: parsing, scoring, isolation between episodes, and gold replays."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cycleqd.envs.db.episode import (
    DBBenchEpisode,
    dbbench_metrics,
    parse_db_action,
    parse_final_answer,
    select_answer_correct,
)
from cycleqd.envs.db.mariadb import MariaDBServer
from cycleqd.envs.db.tasks import load_db_tasks, parse_db_task
from cycleqd.envs.episode import EpisodeStatus
from cycleqd.envs.errors import EpisodeSetupError, TaskFormatError
from cycleqd.eval.runtime import docker_starter
from cycleqd.eval.tasks import EvalTask
from cycleqd.sandboxes.images import build_images
from cycleqd.sandboxes.limits import SandboxLimits
from cycleqd.suite.verify import verify_suite

SHARED_DB = Path(__file__).resolve().parents[2] / "shared" / "data" / "agentbench" / "AgentBench" / "dbbench"
needs_shared = pytest.mark.skipif(not SHARED_DB.exists(), reason=f"the shared DBBench data is not at {SHARED_DB}")
BUILTIN_DB = Path(__file__).resolve().parents[1] / "envs" / "data" / "db"


def make_task(
    category: str = "counting", label: list | None = None, answer_md5: str | None = None, name: str = "scores"
):
    record = {
        "description": "How many players scored more than 10?",
        "add_description": f"The name of this table is {name}, and the headers of this table are player,points.",
        "table": {
            "table_name": name,
            "table_info": {
                "columns": [{"name": "player", "type": "TEXT"}, {"name": "points", "type": "TEXT"}],
                "rows": [["ann", "12"], ["bob", "7"], ["cid", "15"]],
            },
        },
        "type": [category],
        "label": label if label is not None else ["2"],
    }
    if answer_md5 is not None:
        record["answer_md5"] = answer_md5
    return parse_db_task(record, "inline.jsonl", 0)


@pytest.fixture(scope="module")
async def db_server(docker_engine):  # noqa: ANN001, ANN201
    build_images(docker_engine, ["mariadb"])
    async with MariaDBServer(docker_starter(None, SandboxLimits())) as server:
        yield server


# -- parsing and scoring -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "kind", "content"),
    [
        ("Action: Operation\n```sql\nSELECT 1;\n```", "operation", "SELECT 1;"),
        (
            "Action: Operation\n```sql\nSELECT a\nFROM t;\n```\n```sql\nDROP TABLE t;\n```",
            "operation",
            "SELECT a FROM t;",
        ),
        ("Action: Operation\nSELECT 1;", "invalid", None),  # no sql block
        ('Action: Answer\nFinal Answer: ["x"]', "answer", ' ["x"]'),
        ("Final Answer: 3", "invalid", None),  # the answer must start a line after something
        ("I think so.\nFinal Answer: 3", "answer", " 3"),
        ("Action: Operation", "invalid", None),  # AgentBench needs the newline after the action
    ],
)
def test_db_actions_parse_as_agentbench_does(reply: str, kind: str, content: str | None) -> None:
    action = parse_db_action(reply)
    assert (action.kind, action.content) == (kind, content)


def test_answers_are_literals_never_code() -> None:
    assert parse_final_answer(' ["a", 2]') == ["a", 2]
    assert parse_final_answer(" (1, 2)") == [1, 2]
    assert parse_final_answer(" Paris") == [" Paris"]
    assert parse_final_answer(" __import__('os').system('echo pwned')") == [" __import__('os').system('echo pwned')"]
    assert parse_final_answer(" 5") == [" 5"]  # not iterable: the text itself, as AgentBench's fallback


def test_select_scoring_follows_agentbench_v02() -> None:
    assert select_answer_correct(' ["2"]', ["2"]) and select_answer_correct(" [2.0]", ["2"])
    assert select_answer_correct(' ["b", "a"]', ["a", "b"]) and not select_answer_correct(' ["a"]', ["a", "b"])
    assert select_answer_correct(' ["Paris"]', ["Paris"]) and not select_answer_correct(' ["paris"]', ["Paris"])
    assert not select_answer_correct(" [[1], [2]]", [1, 2])


def test_metrics_average_the_three_kinds() -> None:
    results = [(make_task("counting"), 1.0), (make_task("ranking"), 0.0), (make_task("INSERT", ["x"], "h"), 1.0)]
    metrics = dbbench_metrics(results)
    assert metrics["SELECT_accuracy"] == 0.5 and metrics["INSERT_accuracy"] == 1.0
    assert metrics["overall_cat_accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["counting_accuracy"] == 1.0


def test_malformed_db_tasks_name_the_field(tmp_path: Path) -> None:
    good = (
        '{"description": "d", "table": {"table_name": "t", "table_info": {"columns": [{"name": "a"}], '
        '"rows": [["1"]]}}, "type": ["INSERT"], "label": ["x"], "answer_md5": "h"}'
    )
    bad_rows = good.replace('[["1"]]', '[["1", "2"]]')
    no_md5 = good.replace(', "answer_md5": "h"', "")
    bad_sql = good.replace(', "answer_md5": "h"', ', "answer_md5": "h", "sql": {"query": 3}')
    path = tmp_path / "t.jsonl"
    for line, field in ((bad_rows, "table.table_info.rows"), (no_md5, "answer_md5"), (bad_sql, "sql")):
        path.write_text(good + "\n" + line + "\n")
        with pytest.raises(TaskFormatError, match=f"t.jsonl, task 1: field '{field}'"):
            load_db_tasks(path)


def test_a_selects_gold_sql_is_read_but_leaves_the_task_identity_alone() -> None:
    record = {"description": "d", "table": {"table_name": "t", "table_info": {"columns": [{"name": "a"}],
              "rows": [["1"]]}}, "type": ["counting"], "label": ["1"]}  # fmt: skip
    plain = parse_db_task(record, "t.jsonl", 0)
    with_sql = parse_db_task(record | {"sql": {"query": "SELECT COUNT(*) FROM t"}}, "t.jsonl", 0)
    assert (plain.gold_sql, with_sql.gold_sql) == (None, "SELECT COUNT(*) FROM t")
    # Stored episodes are keyed by the content hash; gold-only fields must not move it.
    as_eval = [EvalTask("db", "builtin", "dev", "t.jsonl#0", task) for task in (plain, with_sql)]
    assert as_eval[0].content_hash == as_eval[1].content_hash
    changed = parse_db_task(record | {"label": ["2"]}, "t.jsonl", 0)
    assert EvalTask("db", "builtin", "dev", "t.jsonl#0", changed).content_hash != as_eval[0].content_hash


# -- real episodes -----------------------------------------------------------------------------------------------


async def test_operations_answer_and_errors(db_server: MariaDBServer) -> None:
    episode = DBBenchEpisode(make_task(), db_server)
    messages = await episode.begin()
    assert messages[0]["content"].startswith("\nI will ask you a question, then you should help me operate a MySQL")
    assert messages[1] == {"role": "assistant", "content": "Ok."}
    assert messages[2]["content"].startswith("How many players scored more than 10?\nThe name of this table is scores")
    rows = await episode.step(
        "Action: Operation\n```sql\nSELECT player FROM scores WHERE points + 0 > 10 ORDER BY player;\n```"
    )
    assert rows == "[('ann',), ('cid',)]"
    error = await episode.step("Action: Operation\n```sql\nSELECT * FROM nowhere;\n```")
    assert error.startswith("1146: Table") and "doesn't exist" in error
    two = await episode.step("Action: Operation\n```sql\nSELECT 1; SELECT 2;\n```")
    assert two.startswith("1064: You have an error in your SQL syntax")
    assert await episode.step('Action: Answer\nFinal Answer: ["2"]') is None
    outcome = await episode.outcome()
    assert (outcome.status, outcome.score, outcome.rounds) == (EpisodeStatus.COMPLETED, 1.0, 4)


async def test_round_limit_and_invalid_replies(db_server: MariaDBServer) -> None:
    from cycleqd.envs.db.episode import DBSettings

    episode = DBBenchEpisode(make_task(), db_server, DBSettings(round_limit=2))
    await episode.begin()
    operation = "Action: Operation\n```sql\nSELECT 1;\n```"
    assert await episode.step(operation) == "[(1,)]" and await episode.step(operation) == "[(1,)]"
    assert await episode.step(operation) is None
    assert (await episode.outcome()).status == EpisodeStatus.ROUND_LIMIT
    late = DBBenchEpisode(make_task(), db_server, DBSettings(round_limit=1))  # v0.2 reads the reply after the limit
    await late.begin()
    assert await late.step(operation) == "[(1,)]"
    assert await late.step(operation + '\nFinal Answer: ["2"]') is None
    assert ((await late.outcome()).status, late.operations) == (EpisodeStatus.COMPLETED, 1)
    invalid = DBBenchEpisode(make_task(), db_server)
    await invalid.begin()
    assert await invalid.step("The answer is two.") is None
    assert ((await invalid.outcome()).status, invalid.rounds) == (EpisodeStatus.INVALID_ACTION, 1)


async def test_modifications_are_scored_by_the_table_whatever_the_answer(db_server: MariaDBServer) -> None:
    gold = "INSERT INTO scores (player, points) VALUES ('dee', '9')"
    probe = DBBenchEpisode(make_task("INSERT", [gold], "unknown"), db_server)
    await probe.begin()
    await probe.step(f"Action: Operation\n```sql\n{gold}\n```")
    await probe.step("Action: Answer\nFinal Answer: []")
    expected = (await probe.outcome()).detail.split("table hash ")[1].split(", expected")[0]
    right = DBBenchEpisode(make_task("INSERT", [gold], expected), db_server)
    await right.begin()
    await right.step("Action: Operation\n```sql\nINSERT INTO scores VALUES ('dee', '9');\n```")
    await right.step('Action: Answer\nFinal Answer: ["anything at all"]')
    assert (await right.outcome()).score == 1.0
    wrong = DBBenchEpisode(make_task("INSERT", [gold], expected), db_server)
    await wrong.begin()
    await wrong.step("Action: Operation\n```sql\nINSERT INTO scores VALUES ('dee', '10');\n```")
    await wrong.step("Action: Answer\nFinal Answer: []")
    assert (await wrong.outcome()).score == 0.0
    from cycleqd.envs.db.episode import DBSettings

    for ending in ("no valid action at all", "Action: Operation\n```sql\nSELECT 1;\n```"):  # invalid, round limit
        unfinished = DBBenchEpisode(make_task("INSERT", [gold], expected), db_server, DBSettings(round_limit=1))
        await unfinished.begin()
        await unfinished.step(f"Action: Operation\n```sql\n{gold}\n```")
        assert await unfinished.step(ending) is None
        outcome = await unfinished.outcome()
        assert outcome.status != EpisodeStatus.COMPLETED and outcome.score == 1.0  # v0.2: the table decides


async def test_output_is_cut_as_agentbench_and_errors_name_mysql(db_server: MariaDBServer) -> None:
    episode = DBBenchEpisode(make_task(), db_server)
    await episode.begin()
    flood = "SELECT seq, REPEAT('x', 100) FROM seq_1_to_2000000"
    shown = await episode.step(f"Action: Operation\n```sql\n{flood}\n```")
    assert len(shown) == 800 + len("[TRUNCATED]") and shown.endswith("x[TRUNCATED]") and shown.startswith("[(1, ")
    assert await episode.step("Action: Operation\n```sql\nSELECT COUNT(*) FROM scores\n```") == "[(3,)]"
    error = await episode.step("Action: Operation\n```sql\nSELEC 1\n```")
    assert "MySQL server version" in error and "MariaDB" not in error


async def test_episodes_with_the_same_table_name_are_isolated(db_server: MariaDBServer) -> None:
    first, second = DBBenchEpisode(make_task(), db_server), DBBenchEpisode(make_task(), db_server)
    await asyncio.gather(first.begin(), second.begin())
    assert await first.step("Action: Operation\n```sql\nDELETE FROM scores;\n```") == "[]"
    assert await second.step("Action: Operation\n```sql\nSELECT COUNT(*) FROM scores;\n```") == "[(3,)]"
    snooping = await second.step("Action: Operation\n```sql\nSHOW DATABASES;\n```")
    assert first._db is not None and first._db.database not in snooping
    other = await second.step(f"Action: Operation\n```sql\nSELECT * FROM `{first._db.database}`.scores;\n```")
    assert other.startswith("1142:") or other.startswith("1044:")  # access denied
    for episode in (first, second):
        await episode.step("Action: Answer\nFinal Answer: []")
        await episode.outcome()


async def test_a_table_that_cannot_be_created_is_an_environment_error(db_server: MariaDBServer) -> None:
    record = {"description": "d", "table": {"table_name": "t", "table_info": {"columns": [{"name": ""}], "rows": []}},
              "type": ["counting"], "label": ["1"]}  # fmt: skip
    with pytest.raises(EpisodeSetupError, match="Incorrect column name"):
        await DBBenchEpisode(parse_db_task(record, "x.jsonl", 0), db_server).begin()


# -- gold replays ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_builtin_db_suite_verifies_completely(docker_engine) -> None:  # noqa: ANN001
    build_images(docker_engine, ["mariadb"])
    reports = await verify_suite(BUILTIN_DB, "db", concurrency=4)
    tasks = [load_db_tasks(Path(r.path)) for r in reports]
    kinds = [t.kind for file in tasks for t in file]
    assert len(kinds) >= 40 and {k: kinds.count(k) for k in set(kinds)} == {"SELECT": 19, "INSERT": 13, "UPDATE": 13}
    assert [(v.task_id, v.reason) for r in reports for v in r.verdicts if not v.passed] == []
    # A SELECT's gold replay queries with its own SQL and answers with what came back, as an agent would: that is
    # what SFT experts learn from.
    selects = {t.task_id: t for file in tasks for t in file if not t.modifies}
    for verdict in (v for r in reports for v in r.verdicts if v.task_id in selects):
        replies = [m["content"] for m in verdict.transcript[verdict.prompt_messages :] if m["role"] == "assistant"]
        assert len(replies) == 2 and selects[verdict.task_id].select_sql in replies[0], verdict.transcript
        assert "Final Answer:" in replies[1] and "reference" not in " ".join(replies)


@pytest.mark.slow
@needs_shared
async def test_dbbench_gold_modifications_reproduce_answer_md5(docker_engine) -> None:  # noqa: ANN001
    build_images(docker_engine, ["mariadb"])
    reports = await verify_suite(SHARED_DB, "db", concurrency=4)
    modifying = {f"{Path(r.path).name}#{t.index}" for r in reports for t in load_db_tasks(Path(r.path)) if t.modifies}
    verdicts = [v for r in reports for v in r.verdicts if v.task_id in modifying]
    passed = sum(1 for v in verdicts if v.passed)
    assert len(verdicts) == 240 and passed / len(verdicts) >= 0.99, [v for v in verdicts if not v.passed]

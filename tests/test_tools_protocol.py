"""The tools protocol (AgentBench FC) on the environments' side: the first request equals what FC's own source
builds, each turn rule's exact observation and round accounting on real sandboxes and a real MariaDB, the round
limits per protocol, and gold replays that pass under tools exactly where they pass as text.

FC's source is read from the AgentBench mirror when it is here (the differential tests skip without it); the turn
rules' expected texts are FC's, with file:line beside each in envs/os/actions.py and envs/db/episode.py.
"""

from __future__ import annotations

import ast
import json
import subprocess
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cycleqd.envs.coding.episode import CodingSettings, coding_episode
from cycleqd.envs.db.episode import DBBenchToolsEpisode, DBSettings
from cycleqd.envs.db.mariadb import MariaDBServer
from cycleqd.envs.db.tasks import load_db_tasks, parse_db_task
from cycleqd.envs.episode import AgentProtocol, EpisodeStatus, Message
from cycleqd.envs.os.actions import INVALID_FUNCTION, NO_TOOL_CALL, OSAction, read_os_call
from cycleqd.envs.os.env import os_settings
from cycleqd.envs.os.interaction import os_episode
from cycleqd.envs.os.tasks import parse_task
from cycleqd.envs.registry import EpisodeSettings, environment
from cycleqd.eval.orchestrator import EvalSettings, play
from cycleqd.eval.runtime import EnvRuntime, docker_starter
from cycleqd.eval.tasks import load_eval_tasks
from cycleqd.sandboxes.docker_sandbox import DockerSandbox
from cycleqd.sandboxes.images import build_images
from cycleqd.sandboxes.limits import SandboxLimits
from cycleqd.serving.model_ref import ExternalEndpoint
from cycleqd.suite.verify import gold_conversations, verify_suite
from tests.scripted_model import ScriptedModel

TOOLS = AgentProtocol.TOOLS
FC_REPO = Path(__file__).resolve().parents[2] / ".mirror" / "THUDM+AgentBench" / "repo"
BUILTIN = Path(__file__).resolve().parents[1] / "envs" / "data"


def fc_source(path: str) -> str:
    """A file of AgentBench FC (its main branch) as the mirror holds it."""
    if not FC_REPO.exists():
        pytest.skip(f"AgentBench FC's source is not mirrored at {FC_REPO}")
    return subprocess.run(["git", "-C", str(FC_REPO), "show", f"HEAD:{path}"], check=True, capture_output=True,
                          text=True).stdout  # fmt: skip


def fc_tree(path: str) -> ast.Module:
    with warnings.catch_warnings():  # FC's regexes hold escapes Python warns about; they do not matter here
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(fc_source(path))


def fc_tools(config: str) -> str:
    return json.dumps(yaml.safe_load(fc_source(f"configs/tasks/{config}"))["default"]["parameters"]["tools"])


def call(name: str, arguments: Any, call_id: str = "c1") -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def says(*calls: dict[str, Any], content: str | None = "") -> Message:
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


def tool(content: str, call_id: str = "c1") -> Message:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


@pytest.fixture(scope="module")
async def db_server(docker_engine) -> AsyncIterator[MariaDBServer]:  # noqa: ANN001
    build_images(docker_engine, ["mariadb"])
    async with MariaDBServer(docker_starter(None, SandboxLimits())) as server:
        yield server


# -- the first request, against FC's own source --------------------------------------------------------------------


def _fc_os_first_messages(description: str) -> list[Message]:
    """FC's `_inject_initial_messages` (os_interaction/task.py:513-533), its strings taken from its source."""
    tree = fc_tree("src/server/tasks/os_interaction/task.py")
    inject = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_inject_initial_messages")
    system = next(n.value.value for n in ast.walk(inject) if isinstance(n, ast.Assign)
                  and isinstance(n.value, ast.Constant))  # fmt: skip
    user = next(k.value for k in ast.walk(inject) if isinstance(k, ast.keyword) and isinstance(k.value, ast.JoinedStr))
    problem = eval(compile(ast.Expression(user), "fc", "eval"), {"description": description})  # noqa: S307 - FC's f-string
    return [{"role": "system", "content": system}, {"role": "user", "content": problem}]


def _fc_db_first_messages(entry: dict[str, Any]) -> list[Message]:
    """FC's SYSTEM_PROMPT and the user prompt `start_sample` builds (dbbench/task.py:23-34, 103-117), run on the
    task's own record."""
    tree = fc_tree("src/server/tasks/dbbench/task.py")
    system = next(n.value.value for n in tree.body if isinstance(n, ast.Assign)
                  and getattr(n.targets[0], "id", "") == "SYSTEM_PROMPT")  # fmt: skip
    start = next(n for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef) and n.name == "start_sample")
    body = next(n for n in ast.walk(start) if isinstance(n, ast.Try)).body
    building = [
        s for s in body if isinstance(s, ast.Assign | ast.AugAssign | ast.If) and "user_prompt" in ast.unparse(s)
    ]
    scope: dict[str, Any] = {"entry": entry}
    exec(compile(ast.Module(building, type_ignores=[]), "fc", "exec"), scope)  # noqa: S102 - FC's own lines
    return [{"role": "system", "content": system}, {"role": "user", "content": scope["user_prompt"]}]


async def test_the_first_os_request_is_fc_s_byte_for_byte(os_image: str) -> None:
    """What the orchestrator sends first for a real built-in task: FC's system and user messages, and its tools."""
    tasks = load_eval_tasks(["os"], "builtin", "dev", 1)
    model = ScriptedModel(lambda _: says(call("answer_action", {"answer": "x"})))
    await model.serve(ExternalEndpoint("scripted://", "m"))
    settings = EvalSettings(episode=EpisodeSettings(protocol=TOOLS))
    async with EnvRuntime.of(tasks, run_id=None, max_sandboxes=2, settings=settings.episode) as runtime:
        run = await play(runtime, model, tasks[0], settings)
    messages, tools = model.asked[0]
    assert json.dumps(messages) == json.dumps(_fc_os_first_messages(tasks[0].task.description))
    assert json.dumps(tools) == fc_tools("os.yaml")
    assert (run.outcome.status, run.outcome.rounds) == (EpisodeStatus.COMPLETED, 1)


async def test_the_first_db_request_is_fc_s_byte_for_byte(docker_engine) -> None:  # noqa: ANN001
    build_images(docker_engine, ["mariadb"])
    tasks = load_eval_tasks(["db"], "builtin", "dev", 1)
    record = json.loads((BUILTIN / "db" / "dev.jsonl").read_text().splitlines()[tasks[0].task.index])
    model = ScriptedModel(lambda _: says(call("commit_final_answer", {"answers": ["x"]})))
    await model.serve(ExternalEndpoint("scripted://", "m"))
    settings = EvalSettings(episode=EpisodeSettings(protocol=TOOLS))
    async with EnvRuntime.of(tasks, run_id=None, max_sandboxes=2, settings=settings.episode) as runtime:
        run = await play(runtime, model, tasks[0], settings)
    messages, tools = model.asked[0]
    assert json.dumps(messages) == json.dumps(_fc_db_first_messages(record))
    assert json.dumps(tools) == fc_tools("dbbench.yaml")
    assert (run.outcome.status, run.outcome.rounds) == (EpisodeStatus.COMPLETED, 1)


# -- OS: reading a reply ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "read"),
    [
        ({"role": "assistant", "content": "ls"}, {"role": "user", "content": NO_TOOL_CALL}),
        (says(call("bash_action", "{not json")),
         tool("Expecting property name enclosed in double quotes: line 1 column 2 (char 1)")),
        # A JSON number: FC's thought lookup fails first when the reply has no text, its .values() otherwise.
        (says(call("bash_action", "5")), tool("argument of type 'int' is not iterable")),
        (says(call("bash_action", "5"), content="hm"), tool("'int' object has no attribute 'values'")),
        (says(call("bash_action", "[1]")), tool("'list' object has no attribute 'values'")),
        (says(call("rm_rf", {"path": "/"})), tool(INVALID_FUNCTION)),
        # The first value, whatever its name; a script that is not a string runs nothing.
        (says(call("bash_action", {"command": "ls"})), OSAction("bash", "ls", "", "c1")),
        (says(call("bash_action", {"script": 5})), OSAction("bash", None, "", "c1")),
        # FC's IndexError outside its handler: the sample ends, scored 0.
        (says(call("bash_action", {})), OSAction("invalid", None, "", "c1")),
        (says(call("answer_action", {})), OSAction("invalid", None, "", "c1")),
        (says(call("finish_action", {})), OSAction("finish", None, "", "c1")),
        (says(call("finish_action", {"thought": "all done"})), OSAction("finish", "all done", "all done", "c1")),
        (says(call("answer_action", {"answer": 42})), OSAction("answer", "42", "", "c1", text=False)),
        (says(call("answer_action", {"answer": "4"}, "a"), call("bash_action", {"script": "ls"}, "b"), content="t"),
         OSAction("answer", "4", "t", "a")),
    ],
)  # fmt: skip
def test_os_replies_read_as_fc_reads_them(reply: Message, read: OSAction | Message) -> None:
    assert read_os_call(reply) == read


# -- OS: episodes on a real sandbox ------------------------------------------------------------------------------


def _os_task(evaluation: dict[str, Any]):  # noqa: ANN202 - an OSTask
    return parse_task({"description": "What is 2+2?", "evaluation": evaluation}, "inline.json", 0)


async def test_os_turn_rules_show_fc_s_texts_and_every_reply_is_a_round(sandbox: DockerSandbox) -> None:
    episode = os_episode(_os_task({"match": "4"}), sandbox, os_settings(EpisodeSettings(protocol=TOOLS)), TOOLS)
    assert episode.settings.round_limit == 8  # FC's, the tools protocol's default
    await episode.begin()
    turns = [
        ({"role": "assistant", "content": "I think it is 4."}, [{"role": "user", "content": NO_TOOL_CALL}]),
        (says(call("bash_action", "{not json")),
         [tool("Expecting property name enclosed in double quotes: line 1 column 2 (char 1)")]),
        (says(call("python", {"code": "1"})), [tool(INVALID_FUNCTION)]),
        # Only the first call is answered.
        (says(call("bash_action", {"script": "echo hi"}, "a"), call("bash_action", {"script": "echo no"}, "b")),
         [tool("The output of the OS:\n\nhi\n", "a")]),
        (says(call("bash_action", {"script": "true"})), [tool("The output of the OS is empty.")]),
        (says(call("bash_action", {"script": "head -c 900 /dev/zero | tr '\\0' x"})),
         [tool("The output of the OS:\n\n" + "x" * 780 + "\n[truncated because the output is too long]")]),
        (says(call("bash_action", {"script": 7})), [tool("The output of the OS is empty.")]),
    ]  # fmt: skip
    for reply, answers in turns:
        assert await episode.act(reply) == answers
    assert episode.rounds == 7
    assert await episode.act(says(call("answer_action", {"answer": " 4 "}))) is None  # judged on the last round
    outcome = await episode.outcome()
    assert (outcome.status, outcome.score, outcome.rounds, outcome.answer) == (EpisodeStatus.COMPLETED, 1.0, 8, " 4 ")


async def test_os_replies_without_an_action_run_out_the_rounds(sandbox: DockerSandbox) -> None:
    episode = os_episode(_os_task({"match": "4"}), sandbox, os_settings(EpisodeSettings(protocol=TOOLS)), TOOLS)
    await episode.begin()
    nudged = [await episode.act({"role": "assistant", "content": "4"}) for _ in range(8)]
    assert nudged == [[{"role": "user", "content": NO_TOOL_CALL}]] * 7 + [None]
    outcome = await episode.outcome()
    assert (outcome.status, outcome.score, outcome.rounds) == (EpisodeStatus.ROUND_LIMIT, 0.0, 8)


@pytest.mark.parametrize(
    ("evaluation", "reply", "status", "score"),
    [
        # finish's thought is what FC hands the checks as the answer ($1).
        ({"check": {"code": '[ "$1" = "all done" ]'}}, says(call("finish_action", {"thought": "all done"})),
         EpisodeStatus.COMPLETED, 1.0),
        ({"check": {"code": '[ "$1" = "None" ]'}}, says(call("finish_action", {})), EpisodeStatus.COMPLETED, 1.0),
        # FC's match compares the value itself: a number never equals the expected text.
        ({"match": "42"}, says(call("answer_action", {"answer": 42})), EpisodeStatus.COMPLETED, 0.0),
        ({"match": "42"}, says(call("answer_action", {"answer": "42"})), EpisodeStatus.COMPLETED, 1.0),
        # Where FC raises outside its handler and the sample ends scored 0.
        ({"match": "42"}, says(call("answer_action", {})), EpisodeStatus.INVALID_ACTION, 0.0),
    ],
)  # fmt: skip
async def test_os_endings_are_judged_as_fc_judges_them(
    sandbox: DockerSandbox, evaluation: dict[str, Any], reply: Message, status: EpisodeStatus, score: float
) -> None:
    episode = os_episode(_os_task(evaluation), sandbox, os_settings(EpisodeSettings(protocol=TOOLS)), TOOLS)
    await episode.begin()
    assert await episode.act(reply) is None
    outcome = await episode.outcome()
    assert (outcome.status, outcome.score, outcome.rounds) == (status, score, 1), outcome.detail


# -- DB: episodes on a real MariaDB ------------------------------------------------------------------------------


def _db_task(category: str = "counting", label: list[str] | None = None, answer_md5: str | None = None):  # noqa: ANN202
    record: dict[str, Any] = {
        "description": "How many players scored more than 10?",
        "add_description": "The name of this table is scores, and the headers of this table are player,points.",
        "table": {"table_name": "scores", "table_info": {
            "columns": [{"name": "player", "type": "TEXT"}, {"name": "points", "type": "TEXT"}],
            "rows": [["ann", "12"], ["bob", "7"], ["cid", "15"]]}},
        "type": [category], "label": label or ["2"],
    }  # fmt: skip
    if answer_md5 is not None:
        record["answer_md5"] = answer_md5
    return parse_db_task(record, "inline.jsonl", 0)


async def test_db_every_call_is_answered_in_order_until_the_commit(db_server: MariaDBServer) -> None:
    episode = DBBenchToolsEpisode(_db_task(), db_server)
    assert episode.settings.round_limit == 15
    await episode.begin()
    nudge = await episode.act({"role": "assistant", "content": "The answer is 2."})
    assert nudge == [{"role": "user", "content": "Internal error: No tool calls found despite finish reason."}]
    answers = await episode.act(says(
        call("execute_sql", "{bad", "a"), call("drop_table", {"name": "scores"}, "b"), call("execute_sql", {}, "c"),
        call("execute_sql", {"sql": "SELECT COUNT(*) FROM scores WHERE points + 0 > 10"}, "d"),
        call("execute_sql", {"query": "SELEC 1"}, "e"),
    ))  # fmt: skip
    assert answers is not None and answers[:4] == [
        tool("Error: Failed to parse tool call. Tool call format is incorrect.", "a"),
        tool("Invalid function call. Please call a tool instead.", "b"),
        tool("Error executing query: list index out of range", "c"),
        tool("[(2,)]", "d"),
    ]
    assert answers[4]["tool_call_id"] == "e" and answers[4]["content"].startswith("1064: You have an error")
    # The commit ends the episode: the call after it is never answered.
    assert await episode.act(says(call("commit_final_answer", {"answers": ["2"]}), call("execute_sql", {"q": "x"}))) \
        is None  # fmt: skip
    outcome = await episode.outcome()
    assert (outcome.status, outcome.score, outcome.rounds, outcome.answer) == (EpisodeStatus.COMPLETED, 1.0, 3, '["2"]')


async def test_db_an_empty_result_text_reads_no_response(db_server: MariaDBServer, monkeypatch) -> None:  # noqa: ANN001
    episode = DBBenchToolsEpisode(_db_task(), db_server)
    await episode.begin()
    monkeypatch.setattr(episode, "_execute", lambda sql: "")
    assert await episode.act(says(call("execute_sql", {"query": "DO 1"}))) == [tool("No response from database.")]
    await episode.close()


@pytest.mark.parametrize(
    ("arguments", "status", "score"),
    [
        ({"answers": "2"}, EpisodeStatus.COMPLETED, 1.0),  # a string is read as v0.2 reads a Final Answer
        ({"answers": ["3"]}, EpisodeStatus.COMPLETED, 0.0),
        ({}, EpisodeStatus.INVALID_ACTION, 0.0),  # FC: IndexError outside its handler, the sample scored 0
        ({"answers": 2}, EpisodeStatus.INVALID_ACTION, 0.0),  # FC: `answer[:100]` raises there
    ],
)
async def test_db_commits_are_scored_as_v02_compares_them(
    db_server: MariaDBServer, arguments: dict[str, Any], status: EpisodeStatus, score: float
) -> None:
    episode = DBBenchToolsEpisode(_db_task(), db_server)
    await episode.begin()
    assert await episode.act(says(call("commit_final_answer", arguments))) is None
    outcome = await episode.outcome()
    assert (outcome.status, outcome.score, outcome.rounds) == (status, score, 1)


async def test_db_only_a_commit_is_judged_a_right_table_at_the_round_limit_scores_0(db_server: MariaDBServer) -> None:
    task = next(t for t in load_db_tasks(BUILTIN / "db" / "dev.jsonl") if t.modifies)
    episode = DBBenchToolsEpisode(task, db_server, DBSettings(round_limit=2))
    await episode.begin()
    assert await episode.act(says(call("execute_sql", {"query": task.gold_sql}))) is not None
    assert await episode.act(says(call("execute_sql", {"query": "SELECT 1"}))) is None
    assert await episode.table_hash() == task.answer_md5  # v0.2 would score this 1
    outcome = await episode.outcome()
    assert (outcome.status, outcome.score, outcome.rounds) == (EpisodeStatus.ROUND_LIMIT, 0.0, 2)


# -- coding --------------------------------------------------------------------------------------------------------


async def test_coding_submit_ends_the_episode_and_a_reply_without_it_is_nudged(sandbox: DockerSandbox) -> None:
    task = environment("coding").builtin_tasks("dev")[0]
    episode = coding_episode(task, sandbox, CodingSettings(round_limit=3), TOOLS)
    assert [t["function"]["name"] for t in episode.tools] == ["submit"]
    await episode.begin()
    nudge = await episode.act({"role": "assistant", "content": f"```python\n{task.gold}\n```"})
    assert nudge == [{"role": "user", "content": "No tool call found. Please call the submit tool with your code."}]
    assert await episode.act(says(call("submit", {"source": task.gold}))) == [
        tool("The submit tool needs its `code` argument: the Python source, as a string.")
    ]
    assert await episode.act(says(call("submit", {"code": task.gold}))) is None
    outcome = await episode.outcome()
    assert (outcome.status, outcome.score, outcome.rounds) == (EpisodeStatus.COMPLETED, 1.0, 3), outcome.detail


async def test_coding_nothing_submitted_by_the_round_limit_scores_0_untested(sandbox: DockerSandbox) -> None:
    task = environment("coding").builtin_tasks("dev")[0]
    episode = coding_episode(task, sandbox, CodingSettings(), TOOLS)
    await episode.begin()
    assert await episode.act(says(call("run", {"code": "1"}))) == [
        tool("Invalid function call. The only tool is submit: call it with your code.")
    ]
    assert await episode.act(says(call("submit", "{"))) is None
    outcome = await episode.outcome()
    assert (outcome.status, outcome.score, outcome.rounds) == (EpisodeStatus.ROUND_LIMIT, 0.0, 2)


# -- round limits ------------------------------------------------------------------------------------------------


def test_round_limits_default_per_protocol_and_an_explicit_one_wins() -> None:
    def limit(env: str, **settings: Any) -> int:
        return EpisodeSettings(**settings).rounds(environment(env).round_limits)

    assert [limit(env) for env in ("os", "db", "coding")] == [5, 5, 5]  # CycleQD's, as before
    assert [limit(env, protocol=TOOLS) for env in ("os", "db", "coding")] == [8, 15, 2]
    assert [limit(env, protocol=TOOLS, round_limit=3) for env in ("os", "db", "coding")] == [3, 3, 3]


# -- gold replays ------------------------------------------------------------------------------------------------


def _answered_calls(transcript: list[Message]) -> bool:
    """Every call but an ending one is answered by a tool message of its id, right after it."""
    for position, message in enumerate(transcript[:-1]):
        for made in message.get("tool_calls") or []:
            if transcript[position + 1] != {**transcript[position + 1], "role": "tool", "tool_call_id": made["id"]}:
                return False
    return True


@pytest.mark.parametrize("env", ["os", "db"])
async def test_gold_passes_under_tools_exactly_where_it_passes_as_text(env: str, docker_engine) -> None:  # noqa: ANN001
    build_images(docker_engine, list(environment(env).images()))
    verdicts = {}
    for protocol in AgentProtocol:
        reports = await verify_suite(BUILTIN / env, env, concurrency=4, protocol=protocol)
        verdicts[protocol] = {v.task_id: v for r in reports for v in r.verdicts}
    text, tools = verdicts[AgentProtocol.TEXT], verdicts[TOOLS]
    assert {k: v.passed for k, v in tools.items()} == {k: v.passed for k, v in text.items()}
    assert all(v.passed for v in tools.values()), [(k, v.reason) for k, v in tools.items() if not v.passed]
    for verdict in tools.values():
        replies = [m for m in verdict.transcript[verdict.prompt_messages :] if m["role"] == "assistant"]
        assert replies and all(len(m["tool_calls"]) == 1 for m in replies) and _answered_calls(verdict.transcript)


async def test_coding_gold_conversations_are_tool_calls_that_pass(docker_engine) -> None:  # noqa: ANN001
    build_images(docker_engine, ["os-default"])
    tasks = environment("coding").builtin_tasks("dev")[:3]
    verdicts = await gold_conversations("coding", tasks, protocol=TOOLS)
    assert [v.passed for v in verdicts] == [True] * 3, [v.reason for v in verdicts]
    first = verdicts[0].transcript[verdicts[0].prompt_messages]
    assert json.loads(first["tool_calls"][0]["function"]["arguments"]) == {"code": tasks[0].gold}

"""The AgentBench OS-interaction environment: parsing, loading, comparators, real episodes, gold replays."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import docker
import pytest

from cycleqd.envs.episode import EpisodeStatus
from cycleqd.envs.errors import EpisodeSetupError, TaskFormatError
from cycleqd.envs.os.actions import parse_os_action
from cycleqd.envs.os.checks import contained_in, containing, integer_match, size_match, string_match
from cycleqd.envs.os.interaction import _WORKDIR_IN_IMAGE, OSInteractionEpisode, OSSettings
from cycleqd.envs.os.tasks import load_os_tasks, load_os_tasks_leniently, parse_task
from cycleqd.sandboxes.docker_sandbox import DockerSandbox
from cycleqd.sandboxes.images import build_images, image_tag
from cycleqd.sandboxes.output import AGENTBENCH_TRUNCATION_NOTE
from cycleqd.suite.verify import verify_suite
from tests.sandbox_settings import PTRACE_KILL_PID1, TEST_LIMITS

SHARED_OS = Path(__file__).resolve().parents[2] / "shared" / "data" / "agentbench" / "AgentBench" / "os_interaction"
needs_shared = pytest.mark.skipif(not SHARED_OS.exists(), reason=f"the shared AgentBench data is not at {SHARED_OS}")
BUILTIN_OS = Path(__file__).resolve().parents[1] / "envs" / "data" / "os"


# -- parsing -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "kind", "content"),
    [
        ("I think I should list files.", "invalid", None),
        ("Think: done.\n\nAct: finish", "finish", None),
        ("Think: x\n\nAct: answer(42)", "answer", "42"),
        ("Act: answer(f(x) = (1, 2))", "answer", "f(x) = (1, 2)"),
        ("Act: answer 42", "invalid", None),  # no parentheses: unusable
        ("Act: bash\n\n```bash\nls\n```\n\nAct: answer 7", "bash", "ls"),  # the last usable Act wins
        ("Act: answer(1)\nAct: finish", "finish", None),
        ("Act: bash\n```bash\necho a\n```\ntext\n```bash\necho b\n```", "bash", "echo a\n\necho b"),
        ("Act: bash\nno block at all", "bash", ""),
        ("Act: BASH\n```bash\npwd\n```", "bash", "pwd"),
    ],
)
def test_actions_parse_as_agentbench_does(reply: str, kind: str, content: str | None) -> None:
    action = parse_os_action(reply)
    assert (action.kind, action.content) == (kind, content)


# -- loading -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"evaluation": {"match": "x"}}, "description"),
        ({"description": "d", "create": [None], "evaluation": {"match": "x"}}, "create"),
        ({"description": "d", "create": {"image": "nope"}, "evaluation": {"match": "x"}}, "create.image"),
        ({"description": "d", "evaluation": {}}, "evaluation"),
        ({"description": "d", "evaluation": {"match": 3}}, "evaluation.match"),
        ({"description": "d", "evaluation": {"check": [None]}}, "evaluation.example"),
        (
            {"description": "d", "evaluation": {"check": {"language": "ruby", "code": "x"}}},
            "evaluation.check[0].language",
        ),
        ({"description": "d", "create": {"init": {"nothing": 1}}, "evaluation": {"match": "x"}}, "create.init[0]"),
    ],
)
def test_malformed_tasks_name_file_index_and_field(record: dict, field: str) -> None:
    with pytest.raises(TaskFormatError) as error:
        parse_task(record, "suite.json", 4)
    assert error.value.field == field
    assert str(error.value).startswith(f"suite.json, task 4: field '{field}'")


def test_json_list_object_and_jsonl_load_alike(tmp_path: Path) -> None:
    task = {"description": "d", "create": {"local": "packages", "init": "echo hi"}, "evaluation": {"match": "x"}}
    (tmp_path / "list.json").write_text(json.dumps([task, task]))
    (tmp_path / "one.json").write_text(json.dumps(task))
    (tmp_path / "lines.jsonl").write_text(json.dumps(task) + "\n\n" + json.dumps(task) + "\n")
    assert [len(load_os_tasks(tmp_path / n)) for n in ("list.json", "one.json", "lines.jsonl")] == [2, 1, 2]
    loaded = load_os_tasks(tmp_path / "one.json")[0]
    assert (loaded.image, loaded.init[0].code, loaded.match.answer) == ("os-packages", "echo hi", "x")
    (tmp_path / "bad.jsonl").write_text(json.dumps(task) + "\n{oops\n")
    with pytest.raises(TaskFormatError, match="line 2"):
        load_os_tasks(tmp_path / "bad.jsonl")


LEGACY = ["5/file.json", "6/collected.json", "6/permission.json"]  # AgentBench's older schema (create.type, …)


@needs_shared
@pytest.mark.parametrize("name", LEGACY)
def test_legacy_files_are_refused_clearly(name: str) -> None:
    legacy = SHARED_OS / "scripts" / name
    with pytest.raises(TaskFormatError) as error:
        load_os_tasks(legacy)
    assert re.match(re.escape(str(legacy)) + r", task \d+: field '[\w.\[\]]+': expected ", str(error.value))


@needs_shared
def test_every_shared_task_file_loads_or_names_its_bad_task() -> None:
    good, bad = 0, []
    for path in sorted((SHARED_OS / "data").rglob("*.json")):
        tasks, errors = load_os_tasks_leniently(path)
        good += len(tasks)
        bad += [str(e) for e in errors]
    assert good >= 150
    assert all(", task " in message and "field 'create'" in message for message in bad), bad


# -- comparators -------------------------------------------------------------------------------------------------


def test_native_comparators_behave_like_agentbench_scripts() -> None:
    assert integer_match(["12", " 12\n"]) and not integer_match(["12", "13"])
    with pytest.raises(ValueError):
        integer_match(["12.0", "12"])
    assert string_match(["a\r\nb ", "a\nb"]) and not string_match(["a", "b"])
    assert size_match(["4K", "4096"]) and size_match(["2G", "2147483648"]) and not size_match(["4K", "4000"])
    with pytest.raises(ValueError):  # AgentBench's script tries the suffix 'B' first, so '1MB' crashes it
        size_match(["1MB", "1048576"])
    assert containing(["the answer is 42", "42"]) and not containing(["42", "the answer is 42"])
    assert contained_in(["42", "the answer is 42"]) and not contained_in(["the answer is 42", "42"])


# -- episodes ----------------------------------------------------------------------------------------------------

COUNT_TASK = {
    "description": "How many entries are in /data?",
    "create": {"local": "default", "init": "mkdir -p /data && touch /data/a /data/b /data/c"},
    "evaluation": {
        "check": [None, {"language": "python", "file": "check/integer-match.py"}],
        "example": "ls /data | wc -l",
    },
}


async def run_episode(record: dict, replies: list[str], settings: OSSettings | None = None):  # noqa: ANN201
    task = parse_task(record, "inline.json", 0)
    async with await DockerSandbox.start(image_tag(task.image), limits=TEST_LIMITS) as sandbox:
        episode = OSInteractionEpisode(task, sandbox, settings or OSSettings(command_timeout_s=3))
        messages = await episode.begin()
        observations = []
        for reply in replies:
            observation = await episode.step(reply)
            observations.append(observation)
            if observation is None:
                break
        return messages, observations, await episode.outcome()


async def test_a_right_answer_scores_one_and_the_prompt_is_agentbenchs(os_image: str) -> None:
    messages, observations, outcome = await run_episode(
        COUNT_TASK, ["Think: look.\n\nAct: bash\n\n```bash\nls /data\n```", "Think: 3 files.\n\nAct: answer(3)"]
    )
    assert messages[0]["content"].startswith("You are an assistant that will act like a person, I'will play")
    assert messages[-1]["content"].endswith("My problem is:\n\nHow many entries are in /data?")
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert observations[0] == "The output of the OS:\n\na\nb\nc\n"
    assert (outcome.status, outcome.score, outcome.rounds, outcome.answer) == (EpisodeStatus.COMPLETED, 1.0, 2, "3")


async def test_a_wrong_answer_scores_zero(os_image: str) -> None:
    _, _, outcome = await run_episode(COUNT_TASK, ["Act: answer(4)"])
    assert (outcome.status, outcome.score) == (EpisodeStatus.COMPLETED, 0.0)
    assert "rejected" in outcome.detail


async def test_tampering_with_the_agents_shell_does_not_change_the_score(os_image: str) -> None:
    tamper = (
        "Act: bash\n\n```bash\nalias ls='echo 9'; export PATH=/nowhere\necho 'alias wc=\"echo 9\"' >> ~/.bashrc\n```"
    )
    _, _, right = await run_episode(COUNT_TASK, [tamper, "Act: answer(3)"])
    _, _, wrong = await run_episode(COUNT_TASK, [tamper, "Act: answer(9)"])
    assert (right.score, wrong.score) == (1.0, 0.0)


async def test_deleting_a_program_the_checks_may_run_is_tampering_even_with_the_right_answer(os_image: str) -> None:
    """envs/os/trust.py: the example runs in the container, so a deletion voids its pass; a match task runs nothing."""
    delete = "Act: bash\n\n```bash\nrm -f /usr/bin/python3*\n```"
    _, _, right = await run_episode(COUNT_TASK, [delete, "Act: answer(3)"])
    assert (right.status, right.score) == (EpisodeStatus.TAMPERED, 0.0)
    assert "deleted /usr/bin/python3" in right.detail
    _, _, matched = await run_episode(
        {"description": "Say 3.", "evaluation": {"match": "3"}}, [delete, "Act: answer(3)"]
    )
    assert (matched.status, matched.score) == (EpisodeStatus.COMPLETED, 1.0)


async def test_killing_every_process_and_signalling_pid_1_is_scored_not_retried(os_image: str) -> None:
    """Stopping its own container would make a failing agent's episode an environment error, retried and then
    not counted: every signal the agent can send leaves the container standing, the checks run, the score holds."""
    signal_all = "for s in $(seq 1 31); do kill -$s 1; done 2>/dev/null; kill -9 -1"
    replies = [f"Act: bash\n```bash\n{signal_all}\n```", "Act: bash\n```bash\nls /data | wc -l\n```"]
    _, observations, right = await run_episode(COUNT_TASK, [*replies, "Act: answer(3)"])
    _, _, wrong = await run_episode(COUNT_TASK, [*replies, "Act: answer(4)"])
    assert observations[1].strip().endswith("3")  # a fresh shell answered after the agent killed its own
    assert (right.status, right.score, wrong.status, wrong.score) == ("completed", 1.0, "completed", 0.0)


async def test_an_agent_that_ends_its_sandbox_through_ptrace_fails_and_an_engine_kill_is_retried(
    os_image: str,
) -> None:
    """Both end as "exited 137"; only the engine's events tell them apart. The agent's end is its failure (its
    right answer cannot be checked in a sandbox it ended); the engine's is an environment error, retried."""
    ptrace = f"Act: bash\n```bash\n{PTRACE_KILL_PID1}\n```"
    _, observations, outcome = await run_episode(COUNT_TASK, [ptrace, "Act: answer(3)"])
    assert observations[0] is not None  # the command's end was reported to the agent, which went on
    assert (outcome.status, outcome.score) == (EpisodeStatus.SANDBOX_BROKEN, 0.0), outcome.detail
    task = parse_task(COUNT_TASK, "inline.json", 0)
    async with await DockerSandbox.start(image_tag(task.image), limits=TEST_LIMITS) as sandbox:
        episode = OSInteractionEpisode(task, sandbox, OSSettings(command_timeout_s=30))
        await episode.begin()
        step = asyncio.ensure_future(episode.step("Act: bash\n```bash\nsleep 20\n```"))
        await asyncio.sleep(1)
        await asyncio.to_thread(lambda: docker.from_env().containers.get(sandbox.id).kill())
        with pytest.raises(EpisodeSetupError, match="died under the agent"):
            await step


async def test_orphans_of_the_agent_are_reaped(os_image: str) -> None:
    async with await DockerSandbox.start(image_tag("os-default"), limits=TEST_LIMITS) as sandbox:
        await sandbox.exec("for i in 1 2 3; do (sleep 0.1 &); done")
        await asyncio.sleep(1)
        states = await sandbox.exec(["ps", "-eo", "stat="])
    assert "Z" not in states.stdout, states.stdout


async def test_long_output_is_cut_for_display(os_image: str) -> None:
    _, observations, _ = await run_episode(COUNT_TASK, ["Act: bash\n```bash\nseq 1 1000\n```", "Act: finish"])
    shown = observations[0].removeprefix("The output of the OS:\n\n")
    assert len(shown) == 780 + len(AGENTBENCH_TRUNCATION_NOTE) and shown.endswith(AGENTBENCH_TRUNCATION_NOTE)
    _, empty, _ = await run_episode(COUNT_TASK, ["Act: bash\n```bash\ntrue\n```", "Act: finish"])
    assert empty[0] == "The output of the OS is empty."


async def test_statuses_invalid_round_limit_and_timeout(os_image: str) -> None:
    _, _, invalid = await run_episode(COUNT_TASK, ["I refuse to follow the format."])
    assert (invalid.status, invalid.score, invalid.rounds) == (EpisodeStatus.INVALID_ACTION, 0.0, 1)
    busy = ["Act: bash\n```bash\necho hi\n```"] * 3
    _, observations, limited = await run_episode(COUNT_TASK, busy, OSSettings(round_limit=2))
    assert (limited.status, limited.rounds, observations[-1]) == (EpisodeStatus.ROUND_LIMIT, 2, None)
    slow = ["Act: bash\n```bash\nsleep 60\n```"] * 2
    _, _, timed_out = await run_episode(COUNT_TASK, slow, OSSettings(round_limit=2, command_timeout_s=1))
    assert timed_out.status == EpisodeStatus.COMMAND_TIMEOUT


async def test_start_runs_in_the_agents_shell_and_init_shares_its_workdir(os_image: str) -> None:
    record = {
        "description": "What is in $GREETING and in ./made-by-init?",
        "create": {"local": "default", "init": "echo from-init > made-by-init"},
        "start": "export GREETING=hello",
        "evaluation": {"match": "hello from-init"},
    }
    _, observations, outcome = await run_episode(
        record, ["Act: bash\n```bash\necho $GREETING $(cat made-by-init)\n```", "Act: answer(hello from-init)"]
    )
    assert observations[0] == "The output of the OS:\n\nhello from-init\n" and outcome.score == 1.0


async def test_a_failing_init_is_an_environment_error(os_image: str) -> None:
    record = {"description": "d", "create": {"init": "exit 3"}, "evaluation": {"match": "x"}}
    with pytest.raises(EpisodeSetupError, match="init script 0 exited 3"):
        await run_episode(record, [])


async def test_the_workdir_is_there_in_every_episode_and_probed_once_per_image(os_image: str) -> None:
    record = {"description": "d", "create": {"init": "pwd > where"}, "evaluation": {"match": "x"}}
    read = ["Act: bash\n```bash\ncat where; pwd\n```", "Act: finish"]
    for _ in range(2):  # a folder the image lacks is made in each fresh container, never remembered
        _, observations, _ = await run_episode(record, read, OSSettings(workdir="/srv/made-here", command_timeout_s=3))
        assert observations[0] == "The output of the OS:\n\n/srv/made-here\n/srv/made-here\n"
    assert all(folder != "/srv/made-here" for _, folder in _WORKDIR_IN_IMAGE)
    _, observations, _ = await run_episode(record, read)  # the default: AgentBench's /, never probed
    assert observations[0] == "The output of the OS:\n\n/\n/\n"
    assert all(folder != "/" for _, folder in _WORKDIR_IN_IMAGE)
    for _ in range(2):
        _, observations, _ = await run_episode(record, read, OSSettings(workdir="/usr", command_timeout_s=3))
        assert observations[0] == "The output of the OS:\n\n/usr\n/usr\n"
        assert any(folder == "/usr" for _, folder in _WORKDIR_IN_IMAGE)  # the image has it: no exec next time


async def test_episodes_that_start_together_probe_the_workdir_once(os_image: str) -> None:
    task = parse_task({"description": "d", "evaluation": {"match": "x"}}, "inline.json", 0)
    probes: list[object] = []
    sandboxes = [await DockerSandbox.start(image_tag(task.image), limits=TEST_LIMITS) for _ in range(4)]
    try:
        for sandbox in sandboxes:
            sandbox.exec = counted_exec(sandbox.exec, probes)  # type: ignore[method-assign]
        episodes = [OSInteractionEpisode(task, s, OSSettings(workdir="/usr/share")) for s in sandboxes]
        await asyncio.gather(*(episode.begin() for episode in episodes))
    finally:
        await asyncio.gather(*(sandbox.stop() for sandbox in sandboxes))
    assert probes == [["test", "-d", "/usr/share"]]


def counted_exec(exec_, calls: list[object]):  # noqa: ANN001, ANN201
    async def counted(command: object, **options: object) -> object:
        calls.append(command)
        return await exec_(command, **options)

    return counted


# -- gold replays ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_builtin_os_suite_verifies_completely(docker_engine: object) -> None:
    build_images(docker_engine, ["os-default", "os-packages"])  # type: ignore[arg-type]
    reports = await verify_suite(BUILTIN_OS, "os", concurrency=3)
    assert {Path(r.path).stem: len(r.verdicts) for r in reports} == {"dev": 12, "test": 10, "train": 20}
    failures = [(v.task_id, v.reason) for r in reports for v in r.verdicts if v.passed is not True]
    assert failures == []


@pytest.mark.slow
@needs_shared
async def test_shared_agentbench_os_gold_mostly_passes(docker_engine: object) -> None:
    build_images(docker_engine, ["os-default", "os-packages"])  # type: ignore[arg-type]
    reports = await verify_suite(SHARED_OS / "data", "os", concurrency=3)
    ran = [v for r in reports for v in r.run]
    passed = sum(1 for v in ran if v.passed)
    not_run = [v.reason for r in reports for v in r.verdicts if v.passed is None]
    assert len(ran) >= 150 and passed / len(ran) >= 0.9, [(v.task_id, v.reason) for v in ran if not v.passed]
    assert all(
        reason.startswith(("unavailable: needs script", "unavailable: its set-up needs the network"))
        for reason in not_run
    )


def test_suite_verify_guesses_the_environment(tmp_path: Path) -> None:
    from cycleqd.envs.coding.episode import humaneval_path
    from cycleqd.envs.suites import guess_environment as guess_env

    assert guess_env(BUILTIN_OS) == "os"
    assert guess_env(BUILTIN_OS.parent / "db") == "db"
    assert guess_env(humaneval_path()) == "coding"
    (tmp_path / "mbpp.jsonl").write_text('{"text": "t", "code": "c", "test_list": []}\n')
    assert guess_env(tmp_path) == "coding"

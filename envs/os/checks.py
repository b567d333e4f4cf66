"""Scoring OS tasks: `match` on the answer, or a chain of `check` scripts.

Each check script gets the answer and the outputs of the previous scripts as arguments; any non-zero exit
fails the task. AgentBench's five comparators (integer-match, string-match, size-match, containing, in) are
implemented here natively and run on the host: a model that deletes python or rewrites PATH inside its
container cannot change how its answer is compared. Scripts that inspect the container (a null check runs the
task's `example`, inline code, other files) run in the container, in a fresh non-interactive shell, with python's
working-folder and user-site imports off (os_trust.CHECK_ENV); whether a pass can be trusted is envs.os_trust's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from cycleqd.envs.errors import ScriptUnavailableError
from cycleqd.envs.os.tasks import MatchSpec, OSTask, Script
from cycleqd.envs.os.trust import CHECK_ENV
from cycleqd.sandboxes.contract import Sandbox


def _norm(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


_SIZE_UNITS = {"B": 1, "Byte": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30,
               "GB": 1 << 30, "T": 1 << 40, "TB": 1 << 40, "P": 1 << 50, "PB": 1 << 50}  # fmt: skip


def _size(text: str) -> int:
    text = text.strip()
    for unit, factor in _SIZE_UNITS.items():  # first suffix that matches, as AgentBench's script does
        if text.endswith(unit):
            return int(text[: -len(unit)]) * factor
    return int(text)


def integer_match(args: list[str]) -> bool:
    return int(args[0]) == int(args[1])


def string_match(args: list[str]) -> bool:
    return _norm(args[0]) == _norm(args[1])


def size_match(args: list[str]) -> bool:
    return _size(args[0]) == _size(args[1])


def containing(args: list[str]) -> bool:
    return _norm(args[1]) in _norm(args[0])


def contained_in(args: list[str]) -> bool:
    return _norm(args[0]) in _norm(args[1])


NATIVE: dict[str, Callable[[list[str]], bool]] = {
    "integer-match.py": integer_match,
    "string-match.py": string_match,
    "size-match.py": size_match,
    "containing.py": containing,
    "in.py": contained_in,
}


def native_comparator(script: Script) -> Callable[[list[str]], bool] | None:
    if script.file and Path(script.file).parent.name == "check":
        return NATIVE.get(Path(script.file).name)
    return None


def script_source(script: Script, scripts_dir: Path | None) -> str:
    if script.code is not None:
        return script.code
    assert script.file is not None
    if scripts_dir is None or not (scripts_dir / script.file).is_file():
        where = f"in {scripts_dir}" if scripts_dir else "(no scripts folder given: --scripts DIR)"
        raise ScriptUnavailableError(f"needs script {script.file}, not found {where}")
    return (scripts_dir / script.file).read_text(encoding="utf-8")


def script_argv(script: Script, source: str, params: list[str]) -> list[str]:
    """As AgentBench runs scripts: bash gets `--` then the params (so $1 is the answer), python gets them as is."""
    if script.language == "python":
        return ["python3", "-c", source, *params]
    return ["bash", "-c", source, "--", *params]


def match_answer(spec: MatchSpec, answer: str) -> bool:
    if spec.strip:
        answer = answer.strip()
    if spec.answer is not None:
        return answer == spec.answer
    return re.search(spec.regex or "", answer) is not None


def checks_in_container(task: OSTask) -> bool:
    """Whether scoring runs anything inside the agent's container (a script that is not a native comparator)."""
    scripts = [check or task.example for check in task.checks]
    return task.match is None and any(s is not None and native_comparator(s) is None for s in scripts)


def container_sources(task: OSTask, scripts_dir: Path | None) -> list[str]:
    """The text of every script the check chain runs in the container (what names the task's state)."""
    scripts = [check or task.example for check in task.checks]
    return [script_source(s, scripts_dir) for s in scripts if s is not None and native_comparator(s) is None]


def check_scripts_available(task: OSTask, scripts_dir: Path | None) -> None:
    """ScriptUnavailableError naming the first script this task needs that we cannot run."""
    scripts = [*task.init, *([task.start] if task.start else []), *(c or task.example for c in task.checks)]
    for script in scripts:
        if script is not None and native_comparator(script) is None:
            script_source(script, scripts_dir)


async def run_checks(
    task: OSTask, answer: str, sandbox: Sandbox, *, scripts_dir: Path | None, workdir: str, timeout_s: float
) -> tuple[bool, str]:
    """Whether the checks pass, and which one failed."""
    params = [answer]
    for position, check in enumerate(task.checks):
        script = check or task.example
        assert script is not None  # the loader guarantees an example where a check is null
        comparator = native_comparator(script)
        if comparator is not None:
            try:
                passed = comparator(params)
            except (ValueError, IndexError):
                passed = False
            if not passed:
                return False, f"check {position} ({script.file}) rejected {params!r}"
            params.append("")
            continue
        # AgentBench reads a script's output with stderr merged in, in the order written (docker exec_run's
        # default), so an example that warns on stderr passes its warning on too.
        argv = ["sh", "-c", 'exec "$@" 2>&1', "sh", *script_argv(script, script_source(script, scripts_dir), params)]
        result = await sandbox.exec(argv, workdir=workdir, timeout=timeout_s, env=CHECK_ENV)
        if result.exit_code != 0:
            return False, f"check {position} exited {result.exit_code}: {(result.stderr or result.stdout)[-300:]}"
        params.append(result.stdout)
    return True, ""


def expected_of(task: OSTask) -> str:
    """What the grader compares against, in words a person reads beside the verdict."""
    if task.match is not None:
        if task.match.answer is not None:
            return f"the answer {task.match.answer!r}"
        return f"an answer matching /{task.match.regex}/"
    steps = []
    for check in task.checks:
        script = check or task.example
        if script is None:
            continue
        name = script.file or ((script.code or "").strip().splitlines() or ["(empty)"])[0][:80]
        steps.append(f"{'the example script' if check is None else 'check'} {name}")
    return "the check chain: " + " → ".join(steps) if steps else "the check chain"

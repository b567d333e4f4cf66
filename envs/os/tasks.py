"""AgentBench OS-interaction task files: loading and validation.

Accepted: a JSON list of tasks, a single task object, or JSONL. A task has `description`; optionally `create`
(`local` or `image` naming the image; `init` as a string, {code}, {file} or a list of those, with `language`
bash or python); `start`; `evaluation` with `match` (a string, or {answer|regex, strip}) or `check` (a script, a
list of scripts, `null` meaning "run evaluation.example here"); `example`; `labels`; `explanation` (AgentBench's
training tasks: how to solve it, used as the gold reply's thought).
Every deviation is a TaskFormatError naming the file, the task's index and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cycleqd.envs.errors import TaskFormatError
from cycleqd.envs.task_files import load_leniently, read_task_records

LANGUAGES = ("bash", "python")
# AgentBench's image names and ours.
IMAGES = {"default": "os-default", "packages": "os-packages", "local-os/default": "os-default",
          "local-os/packages": "os-packages"}  # fmt: skip


@dataclass(frozen=True)
class Script:
    language: str
    code: str | None = None
    file: str | None = None  # relative to the scripts folder


@dataclass(frozen=True)
class MatchSpec:
    answer: str | None
    regex: str | None
    strip: bool = True


@dataclass(frozen=True)
class OSTask:
    source: str
    index: int
    description: str
    image: str  # one of our image names
    init: tuple[Script, ...] = ()
    start: Script | None = None
    match: MatchSpec | None = None
    checks: tuple[Script | None, ...] = ()  # None: run `example` at that place
    example: Script | None = None
    labels: tuple[str, ...] = ()
    # AgentBench's training tasks explain how to solve them; only gold replies read it (their thought), so it is
    # not part of the task's content hash.
    explanation: str | None = field(default=None, metadata={"gold_only": True})

    @property
    def task_id(self) -> str:
        return f"{Path(self.source).name}#{self.index}"


def parse_script(value: Any, source: str, index: int, field: str) -> Script:
    if isinstance(value, str):
        return Script("bash", code=value)
    if not isinstance(value, dict):
        raise TaskFormatError(source, index, field, "a string, {code: ...} or {file: ...}")
    language = value.get("language", "bash")
    if language not in LANGUAGES:
        raise TaskFormatError(source, index, f"{field}.language", f"one of {', '.join(LANGUAGES)}, got {language!r}")
    if isinstance(value.get("code"), str):
        return Script(language, code=value["code"])
    if isinstance(value.get("file"), str):
        return Script(language, file=value["file"])
    raise TaskFormatError(source, index, field, "a 'code' or a 'file' string")


def parse_match(value: Any, source: str, index: int) -> MatchSpec:
    if isinstance(value, str):
        return MatchSpec(answer=value, regex=None, strip=True)
    if isinstance(value, dict) and (isinstance(value.get("answer"), str) or isinstance(value.get("regex"), str)):
        return MatchSpec(value.get("answer"), value.get("regex"), bool(value.get("strip", True)))
    raise TaskFormatError(source, index, "evaluation.match", "a string or {answer|regex: string, strip: bool}")


def parse_task(record: Any, source: str, index: int) -> OSTask:
    if not isinstance(record, dict):
        raise TaskFormatError(source, index, "(task)", "a JSON object")
    description = record.get("description")
    if not isinstance(description, str) or not description.strip():
        raise TaskFormatError(source, index, "description", "a non-empty string")
    create = record.get("create", {})
    if not isinstance(create, dict):
        raise TaskFormatError(source, index, "create", "an object with 'local' or 'image' and optional 'init'")
    image_name = create.get("image", create.get("local", "default"))
    if image_name not in IMAGES:
        raise TaskFormatError(source, index, "create.image", f"one of {', '.join(IMAGES)}, got {image_name!r}")
    init = create.get("init")
    init_list = [] if init is None else init if isinstance(init, list) else [init]
    evaluation = record.get("evaluation")
    if not isinstance(evaluation, dict):
        raise TaskFormatError(source, index, "evaluation", "an object with 'match' or 'check'")
    match = checks = None
    if "match" in evaluation:
        match = parse_match(evaluation["match"], source, index)
    elif "check" in evaluation:
        raw = evaluation["check"]
        raw_list = raw if isinstance(raw, list) else [raw]
        checks = tuple(
            None if c is None else parse_script(c, source, index, f"evaluation.check[{i}]")
            for i, c in enumerate(raw_list)
        )
    else:
        raise TaskFormatError(source, index, "evaluation", "a 'match' or a 'check' entry")
    example_raw = evaluation.get("example", record.get("example"))
    example = None if example_raw is None else parse_script(example_raw, source, index, "evaluation.example")
    if checks and None in checks and example is None:
        raise TaskFormatError(source, index, "evaluation.example", "a script, since a check is null")
    explanation = record.get("explanation")
    if explanation is not None and not isinstance(explanation, str):
        raise TaskFormatError(source, index, "explanation", "a string")
    labels = record.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise TaskFormatError(source, index, "labels", "a list of strings")
    return OSTask(
        source=source,
        index=index,
        description=description,
        image=IMAGES[image_name],
        init=tuple(parse_script(s, source, index, f"create.init[{i}]") for i, s in enumerate(init_list)),
        start=None if record.get("start") is None else parse_script(record["start"], source, index, "start"),
        match=match,
        checks=checks or (),
        example=example,
        labels=tuple(labels),
        explanation=explanation,
    )


def load_os_tasks(path: Path) -> list[OSTask]:
    """All tasks of one file; TaskFormatError at the first malformed one."""
    source = str(path)
    return [parse_task(record, source, index) for index, record in enumerate(read_task_records(path))]


def load_os_tasks_leniently(path: Path) -> tuple[list[OSTask], list[TaskFormatError]]:
    return load_leniently(path, parse_task)


_NETWORK = re.compile(r"\b(apt(-get)?\s+(update|install)|pip3?\s+install|curl\s|wget\s|git\s+clone|npm\s+install)")


def network_commands(task: OSTask) -> list[str]:
    """Commands in the task's own set-up that need the network, which sandboxes do not have."""
    scripts = [*task.init, *([task.start] if task.start else [])]
    return sorted({m.group(1) for s in scripts if s.code for m in _NETWORK.finditer(s.code)})

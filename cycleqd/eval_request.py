"""What a run was asked to do, as one frozen value: built once from the CLI, validated there, stored with the run
and read back on `--resume`, so a resumed run does exactly what was asked the first time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cycleqd.envs.registry import EPISODE_TIME_LIMIT_S, environment
from cycleqd.errors import BadOptionError, ResumeConflictError, as_user_errors
from cycleqd.eval.orchestrator import EvalSettings, Sampling
from cycleqd.eval.tasks import EvalTask, planned_tasks, suite_environments
from cycleqd.limits import MAX_CONCURRENCY, MAX_LIMIT, MAX_REPEATS, MAX_ROUNDS, MAX_TOKENS
from cycleqd.protocols import AgentProtocol
from cycleqd.serving.model_ref import ExternalEndpoint, parse_model_ref, server_prefix
from cycleqd.serving.resolve import DTYPES, server_choice

SERVERS = ("auto", "transformers", "vllm")
PROTOCOLS = tuple(AgentProtocol)
MAXIMA = {"limit": MAX_LIMIT, "repeats": MAX_REPEATS, "concurrency": MAX_CONCURRENCY, "rounds": MAX_ROUNDS,
          "max_tokens": MAX_TOKENS}  # fmt: skip
EPISODE_TIMEOUT_MAX_S = 7 * 24 * 3600.0  # a week: more is a typo, not a limit


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def comma_separated(text: str) -> tuple[str, ...]:
    """`os, db` → ("os", "db"): how --tasks and --task-ids are read."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def absolute_model(text: str) -> str:
    """A checkpoint folder given relative to where the user stood, made absolute: the run stores where the model
    is, so `--resume` works from any folder. Anything else (default, hub names, endpoints) stays as typed."""
    named, ref = server_prefix(text)
    if ref == "default" or ref.startswith(("openai/", "hf/", "http://", "https://")):
        return text
    path = Path(ref).expanduser()
    if not path.is_dir():
        return text
    return f"{named}/{path.resolve()}" if named else str(path.resolve())


@dataclass(frozen=True)
class EvalRequest:
    model: str = "default"
    api_key_env: str = "OPENAI_API_KEY"
    # Environments (a comma-separated string is read as --tasks is); none: the suite's, every registered one in the
    # built-in suites, the one that recognizes its tasks in a file or folder.
    tasks: tuple[str, ...] = ()
    suite: str = "builtin"
    split: str = "dev"
    limit: int | None = None  # at most N tasks per environment; None: all
    repeats: int = 1
    concurrency: int = 8  # episodes at once: what a batching server decodes together
    # Round limit per episode; None: each environment's for the protocol (text: 5, CycleQD's; tools: AgentBench
    # FC's, OS 8 and DB 15). A run stored before the protocol resumes with the 5 it was stored with.
    rounds: int | None = None
    max_tokens: int = 512
    # An episode's wall-clock limit in seconds, from the environment's first messages: past it, `episode_timeout`,
    # scored 0. A run stored before this field resumes with the default.
    episode_timeout: float = EPISODE_TIME_LIMIT_S
    server: str = "auto"
    allow_download: bool = False  # a bare hub name is handed to the server only when asked
    task_ids: tuple[str, ...] | None = None  # only these tasks (ids as `cycleqd tasks` lists them, or comma-separated)
    temperature: float = 0.0  # 0: greedy
    top_p: float | None = None
    seed: int | None = None
    # The model server's dtype (serving.resolve.DTYPES); auto: each engine's choice for its device, as before
    # this field (a run stored without it resumes so).
    dtype: str = "auto"
    # Greedy answers that do not depend on the other episodes batched with them (serving/in_vllm/batch_invariant.py),
    # at a price in speed. A run stored before this field resumes without, as it ran.
    deterministic: bool = False
    # How the model acts (envs.episode.AgentProtocol): "text", AgentBench v0.2's, or "tools", AgentBench FC's
    # function calling. A run stored before this field resumes with text, as it ran.
    protocol: str = "text"

    def __post_init__(self) -> None:
        with as_user_errors():  # what the layers below find is a UserError to an API caller too
            self._validate()

    def _validate(self) -> None:
        object.__setattr__(self, "model", absolute_model(self.model))
        # a string is one value, not a sequence of one-letter names
        object.__setattr__(self, "tasks", _as_tuple(self.tasks))
        if self.task_ids is not None:
            object.__setattr__(self, "task_ids", _as_tuple(self.task_ids))
        if not (math.isfinite(self.temperature) and 0 <= self.temperature <= 2):
            raise BadOptionError("--temperature", self.temperature, "a number from 0 (greedy) to 2")
        if self.top_p is not None and not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise BadOptionError("--top-p", self.top_p, "a number above 0 and at most 1")
        limit = self.episode_timeout
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 < limit <= EPISODE_TIMEOUT_MAX_S:
            raise BadOptionError("--episode-timeout", limit, f"seconds above 0, at most {EPISODE_TIMEOUT_MAX_S:,.0f}")
        for env in self.tasks:
            environment(env)  # UnknownEnvironmentError names the known ones
        for name, maximum in MAXIMA.items():
            value = getattr(self, name)
            if value is None and name in ("limit", "rounds"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
                raise BadOptionError(option_name(name), value, f"a whole number from 1 to {maximum:,}")
        if self.server not in SERVERS:
            raise BadOptionError("--server", self.server, f"one of {', '.join(SERVERS)}")
        if self.protocol not in PROTOCOLS:
            raise BadOptionError("--protocol", self.protocol, f"one of {', '.join(PROTOCOLS)}")
        if self.dtype not in DTYPES:
            raise BadOptionError("--dtype", self.dtype, f"one of {', '.join(DTYPES)}")
        self._check_model()
        if not self.tasks:  # last: it reads the suite's files
            object.__setattr__(self, "tasks", suite_environments(self.suite, self.split, "--tasks"))

    def _check_model(self) -> None:
        """The reference parses (reading the environment and the file system, never the network), so a typo is
        refused with the request, before anything is created or started."""
        if server_prefix(self.model)[1] != "default":
            ref = parse_model_ref(self.model, key_env=self.api_key_env, allow_download=self.allow_download)
            if isinstance(ref, ExternalEndpoint) and self.dtype != "auto":  # it would be ignored, silently
                raise BadOptionError("--dtype", self.dtype, "auto with an endpoint, which serves in its own dtype")
        server_choice(self.model, self.server)

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready; stored as the run's config."""
        task_ids = list(self.task_ids) if self.task_ids is not None else None
        return {**asdict(self), "tasks": list(self.tasks), "task_ids": task_ids, "sampling": asdict(self.sampling())}

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> EvalRequest:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def resumed_with(self, given: dict[str, Any], run_id: str) -> EvalRequest:
        """This (stored) request, checked against the options given with `--resume`: one that differs is an
        error, since a resumed run must finish what it started."""
        for name, value in given.items():
            stored = getattr(self, name)
            if name == "model":
                value = absolute_model(value)
            if (tuple(value) if name in ("tasks", "task_ids") and value is not None else value) != stored:
                shown = ",".join(stored) if name == "tasks" else stored
                raise ResumeConflictError(
                    f"{option_name(name)} {value if name != 'tasks' else ','.join(value)} conflicts with run "
                    f"{run_id}, which was started with {option_name(name)} {shown}; drop the option to resume it, "
                    f"or start a new run without --resume"
                )
        return self

    def planned_tasks(self) -> list[EvalTask]:
        """The tasks this request plays, in order (`--task-ids` first, then `--limit` per environment)."""
        with as_user_errors():  # a task file that does not parse, a suite with no tasks
            return planned_tasks(self.tasks, self.suite, self.split, self.task_ids, self.limit)

    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, seed=self.seed)

    def settings(self) -> EvalSettings:
        return EvalSettings.sized(concurrency=self.concurrency, repeats=self.repeats, max_tokens=self.max_tokens,
                                  rounds=self.rounds, sampling=self.sampling(),
                                  time_limit_s=float(self.episode_timeout),
                                  protocol=AgentProtocol(self.protocol))  # fmt: skip


def _as_tuple(value: str | Sequence[str]) -> tuple[str, ...]:
    return comma_separated(value) if isinstance(value, str) else tuple(value)

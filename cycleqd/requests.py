"""What a run was asked to do, as one frozen value: built once from the CLI, validated there, stored with the run
and read back on `--resume`, so a resumed run does exactly what was asked the first time."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cycleqd.errors import BadOptionError, ResumeConflictError
from cycleqd.orchestrator import EvalSettings
from envs.registry import environment, names

SERVERS = ("auto", "transformers", "vllm")
# Upper bounds no machine gets past (every concurrent episode is a container; rounds and repeats multiply
# episodes), so a typo fails at once instead of hours later.
MAXIMA = {"limit": 10**7, "repeats": 1000, "concurrency": 1024, "rounds": 1000, "max_tokens": 1_000_000}


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


@dataclass(frozen=True)
class EvalRequest:
    model: str = "default"
    api_key_env: str = "OPENAI_API_KEY"
    tasks: tuple[str, ...] = field(default_factory=names)  # every registered environment
    suite: str = "builtin"
    split: str = "dev"
    limit: int | None = None  # at most N tasks per environment; None: all
    repeats: int = 1
    concurrency: int = 4
    rounds: int = 5
    max_tokens: int = 512
    server: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not self.tasks:
            raise BadOptionError("--tasks", "''", f"one or more of {', '.join(names())}")
        for env in self.tasks:
            environment(env)  # UnknownEnvironmentError names the known ones
        for name, maximum in MAXIMA.items():
            value = getattr(self, name)
            if value is None and name == "limit":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
                raise BadOptionError(option_name(name), value, f"a whole number from 1 to {maximum:,}")
        if self.server not in SERVERS:
            raise BadOptionError("--server", self.server, f"one of {', '.join(SERVERS)}")

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready; stored as the run's config."""
        return {**asdict(self), "tasks": list(self.tasks)}

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> EvalRequest:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def resumed_with(self, given: dict[str, Any], run_id: str) -> EvalRequest:
        """This (stored) request, checked against the options given with `--resume`: one that differs is an
        error, since a resumed run must finish what it started."""
        for name, value in given.items():
            stored = getattr(self, name)
            if (tuple(value) if name == "tasks" else value) != stored:
                shown = ",".join(stored) if name == "tasks" else stored
                raise ResumeConflictError(
                    f"{option_name(name)} {value if name != 'tasks' else ','.join(value)} conflicts with run "
                    f"{run_id}, which was started with {option_name(name)} {shown}; drop the option to resume it, "
                    f"or start a new run without --resume"
                )
        return self

    def settings(self) -> EvalSettings:
        return EvalSettings.sized(concurrency=self.concurrency, repeats=self.repeats, max_tokens=self.max_tokens,
                                  rounds=self.rounds)  # fmt: skip

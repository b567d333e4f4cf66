"""The environments, registered by name: the one place that knows which environments exist.

An environment is one object (the `Environment` protocol, generic in its task type) that knows its sandbox images,
how to load its tasks from a file, its built-in suite, how to open an episode on a runtime, how to replay a task's
gold solution (`cycleqd suite verify`, SFT data), its gold replies as texts, how to describe a task in a line and
which metrics its results add. A task is the environment's own frozen dataclass; code outside `envs/` relies only
on what `Task` says (an id, dataclass fields) and hands it back to its environment for the rest. Code outside
`envs/` asks the registry (`environment(name)`, `names()`) and never branches on an environment's name.

Adding an environment: write one module with an object that implements the protocol (subclassing
`EnvironmentBase` gives the usual defaults), then add one line to `_BUILTIN` below — or, from a plugin or a test,
call `register(obj)`. Built-in environments are imported on first use, so listing names stays cheap.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

from cycleqd.envs.episode import AgentProtocol, Episode
from cycleqd.envs.errors import TaskFormatError, UnknownEnvironmentError
from cycleqd.envs.replay import TaskVerdict
from cycleqd.sandboxes.contract import Sandbox
from cycleqd.sandboxes.limits import SandboxLimits

BUILTIN_DATA = Path(__file__).resolve().parent / "data"

# name → "module:attribute" of its registered object. One line per environment.
_BUILTIN: dict[str, str] = {
    "os": "cycleqd.envs.os.env:ENVIRONMENT",
    "db": "cycleqd.envs.db.env:ENVIRONMENT",
    "coding": "cycleqd.envs.coding.env:ENVIRONMENT",
}
_registered: dict[str, Environment[Any]] = {}


# The text protocol's round limit everywhere: CycleQD's (AgentBench v0.2 configures 8 for OS, 15 for DB). Under the
# tools protocol each environment has AgentBench FC's (`round_limits`).
TEXT_ROUNDS = 5
DEFAULT_ROUND_LIMITS: Mapping[AgentProtocol, int] = MappingProxyType(
    {AgentProtocol.TEXT: TEXT_ROUNDS, AgentProtocol.TOOLS: TEXT_ROUNDS}
)

# An episode's wall-clock limit by default. AgentBench v0.2 has none for a whole episode: its controller only drops a
# session left 240 s without an interaction, which our per-command and per-request limits already cover. So the
# default is a safety net that never cuts an episode a normal run finishes: the slowest measured (OS, 5 rounds of
# 512 tokens from SmolLM2 on a 2-core CPU, alone at the end of a run) takes 300-400 s, 15 rounds (AgentBench's DB)
# three times that; an episode stuck far beyond still ends, scored 0.
EPISODE_TIME_LIMIT_S = 1800.0


@dataclass(frozen=True)
class EpisodeSettings:
    """What every environment's episodes share: the run's round limit, the limits of one command, and the wall-clock
    limit of a whole episode (enforced by the orchestrator, from the environment's first message to its last)."""

    round_limit: int | None = None  # None: the environment's for the protocol (its `round_limits`)
    command_timeout_s: float = 30.0
    scripts_dir: Path | None = None  # AgentBench's scripts folder, for OS tasks that name script files
    time_limit_s: float = EPISODE_TIME_LIMIT_S
    protocol: AgentProtocol = AgentProtocol.TEXT  # how the model acts: v0.2's text, or AgentBench FC's tool calls
    # Environments that act otherwise (an evolve config's task-level `protocol`), as sorted (env, protocol) pairs.
    env_protocols: tuple[tuple[str, AgentProtocol], ...] = ()

    def for_env(self, env: str) -> EpisodeSettings:
        """The settings an episode of `env` runs under: its own protocol where the run gave it one."""
        protocol = dict(self.env_protocols).get(env, self.protocol)
        return self if protocol == self.protocol else replace(self, protocol=protocol)

    def rounds(self, limits: Mapping[AgentProtocol, int]) -> int:
        """The round limit of an environment whose defaults per protocol are `limits`: the run's, if it set one."""
        return limits[self.protocol] if self.round_limit is None else self.round_limit


class SandboxStarter(Protocol):
    """Starts one sandbox of the image NAME (e.g. "mariadb"; the runtime maps names to built tags). Environments
    receive it instead of importing a backend, so the Docker backend is one implementation among possible others."""

    def __call__(
        self,
        image: str,
        *,
        limits: SandboxLimits | None = None,
        command: list[str] | None = None,
        mounts: dict[str, str] | None = None,
    ) -> Awaitable[Sandbox]: ...


class Runtime(Protocol):
    """What an episode may use while it runs; `cycleqd.eval.runtime.EnvRuntime` is the implementation."""

    settings: EpisodeSettings
    start_sandbox: SandboxStarter

    def sandbox(self, image: str) -> contextlib.AbstractAsyncContextManager[Sandbox]:
        """A fresh sandbox of the image NAME for one episode, destroyed when the block ends."""
        ...

    def service(self, env: str) -> Any:
        """What `env.start_service` returned for this runtime (e.g. the DB environment's MariaDB server)."""
        ...


class Task(Protocol):
    """What code outside `envs/` may rely on in any environment's task: a frozen dataclass, whose fields are its
    content (but those whose metadata says `gold_only`), with an id unique in its suite."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def task_id(self) -> str: ...


TaskT = TypeVar("TaskT", bound=Task)


@runtime_checkable
class Environment(Protocol[TaskT]):
    name: str
    gold_format: int  # bumped when its gold replies change, so that what was trained on them is redone
    gold_rounds: int  # model turns in its longest gold trajectory: a round limit below it cannot win every task
    round_limits: Mapping[AgentProtocol, int]  # its round limit per protocol where the run sets none

    def images(self) -> tuple[str, ...]:
        """The sandbox image names its episodes (and services) need, built before a run starts."""
        ...

    def episode_images(self, tasks: Iterable[TaskT]) -> set[str]:
        """The images of the per-episode sandboxes these tasks use (the runtime keeps warm spares of them)."""
        ...

    def load_tasks(self, path: Path) -> list[TaskT]:
        """Every task of one file; TaskFormatError (file, task, field, what was expected) on the first bad one."""
        ...

    def load_tasks_leniently(self, path: Path) -> tuple[list[TaskT], list[TaskFormatError]]:
        """The well-formed tasks of one file, and an error per malformed task (for `suite verify`)."""
        ...

    def builtin_tasks(self, split: str) -> list[TaskT]:
        """The tasks of a split of the built-in suite; UnknownSplitError naming the splits there are."""
        ...

    def recognizes(self, record: dict[str, Any], file: Path) -> bool:
        """Whether a task file whose first record is `record` belongs to this environment."""
        ...

    def start_service(self, runtime: Runtime) -> contextlib.AbstractAsyncContextManager[Any] | None:
        """A resource all of a run's episodes share (started once per runtime), or None."""
        ...

    def open_episode(self, task: TaskT, runtime: Runtime) -> contextlib.AbstractAsyncContextManager[Episode]:
        """An episode of `task` on the runtime; what it holds is released when the block ends."""
        ...

    async def replay_gold(self, task: TaskT, runtime: Runtime) -> TaskVerdict:
        """The task's gold solution replayed through a real episode, as a model's replies would go under the
        runtime's protocol (text replies, or tool calls whose transcript keeps them as calls)."""
        ...

    def gold_texts(self, task: TaskT) -> list[str]:
        """The model turns of the task's gold trajectory that can be written without running it (what a reply
        budget must fit); [] when it has no gold to count."""
        ...

    def describe(self, task: TaskT) -> str:
        """The task's own words, for a reader choosing tasks (`cycleqd tasks` shows them on one line)."""
        ...

    def metrics(self, results: Iterable[tuple[TaskT, float]]) -> dict[str, float]:
        """Metrics beyond the mean score over (task, score) of the scored episodes of one split."""
        ...


class UnknownSplitError(ValueError):
    """A built-in suite has no such split; the message lists the ones it has."""


class EnvironmentBase(Generic[TaskT]):
    """Defaults for an environment: no shared service, no extra metrics, a built-in suite of
    `envs/data/<name>/<split>.json[l]` files, task files loaded by `parse(record, source, index)`."""

    name: str = ""
    gold_format: int = 0  # bumped when the gold replies change, so that what was trained on them is redone
    gold_rounds: int = 1
    round_limits: Mapping[AgentProtocol, int] = DEFAULT_ROUND_LIMITS

    def images(self) -> tuple[str, ...]:
        raise NotImplementedError

    def episode_images(self, tasks: Iterable[TaskT]) -> set[str]:
        return set(self.images())

    def load_tasks(self, path: Path) -> list[TaskT]:
        raise NotImplementedError

    def load_tasks_leniently(self, path: Path) -> tuple[list[TaskT], list[TaskFormatError]]:
        raise NotImplementedError

    def builtin_tasks(self, split: str) -> list[TaskT]:
        folder = BUILTIN_DATA / self.name
        files = sorted(folder.glob(f"{split}.json*"))
        if not files:
            known = sorted({p.name.split(".")[0] for p in folder.glob("*.json*")})
            raise UnknownSplitError(
                f"the built-in {self.name} suite has no split {split!r}; it has: {', '.join(known) or 'none'}"
            )
        return [task for file in files for task in self.load_tasks(file)]

    def recognizes(self, record: dict[str, Any], file: Path) -> bool:
        return False

    def start_service(self, runtime: Runtime) -> contextlib.AbstractAsyncContextManager[Any] | None:
        return None

    def open_episode(self, task: TaskT, runtime: Runtime) -> contextlib.AbstractAsyncContextManager[Episode]:
        raise NotImplementedError

    async def replay_gold(self, task: TaskT, runtime: Runtime) -> TaskVerdict:
        return TaskVerdict(task.task_id, None, f"unavailable: the {self.name} environment has no gold")

    def gold_texts(self, task: TaskT) -> list[str]:
        return []

    def describe(self, task: TaskT) -> str:
        return task.task_id

    def metrics(self, results: Iterable[tuple[TaskT, float]]) -> dict[str, float]:
        return {}


@contextlib.asynccontextmanager
async def closing(episode: Episode) -> AsyncIterator[Episode]:
    """An episode that needs no sandbox of its own, closed however the block ends."""
    try:
        yield episode
    finally:
        await episode.close()


def register(env: Environment[TaskT]) -> Environment[TaskT]:
    """Make `env` known under `env.name` (replacing one of the same name); returns it, so it works as a line."""
    if not env.name:
        raise ValueError("an environment needs a name")
    _registered[env.name] = env
    return env


def unregister(name: str) -> None:
    _registered.pop(name, None)


def names() -> tuple[str, ...]:
    """Every environment's name, built-in ones first."""
    return tuple(dict.fromkeys([*_BUILTIN, *_registered]))


def environment(name: str) -> Environment[Any]:
    """The environment registered as `name`; UnknownEnvironmentError listing the known ones."""
    if name not in _registered:
        if name not in _BUILTIN:
            raise UnknownEnvironmentError(name, names())
        module, attribute = _BUILTIN[name].split(":")
        _registered[name] = getattr(importlib.import_module(module), attribute)
    return _registered[name]

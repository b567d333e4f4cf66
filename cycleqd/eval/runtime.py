"""The shared resources episodes run on: a warm sandbox pool per image and each environment's shared service
(the DB environment's MariaDB server), all on the Docker backend. Environments see it through the registry's
`Runtime` protocol and never import the backend; what each needs comes from the registry."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from cycleqd.envs.episode import Episode
from cycleqd.envs.registry import EpisodeSettings, SandboxStarter, environment
from cycleqd.sandboxes.contract import Sandbox
from cycleqd.sandboxes.docker_sandbox import DockerSandbox
from cycleqd.sandboxes.images import image_tag
from cycleqd.sandboxes.limits import SandboxLimits
from cycleqd.sandboxes.pool import SandboxPool

if TYPE_CHECKING:
    from cycleqd.eval.tasks import EvalTask


def images_for(envs: Iterable[str]) -> list[str]:
    """The sandbox images episodes of these environments need, each once."""
    return sorted({image for env in envs for image in environment(env).images()})


def docker_starter(run_id: str | None, default_limits: SandboxLimits) -> SandboxStarter:
    """Docker sandboxes of built images, labelled with the run (so a crash never leaks one)."""

    async def start(image: str, *, limits: SandboxLimits | None = None, command: list[str] | None = None,
                    mounts: dict[str, str] | None = None) -> Sandbox:  # fmt: skip
        return await DockerSandbox.start(image_tag(image), limits=limits or default_limits, run_id=run_id,
                                         command=command, mounts=mounts)  # fmt: skip

    return start


class EnvRuntime:
    """`tasks`: the raw tasks per environment name that will run on it (they decide the warm spares and services).
    `EnvRuntime.of(eval_tasks, ...)` groups a run's tasks."""

    def __init__(
        self,
        tasks: dict[str, list[Any]],
        *,
        run_id: str | None,
        max_sandboxes: int,
        settings: EpisodeSettings,
        start_sandbox: SandboxStarter | None = None,
    ) -> None:
        self.run_id = run_id
        self.settings = settings
        self.start_sandbox = start_sandbox or docker_starter(
            run_id, SandboxLimits(command_timeout_s=settings.command_timeout_s)
        )
        self.environments = [environment(name) for name in tasks]
        images = sorted({image for env in self.environments for image in env.episode_images(tasks[env.name])})
        warm = {image: min(2, max_sandboxes) for image in images}
        self.pool = SandboxPool(self.start_sandbox, warm=warm, max_live=max_sandboxes)
        self._services: dict[str, Any] = {}
        self._stack = contextlib.AsyncExitStack()

    @classmethod
    def of(cls, tasks: Iterable[EvalTask], **options: Any) -> EnvRuntime:
        grouped: dict[str, list[Any]] = defaultdict(list)
        for task in tasks:
            grouped[task.env].append(task.task)
        return cls(dict(grouped), **options)

    async def __aenter__(self) -> EnvRuntime:
        try:
            await self._stack.enter_async_context(self.pool)
            for env in self.environments:
                service = env.start_service(self)
                if service is not None:
                    self._services[env.name] = await self._stack.enter_async_context(service)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
        self._services.clear()

    def expect(self, tasks: Iterable[EvalTask]) -> None:
        """These episodes are coming, one sandbox each: the pool keeps no spare beyond them."""
        counts: dict[str, int] = defaultdict(int)
        for task in tasks:
            for image in environment(task.env).episode_images([task.task]):
                counts[image] += 1
        for image, count in counts.items():
            self.pool.expect(image, count)

    def sandbox(self, image: str) -> contextlib.AbstractAsyncContextManager[Sandbox]:
        return self.pool.sandbox(image)

    def service(self, env: str) -> Any:
        if env not in self._services:
            raise RuntimeError(f"the runtime was not started for {env!r} tasks")
        return self._services[env]

    @contextlib.asynccontextmanager
    async def episode(self, task: EvalTask) -> AsyncIterator[Episode]:
        settings = self.settings.for_env(task.env)
        runtime = self if settings is self.settings else _WithSettings(self, settings)
        async with environment(task.env).open_episode(task.task, runtime) as episode:
            yield episode


class _WithSettings:
    """The runtime as one environment's episodes see it: its sandboxes and services, under that environment's own
    settings (an evolve config's task-level protocol)."""

    def __init__(self, runtime: EnvRuntime, settings: EpisodeSettings) -> None:
        self.settings = settings
        self.start_sandbox = runtime.start_sandbox
        self.sandbox = runtime.sandbox
        self.service = runtime.service

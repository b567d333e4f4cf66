"""The shared resources episodes run on: a warm sandbox pool per image, and one MariaDB server for DB tasks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from cycleqd.eval_tasks import EvalTask
from envs.coding import CodingEpisode
from envs.dbbench import DBBenchEpisode
from envs.episode import Episode
from envs.mariadb_server import MariaDBServer
from envs.os_interaction import OSInteractionEpisode, OSSettings
from sandboxes.docker_sandbox import DockerSandbox
from sandboxes.images import image_tag
from sandboxes.limits import SandboxLimits
from sandboxes.pool import SandboxPool

IMAGES_BY_ENV = {"os": ["os-default", "os-packages"], "db": ["mariadb"], "coding": ["os-default"]}


def images_for(envs: list[str]) -> list[str]:
    """The sandbox images episodes of these environments need, each once."""
    return sorted({image for env in envs for image in IMAGES_BY_ENV[env]})


def image_for(task: EvalTask) -> str:
    if task.env == "os":
        return image_tag(task.task.image)  # type: ignore[union-attr]
    return image_tag("os-default")


class EnvRuntime:
    def __init__(self, tasks: list[EvalTask], *, run_id: str, max_sandboxes: int, os_settings: OSSettings) -> None:
        self.run_id = run_id
        self.os_settings = os_settings
        limits = SandboxLimits(command_timeout_s=os_settings.command_timeout_s)
        images = sorted({image_for(t) for t in tasks if t.env in ("os", "coding")})
        warm = {image: min(2, max_sandboxes) for image in images}
        self.pool = SandboxPool(
            lambda image: DockerSandbox.start(image, limits=limits, run_id=run_id), warm=warm, max_live=max_sandboxes
        )
        self.database = MariaDBServer(run_id=run_id) if any(t.env == "db" for t in tasks) else None

    async def __aenter__(self) -> EnvRuntime:
        await self.pool.start()
        if self.database:
            await self.database.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pool.close()
        if self.database:
            await self.database.stop()

    @contextlib.asynccontextmanager
    async def episode(self, task: EvalTask) -> AsyncIterator[Episode]:
        if task.env == "db":
            assert self.database is not None
            await self.database.ensure_running()  # a server killed under earlier episodes is restarted here
            episode: Episode = DBBenchEpisode(task.task, self.database)  # type: ignore[arg-type]
            try:
                yield episode
            finally:
                await episode.close()
            return
        async with self.pool.sandbox(image_for(task)) as sandbox:
            if task.env == "os":
                yield OSInteractionEpisode(task.task, sandbox, self.os_settings)  # type: ignore[arg-type]
            else:
                yield CodingEpisode(task.task, sandbox)  # type: ignore[arg-type]

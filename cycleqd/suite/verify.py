"""`cycleqd suite verify` on the Docker backend: the registry's gold replays on a runtime of their own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cycleqd.envs.registry import EpisodeSettings, environment
from cycleqd.envs.replay import TaskVerdict
from cycleqd.envs.suite_verify import FileReport, load_reports, verify_jobs
from cycleqd.eval.runtime import EnvRuntime

# Gold replays get AgentBench's generous command limit: a slow but correct gold script must not read as broken.
REPLAY_SETTINGS = EpisodeSettings(round_limit=5, command_timeout_s=30.0)


def replay_runtime(env: str, tasks: list, concurrency: int, scripts_dir: Path | None = None) -> EnvRuntime:
    settings = EpisodeSettings(REPLAY_SETTINGS.round_limit, REPLAY_SETTINGS.command_timeout_s, scripts_dir)
    return EnvRuntime({env: tasks}, run_id=None, max_sandboxes=max(2, concurrency), settings=settings)


async def verify_suite(
    path: Path, env: str, *, scripts_dir: Path | None = None, concurrency: int = 4,
    progress: Callable[[TaskVerdict], None] = lambda _: None,
) -> list[FileReport]:  # fmt: skip
    """Every task file under `path` loaded as `env`'s, each task's gold replayed; one report per file."""
    found = environment(env)
    reports, jobs = load_reports(path, found)
    async with replay_runtime(env, [task for _, task in jobs], concurrency, scripts_dir) as runtime:
        await verify_jobs(found, jobs, runtime, concurrency, progress)
    return reports

"""`cycleqd suite verify` on the Docker backend: the registry's gold replays on a runtime of their own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from cycleqd.envs.episode import AgentProtocol
from cycleqd.envs.gold_replays import FileReport, load_reports, replay_gold_all, verify_jobs
from cycleqd.envs.registry import EpisodeSettings, Task, environment
from cycleqd.envs.replay import TaskVerdict
from cycleqd.eval.runtime import EnvRuntime

# Gold replays get AgentBench's generous command limit: a slow but correct gold script must not read as broken; the
# round limit is the environment's for the protocol.
REPLAY_SETTINGS = EpisodeSettings(command_timeout_s=30.0)


def replay_runtime(env: str, tasks: list, concurrency: int, scripts_dir: Path | None = None, *,
                   protocol: AgentProtocol = AgentProtocol.TEXT) -> EnvRuntime:  # fmt: skip
    settings = replace(REPLAY_SETTINGS, scripts_dir=scripts_dir, protocol=protocol)
    return EnvRuntime({env: tasks}, run_id=None, max_sandboxes=max(2, concurrency), settings=settings)


async def verify_suite(
    path: Path, env: str, *, scripts_dir: Path | None = None, concurrency: int = 4,
    progress: Callable[[TaskVerdict], None] = lambda _: None, protocol: AgentProtocol = AgentProtocol.TEXT,
) -> list[FileReport]:  # fmt: skip
    """Every task file under `path` loaded as `env`'s, each task's gold replayed under `protocol`; one report per
    file."""
    found = environment(env)
    reports, jobs = load_reports(path, found)
    async with replay_runtime(env, [task for _, task in jobs], concurrency, scripts_dir, protocol=protocol) as runtime:
        await verify_jobs(found, jobs, runtime, concurrency, progress)
    return reports


async def gold_conversations(
    env: str, tasks: list[Task], *, protocol: AgentProtocol = AgentProtocol.TOOLS, concurrency: int = 4,
    scripts_dir: Path | None = None, progress: Callable[[TaskVerdict], None] = lambda _: None,
) -> list[TaskVerdict]:  # fmt: skip
    """Every task's gold replayed under `protocol`, in task order: each verdict's `transcript` is the conversation
    (under the tools protocol, assistant messages with `tool_calls` answered by `tool` messages, as the orchestrator
    keeps a model's), its first `prompt_messages` the environment's prompt. What `cycleqd sft` trains on is the
    transcripts of those that passed."""
    async with replay_runtime(env, tasks, concurrency, scripts_dir, protocol=protocol) as runtime:
        return await replay_gold_all(environment(env), tasks, runtime, concurrency, progress)

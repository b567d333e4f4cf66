"""How a model acts in an episode. Below `envs/` (which re-exports it from `envs/episode.py`) so that the evolution's
config, which must not import the environments, validates a task's protocol with the same values."""

from __future__ import annotations

from enum import StrEnum


class AgentProtocol(StrEnum):
    """How the model acts: chosen per run (`eval --protocol`), kept with the run."""

    TEXT = "text"  # AgentBench v0.2, and CycleQD's: actions are parsed from the reply's text
    TOOLS = "tools"  # AgentBench FC: actions are the reply's `tool_calls`, and every request carries the tools

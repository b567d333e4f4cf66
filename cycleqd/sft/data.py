"""Supervised fine-tuning data: gold trajectories replayed through the real environments, rendered with the
model's chat template exactly as the server renders an episode, with the loss on the assistant turns only.

A trajectory is what `cycleqd suite verify` replays (the env's own prompts, the gold reply, the sandbox's real
observations); only replays that score 1 are kept, so an expert never learns a wrong answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cycleqd.envs.episode import AgentProtocol, Message
from cycleqd.envs.replay import TaskVerdict
from cycleqd.errors import UserError
from cycleqd.eval.tasks import load_eval_tasks
from cycleqd.serving.tool_protocol import tool_support
from cycleqd.suite.verify import gold_conversations

IGNORE = -100  # the label value torch's cross-entropy skips


class TrainingDataError(UserError, ValueError):
    """What a fine-tune needs is not there or not usable: no passing gold trajectory, a transcript file in the wrong
    format, no weights, an output folder holding another fine-tune. The message names the file and the fix."""


class TemplateError(TrainingDataError):
    """The chat template does not render a conversation as a prefix of its continuation."""


@dataclass(frozen=True)
class GoldTranscript:
    messages: list[Message]
    prompt_messages: int  # how many leading messages are the env's prompt (its one-shot replies are not trained)
    # The tools every request of the episode carried (the tools protocol), rendered by the chat template as a served
    # request renders them; empty under the text protocol.
    tools: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class TrainingExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE outside assistant turns

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


async def gold_transcripts(
    env: str, suite: str, split: str, limit: int | None, concurrency: int = 4,
    progress: Callable[[TaskVerdict], None] = lambda _: None, protocol: AgentProtocol = AgentProtocol.TEXT,
) -> list[GoldTranscript]:  # fmt: skip
    """Replay the gold solution of every task of the split under `protocol` (under the tools protocol the gold
    replies are tool calls answered by tool results); the transcripts of those that pass, in task order."""
    tasks = [t.task for t in load_eval_tasks([env], suite, split, limit)]
    verdicts = await gold_conversations(env, tasks, protocol=protocol, concurrency=concurrency, progress=progress)
    return [GoldTranscript(v.transcript, v.prompt_messages, list(v.tools)) for v in verdicts if v.passed]


def save_transcripts(path: Path, transcripts: list[GoldTranscript]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text("".join(json.dumps(asdict(t)) + "\n" for t in transcripts))
    temporary.replace(path)


def load_transcripts(path: Path) -> list[GoldTranscript]:
    """A JSONL file of {"messages": [{role, content}, ...], "prompt_messages": N}; errors name file and line."""
    transcripts = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainingDataError(f"{path}:{line_no}: not JSON: {exc}") from None
        messages = record.get("messages") if isinstance(record, dict) else None
        if not (isinstance(messages, list) and all(isinstance(m, dict) and {"role", "content"} <= set(m)
                                                   for m in messages)):  # fmt: skip
            raise TrainingDataError(f"{path}:{line_no}: expected 'messages': a list of {{role, content}}")
        tools = record.get("tools") or []
        if not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
            raise TrainingDataError(f"{path}:{line_no}: expected 'tools': a list of OpenAI tool objects")
        transcripts.append(GoldTranscript(messages, int(record.get("prompt_messages", 0)), tools))
    return transcripts


def tools_template(tokenizer: object) -> str | None:
    """The chat template a server renders this tokenizer's requests with tools through; None: its own."""
    support = tool_support(getattr(tokenizer, "chat_template", None), "the base checkpoint")
    support.require()
    return support.chat_template


def render(transcript: GoldTranscript, tokenizer: object, max_length: int) -> TrainingExample:
    """Token ids of the whole conversation as the chat template renders it; labels on assistant turns only.

    Each assistant turn's tokens are found as the difference between the conversation up to it (with the
    generation prompt) and the conversation including it, which is exactly what the model generated. A tools
    transcript is rendered with its tools, through the template the servers use for this model (cycleqd's tools
    preamble before a template that has none), so the expert learns the tool-call text its server parses."""
    tools = {"tools": transcript.tools, "chat_template": tools_template(tokenizer)} if transcript.tools else {}

    def template(part: list[Message], **options: object) -> list[int]:
        return list(tokenizer.apply_chat_template(part, tokenize=True, return_dict=False, **tools, **options))  # type: ignore[attr-defined]

    messages = transcript.messages
    ids = template(messages)
    labels = [IGNORE] * len(ids)
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or index < transcript.prompt_messages:
            continue
        prompt = template(messages[:index], add_generation_prompt=True)
        through = template(messages[: index + 1])
        if through[: len(prompt)] != prompt or ids[: len(through)] != through:
            raise TemplateError("this chat template does not render a conversation as a prefix of its continuation")
        labels[len(prompt) : len(through)] = through[len(prompt) :]
    return TrainingExample(ids[:max_length], labels[:max_length])

"""`cycleqd sft`: make an expert from a base checkpoint and an environment's gold trajectories."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cycleqd.envs.episode import AgentProtocol
from cycleqd.errors import BadOptionError
from cycleqd.eval.runtime import images_for
from cycleqd.sandboxes.engine import docker_client
from cycleqd.sandboxes.images import build_images
from cycleqd.sft.data import (
    GoldTranscript,
    TrainingDataError,
    TrainingExample,
    gold_transcripts,
    load_transcripts,
    render,
    save_transcripts,
)
from cycleqd.sft.train import SFTSettings, fine_tune


@dataclass(frozen=True)
class SFTRequest:
    base: Path
    env: str
    suite: str
    split: str
    limit: int | None
    out: Path
    settings: SFTSettings
    # How the gold acts: v0.2's text, or AgentBench FC's tool calls (an expert for `eval --protocol tools`)
    protocol: AgentProtocol = AgentProtocol.TEXT

    def __post_init__(self) -> None:
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise BadOptionError("--limit", self.limit, "a whole number of at least 1")


@dataclass(frozen=True)
class SFTSummary:
    examples: int
    trained_tokens: int
    first_loss: float
    last_loss: float
    seconds: float
    out: Path
    epoch_losses: tuple[float, ...] = ()  # the learning curve: mean loss of each epoch's steps
    # what was trained on: two machines whose curves differ compare this first (a gold that failed its replay on
    # one of them is a different training set, not different arithmetic)
    data_digest: str = ""

    def describe(self) -> str:
        curve = ", ".join(f"{loss:.3f}" for loss in self.epoch_losses)
        return (f"{self.out}: {self.examples} trajectories ({self.trained_tokens} trained tokens, data "
                f"{self.data_digest}), loss {self.first_loss:.3f} → {self.last_loss:.3f} (by epoch: {curve}), "
                f"{self.seconds:.0f} s")  # fmt: skip


def epoch_means(losses: list[float], steps_per_epoch: int) -> tuple[float, ...]:
    """Mean loss per epoch. Grouped back from the last step, which always ends an epoch: after a resume, the steps
    this process saw start mid-epoch, and that first, partial epoch is the mean of what was seen."""
    epochs = [losses[max(0, end - steps_per_epoch) : end] for end in range(len(losses), 0, -steps_per_epoch)]
    return tuple(sum(epoch) / len(epoch) for epoch in reversed(epochs))


def transcripts_file(out: Path, protocol: AgentProtocol = AgentProtocol.TEXT) -> Path:
    """Beside the output: the gold transcripts it is trained on (a tools expert's are its own file)."""
    kind = "" if protocol is AgentProtocol.TEXT else f".{protocol}"
    return out.with_name(f"{out.name}{kind}.transcripts.jsonl")


def run_sft(request: SFTRequest, console: Console | None) -> SFTSummary:
    """Gold trajectories (replayed once, then read from beside the output), rendered, trained on, published."""
    started = time.monotonic()
    cached = transcripts_file(request.out, request.protocol)
    if cached.is_file():
        transcripts = load_transcripts(cached)
    else:
        build_images(docker_client(), images_for([request.env]))
        transcripts = asyncio.run(gold_transcripts(request.env, request.suite, request.split, request.limit,
                                                   protocol=request.protocol))  # fmt: skip
        save_transcripts(cached, transcripts)
    if not transcripts:
        raise TrainingDataError(f"no gold trajectory of the {request.env} {request.split} split passed its own check")
    return train_on_transcripts(request.base, transcripts, request.out, request.settings, request.env, console, started)


def train_on_transcripts(base: Path, transcripts: list[GoldTranscript], out: Path, settings: SFTSettings, what: str,
                         console: Console | None, started: float | None = None) -> SFTSummary:  # fmt: skip
    """Fine-tune `base` on the transcripts (of one environment, or several: the all-data baseline) and publish."""
    from transformers import AutoTokenizer

    started = time.monotonic() if started is None else started
    tokenizer = AutoTokenizer.from_pretrained(base)
    examples = [render(t, tokenizer, settings.max_length) for t in transcripts]
    total = settings.steps_per_epoch(len(examples)) * settings.epochs
    tokens = sum(e.trained_tokens for e in examples)
    if console:
        console.print(f"fine-tuning {base} on {len(examples)} {what} trajectories ({tokens} trained "
                      f"tokens): {settings.epochs} epochs, {total} steps of {settings.batch_size}, "
                      f"{'LoRA rank ' + str(settings.lora_rank) if settings.lora_rank else 'full fine-tune'}",
                      highlight=False)  # fmt: skip
    losses: list[float] = []
    progress = Progress(
        TextColumn("sft"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=console is None,
    )  # fmt: skip
    bar = progress.add_task("steps", total=total, loss="–")

    def on_step(step: int, _total: int, loss: float) -> None:
        losses.append(loss)
        progress.update(bar, completed=step, loss=f"{loss:.3f}")

    with progress:
        fine_tune(base, examples, out, settings, on_step=on_step)
    per_epoch = epoch_means(losses, settings.steps_per_epoch(len(examples)))
    return SFTSummary(len(examples), tokens, losses[0] if losses else float("nan"),
                      losses[-1] if losses else float("nan"), time.monotonic() - started, out,
                      per_epoch, examples_digest(examples))  # fmt: skip


def examples_digest(examples: list[TrainingExample]) -> str:
    """12 hex digits of the token ids and labels trained on, in order."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.input_ids, example.labels]).encode())
    return digest.hexdigest()[:12]

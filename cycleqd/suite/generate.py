"""`cycleqd suite generate db`: build the MariaDB image if needed, then generate the suite, saying where it stands."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cycleqd.envs.db.generate import generate_suite
from cycleqd.errors import UserError
from cycleqd.eval.runtime import docker_starter, images_for
from cycleqd.monitor import format as fmt
from cycleqd.sandboxes.engine import docker_client
from cycleqd.sandboxes.images import build_images
from cycleqd.sandboxes.limits import SandboxLimits

# As a user's run went: 2,000 train tasks in 11 minutes on two cores, nearly all of it MariaDB's (a database, a user
# and a table made and dropped per draft solved); the Python side of the same generation takes seconds.
TASKS_PER_SECOND = 3.0


class SplitLines:
    """A line on `console` as each split begins (with its expected time) and one as its last task is kept, above
    the bar on a terminal: off one rich draws no bar, and a log showed nothing for the eleven minutes of a train."""

    def __init__(self, progress: Progress, counts: dict[str, int], console: Console | None) -> None:
        self.progress, self.counts = progress, counts
        self.say = console.print if console is not None else lambda *_, **__: None
        self.bars = {split: progress.add_task(split, total=n) for split, n in counts.items()}
        self.started: dict[str, float] = {}

    def __call__(self, split: str, done: int) -> None:
        total, say = self.counts[split], self.say
        if done == 0:
            self.started[split] = time.monotonic()
            say(f"{split}: generating {total} tasks (about {fmt.duration(total / TASKS_PER_SECOND)})", highlight=False)
        self.progress.update(self.bars[split], completed=done)
        if done == total:
            took = fmt.duration(time.monotonic() - self.started.get(split, time.monotonic()))
            say(f"{split}: {total} tasks in {took}", highlight=False)


def generated_db_suite(out: Path, counts: dict[str, int], seed: int, console: Console | None) -> Path:
    """The suite under `out`, generating the splits it lacks (on the real MariaDB); `console` (stderr for the CLI)
    gets a line per split and, on a terminal, a bar; None: nothing is said."""
    if all((out / f"{split}.jsonl").is_file() for split in counts):
        return out
    build_images(docker_client(), images_for(["db"]))
    columns = (TextColumn("generating {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bar = console is not None and console.is_terminal  # off one rich leaves a blank line for its bar, and no bar
    with Progress(*columns, console=console, disable=not bar, transient=True) as progress:
        lines = SplitLines(progress, counts, console)
        generate_suite(out, counts, docker_starter(None, SandboxLimits()), seed, progress=lines)
    return out


def run_generate(out: Path, counts: dict[str, int], seed: int, console: Console, err: Console | None = None) -> int:
    """`err`: where the generation says where it stands (the CLI's stderr); the files written go to `console`."""
    if any(n < 0 for n in counts.values()):
        raise UserError("--train, --dev and --test must be 0 or more")
    generated_db_suite(out, {k: v for k, v in counts.items() if v}, seed, err or console)
    for split in counts:
        path = out / f"{split}.jsonl"
        if path.is_file():
            lines = sum(1 for line in path.read_text().splitlines() if line.strip())
            console.print(f"{path}: {lines} tasks", highlight=False, soft_wrap=True)
    return 0

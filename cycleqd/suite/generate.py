"""`cycleqd suite generate db`: build the MariaDB image if needed, then generate the suite with a progress bar."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cycleqd.envs.db_generate import generate_suite
from cycleqd.errors import UserError
from cycleqd.eval.runtime import docker_starter, images_for
from cycleqd.sandboxes.engine import docker_client
from cycleqd.sandboxes.images import build_images
from cycleqd.sandboxes.limits import SandboxLimits


def generated_db_suite(out: Path, counts: dict[str, int], seed: int, console: Console | None) -> Path:
    """The suite under `out`, generating the splits it lacks (on the real MariaDB)."""
    if all((out / f"{split}.jsonl").is_file() for split in counts):
        return out
    build_images(docker_client(), images_for(["db"]))
    columns = (TextColumn("generating {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=console is None, transient=True) as progress:
        bars = {split: progress.add_task(split, total=n) for split, n in counts.items()}
        generate_suite(
            out,
            counts,
            docker_starter(None, SandboxLimits()),
            seed,
            progress=lambda split, done: progress.update(bars[split], completed=done),
        )
    return out


def run_generate(out: Path, counts: dict[str, int], seed: int, console: Console) -> int:
    if any(n < 0 for n in counts.values()):
        raise UserError("--train, --dev and --test must be 0 or more")
    generated_db_suite(out, {k: v for k, v in counts.items() if v}, seed, console)
    for split in counts:
        path = out / f"{split}.jsonl"
        if path.is_file():
            lines = sum(1 for line in path.read_text().splitlines() if line.strip())
            console.print(f"{path}: {lines} tasks", highlight=False, soft_wrap=True)
    return 0

"""`cycleqd evolve` as a call with the CLI's arguments: the live view and final table of `cycleqd.display` around
the feature `cycleqd.evolution.run.evolve`."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from cycleqd.evolver.config import EvolveConfig


def run_evolve_command(
    config: EvolveConfig | None, db_path: Path, resume_id: str | None, as_json: bool, console: Console, err: Console,
    ray_address: str | None = None, rerun: str | None = None,
) -> int:  # fmt: skip
    """Exit status 0 once the final table is printed; user errors propagate to the CLI's error boundary. `rerun`: the
    command that resumes the caller (the demo's), named when the run stops."""
    from cycleqd.display import show_evolve

    return show_evolve(config, db_path, resume_id, as_json, ray_address, out=console, err=err, rerun=rerun)

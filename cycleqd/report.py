"""`cycleqd report RUN`: the final table of an evolution, a heatmap per archive and its QD metrics over
generations, the children's episodes played against planned (racing's saving), all read from the store (nothing
is recomputed)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cycleqd.evolution import FinalRow  # noqa: E402
from db.evolution_store import EvolutionStore  # noqa: E402
from db.monitor_queries import episode_saving  # noqa: E402
from db.schema import Archive, Cell  # noqa: E402
from evolver.archive import parse_cell_key  # noqa: E402

FINAL_KINDS = {"base": 0, "expert": 1, "merge": 2, "final": 3}


def final_rows(evo: EvolutionStore, names: list[str]) -> list[FinalRow]:
    """The test-split table: base, each expert, the naive merge, the CycleQD final model (those measured)."""
    rows = []
    for candidate in evo.candidates():
        if candidate.kind not in FINAL_KINDS or not candidate.test_scores:
            continue
        label = {"base": "base", "merge": "naive merge", "final": "CycleQD final"}.get(candidate.kind)
        if candidate.kind == "expert":
            label = f"expert {names[candidate.slot]}"
        rows.append(FinalRow(label or candidate.kind, candidate.kind, candidate.id, dict(candidate.test_scores)))
    return sorted(rows, key=lambda r: (FINAL_KINDS[r.kind], r.candidate_id))


def archive_grid(archive: Archive, cells: list[Cell]) -> np.ndarray:
    """Qualities on the archive's BC grid (NaN where empty): 2 BCs → bins×bins, 1 BC → 1×bins."""
    dims = len(archive.bc_tasks)
    if dims > 2:
        raise ValueError(f"archive {archive.task_name} has {dims} BCs; heatmaps are drawn for one or two")
    grid = np.full((archive.bins, archive.bins) if dims == 2 else (1, archive.bins), np.nan)
    for cell in cells:
        index = parse_cell_key(cell.cell)
        grid[(index[1], index[0]) if dims == 2 else (0, index[0])] = cell.quality
    return grid


def write_heatmaps(evo: EvolutionStore, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    cells = evo.cells()
    written = []
    for archive in evo.archives():
        if len(archive.bc_tasks) > 2:
            continue
        grid = archive_grid(archive, [c for c in cells if c.archive_id == archive.id])
        figure, axes = plt.subplots(figsize=(5, 4.5))
        image = axes.imshow(grid, origin="lower", cmap="viridis", vmin=0.0, vmax=max(1e-9, np.nanmax(grid, initial=0)))
        lo, hi = archive.bc_ranges[0]
        axes.set_xlabel(f"{archive.bc_tasks[0]} score bin ({lo:.2f}–{hi:.2f})")
        if len(archive.bc_tasks) == 2:
            lo, hi = archive.bc_ranges[1]
            axes.set_ylabel(f"{archive.bc_tasks[1]} score bin ({lo:.2f}–{hi:.2f})")
        axes.set_title(f"archive {archive.task_name}: quality = {archive.task_name} score")
        figure.colorbar(image, ax=axes, label="quality")
        path = out / f"archive-{archive.task_name}.png"
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


def write_qd_metrics(evo: EvolutionStore, out: Path) -> Path:
    generations = evo.generations()
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    names = [m["archive"] for m in generations[0].metrics] if generations else []
    numbers = [g.number for g in generations]
    panels = (("coverage", "coverage"), ("qd_score", "QD score"), ("best", "best quality"))
    for column, (key, title) in enumerate(panels):
        for index, name in enumerate(names):
            axes[column].plot(numbers, [g.metrics[index][key] for g in generations], label=name)
        axes[column].set_title(title)
        axes[column].set_xlabel("generation")
    if names:
        axes[0].legend()
    path = out / "qd-metrics.png"
    out.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def saving_line(evo: EvolutionStore) -> str | None:
    """The run's episode saving in one line, when the run counted its children's episodes."""
    saving = episode_saving(evo.store, evo.run_id)
    if saving is None:
        return None
    kind = (evo.store.get_run(evo.run_id).config.get("racing") or {}).get("kind", "exact")  # type: ignore[union-attr]
    if kind == "hoeffding":
        kind = "hoeffding, statistical and inexact: the archives may differ from a run without racing"
    return (f"racing ({kind}): children played {saving.played:,} of {saving.planned:,} selection episodes "
            f"({saving.saved:.1%} saved); {saving.rejected_early} of {saving.children} rejected early")  # fmt: skip


def write_episode_table(evo: EvolutionStore, out: Path) -> Path:
    """Per child: episodes played against planned, and how it ended (inserted, rejected early…)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "children-episodes.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["generation", "slot", "candidate", "status", "episodes_played", "episodes_planned"])
        for c in evo.candidates("child"):
            writer.writerow([c.generation, c.slot, c.id, c.status, c.episodes_played, c.episodes_planned])
    return path

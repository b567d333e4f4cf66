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
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cycleqd.db.evolution_store import EvolutionStore  # noqa: E402
from cycleqd.db.schema import Archive, Candidate, CandidateKind, CandidateStatus, Cell  # noqa: E402
from cycleqd.evolution.loop import FinalRow, search_label  # noqa: E402
from cycleqd.evolver.archive import AddStatus, parse_cell_key  # noqa: E402
from cycleqd.evolver.config import RacingSpec  # noqa: E402
from cycleqd.evolver.kinds import RacingKind  # noqa: E402
from cycleqd.monitor.queries.evolution_run import episode_saving  # noqa: E402

FINAL_KINDS = [
    CandidateKind.BASE,
    CandidateKind.EXPERT,
    CandidateKind.MERGE,
    CandidateKind.SEARCH,
    CandidateKind.BASELINE,
    CandidateKind.FINAL,
]  # the final table's rows, in their order
TAKEN = {AddStatus.NEW.name.lower(), AddStatus.IMPROVED.name.lower()}  # an insertion record's statuses that took a cell
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D")


def final_rows(evo: EvolutionStore, names: list[str]) -> list[FinalRow]:
    """The test-split table: base, each expert, the naive merge, the baselines, the CycleQD final model (those
    measured)."""
    rows = []
    searched = len(evo.candidates(CandidateKind.SEARCH))
    for candidate in evo.candidates():
        if candidate.kind not in FINAL_KINDS or not candidate.test_scores:
            continue
        label = {CandidateKind.BASE: "base", CandidateKind.MERGE: "naive merge", CandidateKind.FINAL: "CycleQD final",
                 CandidateKind.SEARCH: search_label(searched)}.get(candidate.kind, candidate.kind)  # fmt: skip
        if candidate.kind == CandidateKind.EXPERT:
            label = f"expert {names[candidate.slot]}"
        elif candidate.kind == CandidateKind.BASELINE:
            label = candidate.mutation.get("label", label)
        rows.append(FinalRow(label, candidate.kind, candidate.id, dict(candidate.test_scores)))
    return sorted(rows, key=lambda r: (FINAL_KINDS.index(r.kind), r.candidate_id))


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


def bin_edges(archive: Archive, axis: int) -> np.ndarray:
    lo, hi = archive.bc_ranges[axis]
    return np.linspace(lo, hi, archive.bins + 1)


def _edge_ticks(edges: np.ndarray) -> np.ndarray:
    """At most 9 labelled edges, evenly spaced, the first and the last among them: 16 labels of 5 characters do
    not fit under a plot. A step that divides the bins keeps the spacing even (15 bins: every 3rd edge)."""
    bins = len(edges) - 1
    step = next((d for d in range(1, bins + 1) if bins % d == 0 and bins // d <= 8), bins)
    return edges[::step]


def colour_top(grid: np.ndarray) -> float:
    """The top of the colour bar, whose bottom is quality 0: the best quality, or 1 (a score's top) where no elite is
    above 0. (A tiny top such as 1e-9 made an all-zero archive's bar read in units of 1e−9.)"""
    best = float(np.nanmax(grid, initial=0.0))
    return best if best > 0 else 1.0


def write_heatmaps(evo: EvolutionStore, out: Path) -> list[Path]:
    """One PNG per archive, axes in score units (the bins' edges), not bin numbers. An archive with one BC (a run of
    two tasks) is a strip: one row of cells, each filled cell labelled with its quality."""
    out.mkdir(parents=True, exist_ok=True)
    cells = evo.cells()
    written = []
    for archive in evo.archives():
        if len(archive.bc_tasks) > 2:
            continue
        grid = archive_grid(archive, [c for c in cells if c.archive_id == archive.id])
        strip = len(archive.bc_tasks) == 1
        x_edges = bin_edges(archive, 0)
        y_edges = bin_edges(archive, 1) if not strip else np.array([0.0, 1.0])
        figure, axes = plt.subplots(figsize=(9, 2.0) if strip else (5.5, 4.8))
        vmax = colour_top(grid)
        image = axes.pcolormesh(x_edges, y_edges, np.ma.masked_invalid(grid), cmap="viridis", vmin=0.0, vmax=vmax,
                                edgecolors="0.85", linewidth=0.5)  # fmt: skip
        axes.set_facecolor("0.96")  # empty cells: light grey, not the colour of quality 0
        axes.set_xticks(_edge_ticks(x_edges))
        axes.tick_params(axis="x", labelrotation=45 if len(axes.get_xticks()) > 6 else 0)
        axes.set_xlabel(f"{archive.bc_tasks[0]} score (bin edges)")
        if strip:
            axes.set_yticks([])
            for index, quality in enumerate(grid[0]):
                if not np.isnan(quality):
                    centre = (x_edges[index] + x_edges[index + 1]) / 2
                    colour = "white" if quality < 0.6 * vmax else "black"
                    axes.text(centre, 0.5, f"{quality:.2f}", ha="center", va="center", fontsize=8, color=colour)
        else:
            axes.set_yticks(_edge_ticks(y_edges))
            axes.set_ylabel(f"{archive.bc_tasks[1]} score (bin edges)")
        axes.set_title(f"archive {archive.task_name}: quality = {archive.task_name} score")
        figure.colorbar(image, ax=axes, label="quality", fraction=0.05 if strip else 0.15)
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
            # Archives often share a curve (the same elites): each its own dash and marker, the first drawn widest,
            # so that a line on top of another still shows the one beneath.
            style = {
                "linestyle": LINE_STYLES[index % len(LINE_STYLES)],
                "marker": MARKERS[index % len(MARKERS)],
                "linewidth": max(1.0, 3.5 - 1.2 * index),
                "markersize": max(3.0, 8 - 2 * index),
                "alpha": 0.85,
            }
            axes[column].plot(numbers, [g.metrics[index][key] for g in generations], label=name, **style)
        axes[column].set_title(title)
        axes[column].set_xlabel("generation")
        axes[column].xaxis.set_major_locator(MaxNLocator(integer=True))
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
    kind = (evo.store.get_run(evo.run_id).config.get("racing") or {}).get("kind", RacingSpec().kind)  # type: ignore[union-attr]
    if kind == RacingKind.HOEFFDING:
        kind = "hoeffding, statistical and inexact: the archives may differ from a run without racing"
    return (f"racing ({kind}): children played {saving.played:,} of {saving.planned:,} selection episodes "
            f"({saving.saved:.1%} saved); {saving.rejected_early} of {saving.children} rejected early")  # fmt: skip


def write_episode_table(evo: EvolutionStore, out: Path) -> Path:
    """Per child: episodes played against planned, and what the archives did with it (the live view's words)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "children-episodes.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["generation", "slot", "candidate", "outcome", "episodes_played", "episodes_planned"])
        for c in evo.candidates(CandidateKind.CHILD):
            writer.writerow([c.generation, c.slot, c.id, child_outcome(c), c.episodes_played, c.episodes_planned])
    return path


def child_outcome(child: Candidate) -> str:
    """'os new, db improved', 'rejected everywhere', 'rejected early', or 'not offered yet' (its generation is not
    committed). The stored status says only that a child was offered to the archives, not whether one took it."""
    if child.status is CandidateStatus.REJECTED_EARLY:
        return "rejected early"
    if child.status is not CandidateStatus.INSERTED:
        return "not offered yet"
    taken = [f"{r['archive']} {r['status']}" for r in child.insertions if r.get("status") in TAKEN]
    return ", ".join(taken) or "rejected everywhere"

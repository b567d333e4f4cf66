"""`cycleqd report`'s figures for a run of two tasks: each archive has one BC, drawn as a strip in score units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from cycleqd.db import open_store
from cycleqd.db.evolution_store import ArchiveSpec, CellUpdate, EvolutionStore
from cycleqd.evolution.report import _edge_ticks, bin_edges, write_heatmaps, write_qd_metrics


def two_task_evolution(tmp_path: Path) -> EvolutionStore:
    store = open_store(tmp_path / "evo.db")
    run = store.create_run("evolve", {"tasks": [{"name": "os"}, {"name": "db"}]})
    evo = EvolutionStore(store, run.id)
    archives = evo.create_archives([
        ArchiveSpec(0, "os", 15, ["db"], [[0.17, 0.575]]),
        ArchiveSpec(1, "db", 15, ["os"], [[0.0, 0.46]]),
    ])  # fmt: skip
    experts = [evo.add_candidate("expert", 0, slot) for slot in range(2)]
    children = [evo.add_candidate("child", g, 0) for g in range(1, 4)]
    # Both archives improve together, so their coverage curves coincide: both must still be visible.
    for number, child in enumerate([None, *children]):
        updates = [
            CellUpdate(archives[0].id, str(3 + number * 3), (child or experts[0]).id, 0.1 + 0.1 * number),
            CellUpdate(archives[1].id, str(2 + number * 4), (child or experts[1]).id, 0.2 + 0.05 * number),
        ]
        metrics = [{"archive": a.task_name, "coverage": (number + 1) / 15, "qd_score": 0.1 * (number + 1),
                    "best": 0.1 + 0.1 * number} for a in archives]  # fmt: skip
        evo.commit_generation(number, number % 2, {}, updates, metrics)
    return evo


def test_bin_edges_are_score_units_and_few_enough_to_read(tmp_path: Path) -> None:
    evo = two_task_evolution(tmp_path)
    edges = bin_edges(evo.archives()[0], 0)
    assert len(edges) == 16 and edges[0] == pytest.approx(0.17) and edges[-1] == pytest.approx(0.575)
    ticks = _edge_ticks(edges)
    assert len(ticks) <= 9 and ticks[0] == edges[0] and ticks[-1] == edges[-1]


def test_a_one_bc_archive_is_a_strip_and_the_metrics_png_is_written(tmp_path: Path) -> None:
    evo = two_task_evolution(tmp_path)
    out = tmp_path / "report"
    heatmaps = write_heatmaps(evo, out)
    assert [p.name for p in heatmaps] == ["archive-os.png", "archive-db.png"]
    height, width, _ = imread(heatmaps[0]).shape
    assert width > 2.5 * height  # a strip, not a square of one coloured row
    metrics = write_qd_metrics(evo, out)
    pixels = imread(metrics)
    assert pixels.shape[1] > 2 * pixels.shape[0] and np.std(pixels) > 0


def test_an_all_zero_archive_s_colour_bar_reads_0_to_1_not_units_of_1e_9(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    store = open_store(tmp_path / "zero.db")
    evo = EvolutionStore(store, store.create_run("evolve", {"tasks": [{"name": "os"}, {"name": "db"}]}).id)
    [archive] = evo.create_archives([ArchiveSpec(0, "os", 5, ["db"], [[0.0, 1.0]])])
    expert = evo.add_candidate("expert", 0, 0)
    evo.commit_generation(0, 0, {}, [CellUpdate(archive.id, "2", expert.id, 0.0)], [])
    bars: list[list[str]] = []
    save = Figure.savefig

    def saved_with_its_bar(figure: Figure, *args: object, **kwargs: object) -> None:
        save(figure, *args, **kwargs)  # drawn: the tick labels are set
        bar = figure.axes[-1]
        bars.append([t.get_text() for t in bar.get_yticklabels()] + [bar.yaxis.get_offset_text().get_text()])

    monkeypatch.setattr(Figure, "savefig", saved_with_its_bar)
    write_heatmaps(evo, tmp_path / "report")
    [labels] = bars
    assert labels[0] == "0.0" and labels[-2] == "1.0" and labels[-1] == ""  # no offset such as 1e−9

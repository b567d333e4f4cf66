"""Quality-diversity metrics of an archive, computed in one place for the store, the report and the TUI."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cycleqd.evolver.archive import GridArchive


@dataclass(frozen=True)
class QDMetrics:
    archive: str
    coverage: float  # filled cells ÷ all cells
    qd_score: float  # sum of the elites' qualities (scores are ≥ 0, so no offset is needed)
    best: float  # highest quality, 0 when empty
    elites: int

    def as_record(self) -> dict[str, object]:
        return asdict(self)


def qd_metrics(archive: GridArchive) -> QDMetrics:
    qualities = [archive.quality(e.scores) for e in archive.elites.values()]
    return QDMetrics(
        archive=archive.name,
        coverage=len(qualities) / archive.cells_total,
        qd_score=float(sum(qualities)),
        best=max(qualities, default=0.0),
        elites=len(qualities),
    )

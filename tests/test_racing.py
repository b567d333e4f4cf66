"""Racing's bounds and decisions (evolver/racing.py), checked against what the insertion rule does once every
episode is played: a child rejected early would have been rejected with all its episodes, whatever the order."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest

from cycleqd.evolver.archive import Elite, GridArchive
from cycleqd.evolver.config import ConfigError, parse_config
from cycleqd.evolver.racing import Race, TaskTally, mean_bounds, rejects

NAMES = ("os", "db", "coding")


def final_mean(scores: list[float | None]) -> float:
    scored = [s for s in scores if s is not None]
    return math.fsum(scored) / len(scored) if scored else 0.0


def test_bounds_put_unplayed_episodes_and_environment_errors_at_the_range_ends() -> None:
    lo, hi = mean_bounds(TaskTally(planned=4, scores=[1.0, 0.0]))
    assert lo == pytest.approx(0.25, abs=1e-8) and hi == pytest.approx(0.75, abs=1e-8)
    lo, hi = mean_bounds(TaskTally(planned=3, scores=[1.0], errors=1))
    assert lo == pytest.approx(0.5, abs=1e-8) and hi == pytest.approx(1.0, abs=1e-8)  # an error is not a 0
    lo, hi = mean_bounds(TaskTally(planned=3, scores=[1.0, 0.0], errors=1))
    assert lo == pytest.approx(0.5, abs=1e-8) and hi == pytest.approx(0.5, abs=1e-8)  # all played: known
    assert mean_bounds(TaskTally(planned=3, scores=[], errors=3)) == pytest.approx((0.0, 0.0), abs=1e-8)


@pytest.mark.parametrize("planned", [1, 2, 3, 4])
def test_every_way_the_episodes_can_end_stays_inside_the_bounds(planned: int) -> None:
    """Exhaustively: outcomes 0, 0.5, 1 or an environment error, any prefix played."""
    values: list[float | None] = [0.0, 0.5, 1.0, None]
    for outcome in itertools.product(values, repeat=planned):
        final = final_mean(list(outcome))
        for played in range(planned + 1):
            prefix = outcome[:played]
            tally = TaskTally(planned, [s for s in prefix if s is not None], sum(s is None for s in prefix))
            lo, hi = mean_bounds(tally)
            assert lo < final < hi, (outcome, played, lo, hi, final)


def filled_archives(rng: np.random.Generator, bins: int, fill: float, level: float) -> list[GridArchive]:
    ranges = ((0.25, 0.85),) * 2
    archives = [GridArchive(k, NAMES, bins, ranges) for k in range(3)]
    for candidate in range(60 * bins):
        scores = tuple(float(x) for x in np.clip(rng.normal(level, 0.15, 3), 0, 1))
        elite = Elite(candidate, f"g{candidate}", scores)
        for archive in archives:
            if rng.random() < fill:
                archive.offer(elite)
    return archives


def race_child(race: Race, outcomes: list[list[float | None]]) -> None:
    race.plan([len(o) for o in outcomes])
    piles = [list(reversed(o)) for o in outcomes]
    while not race.rejected and any(piles):
        k = race.start_next([i for i, pile in enumerate(piles) if pile])
        race.observe(k, piles[k].pop())


@pytest.mark.parametrize("seed", range(4))
def test_a_child_rejected_early_would_have_been_rejected_with_all_its_episodes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    archives = filled_archives(rng, bins=6, fill=0.9, level=0.6)
    early = full = 0
    for child in range(150):
        rates = rng.uniform(0.3, 0.75, 3)
        outcomes: list[list[float | None]] = [
            [None if rng.random() < 0.05 else float(rng.random() < p) for _ in range(40)] for p in rates
        ]
        race = Race(archives)
        race_child(race, outcomes)
        scores = tuple(final_mean(o) for o in outcomes)
        for (lo, hi), score in zip(race.bounds(), scores, strict=True):
            assert lo < score < hi  # the bounds hold the score the child would have had
        after = [dataclasses.replace(a, elites=dict(a.elites)) for a in archives]  # offered without changing them
        taken = [a.offer(Elite(10_000 + child, "child", scores)).status for a in after]
        if race.rejected:
            early += 1
            assert race.played < race.planned
            assert not any(taken), f"child {child} rejected early but {taken} with all its episodes"
        else:
            full += 1
            assert race.played == race.planned
    assert early >= 20 and full >= 1  # both branches were exercised, so the check could fail


def test_an_empty_reachable_cell_takes_anything() -> None:
    archive = GridArchive(0, NAMES, 3, ((0.0, 1.0), (0.0, 1.0)))
    archive.offer(Elite(1, "a", (0.9, 0.1, 0.1)))
    low_child = [(0.0, 0.1), (0.05, 0.15), (0.05, 0.15)]  # every reachable cell is (0, 0), held at quality 0.9
    assert rejects([archive], low_child)
    wider = [(0.0, 0.1), (0.05, 0.5), (0.05, 0.15)]  # cell (1, 0) is reachable and empty
    assert not rejects([archive], wider)
    tie = [(0.85, 0.9), (0.05, 0.15), (0.05, 0.15)]  # equal quality does not take a cell
    assert rejects([archive], tie)


def test_bcs_beyond_the_range_clamp_to_the_end_bins() -> None:
    archive = GridArchive(0, NAMES, 3, ((0.4, 0.6), (0.4, 0.6)))
    archive.offer(Elite(1, "a", (0.9, 0.0, 1.0)))  # far outside the range: cell (0, 2)
    assert archive.cell_of((0.5, 0.1, 0.95)) == (0, 2)
    assert rejects([archive], [(0.0, 0.5), (0.0, 0.39), (0.61, 1.0)])  # the whole box clamps to that one cell


def test_episodes_interleave_and_go_to_the_task_nearest_to_closing_first() -> None:
    race = Race([], kind="off")
    race.plan([3, 3, 3])
    assert [race.start_next({0, 1, 2}) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    # archive of task 1 is full of elites at 0.5: only task 1's quality keeps it open
    archive = GridArchive(1, NAMES, 2, ((0.0, 1.0), (0.0, 1.0)))
    for cell_scores in itertools.product((0.25, 0.75), repeat=2):
        archive.offer(Elite(len(archive.elites), "e", (cell_scores[0], 0.5, cell_scores[1])))
    race = Race([archive])
    race.plan([10, 10, 10])
    assert race.start_next({0, 1, 2}) == 1
    race.observe(1, 0.0)
    assert race.start_next({0, 2}) == 0  # among tasks no open archive waits on: interleaved


def test_hoeffding_is_opt_in_and_rejects_sooner_than_the_exact_bound() -> None:
    rng = np.random.default_rng(5)
    archives = filled_archives(rng, bins=6, fill=0.9, level=0.6)
    played = {}
    for kind in ("exact", "hoeffding"):
        total = 0
        child_rng = np.random.default_rng(9)
        for _ in range(40):
            rates = child_rng.uniform(0.3, 0.6, 3)
            race = Race(archives, kind)
            race_child(race, [[float(child_rng.random() < p) for _ in range(100)] for p in rates])
            total += race.played
        played[kind] = total
    assert played["hoeffding"] < played["exact"]


def test_the_racing_config_defaults_to_exact_and_names_bad_fields(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    tasks = [{"name": n, "env": "coding", "expert": "m"} for n in ("a", "b")]
    assert parse_config({"base": "m", "tasks": tasks}, "c.yaml", tmp_path).racing.kind == "exact"
    spec = parse_config({"base": "m", "tasks": tasks, "racing": {"kind": "hoeffding", "delta": 0.05}}, "c.yaml",
                        tmp_path).racing  # fmt: skip
    assert (spec.kind, spec.delta) == ("hoeffding", 0.05)
    with pytest.raises(ConfigError, match=r"c.yaml: field 'racing.kind'"):
        parse_config({"base": "m", "tasks": tasks, "racing": {"kind": "fast"}}, "c.yaml", tmp_path)
    with pytest.raises(ConfigError, match=r"racing.delta"):
        parse_config({"base": "m", "tasks": tasks, "racing": {"kind": "hoeffding", "delta": 1.5}}, "c.yaml", tmp_path)

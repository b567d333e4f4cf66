"""Archives, elite sampling, QD metrics and the evolution config, on hand-made archives."""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from pathlib import Path

import numpy as np
import pytest

from cycleqd.evolver.archive import AddStatus, Elite, GridArchive, paper_bc_range
from cycleqd.evolver.config import ConfigError, RaySpec, TaskSpec, load_config
from cycleqd.evolver.qd_metrics import qd_metrics
from cycleqd.evolver.sampling import elite_weights, sample_parents

TASKS = ("os", "db", "coding")


def archive(task_index: int = 0, bins: int = 4) -> GridArchive:
    return GridArchive(task_index, TASKS, bins, ((0.0, 1.0), (0.0, 1.0)))


def elite(candidate_id: int, *scores: float) -> Elite:
    return Elite(candidate_id, f"genome-{candidate_id}", tuple(scores))


def test_cells_bin_the_other_tasks_scores_and_clamp_outside_values() -> None:
    grid = archive(task_index=0)
    assert grid.bc_names == ("db", "coding")
    assert grid.cell_of((0.9, 0.0, 0.0)) == (0, 0)
    assert grid.cell_of((0.9, 0.26, 0.74)) == (1, 2)
    assert grid.cell_of((0.9, 1.0, -0.5)) == (3, 0)  # 1.0 and below-range values go to the end bins
    assert grid.cell_of((0.9, 7.0, 0.5)) == (3, 2)


def test_a_cell_is_taken_when_empty_or_by_strictly_higher_quality() -> None:
    grid = archive()
    first = grid.offer(elite(1, 0.5, 0.1, 0.1))
    assert first.status is AddStatus.NEW and first.old_quality is None and first.new_quality == 0.5
    tie = grid.offer(elite(2, 0.5, 0.15, 0.1))  # same cell, equal quality: rejected
    assert tie.status is AddStatus.REJECTED and not tie.status
    assert grid.elites[(0, 0)].candidate_id == 1
    better = grid.offer(elite(3, 0.6, 0.2, 0.0))
    assert better.status is AddStatus.IMPROVED and better.old_quality == 0.5 and better.new_quality == 0.6
    assert grid.elites[(0, 0)].candidate_id == 3
    assert better.as_record() == {"archive": "os", "cell": "0,0", "status": "improved", "old": 0.5, "new": 0.6}


def test_elite_weights_follow_the_papers_formula() -> None:
    grid = archive(task_index=1)  # quality = db; BCs = os, coding
    elites = [elite(1, 0.2, 0.4, 0.3), elite(2, 0.6, 0.8, 0.3), elite(3, 0.4, 0.6, 0.3)]
    weights = elite_weights(grid, elites, 0.5, 0.8)
    # columns: quality (db) 0.4/0.8/0.6 → 0, 1, 0.5; BC os 0.2/0.6/0.4 → 0, 1, 0.5; BC coding constant → 1
    expected = [0.5 * 0.5 * 0.8, 0.8 * 0.8 * 0.8, 0.65 * 0.65 * 0.8]
    assert weights == pytest.approx(expected)


def test_sampled_parents_are_distinct_and_follow_the_weights() -> None:
    grid = archive(task_index=0, bins=2)
    for item in (elite(1, 0.1, 0.1, 0.1), elite(2, 0.9, 0.9, 0.1), elite(3, 0.5, 0.1, 0.9)):
        assert grid.offer(item).status is AddStatus.NEW
    rng = np.random.default_rng(7)
    counts = {1: 0, 2: 0, 3: 0}
    for _ in range(4000):
        a, b = sample_parents(grid, rng)
        assert a.genome_hash != b.genome_hash
        counts[a.candidate_id] += 1
    weights = elite_weights(grid, grid.ordered_elites(), 0.5, 0.8)
    expected = weights / weights.sum()
    observed = np.array([counts[e.candidate_id] for e in grid.ordered_elites()]) / 4000
    assert observed == pytest.approx(expected, abs=0.03)
    assert expected.max() > 1.5 * expected.min()  # the test would notice uniform sampling


def test_a_lone_elite_falls_back_to_every_archives_elites() -> None:
    grid = archive()
    grid.offer(elite(1, 0.3, 0.0, 0.0))
    other = elite(2, 0.0, 0.5, 0.0)
    a, b = sample_parents(grid, np.random.default_rng(0), fallback=[elite(1, 0.3, 0.0, 0.0), other])
    assert {a.candidate_id, b.candidate_id} == {1, 2}


def test_qd_metrics_and_the_papers_bc_ranges() -> None:
    grid = archive(bins=2)
    grid.offer(elite(1, 0.5, 0.1, 0.1))
    grid.offer(elite(2, 0.25, 0.9, 0.9))
    metrics = qd_metrics(grid)
    assert (metrics.coverage, metrics.qd_score, metrics.best, metrics.elites) == (0.5, 0.75, 0.5, 2)
    assert grid.best() is not None and grid.best().candidate_id == 1
    assert paper_bc_range([0.2, 0.4, 0.3]) == pytest.approx((0.17, 0.46))
    assert paper_bc_range([0.0, 0.0]) == (0.0, 1.0)


def test_ties_for_best_keep_the_archives_own_expert_then_the_better_elsewhere_then_a_seeded_draw() -> None:
    # The coding archive of the issue: every coding score 0, the OS expert (id 1) first in id order.
    grid = archive(task_index=2, bins=5)
    os_expert, db_expert, coding_expert = elite(1, 0.25, 0.0, 0.0), elite(2, 0.0, 0.4, 0.0), elite(3, 0.0, 0.0, 0.0)
    for e in (os_expert, db_expert, coding_expert):
        grid.offer(e)
    assert grid.best(coding_expert).candidate_id == 3  # type: ignore[union-attr]
    # An expert that tied an earlier elite in its own cell holds no cell, and still wins the tie.
    crowded = archive(task_index=2, bins=5)
    crowded.offer(elite(9, 0.0, 0.0, 0.0))
    assert not crowded.offer(coding_expert).status
    assert crowded.best(coding_expert) == coding_expert
    # An expert below the top is not preferred: the tie rule never overrides a higher quality.
    grid.offer(elite(4, 0.1, 0.1, 0.3))
    assert grid.best(coding_expert).candidate_id == 4  # type: ignore[union-attr]
    # Without the expert, among the three tied at 0: the higher mean over the other tasks (db 0.2 over os 0.125).
    plain = archive(task_index=2, bins=5)
    for e in (os_expert, db_expert, coding_expert):
        plain.offer(e)
    assert plain.best().candidate_id == 2  # type: ignore[union-attr]


def test_a_full_tie_is_a_seeded_draw_independent_of_id_order() -> None:
    picks = set()
    for seed in range(40):
        grid = archive(task_index=0, bins=4)
        for i in (5, 6, 7):  # equal quality, equal mean elsewhere, different cells
            grid.offer(elite(i, 0.5, 0.1 * (i - 4) * 2, 0.6 - 0.1 * (i - 4) * 2))
        best = grid.best(seed=seed)
        assert best == grid.best(seed=seed)  # reproducible
        picks.add(best.candidate_id)  # type: ignore[union-attr]
    assert picks == {5, 6, 7}  # the lowest id does not always win


def write_config(tmp_path: Path, text: str) -> Path:
    for name in ("base", "e1", "e2"):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "config.json").write_text("{}")
    path = tmp_path / "evolve.yaml"
    path.write_text(text)
    return path


TWO_TASKS = """
base: base
tasks:
  - {name: os, env: os, expert: e1}
  - {name: db, env: db, expert: e2, selection_split: train}
"""


def test_the_default_config_is_the_papers_setting(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, TWO_TASKS))
    assert (config.generations, config.bins, config.flip_interval, config.bc_ranges) == (1200, 15, 1, None)
    assert (config.sampler.kind, config.sampler.alpha_low, config.sampler.alpha_high) == ("elite", 0.5, 0.8)
    assert (config.crossover.mu, config.crossover.sigma) == (1.0, 0.01)
    assert (config.mutation.kind, config.mutation.w_max) == ("svd", 0.1)
    assert config.tasks[0].expert == str(tmp_path / "e1") and config.tasks[1].selection_split == "train"
    assert type(config).from_snapshot(config.snapshot()) == config


EVERY_KEY = """
base: base
tasks:
  - {name: os, env: os, expert: e1, suite: builtin, selection_split: train, test_split: dev, limit: 7, protocol: tools}
  - {name: db, env: db, expert: e2}
generations: 9
flip_interval: 2
bins: 4
bc_ranges: {os: [0.1, 0.9], db: [0.2, 0.8]}
sampler: {kind: uniform, alpha_low: 0.4, alpha_high: 0.9}
crossover: {mu: 0.9, sigma: 0.02}
mutation: {kind: gaussian, w_max: 0.2, std: 0.001}
servers: 2
server: transformers
mode: async
seed: 11
eval: {concurrency: 3, max_tokens: 64, repeats: 2, rounds: 4, deterministic: true}
racing: {kind: hoeffding, delta: 0.1}
ray: {address: "10.0.0.1:6379", gpus: true}
baselines: {search: true, models: {sft: e1}}
"""


def leaf_fields(kind: type, prefix: str = "") -> set[str]:
    """Every field of a config dataclass, nested ones as `outer.inner` (a task's fields apart)."""
    hints = typing.get_type_hints(kind)
    names = set()
    for name in kind.__dataclass_fields__:
        nested = [t for t in typing.get_args(hints[name]) or (hints[name],) if dataclasses.is_dataclass(t)]
        if nested and name != "tasks":
            names |= leaf_fields(nested[0], f"{prefix}{name}.")
        else:
            names.add(prefix + name)
    return names


def value_at(config: object, name: str) -> object:
    return functools.reduce(lambda found, part: getattr(found, part, None), name.split("."), config)


def test_every_config_key_is_read_from_the_file(tmp_path: Path) -> None:
    """Each key of the config, set to a value other than its default, reaches the config a run stores: a key the
    parser dropped or a new key without a line here fails."""
    config = load_config(write_config(tmp_path, EVERY_KEY))
    default = load_config(write_config(tmp_path, TWO_TASKS))
    given = leaf_fields(type(config)) - {"base", "tasks"}
    changed = {name for name in given if value_at(config, name) != value_at(default, name)}
    assert changed == given, given - changed
    assert config.tasks[0] == TaskSpec("os", "os", str(tmp_path / "e1"), "builtin", "train", "dev", 7, "tools")
    assert leaf_fields(TaskSpec) == {"name", "env", "expert", "suite", "selection_split", "test_split", "limit",
                                     "protocol"}  # fmt: skip
    assert config.ray == RaySpec("10.0.0.1:6379", True) and config.baselines.models == {"sft": str(tmp_path / "e1")}
    assert type(config).from_snapshot(config.snapshot()) == config


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("bins: 0\n", "field 'bins': expected an integer ≥ 1, got 0"),
        ("mutation: {kind: lora}\n", "field 'mutation.kind': expected one of svd, gaussian, none, got 'lora'"),
        ("bc_ranges: {os: [0.5, 0.1], db: [0, 1]}\n", "field 'bc_ranges.os': expected lo < hi"),
        ("mode: fast\n", "field 'mode': expected one of sync, async"),
        (
            "tasks: [{name: a, env: os, expert: e1, protocol: json}, {name: b, env: db, expert: e2}]\n",
            "field 'tasks[0].protocol': expected one of text, tools, got 'json'",
        ),
        (
            "tasks: [{name: a, env: os, expert: e1}, {name: b, env: os, expert: e2, protocol: tools}]\n",
            "field 'tasks': expected one protocol per environment",
        ),
        ("crossover: {sigma: .nan}\n", "field 'crossover.sigma': expected a finite number, got nan"),
        ("mutation: {w_max: .inf}\n", "field 'mutation.w_max': expected a finite number, got inf"),
        ("bc_ranges: {os: [0, .inf], db: [0, 1]}\n", "field 'bc_ranges.os[1]': expected a finite number, got inf"),
        ("bins: 20000000\n", "field 'bins': expected at most 10000000 with 2 tasks"),
        ("generations: .inf\n", "field 'generations': expected an integer ≥ 0, got inf"),
        ("generations: 99999999999\n", "field 'generations': expected an integer from 0 to 10,000,000"),
        ("servers: 5000\n", "field 'servers': expected an integer from 1 to 1,024"),
        ("eval: {concurrency: 100000}\n", "field 'eval.concurrency': expected an integer from 1 to 1,024"),
    ],
)
def test_bad_configs_name_the_field(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match="evolve.yaml: " + message.replace("[", r"\[").replace("(", r"\(")):
        load_config(write_config(tmp_path, TWO_TASKS + extra))


@pytest.mark.parametrize(("written", "instead"), [("3e-4", "3.0e-4"), ("1.5E4", "1.5e+4")])
def test_a_number_yaml_reads_as_text_says_how_to_write_it(tmp_path: Path, written: str, instead: str) -> None:
    """PyYAML (YAML 1.1) reads 3e-4 as the string '3e-4': "expected a finite number, got '3e-4'" left the reader
    staring at a number."""
    with pytest.raises(ConfigError, match=re.escape(f"YAML reads {written} as text: write {instead}")):
        load_config(write_config(tmp_path, TWO_TASKS + f"mutation: {{kind: gaussian, std: {written}}}\n"))
    config = load_config(write_config(tmp_path, TWO_TASKS + f"mutation: {{kind: gaussian, std: {instead}}}\n"))
    assert config.mutation.std == float(written)


def test_a_missing_expert_and_a_single_task_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tasks\[1\].expert': expected a checkpoint folder with a config.json"):
        load_config(write_config(tmp_path, TWO_TASKS.replace("expert: e2", "expert: nowhere")))
    one = "base: base\ntasks:\n  - {name: os, env: os, expert: e1}\n"
    with pytest.raises(ConfigError, match="a list of at least two tasks"):
        load_config(write_config(tmp_path, one))

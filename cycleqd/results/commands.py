"""`cycleqd runs`, `cycleqd runs rm` and `cycleqd show`: what the store holds, read by id or unique id prefix."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Column, Table

from cycleqd.db.evolution_store import EvolutionStore
from cycleqd.db.schema import Aggregate, CandidateKind, Run, RunKind
from cycleqd.db.scores import ScoreTally
from cycleqd.db.store import Store
from cycleqd.display import print_table
from cycleqd.monitor import format as fmt
from cycleqd.results.intervals import Intervals, aggregate_intervals
from cycleqd.results.lookup import find_run, model_label, open_existing_store


def _task_names(config: dict[str, Any]) -> list[str]:
    # eval runs list environments; evolution runs list task specs
    return [t["name"] if isinstance(t, dict) else str(t) for t in config.get("tasks", [])]


def _score_rows(store: Store, run: Run) -> list[dict[str, Any]]:
    """What the scores column shows, as values: an eval's mean per environment and split (None: nothing scored);
    an evolution's final model on each task's test split (none before it has one)."""
    if run.kind is RunKind.EVOLVE:
        final = EvolutionStore(store, run.id).candidates(CandidateKind.FINAL)
        specs = {t["name"]: t for t in run.config.get("tasks", []) if isinstance(t, dict) and "name" in t}
        return [{"task": name, "env": specs.get(name, {}).get("env"), "split": specs.get(name, {}).get("test_split"),
                 "score": score} for name, score in (final[0].test_scores if final else {}).items()]  # fmt: skip
    return [{"env": a.env, "split": a.split, "score": a.score} for a in store.aggregates(run.id)]


def _scores_text(kind: RunKind, rows: list[dict[str, Any]]) -> str:
    if kind is RunKind.EVOLVE:
        return ("final " if rows else "") + " ".join(f"{r['task']} {fmt.score(r['score'])}" for r in rows)
    return " ".join(f"{r['env']} {fmt.score(r['score'])}" for r in rows)


def _moment(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat(timespec="seconds") if when else None


def _run_rows(store: Store) -> list[dict[str, Any]]:
    """One value per run, newest first: what `cycleqd runs` shows, and what `--json` prints."""
    runs = store.list_runs()
    models = store.run_models([r.id for r in runs])
    rows = []
    for run in runs:
        if run.kind is RunKind.EVOLVE or not models[run.id]:
            model = str(run.config.get("model", run.config.get("base")))
        else:
            model = ", ".join(model_label(m.reference, m.identity) for m in models[run.id])
        rows.append({"run": run.id, "kind": run.kind.value, "status": run.status.value,
                     "created": _moment(run.created_at), "finished": _moment(run.finished_at), "model": model,
                     "tasks": _task_names(run.config), "scores": _score_rows(store, run)})  # fmt: skip
    return rows


def print_runs(db_path: Path, console: Console, as_json: bool = False) -> None:
    rows = _run_rows(open_existing_store(db_path))
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    # Ids are what the other commands take: the narrowest terminal still shows each whole.
    run_column = Column("run", no_wrap=True, min_width=max((len(r["run"]) for r in rows), default=3))
    table = Table(run_column, "kind", "status", "created", "model", "tasks", "scores")
    for row in rows:
        created = datetime.fromisoformat(row["created"]).strftime("%m-%d %H:%M")
        table.add_row(row["run"], row["kind"], row["status"], created, row["model"], ",".join(row["tasks"]),
                      _scores_text(RunKind(row["kind"]), row["scores"]))  # fmt: skip
    print_table(table, console)


def remove_runs(run_texts: list[str], db_path: Path, console: Console) -> int:
    store = open_existing_store(db_path)
    runs = [find_run(store, text, db_path) for text in run_texts]  # all found before any is removed
    for run in runs:
        episodes = store.delete_run(run.id)
        console.print(f"removed run {run.id} ({run.kind}, {episodes} episode(s))", highlight=False)
        if run.kind is RunKind.EVOLVE:
            _say_what_stays(run.id, console)
    return 0


def _say_what_stays(run_id: str, console: Console) -> None:
    """An evolution's files (its final model, its children's checkpoints) are outside the store: they may be in
    use, so they stay, but the user learns where and how large they are instead of finding hundreds of MB later."""
    from cycleqd.evolution.run import run_dir

    folder = run_dir(run_id)
    if folder.is_dir():
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
        console.print(f"  its files stay in {folder} ({size / 1e6:.0f} MB: the final model, the children's "
                      f"checkpoints); free them with: rm -r {folder}", highlight=False, soft_wrap=True)  # fmt: skip


def _per_task(store: Store, run_id: str) -> list[dict[str, Any]]:
    grouped: dict[tuple[int, str, str, str], list[tuple[float | None, str]]] = defaultdict(list)
    for model_id, env, split, key, score, status in store.task_scores(run_id):
        grouped[(model_id, env, split, key)].append((score, status))
    rows = []
    for (model_id, env, split, key), results in grouped.items():
        rows.append({
            "model_id": model_id, "env": env, "split": split, "task": key, "episodes": len(results),
            "score": ScoreTally.of(s for s, _ in results).mean, "statuses": sorted({st for _, st in results}),
        })  # fmt: skip
    return rows


def _aggregate_row(
    aggregate: Aggregate, wall: dict[tuple[int, str, str], float], intervals: Intervals
) -> dict[str, Any]:
    interval = intervals.get((aggregate.model_id, aggregate.env, aggregate.split))
    return {
        "model_id": aggregate.model_id, "env": aggregate.env, "split": aggregate.split, "score": aggregate.score,
        "ci95": interval.to_json() if interval else None,
        "episodes": aggregate.episodes, "errors": aggregate.errors, "metrics": aggregate.metrics,
        "wall_s": round(wall.get((aggregate.model_id, aggregate.env, aggregate.split), 0.0), 1),
    }  # fmt: skip


def _episode_aggregates(store: Store, run_id: str) -> list[Aggregate]:
    """Per (model, env, split), the mean over scored episodes, from the episodes themselves: an evolution stores
    no aggregates (its candidates' scores live with the candidates), yet its episodes are all in the store."""
    groups: dict[tuple[int, str, str], list[float | None]] = defaultdict(list)
    for model_id, env, split, _key, score, _status in store.task_scores(run_id):
        groups[(model_id, env, split)].append(score)
    aggregates = []
    for (model_id, env, split), scores in sorted(groups.items()):
        tally = ScoreTally.of(scores)
        aggregates.append(Aggregate(run_id=run_id, model_id=model_id, env=env, split=split, episodes=tally.episodes,
                                    errors=tally.errors, score=tally.mean, metrics={}))  # fmt: skip
    return aggregates


def show_run(db_path: Path, run_text: str, as_json: bool, per_task: bool, console: Console) -> int:
    store = open_existing_store(db_path)
    run = find_run(store, run_text, db_path)
    wall = store.wall_times(run.id)
    intervals = aggregate_intervals(store, run.id)
    models = {m.id: m for m in store.run_models([run.id])[run.id]}
    tasks = _per_task(store, run.id)
    results = [
        _aggregate_row(a, wall, intervals) for a in store.aggregates(run.id) or _episode_aggregates(store, run.id)
    ]
    episodes = sum(r["episodes"] for r in tasks)
    if as_json:
        payload = {
            "run": run.id, "kind": run.kind, "status": run.status, "config": run.config, "episodes": episodes,
            "models": [{"id": m.id, "reference": m.reference, "identity": m.identity} for m in models.values()],
            "results": results, "tasks": tasks,
        }  # fmt: skip
        print(json.dumps(payload, indent=2))
        return 0
    console.print(f"run {run.id}: {run.kind}, {run.status}, {episodes} episodes", highlight=False)
    console.print(json.dumps(run.config), highlight=False, soft_wrap=True)
    label = {m.id: model_label(m.reference, m.identity) for m in models.values()}
    table = Table("model", "env", "split", "score", "95% interval (tasks)", "n", "errors", "wall time")
    for r in results:
        ci = r["ci95"]
        span = f"[{ci['low']:.3f}, {ci['high']:.3f}] ({ci['n']})" if ci else "–"
        table.add_row(label.get(r["model_id"], str(r["model_id"])), r["env"], r["split"], fmt.score(r["score"], 3),
                      span, str(r["episodes"]), str(r["errors"]), f"{r['wall_s']:.0f} s")  # fmt: skip
    print_table(table, console)
    if per_task:
        rows = Table("model", "env", "task", "split", "score", "episodes", "statuses")
        for r in tasks:
            rows.add_row(label.get(r["model_id"], ""), r["env"], r["task"], r["split"], fmt.score(r["score"]),
                         str(r["episodes"]), ", ".join(r["statuses"]))  # fmt: skip
        print_table(rows, console)
    return 0

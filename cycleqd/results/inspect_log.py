"""Episodes as inspect_ai logs, written through inspect_ai's own log API, so that `inspect view` (and
`read_eval_log`) show them: one log per (environment, split, model), one sample per episode, the repeat as the
epoch. A log per split keeps an evolution's selection (dev) and held-out (test) scores in separate means. The model
is named as a reader knows it (`CycleQD final@1a2b3c4d`, the export's `model_label`), its role and path are in the
metadata, and `stats.model_usage` sums the episodes' tokens.

inspect_ai is the optional extra `cycleqd[inspect]`; only this module imports it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cycleqd.db.schema import Run
from cycleqd.errors import UserError

SCORER = "cycleqd"  # the name of our grading in the log: the environment's own scorer, as stored


def import_inspect(what: str = "--format inspect") -> Any:
    """inspect_ai, or a user error naming `what` needs it and how to install it (it was a RuntimeError: a
    traceback for a missing optional extra)."""
    try:
        import inspect_ai.log
    except ImportError as exc:
        raise UserError(f"{what} needs inspect_ai, which is not installed: pip install 'cycleqd[inspect]' (or pip "
                        "install inspect_ai)") from exc  # fmt: skip
    return inspect_ai


def _messages(transcript: list[dict[str, str]]) -> list[Any]:
    from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser

    kinds = {"user": ChatMessageUser, "assistant": ChatMessageAssistant, "system": ChatMessageSystem}
    return [kinds.get(m.get("role", "user"), ChatMessageUser)(content=m.get("content", "")) for m in transcript]


def _sample(record: dict[str, Any]) -> Any:
    from inspect_ai._util.error import EvalError
    from inspect_ai.log import EvalSample
    from inspect_ai.model import ModelOutput, ModelUsage
    from inspect_ai.scorer import Score

    messages = _messages(record["messages"])
    replies = [m["content"] for m in record["messages"][record["context_messages"] :] if m.get("role") == "assistant"]
    # The servers report no cached or reasoning tokens: those fields stay unset (None), not 0.
    usage = ModelUsage(
        input_tokens=record["prompt_tokens"], output_tokens=record["completion_tokens"],
        total_tokens=record["prompt_tokens"] + record["completion_tokens"],
    )  # fmt: skip
    scores = None
    if record["score"] is not None:
        scores = {SCORER: Score(value=record["score"], answer=record["answer"], explanation=record["grader_detail"],
                                metadata={"status": record["status"]})}  # fmt: skip
    return EvalSample(
        id=record["task"], epoch=record["repeat"] + 1, input=messages[: record["context_messages"]] or messages[:1],
        target=record["expected"] or "", messages=messages,
        output=ModelOutput.from_content(record["model_label"], replies[-1] if replies else ""),
        scores=scores, model_usage={record["model_label"]: usage}, total_time=record["latency_s"],
        metadata={k: record[k] for k in ("run", "episode", "env", "suite", "split", "status", "rounds", "role",
                                         "model", "model_identity", "error")},
        error=EvalError(message=record["error"], traceback="", traceback_ansi="") if record["score"] is None else None,
    )  # fmt: skip


def write_inspect_logs(run: Run, records: Iterable[dict[str, Any]], folder: Path) -> list[Path]:
    inspect_ai = import_inspect()
    groups: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    first: dict[tuple[str, str, str], dict[str, Any]] = {}
    for record in records:
        key = (record["env"], record["split"], record["model_identity"])
        groups[key].append(_sample(record))
        first.setdefault(key, record)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (key, samples) in enumerate(sorted(groups.items())):
        env, split, _ = key
        path = folder / f"{run.id}-{env}-{split}-{index}.eval"
        inspect_ai.log.write_eval_log(_log(run, first[key], samples), path, format="eval")
        written.append(path)
    return written


def _log(run: Run, record: dict[str, Any], samples: list[Any]) -> Any:
    """The log of one (environment, split, model), described by its first `record`."""
    from inspect_ai.log import EvalConfig, EvalDataset, EvalLog, EvalMetric, EvalResults, EvalScore, EvalSpec, EvalStats

    env, split, model, role = record["env"], record["split"], record["model_label"], record["role"]
    spec = EvalSpec(
        created=run.created_at.isoformat(), task=f"cycleqd/{env}/{split}", task_id=f"{run.id}-{env}-{split}",
        run_id=run.id, dataset=EvalDataset(name=f"{record['suite']}/{split}", samples=len({s.id for s in samples})),
        model=model, config=EvalConfig(epochs=max(s.epoch for s in samples)), tags=[role] if role else None,
        metadata={"cycleqd_run": run.id, "kind": run.kind, "role": role, "split": split,
                  "model_reference": record["model"], "model_identity": record["model_identity"]},
    )  # fmt: skip
    scored = [s.scores[SCORER].value for s in samples if s.scores]
    mean = EvalMetric(name="mean", value=sum(scored) / len(scored) if scored else 0.0)
    score = EvalScore(name=SCORER, scorer=SCORER, scored_samples=len(scored),
                      unscored_samples=len(samples) - len(scored), metrics={"mean": mean})  # fmt: skip
    results = EvalResults(total_samples=len(samples), completed_samples=len(scored), scores=[score])
    usage = sum((s.model_usage[model] for s in samples[1:]), start=samples[0].model_usage[model])
    return EvalLog(eval=spec, status="success", results=results, stats=EvalStats(model_usage={model: usage}),
                   samples=samples)  # fmt: skip

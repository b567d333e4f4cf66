"""Episodes as inspect_ai logs, written through inspect_ai's own log API, so that `inspect view` (and
`read_eval_log`) show them: one log per (environment, split, model), one sample per episode, the repeat as the
epoch. A log per split keeps an evolution's selection (dev) and held-out (test) scores in separate means. The model
is named as a reader knows it (`CycleQD final@1a2b3c4d`, the export's `model_label`), its role and path are in the
metadata, and `stats.model_usage` sums the episodes' tokens.

inspect_ai is the optional extra `cycleqd[inspect]`; only this module imports it.
"""

from __future__ import annotations

import json
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


def _messages(transcript: list[dict[str, Any]]) -> list[Any]:
    """The conversation as inspect_ai's messages: an assistant's tool calls as its `ToolCall`s (arguments that do
    not parse as a JSON object kept as the raw text, with the parse error, as inspect_ai records a model's bad
    call), a tool result as a `ChatMessageTool` naming the function it answers."""
    from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageTool, ChatMessageUser

    called: dict[str, str] = {}  # tool call id → function, for the tool messages that answer them
    messages: list[Any] = []
    for m in transcript:
        role, content = m.get("role", "user"), m.get("content") or ""
        if role == "assistant":
            calls = [_tool_call(call) for call in m.get("tool_calls") or []]
            called |= {call.id: call.function for call in calls}
            messages.append(ChatMessageAssistant(content=content, tool_calls=calls or None))
        elif role == "tool":
            call_id = m.get("tool_call_id") or ""
            messages.append(ChatMessageTool(content=content, tool_call_id=call_id, function=called.get(call_id)))
        else:
            messages.append({"system": ChatMessageSystem}.get(role, ChatMessageUser)(content=content))
    return messages


def _tool_call(call: dict[str, Any]) -> Any:
    from inspect_ai.tool import ToolCall

    function = call.get("function") or {}
    raw = function.get("arguments")
    try:
        arguments = json.loads(raw) if isinstance(raw, str) else raw
        error = None if isinstance(arguments, dict) else f"arguments are not a JSON object: {raw!r}"
    except json.JSONDecodeError as exc:
        arguments, error = None, f"arguments are not JSON: {exc}"
    return ToolCall(id=call.get("id") or "", function=function.get("name") or "",
                    arguments=arguments if error is None else {"raw": raw}, parse_error=error)  # fmt: skip


def _sample(record: dict[str, Any]) -> Any:
    from inspect_ai._util.error import EvalError
    from inspect_ai.log import EvalSample
    from inspect_ai.model import ModelUsage
    from inspect_ai.scorer import Score

    messages = _messages(record["messages"])
    context = record["context_messages"]
    replies = [m for m in messages[context:] if m.role == "assistant"]
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
        id=record["task"], epoch=record["repeat"] + 1, input=messages[:context] or messages[:1],
        target=record["expected"] or "", messages=messages,
        output=_output(record["model_label"], replies[-1] if replies else None),
        scores=scores, model_usage={record["model_label"]: usage}, total_time=record["latency_s"],
        metadata={k: record[k] for k in ("run", "episode", "env", "suite", "split", "status", "rounds", "role",
                                         "model", "model_identity", "error")},
        error=EvalError(message=record["error"], traceback="", traceback_ansi="") if record["score"] is None else None,
    )  # fmt: skip


def _output(model: str, reply: Any) -> Any:
    """The episode's last reply as its output, a tool call's stop reason with it."""
    from inspect_ai.model import ModelOutput

    if reply is None:
        return ModelOutput.from_content(model, "")
    output = ModelOutput.from_message(reply, stop_reason="tool_calls" if reply.tool_calls else "stop")
    output.model = model
    return output


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

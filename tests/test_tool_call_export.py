"""Transcripts of the tools protocol keep tool calls as tool calls: the store holds the assistant's `tool_calls` and
the `tool` results, the JSONL export gives them back in OpenAI's messages, and the inspect log as inspect_ai
represents them (its `ToolCall`s and `ChatMessageTool`s; a call whose arguments do not parse keeps its error)."""

from __future__ import annotations

import json
from pathlib import Path

from cycleqd.db import EpisodeRecord, open_store
from tests.cli_in_process import Run

CALL = {"id": "call_1", "type": "function", "function": {"name": "bash_action", "arguments": '{"script": "ls /"}'}}
BAD = {"id": "call_2", "type": "function", "function": {"name": "answer_action", "arguments": '{"answer": '}}
TRANSCRIPT = [
    {"role": "system", "content": "You are an assistant that will act like a person."},
    {"role": "user", "content": "How many files are in /etc?"},
    {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "The output of the OS:\n\nbin\netc"},
    {"role": "assistant", "content": "", "tool_calls": [BAD]},
    {"role": "tool", "tool_call_id": "call_2", "content": "Expecting value: line 1 column 12 (char 11)"},
]


def tools_run(db: Path) -> str:
    store = open_store(db)
    run = store.create_run("eval", {"tasks": ["os"], "protocol": "tools"})
    model = store.model_id("sha256:0123456789abcdef", "/models/smol")
    task = store.task_id("os", "builtin", "dev", "os-0", "hash-0")
    store.record_episode(EpisodeRecord(run.id, model, task, 0, "round_limit", 0.0, transcript=TRANSCRIPT,
                                       context_messages=2))  # fmt: skip
    return run.id


def test_the_jsonl_export_gives_back_tool_calls_and_tool_results(tmp_path: Path, run_cli: Run) -> None:
    db = tmp_path / "runs.db"
    run_id = tools_run(db)
    out = tmp_path / "episodes.jsonl"
    code, _out, err = run_cli("export", run_id, "--db", str(db), "--out", str(out))
    assert code == 0, err
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["messages"] == TRANSCRIPT
    assert record["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"script": "ls /"}'  # JSON text


def test_the_inspect_log_holds_tool_calls_as_inspect_ai_does(tmp_path: Path, run_cli: Run) -> None:
    from inspect_ai.log import read_eval_log

    db = tmp_path / "runs.db"
    run_id = tools_run(db)
    code, _out, err = run_cli("export", run_id, "--db", str(db), "--format", "inspect", "--out", str(tmp_path))
    assert code == 0, err
    (path,) = tmp_path.glob("*.eval")
    (sample,) = read_eval_log(str(path)).samples or []
    roles = [m.role for m in sample.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool"]
    good, bad = sample.messages[2].tool_calls, sample.messages[4].tool_calls
    assert [(c.id, c.function, c.arguments, c.parse_error) for c in good] == [
        ("call_1", "bash_action", {"script": "ls /"}, None)
    ]
    assert bad[0].function == "answer_action" and bad[0].arguments == {"raw": '{"answer": '}
    assert bad[0].parse_error.startswith("arguments are not JSON: Expecting value")
    assert (sample.messages[3].tool_call_id, sample.messages[3].function) == ("call_1", "bash_action")
    assert sample.messages[3].text == "The output of the OS:\n\nbin\netc"
    assert sample.output.stop_reason == "tool_calls" and sample.output.message.tool_calls[0].id == "call_2"


async def test_the_episode_screen_shows_each_tool_call_and_the_result_that_answers_it() -> None:
    from textual.app import App, ComposeResult

    from cycleqd.monitor.transcript import MessageBlock, Transcript

    class OneTranscript(App):
        def compose(self) -> ComposeResult:
            yield Transcript(TRANSCRIPT, context=2)

    app = OneTranscript()
    async with app.run_test(size=(100, 60)):
        blocks = list(app.query(MessageBlock))
        assert [b.border_title for b in blocks] == [
            "prompt", "task", "action 1", "tool result 1", "action 2", "tool result 2"
        ]  # fmt: skip
        assert blocks[2].text == 'Let me look.\n→ bash_action({\n  "script": "ls /"\n})'
        assert blocks[4].text == '→ answer_action({"answer":   (not JSON))'  # no empty content line above it
        assert blocks[3].has_class("tool") and blocks[3].text == TRANSCRIPT[3]["content"]

"""`cycleqd sft --protocol tools`: experts trained on tool-call trajectories. The gold is replayed as tool calls
through the real environments, and rendered with its tools through the template the servers use for the model
(cycleqd's tools preamble before SmolLM2's template, which has none), so the labels are the tool-call text that
the servers' parser reads back."""

from __future__ import annotations

import asyncio
import json

from cycleqd.envs.episode import AgentProtocol
from cycleqd.sft.data import IGNORE, gold_transcripts, render


def test_tool_call_gold_is_labelled_as_the_tool_call_text_the_server_parses(docker_engine, default_model) -> None:  # noqa: ANN001
    from transformers import AutoTokenizer

    from cycleqd.serving.in_vllm.cycleqd_tool_calls import parse_tool_calls

    (transcript,) = asyncio.run(gold_transcripts("db", "builtin", "train", 1, protocol=AgentProtocol.TOOLS))
    assert [t["function"]["name"] for t in transcript.tools] == ["execute_sql", "commit_final_answer"]
    calls = [c for m in transcript.messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    assert calls and all(m["role"] != "user" for m in transcript.messages[transcript.prompt_messages :])

    tokenizer = AutoTokenizer.from_pretrained(default_model.path)
    example = render(transcript, tokenizer, 8192)
    trained = tokenizer.decode([label for label in example.labels if label != IGNORE])
    rendered = tokenizer.decode(example.input_ids)
    assert '<tools>\n{"type": "function", "function": {"name": "execute_sql"' in rendered  # in the system prompt
    assert "<tool_response>" in rendered and "<tool_response>" not in trained  # results are read, not trained
    _, parsed = parse_tool_calls(trained)
    read_back = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed]
    assert read_back == [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]

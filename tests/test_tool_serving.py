"""Tool calling (the chat API's `tools` / `tool_calls`) on every server, with the real default model: SmolLM2's own
chat template has no tools, so cycleqd's template renders them and cycleqd's Hermes parser reads the answers, on
vLLM through its tool-parser plugin and on transformers serve through our entry (serving.tool_protocol)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from cycleqd.serving.errors import ToolFormatError
from cycleqd.serving.in_vllm.cycleqd_tool_calls import parse_tool_calls, template_arguments
from cycleqd.serving.manager import ServerManager
from cycleqd.serving.model_ref import LocalCheckpoint
from cycleqd.serving.tool_protocol import ToolFormat, checkpoint_tool_support, tool_support

# As AgentBench FC's OS task offers them (configs/tasks/os.yaml), shortened.
TOOLS = [
    {"type": "function", "function": {
        "name": "bash_action", "description": "Run a bash script in the machine and see its output.",
        "parameters": {"type": "object", "properties": {"script": {"type": "string", "description": "the script"}},
                       "required": ["script"]}}},
    {"type": "function", "function": {
        "name": "answer_action", "description": "Submit the final answer.",
        "parameters": {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}}},
]  # fmt: skip
QUESTION = {"role": "user", "content": "How many files are in /etc? Use the tools."}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "bash_action", "arguments": '{"script": "ls /etc | wc -l"}'},
}
CONVERSATION = [
    QUESTION,
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "212"},
]
SERVERS = ["tserve", "vllm_server"]


# -- the shared parser ------------------------------------------------------------------------------------------------


def test_the_parser_turns_two_hermes_calls_into_openai_tool_calls() -> None:
    content, calls = parse_tool_calls(
        'Let me look.\n<tool_call>\n{"name": "bash_action", "arguments": {"script": "ls /etc"}}\n</tool_call>\n'
        '<tool_call>{"name": "answer_action", "arguments": {"answer": "212"}}</tool_call>'
    )
    assert content == "Let me look."
    assert [call["type"] for call in calls] == ["function", "function"]
    assert [call["function"]["name"] for call in calls] == ["bash_action", "answer_action"]
    assert [json.loads(call["function"]["arguments"]) for call in calls] == [{"script": "ls /etc"}, {"answer": "212"}]
    assert all(call["id"].startswith("call_") for call in calls) and calls[0]["id"] != calls[1]["id"]


def test_a_call_with_malformed_json_stays_a_call_with_the_arguments_it_wrote() -> None:
    content, calls = parse_tool_calls(
        '<tool_call>\n{"name": "bash_action", "arguments": {"script": "ls /etc}\n</tool_call>'
    )
    assert content is None and len(calls) == 1
    assert calls[0]["function"] == {"name": "bash_action", "arguments": '{"script": "ls /etc}'}
    # cut by max_tokens before the end tag: still the call it began
    _, cut = parse_tool_calls('<tool_call>{"name": "answer_action", "arguments": {"answer": "2')
    assert cut[0]["function"] == {"name": "answer_action", "arguments": '{"answer": "2'}
    # a template takes malformed arguments back as {} (vLLM does the same), well-formed ones as they are
    assert template_arguments(calls[0]["function"]["arguments"]) == {}
    assert template_arguments('{"script": "ls"}') == {"script": "ls"} and template_arguments("[1]") == {}


def test_text_without_a_readable_call_comes_back_as_content() -> None:
    assert parse_tool_calls("There are 212 files.") == ("There are 212 files.", [])
    assert parse_tool_calls("<tool_call>ls /etc</tool_call>") == ("<tool_call>ls /etc</tool_call>", [])


def test_the_parser_and_template_follow_the_model_template() -> None:
    assert tool_support("{% for m in messages %}{{ m.content }}{% endfor %}").format is ToolFormat.CYCLEQD
    hermes = "{% if tools %}{% for t in tools %}{{ t | tojson }}{% endfor %}<tool_call>{% endif %}"
    assert tool_support(hermes).format is ToolFormat.HERMES and tool_support(hermes).chat_template is None
    assert "llama3_json" in tool_support("{% if tools %}<|python_tag|>{% endif %}").vllm_args(None)
    unknown = tool_support("{% for t in tools %}<function>{{ t }}</function>{% endfor %}", "m")
    with pytest.raises(ToolFormatError, match="m's chat template renders tools in a format cycleqd cannot parse"):
        unknown.require()
    assert unknown.vllm_args(None) == ()


def test_cycleqd_template_renders_each_tool_and_leaves_plain_chats_as_the_model_renders_them(
    default_model: LocalCheckpoint,
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model.path)
    plain = [QUESTION, {"role": "assistant", "content": "Let me see."}, {"role": "user", "content": "Go on."}]
    own = tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
    support = checkpoint_tool_support(default_model.path)
    assert support.format is ToolFormat.CYCLEQD and support.chat_template is not None
    tokenizer.chat_template = support.chat_template
    assert tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True) == own
    prompt = tokenizer.apply_chat_template(CONVERSATION, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert_renders_tools_and_conversation(prompt)


def assert_renders_tools_and_conversation(prompt: str) -> None:
    for tool in TOOLS:
        assert f'"name": "{tool["function"]["name"]}"' in prompt
        assert json.dumps(tool["function"]["parameters"]) in prompt
    assert '<tool_call>\n{"name": "bash_action", "arguments": {"script": "ls /etc | wc -l"}}\n</tool_call>' in prompt
    assert "<tool_response>\n212\n</tool_response>" in prompt


# -- real servers ---------------------------------------------------------------------------------------------------


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> ServerManager:
    """Each session server in turn (sync: an async fixture cannot set up another from a running loop)."""
    return request.getfixturevalue(request.param)


@pytest.mark.slow
async def test_a_conversation_with_tools_a_call_and_its_result_is_answered(
    server: ServerManager, default_model: LocalCheckpoint
) -> None:
    await server.serve(default_model)
    without_tools = await server.chat([QUESTION], max_tokens=1)
    with_tools = await server.chat([QUESTION], tools=TOOLS, max_tokens=1)
    # the tools were rendered: two signatures, well over 100 tokens
    assert with_tools.usage.prompt_tokens > without_tools.usage.prompt_tokens + 100
    reply = await server.chat(CONVERSATION, tools=TOOLS, max_tokens=48)
    assert reply.usage.prompt_tokens > with_tools.usage.prompt_tokens and reply.usage.completion_tokens > 0
    assert reply.text or reply.tool_calls
    assert_well_formed(reply.tool_calls)
    message = reply.message()
    assert message["role"] == "assistant"
    # its answer goes back into the conversation, and the next round is answered too
    again = await server.chat([*CONVERSATION, message, {"role": "user", "content": "Thanks."}], tools=TOOLS,
                              max_tokens=8)  # fmt: skip
    assert again.usage.completion_tokens > 0


@pytest.mark.slow
async def test_an_earlier_call_with_malformed_arguments_does_not_break_the_conversation(
    server: ServerManager, default_model: LocalCheckpoint
) -> None:
    await server.serve(default_model)
    broken = {**CALL, "function": {"name": "bash_action", "arguments": '{"script": "ls'}}
    conversation = [QUESTION, {"role": "assistant", "content": "", "tool_calls": [broken]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "invalid arguments"}]  # fmt: skip
    reply = await server.chat(conversation, tools=TOOLS, max_tokens=8)
    assert reply.usage.completion_tokens > 0


@pytest.mark.slow
async def test_a_named_tool_choice(server: ServerManager, default_model: LocalCheckpoint) -> None:
    """vLLM forces the named call: its structural tag for the Hermes envelope (vllm/tool_parsers/
    structural_tag_registry.py), with the arguments held to the tool's schema where the tool is `strict` (else any
    JSON, which this model fills with its tool list until max_tokens cuts it). transformers serve 5.24 ignores
    `tool_choice` (a warning in its log) and answers as with "auto": what it produces is checked as it is."""
    await server.serve(default_model)
    strict = [{**tool, "function": {**tool["function"], "strict": True}} for tool in TOOLS]
    choice = {"type": "function", "function": {"name": "bash_action"}}
    message = await raw_chat(server, {"tools": strict, "tool_choice": choice, "max_tokens": 64})
    calls = message.get("tool_calls") or []
    assert_well_formed(calls)
    if server.kind.startswith("vllm"):
        assert functions(calls)[0]["name"] == "bash_action" and len(calls) == 1, message
        assert set(json.loads(calls[0]["function"]["arguments"])) == {"script"}, message
    else:
        auto = await raw_chat(server, {"tools": strict, "max_tokens": 64})
        assert (message.get("content"), functions(calls)) == (auto.get("content"), functions(auto.get("tool_calls")))


@pytest.mark.slow
async def test_vllm_renders_the_tools_with_cycleqd_template(vllm_server: ServerManager, default_model) -> None:  # noqa: ANN001
    await vllm_server.serve(default_model)
    root = vllm_server.base_url.removesuffix("/v1")
    async with httpx.AsyncClient(base_url=root, timeout=60) as http:
        body = {"model": "candidate", "messages": CONVERSATION, "tools": TOOLS, "add_generation_prompt": True}
        tokens = (await http.post("/tokenize", json=body)).raise_for_status().json()["tokens"]
        prompt = (await http.post("/detokenize", json={"model": "candidate", "tokens": tokens})).json()["prompt"]
    assert_renders_tools_and_conversation(prompt)


@pytest.mark.slow
async def test_an_external_endpoint_passes_tools_through(tserve: ServerManager, default_model) -> None:  # noqa: ANN001
    from cycleqd.serving.external import ExternalManager
    from cycleqd.serving.model_ref import parse_model_ref

    await tserve.serve(default_model)
    direct = await tserve.chat(CONVERSATION, tools=TOOLS, max_tokens=16)
    ref = parse_model_ref(f"{tserve.base_url}#{default_model.path}")
    async with ExternalManager(ref) as external:
        await external.serve(ref)
        reply = await external.chat(CONVERSATION, tools=TOOLS, max_tokens=16)
    assert (reply.usage.prompt_tokens, reply.text, reply.tool_calls and len(reply.tool_calls)) == (
        direct.usage.prompt_tokens, direct.text, direct.tool_calls and len(direct.tool_calls))  # fmt: skip


async def raw_chat(server: ServerManager, extra: dict[str, Any]) -> dict[str, Any]:
    """One chat completion with fields our client does not send (tool_choice), its message as the server wrote it."""
    assert server.served is not None
    body = {"model": server.served.name, "messages": [QUESTION], "temperature": 0, **extra}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=300) as http:
        response = await http.post("/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]


def functions(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [call["function"] for call in calls or ()]


def assert_well_formed(calls: Any) -> None:
    for call in calls:
        assert call["id"] and call["type"] == "function"
        assert isinstance(call["function"]["name"], str) and call["function"]["name"]
        assert isinstance(call["function"]["arguments"], str)

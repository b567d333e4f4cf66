"""cycleqd's tool-call parser inside vLLM (`--tool-parser-plugin cycleqd_vllm_tool_parser --tool-call-parser
cycleqd_hermes`); it runs in vLLM's API server process and imports nothing of cycleqd but `cycleqd_tool_calls`
beside it (both are on that process's PYTHONPATH).

It is vLLM's `hermes` parser (vllm/tool_parsers/hermes_tool_parser.py) with the non-streaming extraction replaced by
the shared `cycleqd_tool_calls.parse_tool_calls`, which transformers serve runs too. The rest is kept on purpose:
`adjust_request` (special tokens kept, where a model marks `<tool_call>` special), streaming, and
`structural_tag_model = "hermes"`, by which a named or "required" `tool_choice` is constrained to the
`<tool_call>\n{"name": "F", "arguments": …}\n</tool_call>` envelope our template renders
(vllm/tool_parsers/structural_tag_registry.py `_hermes_tool_tags`); `tool_choice` "auto" stays unconstrained.
"""

from __future__ import annotations

from cycleqd_tool_calls import parse_tool_calls
from vllm.entrypoints.generate.base.protocol import ExtractedToolCallInformation, FunctionCall, ToolCall
from vllm.tool_parsers.abstract_tool_parser import ToolParserManager
from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

PARSER_NAME = "cycleqd_hermes"


class CycleqdHermesToolParser(Hermes2ProToolParser):
    def extract_tool_calls(self, model_output: str, request: object) -> ExtractedToolCallInformation:
        content, calls = parse_tool_calls(model_output)
        return ExtractedToolCallInformation(
            tools_called=bool(calls),
            tool_calls=[ToolCall(id=call["id"], function=FunctionCall(**call["function"])) for call in calls],
            content=content,
        )


ToolParserManager.register_module(PARSER_NAME, module=CycleqdHermesToolParser)

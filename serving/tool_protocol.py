"""How a model's tool calls are rendered and read back (the chat API's `tools` / `tool_calls`), decided from its chat
template once per server launch: a swap in place keeps the process's template and parser, and vLLM restarts onto a
candidate whose chat template differs (serving.vllm_serve), which decides anew.

- The model's template renders `<tool_call>` JSON (Hermes-style: Qwen2.5, Qwen3, Hermes): that template, parsed by
  cycleqd's Hermes parser (in_vllm/cycleqd_tool_calls.py: vLLM's `hermes`, but a call with malformed arguments stays a
  call).
- It renders Llama 3.x's JSON calls (`<|python_tag|>`, the ipython environment): vLLM's `llama3_json`.
- It renders Mistral's `[TOOL_CALLS]`: vLLM's `mistral`.
- It has no tools at all (the default SmolLM2): cycleqd's preamble (tools_chat_template.jinja) goes before it and
  renders tools, calls and results Hermes-style; cycleqd's Hermes parser reads the answers.
- It has tools in another format: unsupported; the server still serves the model, and a request with tools is refused
  with one line (ToolFormatError).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib.resources import files
from pathlib import Path

from cycleqd.serving.errors import ToolFormatError

TEMPLATE_MARKER = "cycleqd tool protocol"  # the first line of tools_chat_template.jinja
VLLM_PARSER_PLUGIN = "cycleqd_vllm_tool_parser"  # a module of in_vllm/, on the vLLM process's PYTHONPATH
CYCLEQD_PARSER = "cycleqd_hermes"  # the name that plugin registers
MENTIONS_TOOLS = re.compile(r"\btools\b")


class ToolFormat(StrEnum):
    CYCLEQD = "cycleqd"  # no tools in the model's template: cycleqd's preamble renders them Hermes-style
    HERMES = "hermes"
    LLAMA3_JSON = "llama3_json"
    MISTRAL = "mistral"
    UNSUPPORTED = "unsupported"


VLLM_PARSERS = {
    ToolFormat.CYCLEQD: CYCLEQD_PARSER,
    ToolFormat.HERMES: CYCLEQD_PARSER,
    ToolFormat.LLAMA3_JSON: "llama3_json",  # vllm/tool_parsers/__init__.py registers both upstream names
    ToolFormat.MISTRAL: "mistral",
}


@dataclass(frozen=True)
class ToolSupport:
    format: ToolFormat
    chat_template: str | None = None  # the template to serve instead of the model's own (CYCLEQD only)
    why: str = ""  # UNSUPPORTED: one line saying why

    def vllm_args(self, template_file: Path | None) -> tuple[str, ...]:
        """`vllm serve` options; `template_file` holds `chat_template` where there is one."""
        parser = VLLM_PARSERS.get(self.format)
        if parser is None:
            return ()
        plugin = ("--tool-parser-plugin", VLLM_PARSER_PLUGIN) if parser == CYCLEQD_PARSER else ()
        template = ("--chat-template", str(template_file)) if self.chat_template and template_file else ()
        return ("--enable-auto-tool-choice", "--tool-call-parser", parser, *plugin, *template)

    def require(self) -> None:
        """ToolFormatError where a request with tools cannot be answered."""
        if self.format is ToolFormat.UNSUPPORTED:
            raise ToolFormatError(self.why)


@cache
def tools_preamble() -> str:
    return (files("cycleqd.serving") / "tools_chat_template.jinja").read_text().rstrip("\n")


def with_tools(template: str) -> str:
    """cycleqd's preamble before `template`, which then renders the rewritten messages."""
    return template if TEMPLATE_MARKER in template else tools_preamble() + template


def tool_support(template: str | None, model: str = "the model") -> ToolSupport:
    if template is None:
        return ToolSupport(ToolFormat.UNSUPPORTED, why=f"{model} has no chat template, so it cannot be sent tools")
    if TEMPLATE_MARKER in template or not MENTIONS_TOOLS.search(template):
        return ToolSupport(ToolFormat.CYCLEQD, chat_template=with_tools(template))
    if "<tool_call>" in template:
        return ToolSupport(ToolFormat.HERMES)
    if "<|python_tag|>" in template or "ipython" in template:
        return ToolSupport(ToolFormat.LLAMA3_JSON)
    if "[TOOL_CALLS]" in template:
        return ToolSupport(ToolFormat.MISTRAL)
    return ToolSupport(ToolFormat.UNSUPPORTED, why=(
        f"{model}'s chat template renders tools in a format cycleqd cannot parse (it parses Hermes <tool_call>, "
        "Llama 3 JSON and Mistral [TOOL_CALLS] calls)"))  # fmt: skip


def checkpoint_template(folder: Path) -> str | None:
    """The chat template a checkpoint folder ships: chat_template.jinja, else tokenizer_config.json's (its `tool_use`
    one where it names several), else chat_template.json's."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    for name in ("tokenizer_config.json", "chat_template.json"):
        path = folder / name
        if not path.is_file():
            continue
        template = json.loads(path.read_text()).get("chat_template")
        if isinstance(template, list):
            named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
            template = named.get("tool_use") or named.get("default")
        if isinstance(template, str):
            return template
    return None


def checkpoint_tool_support(folder: Path) -> ToolSupport:
    return tool_support(checkpoint_template(folder), str(folder))

"""Tool calling in `transformers serve` (5.24), installed in its process before it starts; also the server's entry
where no other entry of ours runs (`python -m cycleqd.serving.transformers_tools serve …`).

What transformers serve already does with a request's `tools` (transformers/cli/serving/chat_completion.py and
utils.py): it passes them to the chat template, parses the answer with a "response template" (the tokenizer's own,
or its table for the Qwen and Gemma 4 families) and returns OpenAI `tool_calls`; it ignores `tool_choice` (a warning).
What it lacks, added here:
- a model whose template has no tools renders none: cycleqd's template is put in place when its processor loads
  (serving.tool_protocol, as vLLM gets it through `--chat-template`);
- such a model's answers, and a Hermes-style template's without a response template, are not parsed: the shared
  parser reads them (in_vllm/cycleqd_tool_calls.py, the one vLLM runs);
- an earlier call's malformed `arguments` fail the request (`json.loads`): they go to the template as {}, as vLLM
  renders them.
"""

from __future__ import annotations

from typing import Any

from cycleqd.serving.in_vllm.cycleqd_tool_calls import parse_tool_calls, template_arguments
from cycleqd.serving.tool_protocol import ToolFormat, tool_support


def install() -> None:
    from transformers.cli.serving import chat_completion
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.utils import BaseHandler, ToolCall, get_response_template

    load_processor = ModelManager._load_processor

    def load_processor_with_tools(self: ModelManager, *args: Any, **kwargs: Any) -> Any:
        processor = load_processor(self, *args, **kwargs)
        template = getattr(processor, "chat_template", None)
        if isinstance(template, str) and (ours := tool_support(template).chat_template) is not None:
            processor.chat_template = ours
        return processor

    parse_assistant_message = chat_completion.parse_assistant_message

    def parse_with_tools(processor: Any, model: Any, generated_ids: Any, input_ids: Any, cleaned_content: str = "",
                         tools: Any = None) -> tuple[str, str | None, list[Any] | None]:  # fmt: skip
        if tools and _hermes_unparsed(processor, model, get_response_template):
            content, calls = parse_tool_calls(cleaned_content)
            parsed = [ToolCall(name=c["function"]["name"], arguments=c["function"]["arguments"]) for c in calls]
            return content or "", None, parsed or None
        return parse_assistant_message(processor, model, generated_ids, input_ids, cleaned_content, tools=tools)

    processor_inputs = BaseHandler.get_processor_inputs_from_messages

    def processor_inputs_with_template_arguments(messages: list[dict], modality: Any) -> list[dict]:
        return processor_inputs([_with_template_arguments(m) for m in messages], modality)

    ModelManager._load_processor = load_processor_with_tools  # type: ignore[method-assign]
    chat_completion.parse_assistant_message = parse_with_tools
    BaseHandler.get_processor_inputs_from_messages = staticmethod(processor_inputs_with_template_arguments)  # type: ignore[method-assign]


def _hermes_unparsed(processor: Any, model: Any, get_response_template: Any) -> bool:
    """Whether this model writes Hermes-style calls that transformers would not parse itself."""
    template = getattr(processor, "chat_template", None)
    found = tool_support(template if isinstance(template, str) else None).format
    if found is ToolFormat.CYCLEQD:
        return True
    return found is ToolFormat.HERMES and get_response_template(processor, model) is None


def _with_template_arguments(message: dict) -> dict:
    calls = message.get("tool_calls")
    if not calls:
        return message
    rewritten = []
    for call in calls:
        function = call.get("function") or {}
        rewritten.append({**call, "function": {**function, "arguments": template_arguments(function.get("arguments"))}})
    return {**message, "tool_calls": rewritten}


def serve() -> None:
    """`transformers serve` with tool calling completed (and batch-invariant linear layers where the environment
    asks: in_vllm/batch_invariant.py); takes the same arguments."""
    from cycleqd.serving.in_vllm import batch_invariant

    if batch_invariant.requested():
        batch_invariant.install_in_torch()
    install()
    from transformers.cli.transformers import main

    main()


if __name__ == "__main__":
    serve()

"""Reading a model's reply into an OS action, as AgentBench does under either protocol.

Text (v0.2): every `Act:` line is a candidate and the last usable one wins; `answer` needs its parentheses (first
'(' to last ')' on that line); a bash action runs every ```bash block of the reply, joined by blank lines.

Tools (FC, src/server/tasks/os_interaction/task.py:535-641): only the reply's first call is read; a reply without
one, arguments that do not parse, or an unknown function is answered with a message and costs its round.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from cycleqd.envs.episode import Message
from cycleqd.envs.tool_calls import (
    ARGUMENT_ERRORS,
    calls_of,
    function_of,
    function_tool,
    string_property,
    tool_result,
    user_message,
)

_ACT = re.compile(r"Act:\s*(.+)")
_THINK = re.compile(r"Think:\s*(.+)")
_BASH_BLOCK = re.compile(r"```bash\n(.*?)\n```", re.DOTALL)

# FC's tools (configs/tasks/os.yaml:6-48), in its order.
OS_TOOLS: tuple[dict[str, Any], ...] = (
    function_tool("bash_action", "Execute bash code to perform an operation in the Linux environment.",
                  {"script": string_property("The bash script to be executed.")}),
    function_tool("finish_action",
                  "Indicate that the task has been finished or need some additional information to be finished.",
                  {"thought": string_property("The thought or reason indicating the task is finished.")}),
    function_tool("answer_action", "Provide the answer to the question.",
                  {"answer": string_property("The answer to the question.")}),
)  # fmt: skip
_KINDS: dict[str, Literal["bash", "finish", "answer"]] = {
    "bash_action": "bash", "finish_action": "finish", "answer_action": "answer",
}  # fmt: skip
# FC's words (os_interaction/task.py:562, 606).
NO_TOOL_CALL = "No executable tool calls found. Please call a tool instead"
INVALID_FUNCTION = "Invalid function call. Please call a tool instead"


@dataclass(frozen=True)
class OSAction:
    kind: Literal["bash", "finish", "answer", "invalid"]
    # The script, or the answer (under tools, finish's thought too: FC hands it to the checks as the answer). A bash
    # action with None runs nothing and shows empty output: FC's shell refuses a script that is not a string.
    content: str | None = None
    thought: str = ""
    call_id: str | None = None  # the tool call it came from, which its result answers
    # False where the model gave a non-string value, now written as text: FC's match compares the value itself,
    # which never equals the expected string (its checks get str(value), as content has it).
    text: bool = True


def parse_os_action(reply: str) -> OSAction:
    thought = "\n".join(_THINK.findall(reply))
    for act in reversed(_ACT.findall(reply)):
        lowered = act.lower()
        if lowered.startswith("bash"):
            return OSAction("bash", "\n\n".join(_BASH_BLOCK.findall(reply)), thought)
        if lowered.startswith("finish"):
            return OSAction("finish", None, thought)
        if lowered.startswith("answer"):
            rest = act[6:].strip()
            left, right = rest.find("("), rest.rfind(")")
            if left == -1 or right == -1:
                continue  # unusable: an earlier Act may still be
            return OSAction("answer", rest[left + 1 : right], thought)
    return OSAction("invalid", None, thought)


def read_os_call(reply: Message) -> OSAction | Message:
    """The action of a reply's first tool call, or the message that answers the reply instead (its round goes on).

    Other calls of the reply get no answer, as in FC (task.py:569). An argument is the first value of the call's
    arguments, whatever its name (task.py:580). A bash or answer call with no argument at all makes FC raise
    IndexError outside its handler (task.py:350, 356), which ends the sample as a task error scored 0
    (task.py:386-392): here an invalid action, which ends the episode scored 0 and is the model's failure, not an
    environment error to retry."""
    calls = calls_of(reply)
    if not calls:
        return user_message(NO_TOOL_CALL)
    call = calls[0]
    name, arguments = function_of(call)
    content = reply.get("content")
    try:
        parsed = json.loads(arguments)
        # FC looks for a thought in the arguments when the reply has no text (task.py:578): for a JSON number
        # that test is what fails, so its error is the one the model reads.
        if not content and "thought" in parsed:
            content = parsed["thought"]
        values = list(parsed.values())
    except ARGUMENT_ERRORS as exc:
        return tool_result(call.get("id"), str(exc))
    kind = _KINDS.get(name)
    if kind is None:
        return tool_result(call.get("id"), INVALID_FUNCTION)
    thought = content if isinstance(content, str) else ""
    if not values and kind != "finish":
        return OSAction("invalid", None, thought, call.get("id"))
    value = values[0] if values else None
    if kind == "bash":
        return OSAction("bash", value if isinstance(value, str) else None, thought, call.get("id"))
    return OSAction(kind, None if value is None else str(value), thought, call.get("id"),
                    text=value is None or isinstance(value, str))  # fmt: skip

"""AgentBench's OS-interaction prompts, word for word: v0.2's (text protocol) with its one-shot example, and FC's
(tools protocol). Scores are only comparable with AgentBench's when the model sees exactly what AgentBench shows it
(typos included)."""

from __future__ import annotations

from cycleqd.envs.episode import Message

INSTRUCTIONS = (
    "You are an assistant that will act like a person, I'will play the role of linux(ubuntu) operating system. "
    "Your goal is to implement the operations required by me or answer to the question proposed by me. "
    "For each of your turn, you should first think what you should do, and then take exact one of the three "
    'actions: "bash", "finish" or "answer". \n\n'
    "1. If you think you should execute some bash code, take bash action, and you should print like this:\n\n"
    "Think: put your thought here.\n\nAct: bash\n\n```bash\n# put your bash code here\n```\n\n"
    "2. If you think you have finished the task, take finish action, and you should print like this:\n\n"
    "Think: put your thought here.\n\nAct: finish\n\n"
    "3. If you think you have got the answer to the question, take answer action, and you should print like "
    "this:\n\nThink: put your thought here.\n\n"
    "Act: answer(Your answer to the question should be put in this pair of parentheses)\n\n"
    "If the output is too long, I will truncate it. The truncated output is not complete. You have to deal with "
    "the truncating problem by yourself. Attention, your bash code should not contain any input operation. Once "
    "again, you should take only exact one of the three actions in each turn.\n\n"
)

# How both protocols put the task itself (v0.2 and FC alike).
PROBLEM = "Now, I will start a new problem in a new OS. My problem is:\n\n"

ONE_SHOT: list[Message] = [
    {"role": "user", "content": 'tell me how many files are in the directory "/etc"?'},
    {
        "role": "assistant",
        "content": "Think: To count the files in /etc, I need to print all the files in it.\n\n"
        "Act: bash\n\n```bash\nls /etc\n```",
    },
    {
        "role": "user",
        "content": "The output of the OS:\ncpi cron.hourly fuse.conf iproute2 lvm networkd-dispatcher protocols "
        "selinux tmpfiles.d [truncated because the output is too long]",
    },
    {
        "role": "assistant",
        "content": "Think: The output has been truncated because it is too long, so I need to count files by "
        "script directly.\n\nAct: bash\n\n```bash\nls -1 /etc | wc -l\n```",
    },
    {"role": "user", "content": "The output of the OS:\n220"},
    {"role": "assistant", "content": "Think: Now I get the answer, it is 220.\n\nAct: answer(220)"},
]


def first_messages(description: str) -> list[Message]:
    return [
        {"role": "user", "content": INSTRUCTIONS + "Now, my problem is:\n\n" + ONE_SHOT[0]["content"]},
        *ONE_SHOT[1:],
        {"role": "user", "content": PROBLEM + description},
    ]


def observation(output: str) -> str:
    """What the model sees after a bash action (output already truncated for display)."""
    return "The output of the OS:\n\n" + output if output else "The output of the OS is empty."


# AgentBench FC's OS prompt (src/server/tasks/os_interaction/task.py:516-532), word for word: a system message and
# the problem; no one-shot, since the tools array shows the actions.
FC_SYSTEM = (
    "You are an assistant that will act like a person. I will play the role of a Linux (Ubuntu) operating system.\n"
    "Your goal is to implement the operations required by me or answer the questions proposed by me.\n"
    "For each of your turns, you should first think about what you should do, and then call exactly one of the "
    "provided tools according to the situation.\n"
    "If you think the output is too long, I will truncate it. The truncated output is not complete. You have to "
    "deal with the truncating problem by yourself.\n"
    "Attention, your bash code should not contain any input operation. Once again, you should use one tool in each "
    "turn, and should not respond without function calling.\n"
    "Note that if you think the task has been finished, or there is some message missing to completely complete the "
    'task, you should respond with calling the function "finish_action", as no additional information will be '
    "provided.\n"
    'Also, note that if you have gotten the answer to the question, you should call the "answer_action" tool instead '
    "of simply writing your answer in your response.\n"
    "Your answers should be exact and precise (for example, a single number), do not answer with full sentences or "
    "phrases.\n"
    "Always use a tool provided instead of simply responding with content."
)


def fc_first_messages(description: str) -> list[Message]:
    return [{"role": "system", "content": FC_SYSTEM}, {"role": "user", "content": PROBLEM + description}]

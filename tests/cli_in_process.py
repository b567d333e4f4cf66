"""The CLI run in-process, as `cli.main` runs it, error boundary included (a test helper): for commands that must
end before Docker or a model server is needed."""

from __future__ import annotations

from collections.abc import Callable

Run = Callable[..., tuple[int, str, str]]  # `cycleqd ARGS` → exit status, stdout, stderr (the `run_cli` fixture)


def one_line_error(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0].removeprefix("error: ")

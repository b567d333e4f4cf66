"""A check is one line of a report: OK or FAIL, what was seen, and the fix when it failed."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def print_checks(checks: list[Check], console: Console) -> bool:
    """Print the report; True if every check passed."""
    width = max(len(c.name) for c in checks)
    for check in checks:
        mark = "[green]OK  [/]" if check.ok else "[red]FAIL[/]"
        console.print(f"{mark} {check.name.ljust(width)}  {escape(check.detail)}", highlight=False, soft_wrap=True)
        if not check.ok and check.fix:
            console.print(f"     {' ' * width}  [yellow]fix:[/] {escape(check.fix)}", highlight=False, soft_wrap=True)
    return all(c.ok for c in checks)

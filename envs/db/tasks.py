"""DBBench task files (JSONL, or a JSON list): loading and validation.

A task has `description`, `add_description`, `table` {table_name, table_info {columns [{name, type}], rows}},
`type` (a list whose first entry is INSERT, UPDATE, DELETE, or a SELECT-like category such as counting),
`label` (the answer values, or the gold SQL of a modification), `answer_md5` for modifications, and `sql`
{query} for some SELECTs. Every deviation is a TaskFormatError naming the file, the task's index and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cycleqd.envs.errors import TaskFormatError
from cycleqd.envs.task_files import load_leniently, read_task_records

MODIFYING = ("INSERT", "UPDATE", "DELETE")


@dataclass(frozen=True)
class DBTask:
    source: str
    index: int
    description: str
    add_description: str
    table_name: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    category: str  # INSERT, UPDATE, DELETE, or a SELECT-like category (counting, ranking, …)
    label: tuple[Any, ...]
    answer_md5: str | None = None
    # `sql.query` of a SELECT-like task, when the file gives one. Only gold replays read it, so it is not part of
    # the task's content hash: stored episodes stay attached to their task.
    select_sql: str | None = field(default=None, metadata={"gold_only": True})

    @property
    def task_id(self) -> str:
        return f"{Path(self.source).name}#{self.index}"

    @property
    def modifies(self) -> bool:
        return self.category in MODIFYING

    @property
    def kind(self) -> str:
        """SELECT, INSERT, UPDATE or DELETE: the groups AgentBench's category accuracy averages over."""
        return self.category if self.modifies else "SELECT"

    @property
    def gold_sql(self) -> str | None:
        """The statement that solves the task: a modification's label, or a SELECT's `sql.query`."""
        if self.modifies:
            return str(self.label[0]) if self.label else None
        return self.select_sql


def _require(record: dict, key: str, kind: type, source: str, index: int, expected: str) -> Any:
    value = record.get(key)
    if not isinstance(value, kind):
        raise TaskFormatError(source, index, key, expected)
    return value


def parse_db_task(record: Any, source: str, index: int) -> DBTask:
    if not isinstance(record, dict):
        raise TaskFormatError(source, index, "(task)", "a JSON object")
    description = _require(record, "description", str, source, index, "a string")
    add_description = record.get("add_description", "")
    if not isinstance(add_description, str):
        raise TaskFormatError(source, index, "add_description", "a string")
    table = _require(record, "table", dict, source, index, "an object with table_name and table_info")
    name = table.get("table_name")
    if not isinstance(name, str) or not name:
        raise TaskFormatError(source, index, "table.table_name", "a non-empty string")
    info = table.get("table_info")
    if not isinstance(info, dict):
        raise TaskFormatError(source, index, "table.table_info", "an object with columns and rows")
    columns = info.get("columns")
    if (
        not isinstance(columns, list)
        or not columns
        or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in columns)
    ):
        raise TaskFormatError(source, index, "table.table_info.columns", "a non-empty list of {name, type}")
    rows = info.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == len(columns) for r in rows):
        raise TaskFormatError(source, index, "table.table_info.rows", f"a list of rows of {len(columns)} values each")
    types = record.get("type")
    if not isinstance(types, list) or not types or not isinstance(types[0], str):
        raise TaskFormatError(source, index, "type", "a non-empty list of strings, e.g. ['INSERT'] or ['counting']")
    label = record.get("label")
    if not isinstance(label, list):
        raise TaskFormatError(source, index, "label", "a list (answer values, or the gold SQL)")
    answer_md5 = record.get("answer_md5")
    if types[0] in MODIFYING and not isinstance(answer_md5, str):
        raise TaskFormatError(source, index, "answer_md5", f"a string, since the task is an {types[0]}")
    sql = record.get("sql")
    if sql is not None and not (isinstance(sql, dict) and isinstance(sql.get("query", ""), str)):
        raise TaskFormatError(source, index, "sql", "an object {query: SQL string}")
    return DBTask(
        source=source,
        index=index,
        description=description,
        add_description=add_description,
        table_name=name,
        columns=tuple(c["name"] for c in columns),
        rows=tuple(tuple(r) for r in rows),
        category=types[0],
        label=tuple(label),
        answer_md5=answer_md5,
        select_sql=None if types[0] in MODIFYING else (sql or {}).get("query") or None,
    )


def load_db_tasks(path: Path) -> list[DBTask]:
    return [parse_db_task(record, str(path), i) for i, record in enumerate(read_task_records(path))]


def load_db_tasks_leniently(path: Path) -> tuple[list[DBTask], list[TaskFormatError]]:
    return load_leniently(path, parse_db_task)

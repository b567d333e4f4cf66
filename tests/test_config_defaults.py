"""Each default of the evolution's config is written once, in its spec's dataclass: the reader takes it from there.

Both checks walk the specs' fields, so a field added later is covered without touching this file: a minimal config
reads back every leaf as its dataclass default, and a default changed in the dataclass (patched here) changes what
the reader gives, which a second default written in the reader would not."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest

from cycleqd.evolver import config as config_module
from cycleqd.evolver.config import EvolveConfig, RaySpec, TaskSpec, parse_config

TASKS = [{"name": "os", "env": "os", "expert": "e1"}, {"name": "db", "env": "db", "expert": "e2"}]
# Fields whose default no reader supplies: required ones, and those a special reader resolves (None: the paper's
# BC-range rule, no Ray cluster; baselines' models are checkpoint folders, checked one by one).
NOT_LEAVES = {"EvolveConfig.base", "EvolveConfig.tasks", "EvolveConfig.bc_ranges", "EvolveConfig.ray",
              "TaskSpec.name", "TaskSpec.env", "TaskSpec.expert", "BaselinesSpec.models"}  # fmt: skip


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for expert in ("e1", "e2"):
        (tmp_path / expert).mkdir()
        (tmp_path / expert / "config.json").write_text("{}")
    return tmp_path


def leaves(spec: type, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dataclasses.Field[Any]]]:
    """(path below the config, field) of every default a reader supplies, nested specs walked."""
    hints = typing.get_type_hints(spec)
    for field in dataclasses.fields(spec):
        if f"{spec.__name__}.{field.name}" in NOT_LEAVES:
            continue
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            yield from leaves(kind, (*path, field.name))  # type: ignore[arg-type]
        else:
            yield (*path, field.name), field


def every_leaf() -> Iterator[tuple[tuple[str, ...], dataclasses.Field[Any]]]:
    yield from leaves(EvolveConfig)
    yield from ((("tasks", "0", *path), field) for path, field in leaves(TaskSpec))
    yield from ((("ray", *path), field) for path, field in leaves(RaySpec))  # an optional section, given empty


def read(config: EvolveConfig, path: tuple[str, ...]) -> Any:
    value: Any = config
    for part in path:
        value = value[int(part)] if part.isdigit() else getattr(value, part)
    return value


def minimal(folder: Path) -> EvolveConfig:
    return parse_config({"base": "default", "tasks": TASKS, "ray": {}}, "minimal.yaml", folder)


def other_than(default: Any, kind: Any) -> Any:
    """A valid value that differs from `default`."""
    if isinstance(kind, type) and issubclass(kind, StrEnum):
        return next(member for member in kind if member != default)
    if kind is bool:
        return not default
    if kind is int or (default is None and typing.get_args(kind) == (int, type(None))):
        return (default or 0) + 2
    if kind is float:
        return default / 2 if default else 0.5
    if kind is str:
        return f"{default}-other"
    raise AssertionError(f"no other value for a {kind} field: teach this test one")


def test_a_minimal_config_reads_every_default_from_its_dataclass(folder: Path) -> None:
    config = minimal(folder)
    checked = 0
    for path, field in every_leaf():
        assert read(config, path) == field.default, ".".join(path)
        checked += 1
    assert checked >= 20  # the walk found the sections' fields


def test_a_default_changed_in_its_dataclass_changes_what_the_reader_gives(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for path, field in every_leaf():
        owner = next(
            cls for cls in _specs() if field.name in cls.__dataclass_fields__
            and cls.__dataclass_fields__[field.name] is field
        )  # fmt: skip
        kind = typing.get_type_hints(owner)[field.name]
        changed = other_than(field.default, kind)
        with monkeypatch.context() as patch:
            patch.setattr(field, "default", changed)
            got = read(minimal(folder), path)
        expected = str((folder / changed).resolve()) if path[-1] == "suite" else changed
        assert got == expected, f"{'.'.join(path)}: a default written outside {owner.__name__}"


def _specs() -> list[type]:
    return [v for v in vars(config_module).values() if dataclasses.is_dataclass(v) and isinstance(v, type)]

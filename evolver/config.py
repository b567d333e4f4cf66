"""The evolution's YAML config, validated with errors that name the file, the field and what was expected.

Defaults are the paper's setting (preset `paper`): 15 bins per BC, the 85%/115% BC-range rule, elite sampling
with α_low 0.5 / α_high 0.8, crossover ω ~ N(1, 0.01²), SVD mutation with w_max 0.1, the active task changing
every generation, one child per generation, 1200 generations. Relative paths are read from the config's folder.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
import typing
from collections.abc import Collection, Iterable
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, is_dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

import yaml

from cycleqd.evolver.kinds import MutationKind, RacingKind, SamplerKind, Server
from cycleqd.limits import (
    MAX_CELLS,
    MAX_CONCURRENCY,
    MAX_GENERATIONS,
    MAX_REPEATS,
    MAX_ROUNDS,
    MAX_SEED,
    MAX_SERVERS,
    MAX_TOKENS,
)
from cycleqd.protocols import AgentProtocol

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # A few minutes on a CPU: enough generations to see archives fill, few episodes per score.
    "small": {"generations": 6, "bins": 5, "eval": {"max_tokens": 128}},
}


class Mode(StrEnum):
    """How children are scored: `sync`, W at a time from the archives at the generation's start (exact resume);
    `async`, each slot proposes as soon as it is free."""

    SYNC = "sync"
    ASYNC = "async"


class ConfigError(ValueError):
    """The config is wrong; the message names the file, the field and what was expected."""


def bounded(default: Any, minimum: float | None = None, maximum: int | None = None) -> Any:
    """A field whose default is written here only, with the bounds the config's reader checks it against."""
    return field(default=default, metadata={"minimum": minimum, "maximum": maximum})


# 3e-4, 1.5e4: numbers to a reader, text to YAML 1.1, whose floats need a point and a signed exponent (3.0e-4)
_FLOAT_TEXT = re.compile(r"([-+]?\d+)(\.\d*)?[eE]([-+]?)(\d+)")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    env: str
    expert: str  # a checkpoint folder (absolute once loaded)
    suite: str = "builtin"
    selection_split: str = "dev"
    test_split: str = "test"
    limit: int | None = None
    protocol: AgentProtocol = AgentProtocol.TEXT  # how the model acts on this task: text or tools


@dataclass(frozen=True)
class SamplerSpec:
    kind: SamplerKind = SamplerKind.ELITE
    alpha_low: float = bounded(0.5, minimum=0.0)
    alpha_high: float = bounded(0.8, minimum=0.0)


@dataclass(frozen=True)
class CrossoverSpec:
    mu: float = 1.0
    sigma: float = bounded(0.01, minimum=0.0)


@dataclass(frozen=True)
class MutationSpec:
    kind: MutationKind = MutationKind.SVD
    w_max: float = bounded(0.1, minimum=0.0)
    std: float = bounded(3e-4, minimum=0.0)


@dataclass(frozen=True)
class EvalSpec:
    concurrency: int = bounded(8, minimum=1, maximum=MAX_CONCURRENCY)  # what a batching server decodes together
    max_tokens: int = bounded(512, minimum=1, maximum=MAX_TOKENS)
    repeats: int = bounded(1, minimum=1, maximum=MAX_REPEATS)
    rounds: int = bounded(5, minimum=1, maximum=MAX_ROUNDS)
    deterministic: bool = False  # a greedy answer independent of its batch (serving/in_vllm/batch_invariant.py)


@dataclass(frozen=True)
class RacingSpec:
    """Stop scoring a child once it cannot enter any archive (evolver/racing.py). `exact` (the default) changes
    no archive; `hoeffding` is statistical and inexact (confidence 1 − delta per check); `off` plays everything."""

    kind: RacingKind = RacingKind.EXACT
    delta: float = bounded(0.05, minimum=0.0)


@dataclass(frozen=True)
class RaySpec:
    """Run the evaluation slots on a Ray cluster: its head's address ('auto': the cluster this machine joined),
    and whether each slot takes one GPU (else one `cycleqd_slot` of a CPU node)."""

    address: str = field(default="auto", metadata={"expected": "a Ray head address (HOST:PORT) or 'auto'"})
    gpus: bool = False


@dataclass(frozen=True)
class BaselinesSpec:
    """What the final table measures beside the base, the experts and the naive merge (none by default: each costs
    episodes). `search`: a random merge search over the same genome space that plays, in full on the selection
    splits, as many candidates as the evolution proposed children; its best is measured on the test splits.
    `models`: checkpoints measured as they are, by label (say, one fine-tuned on all the tasks' data)."""

    search: bool = False
    models: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EvolveConfig:
    base: str
    tasks: tuple[TaskSpec, ...]
    generations: int = bounded(1200, minimum=0, maximum=MAX_GENERATIONS)
    flip_interval: int = bounded(1, minimum=1, maximum=MAX_GENERATIONS)
    bins: int = 15  # bins ** (tasks - 1) ≤ MAX_CELLS
    bc_ranges: dict[str, tuple[float, float]] | None = None  # None: the paper's rule from the experts' scores
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    crossover: CrossoverSpec = field(default_factory=CrossoverSpec)
    mutation: MutationSpec = field(default_factory=MutationSpec)
    servers: int = bounded(1, minimum=1, maximum=MAX_SERVERS)
    server: Server = Server.AUTO
    mode: Mode = Mode.SYNC
    seed: int = bounded(0, minimum=0, maximum=MAX_SEED)
    eval: EvalSpec = field(default_factory=EvalSpec)
    racing: RacingSpec = field(default_factory=RacingSpec)
    ray: RaySpec | None = None  # None: every slot on this machine
    baselines: BaselinesSpec = field(default_factory=BaselinesSpec)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def planned_episodes(self) -> int | None:
        """Episodes the candidates may play at most (the experts', then one child per generation, and as many again
        for the search baseline, on every task), for choosing a serving engine; None when a task plays its whole
        split (no limit: size unknown here)."""
        if any(t.limit is None for t in self.tasks):
            return None
        per_candidate = sum(t.limit or 0 for t in self.tasks) * self.eval.repeats
        searched = self.generations if self.baselines.search else 0
        return (len(self.tasks) + self.generations + searched) * per_candidate

    def test_measurement(self) -> dict[str, Any]:
        """What besides the model decides its test episodes: the server, how episodes are played (concurrency aside)
        and each task's test split. Two deterministic runs with the same measurement play a model's test episodes
        alike, so the second adopts the first's (`EpisodeEvaluator`)."""
        played = {k: v for k, v in asdict(self.eval).items() if k != "concurrency"}
        tasks = [(t.env, t.suite, t.test_split, t.limit, str(t.protocol)) for t in self.tasks]
        return json.loads(json.dumps({"server": str(self.server), "eval": played, "tasks": tasks}))

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready, stored with the run so that a resume needs no config file."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> EvolveConfig:
        """A stored run's config. Its tasks' environments are checked where the run is loaded, with its task files
        (`check_task_sources`)."""
        return parse_config(data, "<stored run config>", Path("/"))


def load_config(path: Path) -> EvolveConfig:
    """The config in the YAML file `path`, with every task's environment, files and splits checked."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:  # "no such config file" named a folder that is there
        raise ConfigError(f"{path}: that is a folder; a config is one YAML file (e.g. evolve.yaml)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {' '.join(problem.split())}") from None
    config = parse_config(data, str(path), path.resolve().parent)
    check_task_sources(config, str(path))
    return config


def check_task_sources(config: EvolveConfig, source: str) -> None:
    """Every task's suite exists and holds its selection and test splits: read now, so that a typo fails before
    the run is created instead of after its images and SVD cache."""
    # Imported here: reading task files is the environments' work, and the rest of the config needs none of it.
    from cycleqd.envs.errors import NoTasksError, TaskFormatError
    from cycleqd.envs.registry import UnknownSplitError, names
    from cycleqd.envs.suites import suite_tasks

    check_environments(config, source, names())
    for index, task in enumerate(config.tasks):
        where = f"{source}: field 'tasks[{index}]"
        if task.suite != "builtin" and not Path(task.suite).exists():
            raise ConfigError(f"{where}.suite' (task {task.name}): no task file or folder {task.suite}")
        for name in ("selection_split", "test_split"):
            try:
                suite_tasks(task.env, task.suite, getattr(task, name))
            except UnknownSplitError as exc:
                raise ConfigError(f"{where}.{name}' (task {task.name}): {exc}") from None
            except (TaskFormatError, NoTasksError) as exc:
                raise ConfigError(f"{where}.suite' (task {task.name}): {exc}") from None


def check_environments(config: EvolveConfig, source: str, environments: Collection[str]) -> None:
    """Every task names a known environment; `environments` comes from the caller (the registry's names), as the
    evolver does not import the environments."""
    for index, task in enumerate(config.tasks):
        _Reader(source).choice(f"tasks[{index}].env", task.env, tuple(environments))


def parse_config(data: Any, source: str, folder: Path, environments: Collection[str] | None = None) -> EvolveConfig:
    """`data` (a YAML file's, or a stored run's) as a config: each section read field by field from its spec, a
    field's default taken from the spec when the key is absent. `environments`: the known environment names, when
    the caller has them (else `check_task_sources` checks them, with the task files)."""
    reader = _Reader(source)
    if not isinstance(data, dict):
        reader.fail("", "a mapping at the top level", data)
    data = dict(data)
    preset_name = data.pop("preset", "paper")
    if preset_name not in PRESETS:
        reader.fail("preset", f"one of {', '.join(PRESETS)}", preset_name)
    data = _merged(PRESETS[preset_name], data)
    known = {f.name for f in fields(EvolveConfig)}
    for key in data:
        if key not in known:
            reader.unknown_key(key, known)
    tasks = reader.tasks(data.get("tasks"), folder, environments)
    names = [t.name for t in tasks]
    special = {
        "base": lambda value: reader.checkpoint("base", value, folder),
        "bins": lambda value: reader.bins(value, len(tasks)),
        "bc_ranges": lambda value: reader.bc_ranges(value, names),
        "ray": lambda value: None if value is None else reader.section("ray", RaySpec, value),
        "baselines": lambda value: reader.baselines(value, folder),
        "sampler": reader.sampler,
        "racing": reader.racing,
    }
    values: dict[str, Any] = {"tasks": tasks}
    for spec in fields(EvolveConfig):
        value = data.get(spec.name, MISSING)
        if spec.name in special:
            absent = {} if is_dataclass(_hints(EvolveConfig)[spec.name]) else _default(spec)
            values[spec.name] = special[spec.name](absent if value is MISSING else value)
        elif spec.name != "tasks":
            values[spec.name] = reader.leaf(spec.name, value, spec, EvolveConfig)
    return EvolveConfig(**values)


def _default(spec: Field[Any]) -> Any:
    if spec.default is not MISSING:
        return spec.default
    if spec.default_factory is not MISSING:
        return spec.default_factory()
    return None  # a required field (base): its reader names what is expected


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _merged(preset: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    merged = dict(preset)
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


class _Reader:
    """Typed reads of config fields; every failure says where and what was expected."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, name: str, expected: str, got: Any) -> None:
        where = f"field {name!r}" if name else "top level"
        raise ConfigError(f"{self.source}: {where}: expected {expected}, got {got!r}")

    def unknown_key(self, name: str, known: Iterable[str], prefix: str = "") -> NoReturn:
        """A key the config does not have, with the nearest known one: a typo read "got 'an unknown field'"."""
        close = difflib.get_close_matches(str(name), sorted(known), n=1)
        hint = f"did you mean {prefix + close[0]!r}?" if close else f"the keys here: {', '.join(sorted(known))}"
        raise ConfigError(f"unknown key {prefix + str(name)!r} in {self.source}; {hint}")

    def integer(self, name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(name, f"an integer ≥ {minimum}", value)
        if maximum is not None and value > maximum:
            self.fail(name, f"an integer from {minimum} to {maximum:,}", value)
        return value

    def bins(self, value: Any, tasks: int) -> int:
        bins = self.integer("bins", value, minimum=1)
        if bins ** (tasks - 1) > MAX_CELLS:
            most = int(MAX_CELLS ** (1 / max(1, tasks - 1)))
            self.fail("bins", f"at most {most} with {tasks} tasks (bins^{tasks - 1} cells per archive must stay "
                              f"≤ {MAX_CELLS:,})", value)  # fmt: skip
        return bins

    def number(self, name: str, value: Any, minimum: float | None = None) -> float:
        if isinstance(value, str) and (parts := _FLOAT_TEXT.fullmatch(value)):  # YAML 1.1 reads 3e-4 as text
            mantissa, point, sign, exponent = parts.groups()
            written = f"{mantissa}{point or '.0'}e{sign or '+'}{exponent}"  # what YAML 1.1 reads as a number
            self.fail(name, f"a finite number (YAML reads {value} as text: write {written})", value)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.fail(name, "a finite number", value)
        if minimum is not None and value < minimum:
            self.fail(name, f"a number ≥ {minimum}", value)
        return float(value)

    def leaf(self, name: str, value: Any, spec: Field[Any], owner: type) -> Any:
        """One field of a spec: its default when absent, else checked against its type and its metadata's bounds
        (a nested spec is read as a section)."""
        kind = _hints(owner)[spec.name]
        if value is MISSING:
            if not is_dataclass(kind):
                return _default(spec)
            value = {}
        if is_dataclass(kind):
            return self.section(name, kind, value)
        if isinstance(kind, type) and issubclass(kind, StrEnum):
            return kind(self.choice(name, value, tuple(kind)))
        if kind is bool:
            if not isinstance(value, bool):
                self.fail(name, "true or false", value)
            return value
        if kind is int:
            return self.integer(name, value, spec.metadata["minimum"], spec.metadata["maximum"])
        if kind is float:
            return self.number(name, value, spec.metadata.get("minimum"))
        if kind is str:
            if not isinstance(value, str) or not value:
                self.fail(name, spec.metadata.get("expected", "a text"), value)
            return value
        raise TypeError(f"{owner.__name__}.{spec.name}: a field of type {kind} needs its own reader")

    def section(self, name: str, spec: type, value: Any) -> Any:
        """A spec's mapping, field by field: unknown keys refused, absent ones the spec's defaults."""
        value = self.mapping(name, value, {f.name for f in fields(spec)})
        return spec(**{f.name: self.leaf(f"{name}.{f.name}", value.get(f.name, MISSING), f, spec)
                       for f in fields(spec)})  # fmt: skip

    def choice(self, name: str, value: Any, options: tuple[str, ...]) -> str:
        if value not in options:
            self.fail(name, f"one of {', '.join(options)}", value)
        return value

    def mapping(self, name: str, value: Any, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(name, "a mapping", value)
        for key in value:
            if key not in allowed:
                self.unknown_key(key, allowed, prefix=f"{name}.")
        return value

    def checkpoint(self, name: str, value: Any, folder: Path, env: str | None = None) -> str:
        """A checkpoint folder, absolute; `env`: an expert's environment, whose missing folder is named with the
        command that makes it (a first run of an example config has no experts yet)."""
        if value == "default":
            return "default"
        if not isinstance(value, str) or not value:
            self.fail(name, "a checkpoint folder or 'default'", value)
        path = (folder / Path(value).expanduser()).resolve()
        if not (path / "config.json").is_file():
            made = f" (make one with: cycleqd sft --env {env} --out {path})" if env and not path.exists() else ""
            self.fail(name, f"a checkpoint folder with a config.json{made}", str(path))
        return str(path)

    def tasks(self, value: Any, folder: Path, environments: Collection[str] | None) -> tuple[TaskSpec, ...]:
        if not isinstance(value, list) or len(value) < 2:
            self.fail("tasks", "a list of at least two tasks (one archive each, the others are its BCs)", value)
        tasks = []
        specs = {f.name: f for f in fields(TaskSpec)}
        for index, item in enumerate(value):
            where = f"tasks[{index}]"
            item = self.mapping(where, item, set(specs))
            for required in ("name", "env", "expert"):
                if required not in item:
                    self.fail(f"{where}.{required}", "a value", None)
            env = item["env"]
            if environments is not None:
                self.choice(f"{where}.env", env, tuple(environments))
            read = {name: item.get(name, _default(spec)) for name, spec in specs.items()}
            if read["limit"] is not None:
                self.integer(f"{where}.limit", read["limit"], minimum=1)
            if read["suite"] != "builtin":
                read["suite"] = str((folder / Path(read["suite"]).expanduser()).resolve())
            tasks.append(TaskSpec(
                name=str(read["name"]), env=env, expert=self.checkpoint(f"{where}.expert", read["expert"], folder, env),
                suite=read["suite"], selection_split=str(read["selection_split"]),
                test_split=str(read["test_split"]), limit=read["limit"],
                protocol=self.leaf(f"{where}.protocol", read["protocol"], specs["protocol"], TaskSpec),
            ))  # fmt: skip
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            self.fail("tasks", "distinct task names", names)
        protocols = {(t.env, t.protocol) for t in tasks}
        if len({env for env, _ in protocols}) != len(protocols):  # a runtime's episodes of one env act one way
            self.fail("tasks", "one protocol per environment", sorted(protocols))
        return tuple(tasks)

    def bc_ranges(self, value: Any, names: list[str]) -> dict[str, tuple[float, float]] | None:
        if value == "paper" or value is None:
            return None
        if not isinstance(value, dict):
            self.fail("bc_ranges", "'paper' or a mapping of task name to [lo, hi]", value)
        for name in value:  # first: a misspelt task read as a missing one
            if name not in names:
                self.unknown_key(name, names, prefix="bc_ranges.")
        ranges = {}
        for name in names:
            pair = value.get(name)
            if not (isinstance(pair, list | tuple) and len(pair) == 2):
                self.fail(f"bc_ranges.{name}", "[lo, hi] for every task", pair)
            lo, hi = self.number(f"bc_ranges.{name}[0]", pair[0]), self.number(f"bc_ranges.{name}[1]", pair[1])
            if not hi > lo:
                self.fail(f"bc_ranges.{name}", "lo < hi", pair)
            ranges[name] = (lo, hi)
        return ranges

    def sampler(self, value: Any) -> SamplerSpec:
        spec = self.section("sampler", SamplerSpec, value)
        if spec.alpha_low <= 0 and spec.alpha_high <= 0:
            self.fail("sampler", "α_low or α_high above 0 (every weight would be 0)", value)
        return spec

    def racing(self, value: Any) -> RacingSpec:
        spec = self.section("racing", RacingSpec, value)
        if not 0.0 < spec.delta < 1.0:
            self.fail("racing.delta", "a confidence parameter strictly between 0 and 1", value.get("delta"))
        return spec

    def baselines(self, value: Any, folder: Path) -> BaselinesSpec:
        """`search` as its spec says; `models` are checkpoint folders, each checked."""
        value = self.mapping("baselines", value, {f.name for f in fields(BaselinesSpec)})
        search = self.leaf("baselines.search", value.get("search", MISSING), _field(BaselinesSpec, "search"),
                           BaselinesSpec)  # fmt: skip
        models = value.get("models", _default(_field(BaselinesSpec, "models")))
        if not isinstance(models, dict):
            self.fail("baselines.models", "a mapping of labels to checkpoint folders", models)
        return BaselinesSpec(search, {str(label): self.checkpoint(f"baselines.models.{label}", path, folder)
                                      for label, path in models.items()})  # fmt: skip


def _field(spec: type, name: str) -> Field[Any]:
    return next(f for f in fields(spec) if f.name == name)

"""The evolution's YAML config, validated with errors that name the file, the field and what was expected.

Defaults are the paper's setting (preset `paper`): 15 bins per BC, the 85%/115% BC-range rule, elite sampling
with α_low 0.5 / α_high 0.8, crossover ω ~ N(1, 0.01²), SVD mutation with w_max 0.1, the active task changing
every generation, one child per generation, 1200 generations. Relative paths are read from the config's folder.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

import yaml

from cycleqd.envs.episode import AgentProtocol
from cycleqd.envs.registry import names as environment_names

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # A few minutes on a CPU: enough generations to see archives fill, few episodes per score.
    "small": {"generations": 6, "bins": 5, "eval": {"max_tokens": 128}},
}


PROTOCOLS = tuple(AgentProtocol)


class Mode(StrEnum):
    """How children are scored: `sync`, W at a time from the archives at the generation's start (exact resume);
    `async`, each slot proposes as soon as it is free."""

    SYNC = "sync"
    ASYNC = "async"


class ConfigError(ValueError):
    """The config is wrong; the message names the file, the field and what was expected."""


# Upper bounds: beyond these no machine holds the run (an archive has bins^(tasks-1) cells; every server is a
# process; every concurrent episode a container), so a typo fails here, not hours later.
MAX_GENERATIONS = 10_000_000
MAX_CELLS = 10_000_000  # per archive: bins ** (tasks - 1)
MAX_SERVERS = 1024
MAX_SEED = 2**63 - 1
EVAL_MAXIMA = {"concurrency": 1024, "max_tokens": 1_000_000, "repeats": 1000, "rounds": 1000}
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
    protocol: str = "text"  # how the model acts on this task (envs.episode.AgentProtocol): text or tools


@dataclass(frozen=True)
class SamplerSpec:
    kind: str = "elite"
    alpha_low: float = 0.5
    alpha_high: float = 0.8


@dataclass(frozen=True)
class CrossoverSpec:
    mu: float = 1.0
    sigma: float = 0.01


@dataclass(frozen=True)
class MutationSpec:
    kind: str = "svd"
    w_max: float = 0.1
    std: float = 3e-4


@dataclass(frozen=True)
class EvalSpec:
    concurrency: int = 8  # episodes at once: what a batching server decodes together
    max_tokens: int = 512
    repeats: int = 1
    rounds: int = 5


@dataclass(frozen=True)
class RacingSpec:
    """Stop scoring a child once it cannot enter any archive (evolver/racing.py). `exact` (the default) changes
    no archive; `hoeffding` is statistical and inexact (confidence 1 − delta per check); `off` plays everything."""

    kind: str = "exact"
    delta: float = 0.05


@dataclass(frozen=True)
class RaySpec:
    """Run the evaluation slots on a Ray cluster: its head's address ('auto': the cluster this machine joined),
    and whether each slot takes one GPU (else one `cycleqd_slot` of a CPU node)."""

    address: str = "auto"
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
    generations: int = 1200
    flip_interval: int = 1
    bins: int = 15
    bc_ranges: dict[str, tuple[float, float]] | None = None  # None: the paper's rule from the experts' scores
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    crossover: CrossoverSpec = field(default_factory=CrossoverSpec)
    mutation: MutationSpec = field(default_factory=MutationSpec)
    servers: int = 1
    server: str = "auto"  # the engine: auto (serving/resolve.py `engine_for`), vllm, transformers
    mode: Mode = Mode.SYNC
    seed: int = 0
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

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready, stored with the run so that a resume needs no config file."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> EvolveConfig:
        return parse_config(data, "<stored run config>", Path("/"))


def load_config(path: Path) -> EvolveConfig:
    """The config in the YAML file `path`, with every task's files and splits checked."""
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
    from cycleqd.envs.errors import NoTasksError, TaskFormatError
    from cycleqd.envs.registry import UnknownSplitError
    from cycleqd.envs.suites import suite_tasks

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


def parse_config(data: Any, source: str, folder: Path) -> EvolveConfig:
    reader = _Reader(source)
    if not isinstance(data, dict):
        reader.fail("", "a mapping at the top level", data)
    data = dict(data)
    preset_name = data.pop("preset", "paper")
    if preset_name not in PRESETS:
        reader.fail("preset", f"one of {', '.join(PRESETS)}", preset_name)
    data = _merged(PRESETS[preset_name], data)
    known = {f for f in EvolveConfig.__dataclass_fields__}
    for key in data:
        if key not in known:
            reader.unknown_key(key, known)
    tasks = reader.tasks(data.get("tasks"), folder)
    names = [t.name for t in tasks]
    config = EvolveConfig(
        base=reader.checkpoint("base", data.get("base"), folder),
        tasks=tasks,
        generations=reader.integer("generations", data.get("generations", 1200), minimum=0, maximum=MAX_GENERATIONS),
        flip_interval=reader.integer("flip_interval", data.get("flip_interval", 1), minimum=1, maximum=MAX_GENERATIONS),
        bins=reader.bins(data.get("bins", 15), len(tasks)),
        bc_ranges=reader.bc_ranges(data.get("bc_ranges", "paper"), names),
        sampler=reader.sampler(data.get("sampler", {})),
        crossover=reader.crossover(data.get("crossover", {})),
        mutation=reader.mutation(data.get("mutation", {})),
        servers=reader.integer("servers", data.get("servers", 1), minimum=1, maximum=MAX_SERVERS),
        server=reader.choice("server", data.get("server", "auto"), ("auto", "vllm", "transformers")),
        mode=Mode(reader.choice("mode", data.get("mode", Mode.SYNC), tuple(Mode))),
        seed=reader.integer("seed", data.get("seed", 0), minimum=0, maximum=MAX_SEED),
        eval=reader.eval_spec(data.get("eval", {})),
        racing=reader.racing(data.get("racing", {})),
        ray=reader.ray(data.get("ray")),
        baselines=reader.baselines(data.get("baselines", {}), folder),
    )
    return config


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

    def tasks(self, value: Any, folder: Path) -> tuple[TaskSpec, ...]:
        if not isinstance(value, list) or len(value) < 2:
            self.fail("tasks", "a list of at least two tasks (one archive each, the others are its BCs)", value)
        tasks = []
        allowed = set(TaskSpec.__dataclass_fields__)
        for index, item in enumerate(value):
            where = f"tasks[{index}]"
            item = self.mapping(where, item, allowed)
            for required in ("name", "env", "expert"):
                if required not in item:
                    self.fail(f"{where}.{required}", "a value", None)
            env = self.choice(f"{where}.env", item["env"], environment_names())
            limit = item.get("limit")
            if limit is not None:
                self.integer(f"{where}.limit", limit, minimum=1)
            suite = item.get("suite", "builtin")
            if suite != "builtin":
                suite = str((folder / Path(suite).expanduser()).resolve())
            tasks.append(TaskSpec(
                name=str(item["name"]), env=env, expert=self.checkpoint(f"{where}.expert", item["expert"], folder, env),
                suite=suite, selection_split=str(item.get("selection_split", "dev")),
                test_split=str(item.get("test_split", "test")), limit=limit,
                protocol=self.choice(f"{where}.protocol", item.get("protocol", "text"), PROTOCOLS),
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
        value = self.mapping("sampler", value, {"kind", "alpha_low", "alpha_high"})
        spec = SamplerSpec(
            kind=self.choice("sampler.kind", value.get("kind", "elite"), ("elite", "uniform")),
            alpha_low=self.number("sampler.alpha_low", value.get("alpha_low", 0.5), minimum=0.0),
            alpha_high=self.number("sampler.alpha_high", value.get("alpha_high", 0.8), minimum=0.0),
        )
        if spec.alpha_low <= 0 and spec.alpha_high <= 0:
            self.fail("sampler", "α_low or α_high above 0 (every weight would be 0)", value)
        return spec

    def crossover(self, value: Any) -> CrossoverSpec:
        value = self.mapping("crossover", value, {"mu", "sigma"})
        return CrossoverSpec(
            mu=self.number("crossover.mu", value.get("mu", 1.0)),
            sigma=self.number("crossover.sigma", value.get("sigma", 0.01), minimum=0.0),
        )

    def mutation(self, value: Any) -> MutationSpec:
        value = self.mapping("mutation", value, {"kind", "w_max", "std"})
        return MutationSpec(
            kind=self.choice("mutation.kind", value.get("kind", "svd"), ("svd", "gaussian", "none")),
            w_max=self.number("mutation.w_max", value.get("w_max", 0.1), minimum=0.0),
            std=self.number("mutation.std", value.get("std", 3e-4), minimum=0.0),
        )

    def racing(self, value: Any) -> RacingSpec:
        value = self.mapping("racing", value, {"kind", "delta"})
        kind = self.choice("racing.kind", value.get("kind", "exact"), ("exact", "hoeffding", "off"))
        delta = self.number("racing.delta", value.get("delta", 0.05), minimum=0.0)
        if not 0.0 < delta < 1.0:
            self.fail("racing.delta", "a confidence parameter strictly between 0 and 1", value.get("delta"))
        return RacingSpec(kind=kind, delta=delta)

    def eval_spec(self, value: Any) -> EvalSpec:
        value = self.mapping("eval", value, set(EvalSpec.__dataclass_fields__))
        return EvalSpec(**{
            name: self.integer(f"eval.{name}", value.get(name, default), minimum=1, maximum=EVAL_MAXIMA[name])
            for name, default in asdict(EvalSpec()).items()
        })  # fmt: skip

    def baselines(self, value: Any, folder: Path) -> BaselinesSpec:
        value = self.mapping("baselines", value, {"search", "models"})
        search = value.get("search", False)
        if not isinstance(search, bool):
            self.fail("baselines.search", "true or false", search)
        models = value.get("models", {})
        if not isinstance(models, dict):
            self.fail("baselines.models", "a mapping of labels to checkpoint folders", models)
        return BaselinesSpec(search, {str(label): self.checkpoint(f"baselines.models.{label}", path, folder)
                                      for label, path in models.items()})  # fmt: skip

    def ray(self, value: Any) -> RaySpec | None:
        if value is None:
            return None
        value = self.mapping("ray", value, {"address", "gpus"})
        address = value.get("address", "auto")
        if not isinstance(address, str) or not address:
            self.fail("ray.address", "a Ray head address (HOST:PORT) or 'auto'", address)
        gpus = value.get("gpus", False)
        if not isinstance(gpus, bool):
            self.fail("ray.gpus", "true or false", gpus)
        return RaySpec(address, gpus)

"""The shipped example (examples/evolve.yaml, examples/README.md) stays runnable: the config loads through the real
loader into the values it documents, names every key the loader knows, and its experts are exactly what the
documented `cycleqd sft` commands make; before they exist, loading names the first missing one and its command.
A renamed key, a bad value or a command that drifted from the CLI fails here, without Docker or a model."""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

import cycleqd
from cycleqd import cli
from cycleqd.evolver.config import (
    BaselinesSpec,
    ConfigError,
    CrossoverSpec,
    EvalSpec,
    EvolveConfig,
    MutationSpec,
    RacingSpec,
    SamplerSpec,
    TaskSpec,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CONFIG = EXAMPLES / "evolve.yaml"
ENVS = ("os", "db", "coding")


def commands(text: str) -> list[list[str]]:
    """Every `cycleqd …` command line in a text (the README's code block, the YAML's comments)."""
    return [shlex.split(m.group(1)) for m in re.finditer(r"^[ #]*(cycleqd [^#\n]+)", text, re.MULTILINE)]


def sft_outs(text: str) -> dict[str, str]:
    """Each documented `cycleqd sft` command's --env → its --out, as typed (relative to the repository root)."""
    outs = {}
    for words in commands(text):
        if words[1] == "sft":
            outs[words[words.index("--env") + 1]] = words[words.index("--out") + 1]
    return outs


def expected_config(examples: Path) -> EvolveConfig:
    """What evolve.yaml says, value by value: its comments and examples/README.md describe these."""
    tasks = tuple(TaskSpec(name=env, env=env, expert=str(examples / "experts" / env), suite="builtin",
                           selection_split="dev", test_split="test", limit=8) for env in ENVS)  # fmt: skip
    return EvolveConfig(
        base="default", tasks=tasks, generations=6, flip_interval=1, bins=5, bc_ranges=None,
        sampler=SamplerSpec("elite", 0.5, 0.8), crossover=CrossoverSpec(1.0, 0.01),
        mutation=MutationSpec("svd", 0.1, 3e-4), servers=1, server="auto", mode="sync", seed=0,
        eval=EvalSpec(concurrency=8, max_tokens=224, repeats=1, rounds=3), racing=RacingSpec("exact", 0.05), ray=None,
        baselines=BaselinesSpec(False, {}),
    )  # fmt: skip


def checkout_copy(tmp_path: Path, with_experts: bool) -> Path:
    """examples/ copied into a fresh 'repository root' (a developer's own experts never leak in), with stand-ins
    at the paths the documented sft commands write when `with_experts`: the loader reads only their config.json."""
    examples = tmp_path / "examples"
    examples.mkdir()
    shutil.copy(CONFIG, examples / "evolve.yaml")
    if with_experts:
        for out in sft_outs((EXAMPLES / "README.md").read_text()).values():
            (tmp_path / out).mkdir(parents=True)
            (tmp_path / out / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    return examples


def test_the_example_loads_through_the_public_loader_with_its_documented_values(tmp_path: Path) -> None:
    examples = checkout_copy(tmp_path, with_experts=True)
    config = cycleqd.load_config(examples / "evolve.yaml")  # every task's suite and splits read too
    assert config == expected_config(examples)
    assert config.planned_episodes() == (3 + 6) * 3 * 8  # the experts' and the children's selection episodes


def test_the_example_sets_every_key_the_loader_knows() -> None:
    """So that it documents each one: a key added to the config (or renamed) must be added here too."""
    text = CONFIG.read_text()
    data = yaml.safe_load(text)
    fields = {f.name for f in dataclasses.fields(EvolveConfig)}
    assert set(data) == fields - {"ray"} and re.search(r"^# ray: \{", text, re.MULTILINE)  # ray needs a cluster
    assert re.search(r"^# preset: small", text, re.MULTILINE)
    assert all(set(task) == {f.name for f in dataclasses.fields(TaskSpec)} for task in data["tasks"])
    for section, spec in (("sampler", SamplerSpec), ("crossover", CrossoverSpec), ("mutation", MutationSpec),
                          ("eval", EvalSpec), ("racing", RacingSpec), ("baselines", BaselinesSpec)):  # fmt: skip
        assert set(data[section]) == {f.name for f in dataclasses.fields(spec)}, section


def test_every_expert_is_made_by_a_documented_command_and_named_relative_to_the_config() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    made = sft_outs(readme)
    assert made == sft_outs(CONFIG.read_text())  # the YAML's comments say the same commands
    experts = {task["env"]: task["expert"] for task in yaml.safe_load(CONFIG.read_text())["tasks"]}
    assert set(made) == set(experts) == set(ENVS)
    for env, path in experts.items():
        assert not Path(path).is_absolute()  # read from the config's folder: any checkout, any working folder
        assert (EXAMPLES / path).resolve() == (ROOT / made[env]).resolve()
    config_args = [w[w.index("--config") + 1] for w in commands(readme) if w[1] == "evolve"]
    assert config_args == ["examples/evolve.yaml"] and (ROOT / config_args[0]).resolve() == CONFIG


def test_the_documented_commands_parse_with_this_cli() -> None:
    """Each command of the README, options and values, through click's own parser (nothing runs)."""
    readme_commands = commands((EXAMPLES / "README.md").read_text())
    assert [w[1] for w in readme_commands] == ["doctor", "model", "sft", "sft", "sft", "evolve", "report"]
    for words in readme_commands:
        command = cli.cli.commands[words[1]]
        command.make_context(words[1], words[2:])  # a renamed option or a bad value raises here


def test_without_its_experts_the_example_names_the_first_and_the_command_that_makes_it(tmp_path: Path) -> None:
    examples = checkout_copy(tmp_path, with_experts=False)
    with pytest.raises(ConfigError) as raised:
        cycleqd.load_config(examples / "evolve.yaml")
    missing = examples / "experts" / "os"
    assert "field 'tasks[0].expert'" in str(raised.value)
    assert f"cycleqd sft --env os --out {missing}" in str(raised.value)

"""`cycleqd demo`: the whole method on a CPU. The embedded SmolLM2 is the base; one expert per environment is
fine-tuned on its train split's gold trajectories (cached by budget); `cycleqd evolve` runs on the dev splits;
the final table puts base, experts, naive merge and the CycleQD model side by side on the test splits.

A second run with the same budget reuses the experts, the SVD cache and, when the store already holds a
completed demo evolution with the same config, its table.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from cycleqd.evolve_command import final_table, run_evolve_command
from cycleqd.report import final_rows
from cycleqd.sft_command import SFTRequest, run_sft
from cycleqd.sft_train import SFTSettings
from db.evolution_store import EvolutionStore
from db.store import open_store
from envs.suite_verify import GOLD_REPLY_FORMAT
from evolver.config import EvolveConfig, parse_config
from serving.default_model import cache_root, default_checkpoint

ENVS = ("os", "db", "coding")


@dataclass(frozen=True)
class DemoBudget:
    # Measured on 2 cores: at this budget the DB and coding experts beat the base on their own test split and the
    # whole demo takes about 2 h; at 10 trajectories × 3 epochs (older gold replies) only the DB expert did.
    sft_examples: int = 20  # gold trajectories per environment
    sft_epochs: int = 5
    sft_learning_rate: float = 1e-4
    eval_limit: int = 10  # tasks per environment, on each of the selection and test splits
    generations: int = 4
    max_tokens: int = 128
    rounds: int = 3
    bins: int = 5

    def describe(self) -> str:
        return (f"experts: {self.sft_examples} trajectories × {self.sft_epochs} epochs per environment; evolution: "
                f"{self.generations} generations, {self.eval_limit} tasks per environment and split, "
                f"{self.max_tokens} tokens per reply, {self.rounds} rounds")  # fmt: skip

    def sft_key(self) -> str:
        part = {k: v for k, v in asdict(self).items() if k.startswith("sft_")} | {"gold": GOLD_REPLY_FORMAT}
        return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:12]


def demo_experts(budget: DemoBudget, base: Path, console: Console | None) -> dict[str, Path]:
    folder = cache_root() / "demo" / f"experts-{budget.sft_key()}"
    settings = SFTSettings(epochs=budget.sft_epochs, learning_rate=budget.sft_learning_rate, batch_size=2,
                           max_length=2048, save_every=10)  # fmt: skip
    experts = {}
    for env in ENVS:
        out = folder / env
        if not (out / "config.json").is_file():
            if console:
                console.print(f"[bold]expert {env}[/]")
            summary = run_sft(SFTRequest(base, env, "builtin", "train", budget.sft_examples, out, settings), console)
            if console:
                console.print(summary.describe(), highlight=False)
        experts[env] = out
    return experts


def demo_config(budget: DemoBudget, base: Path, experts: dict[str, Path]) -> EvolveConfig:
    tasks = [{"name": env, "env": env, "expert": str(experts[env]), "selection_split": "dev", "test_split": "test",
              "limit": budget.eval_limit} for env in ENVS]  # fmt: skip
    data = {"base": str(base), "tasks": tasks, "generations": budget.generations, "bins": budget.bins,
            "eval": {"concurrency": 8, "max_tokens": budget.max_tokens, "rounds": budget.rounds}}  # fmt: skip
    return parse_config(data, "<demo>", Path("/"))


def run_demo(budget: DemoBudget, db_path: Path, console: Console, err: Console) -> int:
    console.print(f"cycleqd demo — {budget.describe()}", highlight=False)
    base = default_checkpoint().path
    started = time.monotonic()
    experts = demo_experts(budget, base, console)
    experts_done = time.monotonic()
    config = demo_config(budget, base, experts)
    store = open_store(db_path)
    for run in store.list_runs(limit=200):
        if run.kind == "evolve" and run.status == "completed" and run.config == config.snapshot():
            console.print(f"this demo already ran (run {run.id}); its table:", highlight=False)
            names = list(config.task_names)
            console.print(final_table(final_rows(EvolutionStore(store, run.id), names), names))
            return 0
    status = run_evolve_command(config, db_path, None, False, console, err)
    console.print(f"stage times: experts {_minutes(experts_done - started)} (0 when cached), evolution and the "
                  f"final table {_minutes(time.monotonic() - experts_done)}", highlight=False)  # fmt: skip
    return status


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"

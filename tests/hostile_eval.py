"""Running a hostile model's scripted replies through a real eval (a test helper): tasks written as a suite,
played by the real orchestrator on real sandboxes against tests/hostile_model.py, read back from a real store."""

from __future__ import annotations

import json
from pathlib import Path

from cycleqd.db import open_store
from cycleqd.envs.episode import AgentProtocol
from cycleqd.envs.registry import EpisodeSettings
from cycleqd.eval.orchestrator import EvalSettings, Orchestrator
from cycleqd.eval.tasks import EvalTask, load_eval_tasks
from cycleqd.serving.client import ClientSettings
from cycleqd.serving.external import ExternalManager
from cycleqd.serving.model_ref import ExternalEndpoint
from tests.hostile_model import MODEL, HostileModelServer

FINISH = "Think: done.\n\nAct: finish"
# EXIT_0_SO: a gzipped shared object whose constructor exits 0 (x86-64 exit_group), so that a program that loads it
# (through /etc/ld.so.preload, or as a name-service module) "succeeds" at once; built from
# `static void __attribute__((constructor)) q(void) { __asm__ volatile("mov $231, %eax\n xor %edi, %edi\n syscall"); }`
# with `gcc -shared -fPIC -nostdlib -Os -s`.
EXIT_0_SO = (
    "H4sIAAAAAAACA+2azW7TQBDHZ23ShLaCHFqpKEUyBwQIWOIIJAQSQkqBHkAK3DhFTmPqCOxKjqs2XHgFHoc7l74Ioje4gMQFY8cz"
    "ye6I8CHBpZqf5Pw1652d9ezmNPPmweOHjlJAuHAP5hbAfdTjC+bYbagXv6uwMp17ChbjObZCs5LSr2bYXJfBVtNvGs+jALZuga2m"
    "31LxbOO87batDWUr+Tno10O/XtvWWbLIH83eh2z4q32uga2Uw6eF3xL8OU0jvDK287fM8sAXFgRBEARBEARBEE4E7z4WP35+tvZe"
    "ciEIgiAIgiAIgiAIJxXVcu+WNehp3fhznlNZm+rS6vUzUIdN1VqtN96qqiy8WTxHn/J82VwI68Xn0KR6cgttqit/+Z7vlXqEheoa"
    "+WN/ANW+j/E9xaC69grqBmqd1nfsOPT+NLO/5VV89Z/y+ajbveNd3goHoyDx/I7u6PZ1/+bVYTjwO/v+FRwC0ONonKVZMAC9m+zr"
    "KBhHoIeTZDyJK81S0Gn4KigN0Fl4mIEOo/6LNIjDfjRM5xboUTLK+kGaBpOpbxCPdkDv7MVxmGT/6LvKvH8tckdtHHR+pJv2Mc77"
    "CJB1XMNh50tK5+Pi2fBzPI/vHHZfSPl5cvsiVD0WDr8vjh2H75/Gb8C8h8S877xfZVH8Wzg2279n6xqbz3tqusx/w7P1GpvP8/+k"
    "eM5gDs3/J/XDNBb4kz7Hbyf/WR+MZ3+wy/woTQOc0mZxethXdGlB/kx1f3IvD9D/5W/y/wOqyipe6CQAAA=="
)


def bash(command: str) -> str:
    return f"Think: go.\n\nAct: bash\n```bash\n{command}\n```"


def os_task(name: str, evaluation: dict, init: str | None = None) -> dict:
    created = {"create": {"init": init}} if init else {}
    return {"description": f"Solve this. «{name}»", "evaluation": evaluation, **created}


def write_os_suite(root: Path, tasks: list[dict]) -> dict[str, Path]:
    folder = root / "os"
    folder.mkdir(parents=True)
    (folder / "tasks.json").write_text(json.dumps(tasks))
    return {"os": folder}


def marker(task: EvalTask) -> str:
    text = json.dumps(task.task.__dict__, default=str, ensure_ascii=False)
    return text.split("«", 1)[1].split("»", 1)[0]


def load_suite(folders: dict[str, Path]) -> list[EvalTask]:
    return [t for env, folder in folders.items() for t in load_eval_tasks([env], str(folder), "dev", None)]


async def run_suite(
    server: HostileModelServer, tasks: list[EvalTask], db: Path, retries: int = 2, concurrency: int = 3
) -> dict:
    """The tasks played against `server`, under its protocol."""
    store = open_store(db)
    run = store.create_run("eval", {"test": "adversarial"})
    endpoint = ExternalEndpoint(server.base_url, MODEL)
    model_id = store.model_id(endpoint.identity(), endpoint.label)
    episode = EpisodeSettings(round_limit=3, protocol=AgentProtocol(server.protocol))
    settings = EvalSettings(concurrency=concurrency, repeats=1, retries=retries, max_sandboxes=2 * concurrency,
                            episode=episode)  # fmt: skip
    async with ExternalManager(endpoint, ClientSettings(retries=4, backoff_s=0.5, max_backoff_s=4)) as manager:
        await manager.serve(endpoint)
        await Orchestrator(store, run.id, manager, model_id, settings).run(tasks)
    by_row = {store.task_id(t.env, t.suite, t.split, t.key, t.content_hash): marker(t) for t in tasks}
    return {"run": run.id, "store": store, "episodes": {by_row[e.task_id]: e for e in store.episodes(run.id)}}

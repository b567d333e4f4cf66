"""Who ended a container: the engine (a kill, a stop, a forced removal) or something inside it.

The engine's state cannot tell them apart: `docker kill` and a SIGKILL that a root agent delivers to its
sandbox's main process through ptrace both end as "exited 137", and Docker's default seccomp profile allows
ptrace. Its event stream can: every kill through the engine is published as a `kill` event before the
container's `die`, and a main process that ends for any other reason gets a `die` alone. So an agent that ends
its own sandbox is told from a fault of the engine, and its failure is counted instead of retried.

One witness per engine client follows the `kill` and `die` events of this process's containers (their owner
labels) from a moment before the first one is created: the engine replays its recent events from `since`, so
nothing between asking and the stream's start is missed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import weakref
from typing import Any

import docker

from cycleqd.sandboxes.labels import OWNER_HOST, OWNER_PID

log = logging.getLogger(__name__)
# Replayed from before the witness starts: covers the stream's set-up and a remote engine's clock running behind.
REPLAY_MARGIN_S = 5.0
# A container's `die` reaches the stream within milliseconds of the engine recording its exit; waiting longer than
# this means the stream is not following (the engine went away), and the answer is "unknown".
DIE_EVENT_WAIT_S = 3.0


class ExitWitness:
    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._killed: set[str] = set()  # containers the engine was asked to kill, stop or remove
        self._ended: dict[str, bool] = {}  # container → whether its end followed a kill by the engine
        self._since = time.time() - REPLAY_MARGIN_S
        self._filters = {
            "type": "container",
            "event": ["kill", "die", "destroy"],
            "label": [f"{OWNER_PID}={os.getpid()}", f"{OWNER_HOST}={socket.gethostname()}"],
        }
        threading.Thread(target=self._follow, name="cycleqd-exit-witness", daemon=True).start()

    def _follow(self) -> None:
        while True:
            try:
                since = f"{self._since:.9f}"  # the engine reads seconds.nanoseconds
                for event in self._client.api.events(since=since, filters=self._filters, decode=True):
                    self._record(event)
            except Exception as exc:  # noqa: BLE001 - the engine went away: follow again from the last event
                log.debug("the engine's event stream ended: %s", exc)
            time.sleep(1.0)  # the stream ended (the engine restarted); ask again, replaying from the last event

    def _record(self, event: dict[str, Any]) -> None:
        container = (event.get("Actor") or {}).get("ID") or event.get("id", "")
        action = event.get("Action") or event.get("status", "")
        if "timeNano" in event:
            self._since = event["timeNano"] / 1e9
        with self._lock:
            if action == "kill":
                self._killed.add(container)
            elif action == "die":
                self._ended[container] = container in self._killed
            elif action == "destroy":
                self._killed.discard(container)
                self._ended.pop(container, None)

    async def ended_inside(self, container_id: str, within_s: float = DIE_EVENT_WAIT_S) -> bool | None:
        """True when the container's main process ended with no kill from the engine before it (something inside
        ended it), False when the engine killed it, None when its end was not seen in time (unknown)."""
        deadline = time.monotonic() + within_s
        while True:
            with self._lock:
                killed = self._ended.get(container_id)
            if killed is not None:
                return not killed
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.02)


_WITNESSES: weakref.WeakKeyDictionary[docker.DockerClient, ExitWitness] = weakref.WeakKeyDictionary()
_WITNESSES_LOCK = threading.Lock()


def exit_witness(client: docker.DockerClient) -> ExitWitness:
    """The client's witness, started on first use (before this process creates its first container)."""
    with _WITNESSES_LOCK:
        if client not in _WITNESSES:
            _WITNESSES[client] = ExitWitness(client)
        return _WITNESSES[client]

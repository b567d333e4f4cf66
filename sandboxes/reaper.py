"""Nothing of ours outlives its owner: containers of dead owners are removed at start-up, and a process removes
its own on normal exit, Ctrl-C or SIGTERM (the CLI turns SIGTERM into an exit)."""

from __future__ import annotations

import atexit
import logging
import threading

import docker
import docker.errors
from docker.models.containers import Container

from cycleqd.sandboxes import labels

log = logging.getLogger(__name__)


def managed_containers(client: docker.DockerClient) -> list[Container]:
    """Our containers, from one list call (sparse: no per-container inspect racing with removals)."""
    return client.containers.list(all=True, sparse=True, filters={"label": f"{labels.MANAGED}=1"})


def labels_of(container: Container) -> dict[str, str]:
    return container.attrs.get("Labels") or {}


def name_of(container: Container) -> str:
    names = container.attrs.get("Names") or [container.id[:12]]
    return names[0].lstrip("/")


def reap_orphans(client: docker.DockerClient) -> list[str]:
    """Remove every container whose owning process on this host is gone. Returns their names."""
    reaped = []
    for container in managed_containers(client):
        if labels.owner_alive(labels_of(container)) is False:
            _remove_quietly(container)
            reaped.append(name_of(container))
    if reaped:
        log.info("removed %d container(s) left by dead processes: %s", len(reaped), ", ".join(reaped))
    return reaped


def _remove_quietly(container: Container) -> None:
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if "already in progress" not in str(exc):
            log.warning("could not remove container %s: %s", container.id[:12], exc)


class OwnedContainers:
    """The containers this process started and has not removed yet; removed at interpreter exit."""

    def __init__(self) -> None:
        self._live: dict[str, Container] = {}
        self._lock = threading.Lock()
        atexit.register(self.remove_all)

    def add(self, container: Container) -> None:
        with self._lock:
            self._live[container.id] = container

    def discard(self, container: Container) -> None:
        with self._lock:
            self._live.pop(container.id, None)

    def remove_all(self) -> None:
        with self._lock:
            doomed, self._live = list(self._live.values()), {}
        for container in doomed:
            _remove_quietly(container)


OWNED = OwnedContainers()

_reaped_once = False
_reap_lock = threading.Lock()


def reap_orphans_once(client: docker.DockerClient) -> None:
    """Run the reaper the first time this process starts a container."""
    global _reaped_once
    with _reap_lock:
        if _reaped_once:
            return
        _reaped_once = True
    reap_orphans(client)

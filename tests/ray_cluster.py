"""A real local Ray cluster for tests: a head and worker nodes on this machine, each started with `ray start
--block` in its own session, with its own ports, a small object store and one `cycleqd_slot` (plus a resource
naming the node) so that slot actors land on distinct workers. Every process is ended by its id at teardown.

Several raylets on one host need distinct ports for everything a node listens on; `ray.cluster_utils.Cluster`
does the same inside one Python process, but these are separate `ray start` processes, as on real nodes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")
MARKER = "CYCLEQD_TEST_RAY_CLUSTER"
OBJECT_STORE_BYTES = 80 * 1000 * 1000  # Ray's floor is 75 MB


WORKER_PORTS = 41  # --min-worker-port .. --max-worker-port


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def node_ports(taken: set[int]) -> list[int]:
    """Six free ports for a node's components and the first of its worker range, none of the six (nor a port of
    another node) inside that range: Ray refuses a component port among the worker ports, and free ports drawn at
    random sometimes were."""
    while True:
        ports = free_ports(7)
        workers = range(ports[6], ports[6] + WORKER_PORTS)
        if not any(p in workers for p in [*ports[:6], *taken]) and not any(p in taken for p in ports):
            taken.update([*ports[:6], *workers])
            return ports


@dataclass
class LocalRayCluster:
    root: Path
    env: dict[str, str]
    address: str = ""
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)
    taken: set[int] = field(default_factory=set)  # every port a node of this cluster was given

    def _start(self, name: str, args: list[str], resources: dict[str, float]) -> None:
        (node_manager, object_manager, metrics, agent_http, agent_grpc, runtime_env, worker_lo) = node_ports(self.taken)
        command = [
            str(RAY), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
            "--object-store-memory", str(OBJECT_STORE_BYTES), "--resources", json.dumps(resources),
            "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
            "--metrics-export-port", str(metrics), "--dashboard-agent-listen-port", str(agent_http),
            "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env),
            "--min-worker-port", str(worker_lo), "--max-worker-port", str(worker_lo + WORKER_PORTS - 1),
            "--disable-usage-stats", *args,
        ]  # fmt: skip
        log = (self.root / f"{name}.log").open("w")
        self.nodes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)  # fmt: skip

    def start_head(self) -> None:
        (port,) = free_ports(1)
        self.taken.add(port)
        self.address = f"127.0.0.1:{port}"
        self._start("head", ["--head", "--port", str(port), "--temp-dir", str(self.root / "ray"),
                             "--include-dashboard", "false"], {})  # fmt: skip
        self.wait_for_node("head")

    def add_worker(self, name: str) -> None:
        self._start(name, ["--address", self.address], {"cycleqd_slot": 1, f"node_{name}": 1})

    def wait_for_node(self, name: str, timeout: float = 90.0) -> None:
        """Until `ray start` says the node runs (it prints this once the node registered with the head)."""
        log = self.root / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Ray runtime started" in log.read_text():
                return
            if self.nodes[name].poll() is not None:
                raise RuntimeError(f"ray node {name} exited: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"ray node {name} did not start within {timeout:.0f} s: {log.read_text()[-2000:]}")

    def kill(self, name: str) -> None:
        """SIGKILL a node's whole process group (raylet, object store, its workers), as a machine that dies."""
        process = self.nodes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self) -> None:
        for name in list(self.nodes):
            try:
                self.kill(name)
            except ProcessLookupError:
                pass
        # Ray's worker processes run in sessions of their own and retitle themselves; they inherit the nodes'
        # environment, so ours are found by the marker variable the cluster was started with.
        for pid in _pids_with(f"{MARKER}={self.root}"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def _pids_with(variable: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if variable.encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def start_cluster(workers: int, env: dict[str, str]) -> LocalRayCluster:
    root = Path(tempfile.mkdtemp(prefix="cq-ray-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    cluster = LocalRayCluster(root, {**env, "RAY_USAGE_STATS_ENABLED": "0", MARKER: str(root)})
    try:
        cluster.start_head()
        for index in range(workers):  # one at a time: nodes of one host pick their socket names in turn
            cluster.add_worker(f"w{index + 1}")
            cluster.wait_for_node(f"w{index + 1}")
    except BaseException:
        cluster.stop()
        raise
    return cluster

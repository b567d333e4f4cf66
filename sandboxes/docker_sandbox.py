"""The Docker backend of the sandbox contract.

Every blocking SDK call runs in a worker thread; attached exec streams are read through asyncio directly.
Exec goes through the SDK's low-level API (`exec_create`/`exec_start`/`exec_inspect`) because the high-level
`exec_run` cannot give both the attached socket and the exec's id, which we need for exit codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import logging
import os
import socket
import tarfile
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors
import requests
from docker.models.containers import Container
from docker.types import LogConfig

from cycleqd.sandboxes import process_tree
from cycleqd.sandboxes.agent_caps import CHECK_ONLY_CAP, agent_side
from cycleqd.sandboxes.contract import MAX_DIGEST_BYTES, CheckEvidence, ExecResult, LayerScan, Sandbox, SandboxHealth
from cycleqd.sandboxes.docker_stream import STDERR, ExecStream
from cycleqd.sandboxes.engine import docker_client
from cycleqd.sandboxes.errors import ImageMissingError, SandboxError, SandboxStoppedError, WitnessUnavailableError
from cycleqd.sandboxes.exec_wrapper import WrappedExec
from cycleqd.sandboxes.exit_witness import exit_witness
from cycleqd.sandboxes.file_witness import FileWitness
from cycleqd.sandboxes.labels import owner_labels
from cycleqd.sandboxes.layer_scan import (
    digest_of,
    layer_text,
    lower_entry,
    resolve_in_root,
    scan_upper,
    upper_digest,
)
from cycleqd.sandboxes.limits import SandboxLimits, quota_supported
from cycleqd.sandboxes.main_shell import IDLE_MAIN, MainShellSession
from cycleqd.sandboxes.other_mounts import mounted_entries
from cycleqd.sandboxes.process_freeze import describe, stop_all, wait_for_child
from cycleqd.sandboxes.reaper import OWNED, reap_orphans_once
from cycleqd.sandboxes.shell_session import BashSession

log = logging.getLogger(__name__)
KILL_GRACE_S = 3.0
T = TypeVar("T")
LAYER_LIMIT = 200_000  # entries of a writable layer read before it is called flooded
MAIN_SHELL_RESTART_S = 1.0
ROOT = "0"  # numeric: still works after an agent has mangled /etc/passwd


# Per client, not per URL: two engines on two unix sockets share the URL "http+docker://localhost".
_QUOTA: weakref.WeakKeyDictionary[docker.DockerClient, bool] = weakref.WeakKeyDictionary()
_QUOTA_LOCK = threading.Lock()  # sandboxes are created from worker threads: ask once, not once per thread


def engine_has_quota(client: docker.DockerClient) -> bool:
    """Asked once per engine. Where it has none, `cycleqd doctor` and the README say so, once: a warning here
    printed into every eval's, evolve's and API call's output, inside the progress bar."""
    with _QUOTA_LOCK:
        if client not in _QUOTA:
            _QUOTA[client] = quota_supported(client.info())
        return _QUOTA[client]


# An episode's own engine calls (exec, attach, inspect) run on asyncio's default executor; starting and removing
# sandboxes have executors of their own. On one shared queue, a run's first 64 starts stood ahead of the first
# episode's next call, so no episode went on before nearly every container had started (concurrency 64, a 2 s
# model: the first of 120 episodes ended after 13 s, and the engine idled through the model's replies); and a
# burst of removals stood ahead of running episodes' checks.
ENGINE_LANE_WIDTH = max(4, os.cpu_count() or 1)
STARTS = ThreadPoolExecutor(ENGINE_LANE_WIDTH, thread_name_prefix="cycleqd-sandbox-start")
REMOVALS = ThreadPoolExecutor(ENGINE_LANE_WIDTH, thread_name_prefix="cycleqd-sandbox-remove")


async def in_lane(lane: ThreadPoolExecutor, call: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(lane, functools.partial(call, *args))


def create_container(
    client: docker.DockerClient,
    image: str,
    limits: SandboxLimits,
    run_id: str | None,
    workdir: str | None,
    command: list[str] | None = None,
    mounts: dict[str, str] | None = None,
) -> Container:
    api = client.api
    host_config = api.create_host_config(
        binds={host: {"bind": inside, "mode": "rw"} for host, inside in (mounts or {}).items()},
        cap_add=[CHECK_ONLY_CAP] if command is None else None,  # agent_caps.py: what no agent process holds
        init=command is not None,  # a service gets tini to reap its zombies; IDLE_MAIN reaps its own
        # What the idle main shell prints is a session's, read through an attach: the engine need not log it.
        log_config=LogConfig(type=LogConfig.types.NONE) if command is None else None,
        **limits.docker_run_kwargs(disk_quota=engine_has_quota(client)),
    )
    config = api.create_container_config(
        image,
        command or agent_side(IDLE_MAIN),
        stdin_open=True,
        volumes=list((mounts or {}).values()) or None,
        labels=owner_labels(run_id),
        working_dir=workdir or "/",
        hostname="sandbox",
        host_config=host_config,
    )
    # docker-py ties StdinOnce to stdin_open: the engine would close stdin when the first attached client leaves,
    # and every later shell of IDLE_MAIN would read end-of-file. Each main-shell session attaches anew.
    config["StdinOnce"] = False
    exit_witness(client)  # following the engine's events before this container can end
    try:
        created = api.create_container_from_config(config, None)
    except docker.errors.ImageNotFound as exc:
        raise ImageMissingError(f"image {image!r} is not on this engine; run `cycleqd images build`") from exc
    container = client.containers.get(created["Id"])
    OWNED.add(container)
    try:
        container.start()
    except docker.errors.APIError:
        OWNED.discard(container)
        container.remove(force=True)
        raise
    return container


def _layer_files(lower_dirs: list[str], paths: list[str]) -> dict[str, str]:
    found = {}
    for path in paths:
        if (host_path := lower_entry(lower_dirs, path)) is not None:
            found[path] = digest_of(host_path, os.lstat(host_path))
    return found


class _ChunkReader(io.RawIOBase):
    """The engine's archive stream as a file, read as far as asked (tarfile's streaming mode)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._pending = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size], self._pending = self._pending[:size], self._pending[size:]
        return size


class DockerSandbox(Sandbox):
    def __init__(
        self, client: docker.DockerClient, container: Container, limits: SandboxLimits, *, idle_main: bool = False
    ) -> None:
        self.limits = limits
        self.image = container.attrs.get("Config", {}).get("Image", "")
        self.image_id = container.attrs.get("Image", "")  # sha256 of the image's content: stable, unlike a tag
        self._client = client
        self._container = container
        self._stopped = False
        self._oom_seen = 0
        self._main_shell_free = idle_main  # IDLE_MAIN runs and no session holds its shell

    @property
    def id(self) -> str:
        return self._container.id

    @property
    def name(self) -> str:
        return self._container.name

    @classmethod
    async def start(
        cls,
        image: str,
        *,
        limits: SandboxLimits | None = None,
        run_id: str | None = None,
        workdir: str | None = None,
        client: docker.DockerClient | None = None,
        command: list[str] | None = None,
        mounts: dict[str, str] | None = None,
    ) -> DockerSandbox:
        """Start a fresh container of `image` (ImageMissingError if the engine lacks it). `command` replaces the
        idle main process (a service the sandbox exists to run); `mounts` maps host folders into it (the engine
        must run on this host)."""
        client = client or await asyncio.to_thread(docker_client)
        limits = limits or SandboxLimits()
        await in_lane(STARTS, reap_orphans_once, client)
        container = await in_lane(STARTS, create_container, client, image, limits, run_id, workdir, command, mounts)
        return cls(client, container, limits, idle_main=command is None)

    # -- exec plumbing ---------------------------------------------------------------------------------------

    async def _attach(
        self,
        argv: list[str],
        *,
        stdin: bool,
        user: str | None,
        workdir: str | None,
        env: Mapping[str, str] | None,
    ) -> tuple[ExecStream, str]:
        if self._stopped:
            raise SandboxStoppedError(f"sandbox {self.name} was stopped")
        api = self._client.api

        def create_and_start() -> tuple[object, str]:
            try:
                created = api.exec_create(
                    self._container.id,
                    argv,
                    stdin=stdin,
                    stdout=True,
                    stderr=True,
                    tty=False,
                    user=user or "",
                    workdir=workdir,
                    environment=dict(env) if env else None,
                )
            except docker.errors.NotFound as exc:
                raise SandboxStoppedError(f"the container of sandbox {self.name} is gone") from exc
            except docker.errors.APIError as exc:
                if exc.status_code == 409:  # "container is not running": killed, e.g. by the OOM killer
                    raise SandboxStoppedError(f"sandbox {self.name} is not running: {exc.explanation}") from exc
                raise
            return api.exec_start(created["Id"], socket=True), created["Id"]

        handle, exec_id = await asyncio.to_thread(create_and_start)
        return await self._stream_of(handle), exec_id

    async def _attach_main(self) -> ExecStream:
        """The main process's stdin and output: where IDLE_MAIN's shell reads and writes."""
        params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        try:
            handle = await asyncio.to_thread(self._client.api.attach_socket, self._container.id, params)
        except docker.errors.NotFound as exc:
            raise SandboxStoppedError(f"the container of sandbox {self.name} is gone") from exc
        return await self._stream_of(handle)

    @staticmethod
    async def _stream_of(handle: object) -> ExecStream:
        raw = getattr(handle, "_sock", handle)
        if not isinstance(raw, socket.socket):
            raise SandboxError(
                "the Docker connection is not a plain socket (TLS or SSH DOCKER_HOST); sandboxes need the unix "
                "socket or plain TCP"
            )
        stream = await ExecStream.attach(raw)
        stream.keepalive = handle  # the SDK's wrapper closes the socket when collected
        return stream

    async def exit_code_of(self, exec_id: str) -> int | None:
        info = await asyncio.to_thread(self._client.api.exec_inspect, exec_id)
        return None if info.get("Running") else info.get("ExitCode")

    async def _run_internal(self, argv: list[str]) -> str:
        """Run one of our own helpers as root and return its stdout (it is small)."""
        stream, _ = await self._attach(argv, stdin=False, user=ROOT, workdir="/", env=None)
        out = bytearray()
        try:
            while (frame := await stream.read_frame()) is not None:
                if frame.stream != STDERR:
                    out += frame.data
        finally:
            await stream.aclose()
        return out.decode(errors="replace")

    async def kill_children(self, pid: int) -> None:
        await self._run_internal(process_tree.kill_argv("children", [pid]))

    async def kill_tree(self, pid: int) -> None:
        await self._run_internal(process_tree.kill_argv("tree", [pid]))

    async def new_oom_kills(self) -> int:
        try:
            count = int((await self._run_internal(process_tree.oom_count_argv())).strip() or 0)
        except (ValueError, SandboxStoppedError):
            return 1 if await self._container_oom_killed() else 0
        new, self._oom_seen = count - self._oom_seen, count
        return max(new, 0)

    async def _container_oom_killed(self) -> bool:
        await asyncio.to_thread(self._container.reload)
        return bool(self._container.attrs.get("State", {}).get("OOMKilled"))

    # -- the contract ------------------------------------------------------------------------------------------

    async def exec(
        self,
        command: Sequence[str] | str,
        *,
        stdin: bytes | str | None = None,
        timeout: float | None = None,
        user: str | None = None,
        workdir: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        argv = ["bash", "-c", command] if isinstance(command, str) else list(command)
        started = time.monotonic()
        wrapped = WrappedExec(self.limits.output_cap_bytes)
        stream, exec_id = await self._attach(
            wrapped.argv(argv), stdin=stdin is not None, user=user, workdir=workdir, env=env
        )

        async def feed() -> None:
            data = stdin.encode() if isinstance(stdin, str) else stdin
            try:
                if data:
                    await stream.write(data)
                stream.close_stdin()
            except (ConnectionError, OSError):
                pass  # the command exited without reading all of its input

        async def collect() -> None:
            while not wrapped.flooded and (frame := await stream.read_frame()) is not None:
                wrapped.sink(frame)

        feeder = asyncio.create_task(feed()) if stdin is not None else None
        timed_out = False
        try:
            try:
                await asyncio.wait_for(collect(), self.limits.command_timeout_s if timeout is None else timeout)
            except TimeoutError:
                timed_out = True
            flooded = wrapped.flooded
            if timed_out or flooded:
                if wrapped.pid is not None:
                    await stream.drain_while(self.kill_tree(wrapped.pid), wrapped.sink)
                await stream.drain_to_end(wrapped.sink, KILL_GRACE_S)
        finally:
            if feeder:
                feeder.cancel()
            await stream.aclose()
        truncated = flooded
        exit_code = None if (timed_out or truncated) else await self._exit_code_when_done(exec_id)
        oom = exit_code == 137 and await self.new_oom_kills() > 0
        return ExecResult(
            exit_code=exit_code,
            stdout=wrapped.out.text(),
            stderr=wrapped.err.text(),
            duration_s=time.monotonic() - started,
            timed_out=timed_out,
            output_truncated=truncated,
            oom_killed=oom,
        )

    async def _exit_code_when_done(self, exec_id: str) -> int | None:
        # The stream can close a moment before the engine records the exit code.
        deadline = time.monotonic() + KILL_GRACE_S
        while (code := await self.exit_code_of(exec_id)) is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return code

    async def open_session(
        self, *, user: str | None = None, workdir: str | None = None, env: Mapping[str, str] | None = None
    ) -> BashSession:
        if self._main_shell_free and user is None and env is None:
            return await self._open_main_session(workdir)
        stream, exec_id = await self._attach(
            agent_side(["bash", "--noprofile", "--norc"], user), stdin=True, user=ROOT, workdir=workdir, env=env
        )
        return await BashSession.start(
            self,
            stream,
            exec_id,
            timeout_s=self.limits.command_timeout_s,
            cap=self.limits.output_cap_bytes,
            workdir=workdir,
        )

    async def _open_main_session(self, workdir: str | None) -> BashSession:
        """A session on the main process's shell: no exec (see main_shell.py). One at a time; the main shell is
        retired for good if a session could not hand it back clean."""
        if self._stopped:
            raise SandboxStoppedError(f"sandbox {self.name} was stopped")
        self._main_shell_free = False

        def release(clean: bool) -> None:
            self._main_shell_free = clean

        try:
            stream = await self._attach_main()
        except BaseException:
            release(True)
            raise
        session = MainShellSession(
            self, stream, timeout_s=self.limits.command_timeout_s, cap=self.limits.output_cap_bytes, release=release
        )
        return await session.set_up(workdir)

    async def write_file(self, path: str, data: bytes | str, *, mode: int = 0o644) -> None:
        if not path.startswith("/"):
            raise ValueError(f"write_file needs an absolute path, got {path!r}")
        payload = data.encode() if isinstance(data, str) else data
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(payload), mode, int(time.time())
            tar.addfile(info, io.BytesIO(payload))
        self._check_running()
        ok = await asyncio.to_thread(self._container.put_archive, "/", buf.getvalue())
        if not ok:
            raise SandboxError(f"could not write {path} in sandbox {self.name}")

    async def read_file(self, path: str, *, max_bytes: int | None = None) -> bytes:
        limit = self.limits.output_cap_bytes if max_bytes is None else max_bytes
        self._check_running()

        def fetch() -> bytes:
            try:
                chunks, _stat = self._container.get_archive(path)
            except docker.errors.NotFound as exc:
                raise FileNotFoundError(f"{path} (in sandbox {self.name})") from exc
            raw = bytearray()
            for chunk in chunks:  # a tar header is 512 bytes; stop reading soon after the cap
                raw += chunk
                if len(raw) > limit + 4096:
                    break
            with tarfile.open(fileobj=io.BytesIO(bytes(raw)), mode="r|") as tar:
                member = tar.next()
                if member is None or not member.isfile():
                    raise IsADirectoryError(f"{path} (in sandbox {self.name}) is not a regular file")
                handle = tar.extractfile(member)
                return handle.read(limit) if handle else b""

        return await asyncio.to_thread(fetch)

    def _layers(self) -> tuple[str, list[str]] | None:
        """The overlay2 upper layer and the image's layers, where this host can read them."""
        graph = self._container.attrs.get("GraphDriver") or {}
        data = graph.get("Data") or {}
        upper = data.get("UpperDir", "")
        if graph.get("Name") != "overlay2" or not upper or not os.access(upper, os.R_OK | os.X_OK):
            return None
        return upper, [d for d in (data.get("LowerDir") or "").split(":") if d]

    def _host_view(self) -> tuple[str, list[str], int]:
        """The upper layer, the image's layers and the main process's host PID; SandboxStoppedError once the
        container no longer runs, WitnessUnavailableError where this process cannot see it from the host."""
        layers = self._layers()
        init_pid = int((self._container.attrs.get("State") or {}).get("Pid") or 0)
        if not init_pid or not os.path.exists(f"/proc/{init_pid}/root"):  # read before the start, or since ended
            try:
                self._container.reload()
            except docker.errors.NotFound as exc:
                raise SandboxStoppedError(f"the container of sandbox {self.name} is gone") from exc
            state = self._container.attrs.get("State") or {}
            if not state.get("Running"):
                raise SandboxStoppedError(f"the container of sandbox {self.name} no longer runs")
            init_pid = int(state.get("Pid") or 0)
        if layers is None or not init_pid or not os.path.exists(f"/proc/{init_pid}/root"):
            raise WitnessUnavailableError(
                f"sandbox {self.name}: this process cannot see the container from the engine's host (overlay2 "
                "storage and root on the engine's own machine are needed to score checks that run inside it)"
            )
        return layers[0], layers[1], init_pid

    async def layer(self) -> LayerScan:
        """The whole overlay2 upper layer (layer_scan.py: a few system calls per entry) and the other mounts' entries
        (other_mounts.py), at most LAYER_LIMIT of each."""
        self._check_running()
        upper, lower, init_pid = await asyncio.to_thread(self._host_view)

        def scan() -> LayerScan:
            found = scan_upper(upper, lower, limit=LAYER_LIMIT)
            unwatched, flooded = mounted_entries(init_pid, limit=LAYER_LIMIT)
            return LayerScan(found.entries, found.flooded or flooded, unwatched)

        return await asyncio.to_thread(scan)

    async def image_files(self, paths: Sequence[str]) -> dict[str, str]:
        """From the image's layers where this host can read them, else from a container of the image that is
        created, asked through the engine's archive call, and removed without ever starting."""
        if layers := self._layers():
            return await asyncio.to_thread(_layer_files, layers[1], list(paths))
        return await asyncio.to_thread(self._archived_image_files, list(paths)) if paths else {}

    async def file_text(self, path: str, *, as_built: bool = False) -> str:
        upper, lower, _ = await asyncio.to_thread(self._host_view)
        return await asyncio.to_thread(layer_text, None if as_built else upper, lower, path)

    async def current_files(self, paths: Sequence[str]) -> dict[str, str]:
        upper, _, _ = await asyncio.to_thread(self._host_view)
        found = await asyncio.to_thread(lambda: {path: upper_digest(upper, path) for path in paths})
        return {path: digest for path, digest in found.items() if digest}

    async def resolve(self, path: str) -> str:
        _, _, init_pid = await asyncio.to_thread(self._host_view)
        return await asyncio.to_thread(resolve_in_root, f"/proc/{init_pid}/root", path)

    async def _main_shell_restarted(self, init_pid: int) -> None:
        """An idle main process starts a fresh shell a moment after a session's ended: the checks find the sandbox as
        AgentBench's idle one is (a bash waiting), not caught between two shells (a check that counts bash processes
        counted one fewer)."""
        if self._main_shell_free:
            await asyncio.to_thread(wait_for_child, init_pid, MAIN_SHELL_RESTART_S)

    @contextlib.asynccontextmanager
    async def witness_checks(self) -> AsyncIterator[CheckEvidence]:
        self._check_running()
        _, _, init_pid = await asyncio.to_thread(self._host_view)
        evidence = CheckEvidence({}, complete=False, why_incomplete="the checks did not end")
        await self._main_shell_restarted(init_pid)
        _, running = await asyncio.to_thread(stop_all, init_pid)
        witness = FileWitness(f"/proc/{init_pid}/root/", CHECK_ONLY_CAP)
        await asyncio.to_thread(witness.start)
        try:
            yield evidence
        finally:
            seen = await asyncio.to_thread(witness.stop)
            why = "; ".join(
                ([f"processes {', '.join(map(describe, running[:5]))} of the sandbox did not stop"] if running else [])
                + (["the kernel dropped open events"] if seen.overflowed else [])
            )
            evidence.opened, evidence.complete, evidence.why_incomplete = seen.opened, not why, why

    def _archived_digest(self, path: str, container_id: str | None = None) -> tuple[str, bool]:
        """What `path` holds, read through the engine's archive of it (a folder's content is not read); ("",
        False) where nothing is."""
        try:
            chunks, info = self._client.api.get_archive(container_id or self._container.id, path)
        except docker.errors.NotFound:
            return "", False
        mode = int(info.get("mode", 0))
        if mode & (1 << 31):  # Go's os.ModeDir
            chunks.close()
            return "dir", True
        if mode & (1 << 27):  # os.ModeSymlink
            chunks.close()
            return f"-> {info.get('linkTarget', '')}", False
        with tarfile.open(fileobj=_ChunkReader(chunks), mode="r|") as tar:
            member = tar.next()
            handle = tar.extractfile(member) if member is not None and member.isfile() else None
            if handle is None:
                return "special", False
            digest, left = hashlib.sha256(), MAX_DIGEST_BYTES
            while left > 0 and (chunk := handle.read(min(left, 1 << 20))):
                digest.update(chunk)
                left -= len(chunk)
            return f"{member.size}:{digest.hexdigest()}", False

    async def health(self) -> SandboxHealth:
        if self._stopped:
            return SandboxHealth.GONE
        try:
            await asyncio.to_thread(self._container.reload)
        except docker.errors.NotFound:
            return SandboxHealth.GONE
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise SandboxError(f"the engine did not answer about sandbox {self.name}: {exc}") from exc
        state = self._container.attrs.get("State", {})
        if state.get("Running"):
            return SandboxHealth.RUNNING
        if state.get("OOMKilled"):
            return SandboxHealth.OOM_KILLED
        if await exit_witness(self._client).ended_inside(self.id):
            return SandboxHealth.ENDED_INSIDE
        return SandboxHealth.GONE

    def _check_running(self) -> None:
        if self._stopped:
            raise SandboxStoppedError(f"sandbox {self.name} was stopped")

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True

        def remove() -> None:
            try:
                self._container.remove(force=True)
            except docker.errors.NotFound:
                pass
            OWNED.discard(self._container)

        await in_lane(REMOVALS, remove)

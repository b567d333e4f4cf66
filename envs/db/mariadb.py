"""One MariaDB server per run, in a container with no network; one database and one user per episode.

The server listens only on a unix socket in a host folder mounted into its container, so nothing is exposed
on any network. The folder's name carries its owner's pid and start time: a killed eval's folder is removed by the
next start (its container, labelled like every sandbox, by the reaper). `ensure_running()` restarts a server that
died under the run (episodes that were on it fail as environment errors and are retried on the new one).
Each episode gets its own database and its own user, granted that database alone: table names
that repeat across tasks never collide, and an agent cannot see or touch another episode's data.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pymysql

from cycleqd.envs.errors import EpisodeSetupError
from cycleqd.sandboxes.contract import Sandbox
from cycleqd.sandboxes.labels import process_start_ticks
from cycleqd.sandboxes.limits import SandboxLimits

if TYPE_CHECKING:
    from cycleqd.envs.registry import SandboxStarter

SOCKET = "mysqld.sock"
SOCKET_ROOT = Path("/tmp")  # a short path: unix socket paths are limited to ~108 bytes
_FOLDER = re.compile(r"cqd-db-(?P<pid>\d+)-(?P<start>\d+)-")
STATEMENT_TIMEOUT_S = 30  # a runaway query (a cross join) is cut by the server
_SERVER_SCRIPT = (
    "mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null 2>&1 && "
    "chown mysql /run/mysqld && exec mariadbd --user=mysql --datadir=/var/lib/mysql "
    f"--socket=/run/mysqld/{SOCKET} --skip-networking --max-statement-time={STATEMENT_TIMEOUT_S} "
    # MySQL compares TEXT with numbers as doubles and only warns on truncation; MariaDB's strict mode turns that
    # into an error inside UPDATE. DBBench's answers were made on MySQL, so comparisons must only warn.
    "--sql-mode=NO_ENGINE_SUBSTITUTION"
)


@dataclass(frozen=True)
class EpisodeDatabase:
    database: str
    user: str
    password: str


def quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class MariaDBServer:
    def __init__(self, start_sandbox: SandboxStarter, *, start_timeout_s: float = 60.0) -> None:
        """`start_sandbox` starts the server's container (the runtime's backend, labelled with its run)."""
        self.start_sandbox = start_sandbox
        self.start_timeout_s = start_timeout_s
        self._container: Sandbox | None = None
        self._socket_dir: Path | None = None
        self._restart_lock = asyncio.Lock()
        self.restarts = 0

    @property
    def socket_path(self) -> str:
        assert self._socket_dir is not None, "the server is not started"
        return str(self._socket_dir / SOCKET)

    async def start(self) -> None:
        remove_orphan_folders()
        pid = os.getpid()
        self._socket_dir = Path(tempfile.mkdtemp(prefix=f"cqd-db-{pid}-{process_start_ticks(pid)}-", dir=SOCKET_ROOT))
        self._socket_dir.chmod(0o777)
        self._container = await self.start_sandbox(
            "mariadb",
            # No sandbox's per-file cap on the shared server: a table one episode grew past it would make mysqld
            # fail for every episode (an environment error, retried: the attacker's failure "not counted").
            limits=SandboxLimits(pids=2048, memory_bytes=2 << 30, disk_bytes=1 << 40),
            command=["bash", "-c", _SERVER_SCRIPT],
            mounts={str(self._socket_dir): "/run/mysqld"},
        )
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                await asyncio.to_thread(self._admin_query, "SELECT 1")
                return
            except pymysql.err.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise EpisodeSetupError(
                        f"MariaDB did not come up within {self.start_timeout_s:.0f} s: {exc}"
                    ) from exc
                await asyncio.sleep(0.1)

    async def ensure_running(self) -> None:
        """Restart the server if it no longer answers (killed, or its container gone)."""
        async with self._restart_lock:
            try:
                await asyncio.to_thread(self._admin_query, "SELECT 1")
                return
            except pymysql.MySQLError:
                pass
            await self.stop()
            await self.start()
            self.restarts += 1

    async def stop(self) -> None:
        if self._container is not None:
            await self._container.stop()
            self._container = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    async def __aenter__(self) -> MariaDBServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- connections ---------------------------------------------------------------------------------------------

    def connect(self, user: str = "root", password: str = "", database: str | None = None) -> pymysql.Connection:
        # As root, MariaDB authenticates the unix socket's peer: our uid 0 is its root.
        return pymysql.connect(
            unix_socket=self.socket_path, user=user, password=password, database=database, autocommit=True,
            connect_timeout=10,
        )  # fmt: skip

    def _admin_query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

    # -- per-episode databases ----------------------------------------------------------------------------------

    async def create_episode_database(self) -> EpisodeDatabase:
        token = secrets.token_hex(6)
        episode = EpisodeDatabase(f"ep_{token}", f"u_{token}", secrets.token_urlsafe(16))

        def create() -> None:
            with self.connect() as connection, connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {quote_identifier(episode.database)}")
                cursor.execute("CREATE USER %s@'localhost' IDENTIFIED BY %s", (episode.user, episode.password))
                cursor.execute(
                    f"GRANT ALL PRIVILEGES ON {quote_identifier(episode.database)}.* TO %s@'localhost'", (episode.user,)
                )

        await asyncio.to_thread(create)
        return episode

    async def drop_episode_database(self, episode: EpisodeDatabase) -> None:
        def drop() -> None:
            with self.connect() as connection, connection.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS {quote_identifier(episode.database)}")
                cursor.execute("DROP USER IF EXISTS %s@'localhost'", (episode.user,))

        await asyncio.to_thread(drop)


def remove_orphan_folders(root: Path = SOCKET_ROOT) -> None:
    """Socket folders whose owning process is gone (a killed eval's)."""
    for folder in root.glob("cqd-db-*"):
        owner = _FOLDER.match(folder.name)
        if owner and process_start_ticks(int(owner["pid"])) != owner["start"]:
            shutil.rmtree(folder, ignore_errors=True)

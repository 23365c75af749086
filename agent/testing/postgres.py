"""A throwaway PostgreSQL server for tests: ``with TemporaryPostgres() as pg: pg.url``.

It runs the machine's own server binaries (``initdb``, ``pg_ctl``) on a new cluster in a
temporary directory, listening only on 127.0.0.1 at a free port (and a private Unix socket),
with fsync off (a test cluster need not survive a power cut). Everything is removed on exit.
PostgreSQL refuses to run as root, so when the tests run as root the cluster is owned by and
run as the ``postgres`` system user (Debian's packages create it).

``find_binaries()`` returns None where no server is installed, so tests can skip with that
reason instead of failing.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

BIN_ENV = "RECAGENT_PG_BIN"


def find_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: ``$RECAGENT_PG_BIN``, Debian's layout, or PATH."""
    candidates = [os.environ.get(BIN_ENV, "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    found = shutil.which("pg_ctl")
    candidates.append(str(Path(found).parent) if found else "")
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TemporaryPostgres:
    """A new PostgreSQL cluster, started on enter and deleted on exit (see module docstring)."""

    def __init__(self, database: str = "recagent") -> None:
        binaries = find_binaries()
        if binaries is None:
            raise RuntimeError(f"no PostgreSQL server binaries (initdb, pg_ctl) found; set {BIN_ENV}")
        self.bin = binaries
        self.database = database
        self.port = _free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="recagent-pg-"))
        self.data = self._dir / "data"
        self.socket_dir = self._dir / "socket"
        self._as_root = os.geteuid() == 0
        self.user = "postgres" if self._as_root else "recagent"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str | Path) -> None:
        command = [str(a) for a in args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed: {(result.stderr or result.stdout).strip()[-500:]}"
            )

    def start(self) -> TemporaryPostgres:
        self.socket_dir.mkdir(parents=True)
        if self._as_root:
            shutil.chown(self._dir, "postgres")
            shutil.chown(self.socket_dir, "postgres")
        self._run(
            self.bin / "initdb", "-D", self.data, "-U", self.user, "-A", "trust", "-E", "UTF8", "--no-sync"
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        self._run(
            self.bin / "pg_ctl", "-D", self.data, "-o", options, "-l", self._dir / "server.log", "-w", "start"
        )
        self._run(
            self.bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database
        )
        return self

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> TemporaryPostgres:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

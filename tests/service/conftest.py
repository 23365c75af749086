"""Fixtures of the service tests: stores on both backends, and the service running for real.

``live_service`` starts ``recagent serve`` as its own process on a free loopback port (real
HTTP, uvicorn, signals), answering with the stand-in model on another loopback server, and
stops it at the end. PostgreSQL comes from ``agent.testing.postgres`` (one throwaway cluster
per test session, one fresh database per test); its tests skip only where no server binaries
exist.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from agent.service.keys import create_key
from agent.service.storage import ServiceStore
from agent.testing import standin_chat
from agent.testing.loopback import LoopbackServer
from agent.testing.postgres import TemporaryPostgres, find_binaries

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "fixtures" / "sample"
RECAGENT = Path(sys.executable).with_name("recagent")
NO_POSTGRES = "no PostgreSQL server binaries (initdb, pg_ctl) on this machine"


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[TemporaryPostgres]:
    if find_binaries() is None:
        pytest.skip(NO_POSTGRES)
    with TemporaryPostgres() as cluster:
        yield cluster


def fresh_database(cluster: TemporaryPostgres) -> str:
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return cluster.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'service.sqlite'}"
    return fresh_database(request.getfixturevalue("postgres_cluster"))


@pytest.fixture
def standin_model() -> Iterator[LoopbackServer]:
    with LoopbackServer(responder=standin_chat.respond) as server:
        yield server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveService:
    """A running ``recagent serve`` process and what a test needs to talk to it."""

    url: str
    store_url: str
    process: subprocess.Popen[bytes]
    log: Path
    keys: dict[str, str] = field(default_factory=dict)

    def client(self, key: str | None = None, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0, **kwargs)  # type: ignore[arg-type]

    def kill(self, sig: int = signal.SIGKILL) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=60)


def start_service(
    store_url: str,
    log: Path,
    *,
    base_url: str | None,
    items: Path | None = SAMPLE / "items.csv",
    events: Path | None = SAMPLE / "events.csv",
    tenant: str = "shop",
    extra: tuple[str, ...] = (),
) -> LiveService:
    port = free_port()
    command = [str(RECAGENT), "serve", "--store", store_url, "--port", str(port), "--tenant", tenant]
    if items is not None:
        command += ["--items", str(items)]
    if events is not None:
        command += ["--events", str(events)]
    command += ["--base-url", base_url] if base_url else ["--backend", "fallback"]
    env = {
        **os.environ,
        "OPENAI_API_KEY": "test-key",
        "RECAGENT_PSEUDONYM_KEY": "service-tests-pseudonym-key-0123",
    }
    with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen([*command, *extra], stdout=handle, stderr=handle, env=env)
    service = LiveService(f"http://127.0.0.1:{port}", store_url, process, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"recagent serve exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{service.url}/readyz", timeout=1.0).status_code == 200:
                return service
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"recagent serve did not become ready: {log.read_text()[-2000:]}")


def make_keys(store_url: str, spec: dict[str, tuple[str, tuple[str, ...]]]) -> dict[str, str]:
    """Keys by name: ``{"a_rw": ("tenant-a", ("read", "write"))}``."""
    store = ServiceStore.open(store_url)
    try:
        return {name: create_key(store, tenant, scopes, name) for name, (tenant, scopes) in spec.items()}
    finally:
        store.close()


@contextmanager
def sample_service(folder: Path, base_url: str) -> Iterator[LiveService]:
    """``recagent serve`` on SQLite with the sample data in tenant ``shop``, read/write (``rw``)
    and read-only (``ro``) keys, answering with the model at ``base_url``; stopped on exit."""
    store_url = f"sqlite:///{folder / 'service.sqlite'}"
    keys = make_keys(store_url, {"rw": ("shop", ("read", "write")), "ro": ("shop", ("read",))})
    service = start_service(store_url, folder / "service.log", base_url=base_url)
    service.keys = keys
    try:
        yield service
    finally:
        if service.process.poll() is None:
            service.kill(signal.SIGTERM)


@pytest.fixture
def live_service(tmp_path: Path, standin_model: LoopbackServer) -> Iterator[LiveService]:
    """A fresh ``sample_service`` for one test (its process-wide metrics start at zero)."""
    with sample_service(tmp_path, standin_model.base_url) as service:
        yield service


@pytest.fixture(scope="module")
def shared_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """One ``sample_service`` for a module's tests that use separate users and don't count
    process-wide metrics (starting a service costs seconds)."""
    with (
        LoopbackServer(responder=standin_chat.respond) as model,
        sample_service(tmp_path_factory.mktemp("shared-service"), model.base_url) as service,
    ):
        yield service


ServiceFactory = Callable[..., LiveService]


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[ServiceFactory]:
    """Start more services (stopped at the end): ``service_factory(store_url, base_url=...)``."""
    started: list[LiveService] = []

    def start(store_url: str, **kwargs: object) -> LiveService:
        log = tmp_path / f"service-{len(started)}.log"
        service = start_service(store_url, log, **kwargs)  # type: ignore[arg-type]
        started.append(service)
        return service

    yield start
    for service in started:
        if service.process.poll() is None:
            service.kill(signal.SIGTERM)

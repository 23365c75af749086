"""Acknowledged means stored: kill -9 the server in the middle of a stream of feedback POSTs,
restart it on the same store, retry everything with the same Idempotency-Keys; every 2xx
feedback is there exactly once, and no retry is counted twice. Also: SIGTERM lets an
in-flight request finish (graceful shutdown)."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from agent.service.storage import ServiceStore
from tests.service.conftest import SAMPLE, make_keys

WRITERS = 4
REQUESTS = 160
KILL_AFTER_ACKS = 40


def _items() -> list[str]:
    return [line.split(",")[0] for line in (SAMPLE / "items.csv").read_text().splitlines()[1:]]


def test_kill_9_mid_stream_loses_no_acknowledged_feedback_and_retries_count_once(
    tmp_path: Path, service_factory: Any
) -> None:
    store_url = f"sqlite:///{tmp_path / 'durable.sqlite'}"
    key = make_keys(store_url, {"w": ("shop", ("read", "write"))})["w"]
    service = service_factory(store_url, base_url=None, extra=("--rate-limit", "100000"))
    items = _items()
    requests = [
        (f"stream-{n:05d}", {"item_id": items[n % len(items)], "signal": "click"}) for n in range(REQUESTS)
    ]
    acked: dict[str, str] = {}  # idempotency key -> feedback id
    lock = threading.Lock()
    killed = threading.Event()

    def post(request: tuple[str, dict[str, Any]], url: str) -> None:
        idem, body = request
        try:
            response = httpx.post(
                f"{url}/v1/users/u001/feedback",
                json=body,
                headers={"Authorization": f"Bearer {key}", "Idempotency-Key": idem},
                timeout=30,
            )
        except httpx.TransportError:
            return  # not acknowledged: the client will retry it
        if response.status_code == 200:
            with lock:
                acked[idem] = response.json()["feedback"]["feedback_id"]
                if len(acked) >= KILL_AFTER_ACKS and not killed.is_set():
                    killed.set()
                    service.kill(signal.SIGKILL)

    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(lambda r: post(r, service.url), requests))
    assert killed.is_set() and KILL_AFTER_ACKS <= len(acked) < REQUESTS
    first_round = dict(acked)

    restarted = service_factory(
        store_url, base_url=None, items=None, events=None, extra=("--rate-limit", "100000")
    )
    replies: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=restarted.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        for idem, body in requests:  # the client retries everything, acknowledged or not
            response = http.post("/v1/users/u001/feedback", json=body, headers={"Idempotency-Key": idem})
            assert response.status_code == 200, response.text
            replies[idem] = response.json()

    store = ServiceStore.open(store_url)
    try:
        stored = store.profiles("shop").feedback("u001")
    finally:
        store.close()
    stored_ids = [f.feedback_id for f in stored]
    assert len(stored_ids) == len(set(stored_ids)) == REQUESTS  # each request exactly once
    for idem, feedback_id in first_round.items():
        assert feedback_id in stored_ids  # every acknowledged write survived the kill
        assert replies[idem]["replayed"] is True and replies[idem]["feedback"]["feedback_id"] == feedback_id


def test_sigterm_finishes_the_request_in_flight(tmp_path: Path, service_factory: Any) -> None:
    from agent.testing.loopback import LoopbackServer

    store_url = f"sqlite:///{tmp_path / 'graceful.sqlite'}"
    key = make_keys(store_url, {"r": ("shop", ("read",))})["r"]
    gate = threading.Event()

    def slow_model(body: dict[str, Any]) -> Any:
        from agent.testing import standin_chat

        gate.wait(timeout=30)  # hold the model call until SIGTERM has been sent
        return standin_chat.respond(body)

    with LoopbackServer(responder=slow_model) as model:
        service = service_factory(store_url, base_url=model.base_url)
        result: dict[str, Any] = {}

        def ask() -> None:
            result["response"] = httpx.get(
                f"{service.url}/v1/users/u001/recommendations",
                params={"k": 3},
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
            )

        asker = threading.Thread(target=ask)
        asker.start()
        while not model.requests:  # the request has reached the model: it is in flight
            threading.Event().wait(0.02)
        service.process.send_signal(signal.SIGTERM)
        gate.set()
        asker.join(timeout=60)
        code = service.process.wait(timeout=60)
    assert result["response"].status_code == 200 and result["response"].json()["items"][0]["source"] == "llm"
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its graceful shutdown
    assert "Finished server process" in service.log.read_text()

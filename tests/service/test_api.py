"""The REST API over real HTTP against a running ``recagent serve`` (uvicorn, its own process)."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import httpx

from agent.data.behaviors import SIGNALS
from agent.service import api_models
from tests.service.conftest import LiveService

ROOT = Path(__file__).resolve().parents[2]


def _ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def _sse(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.text.splitlines():
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and name:
            events.append((name, json.loads(line.split(":", 1)[1])))
    return events


def test_ingested_events_change_the_next_recommendations(shared_service: LiveService) -> None:
    with shared_service.client(shared_service.keys["rw"]) as http:
        before = http.get("/v1/users/u002/recommendations", params={"k": 5})
        assert before.json()["items"][0]["source"] == "llm"
        # u002 buys a run of items unlike their history: the next list must reflect them
        coffee = http.get("/v1/users/nobody/recommendations", params={"k": 5, "query": "coffee grinder"})
        bought = _ids(coffee)[:3]
        posted = http.post(
            "/v1/events",
            json={"events": [{"user_id": "u002", "item_id": i, "behavior": "purchase"} for i in bought]},
            headers={"Idempotency-Key": "ingest-0001"},
        )
        assert posted.json() == {"accepted": 3, "replayed": False}
        after = http.get("/v1/users/u002/recommendations", params={"k": 5})
    assert _ids(after) != _ids(before)
    assert not set(bought) & set(_ids(after))  # just bought: now consumed, not recommended again


def test_a_cold_start_user_gets_popular_or_matching_items_marked_as_such(shared_service: LiveService) -> None:
    with shared_service.client(shared_service.keys["ro"]) as http:
        popular = http.get("/v1/users/brand-new-user/recommendations", params={"k": 4})
        matched = http.get(
            "/v1/users/brand-new-user/recommendations", params={"k": 4, "query": "coffee grinder"}
        )
    assert len(_ids(popular)) == 4 and {i["source"] for i in popular.json()["items"]} == {"cold_start"}
    assert "cold start" in popular.json()["fallback_reason"]
    assert all("grinder" in i["title"].lower() for i in matched.json()["items"][:2])


def test_feedback_then_refinement_adds_a_profile_version_with_its_diff(shared_service: LiveService) -> None:
    with shared_service.client(shared_service.keys["rw"]) as http:
        built = http.post("/v1/users/u001/profile")
        assert built.status_code == 200, built.text
        recs = http.get("/v1/users/u001/recommendations", params={"k": 5}).json()
        disliked = recs["items"][0]["item_id"]
        reactions = [
            (disliked, "dislike"),
            (recs["items"][1]["item_id"], "like"),
            (recs["items"][2]["item_id"], "like"),
        ]
        for n, (item, signal) in enumerate(reactions):
            response = http.post(
                "/v1/users/u001/feedback",
                json={"item_id": item, "signal": signal, "refine": n == len(reactions) - 1},
                headers={"Idempotency-Key": f"fb-u001-{n:04d}"},
            )
            assert response.status_code == 200, response.text
        assert disliked in response.json()["blocked_items"]
        history = http.get("/v1/users/u001/profile/history").json()
        diff = http.get("/v1/users/u001/profile/diff").json()
        again = http.get("/v1/users/u001/recommendations", params={"k": 5})
    assert [v["version"] for v in history["versions"]] == [1, 2]
    assert (
        history["versions"][1]["producer"] == "refine" and disliked in history["versions"][1]["blocked_items"]
    )
    assert diff["from_version"] == 1 and diff["to_version"] == 2 and diff["changes"]
    assert disliked not in _ids(again)


def test_a_chat_turn_streams_text_then_recommendations_and_keeps_its_session(
    shared_service: LiveService,
) -> None:
    with shared_service.client(shared_service.keys["ro"]) as http:
        first = http.post("/v1/chat", json={"user_id": "u001", "message": "I'm looking for a board game"})
        assert first.status_code == 200 and first.headers["content-type"].startswith("text/event-stream")
        events = _sse(first)
        session = events[0][1]["session_id"]
        second = http.post(
            "/v1/chat", json={"user_id": "u001", "message": "something cheaper", "session_id": session}
        )
        stolen = http.post("/v1/chat", json={"user_id": "u002", "message": "hi", "session_id": session})
    names = [name for name, _ in events]
    assert names[0] == "session" and names[-2:] == ["recommendations", "done"] and "text" in names
    text = "".join(data["delta"] for name, data in events if name == "text")
    titles = [i["title"] for i in events[-2][1]["items"]]
    assert titles and titles[0] in text  # the streamed reply names catalog items it recommends
    assert _sse(second)[0][1]["session_id"] == session and _sse(second)[-1][0] == "done"
    assert stolen.status_code == 409 and stolen.json()["error"]["type"] == "session_user_mismatch"


def test_items_become_recommendable_without_a_restart(shared_service: LiveService) -> None:
    item = {
        "item_id": "SKU-NEW-1",
        "title": "Zephyrine Quasar Telescope",
        "category": "Optics",
        "price": 99.0,
    }
    with shared_service.client(shared_service.keys["rw"]) as http:
        assert http.put("/v1/items", json={"items": [item]}).status_code == 200
        found = http.get("/v1/users/somebody/recommendations", params={"k": 3, "query": "quasar telescope"})
        fetched = http.get("/v1/items/SKU-NEW-1")
    assert _ids(found)[0] == "SKU-NEW-1" and fetched.json()["title"] == item["title"]


def test_errors_have_one_typed_shape(shared_service: LiveService) -> None:
    rw, ro = shared_service.keys["rw"], shared_service.keys["ro"]
    with (
        shared_service.client() as anonymous,
        shared_service.client(rw) as http,
        shared_service.client(ro) as reader,
    ):
        cases = {
            "no key": (anonymous.get("/v1/users/u001/recommendations"), 401, "unauthenticated"),
            "bad key": (
                anonymous.get(
                    "/v1/users/u001/recommendations",
                    headers={"Authorization": "Bearer rk_00000000_xxxxxxxxxxxxxxxxxxxxxxxx"},
                ),
                401,
                "unauthenticated",
            ),
            "read-only writes": (
                reader.post(
                    "/v1/events",
                    json={"events": [{"user_id": "u", "item_id": "SKU-10001", "behavior": "view"}]},
                ),
                403,
                "forbidden",
            ),
            "k too large": (
                http.get("/v1/users/u001/recommendations", params={"k": 100000}),
                422,
                "invalid_request",
            ),
            "malformed json": (
                http.post("/v1/events", content=b"{not json", headers={"content-type": "application/json"}),
                422,
                "invalid_request",
            ),
            "unknown item": (
                http.post(
                    "/v1/events", json={"events": [{"user_id": "u", "item_id": "nope", "behavior": "view"}]}
                ),
                422,
                "unknown_item",
            ),
            "naive time": (
                http.post(
                    "/v1/events",
                    json={
                        "events": [
                            {
                                "user_id": "u",
                                "item_id": "SKU-10001",
                                "behavior": "view",
                                "timestamp": "2026-01-01T00:00:00",
                            }
                        ]
                    },
                ),
                422,
                "invalid_request",
            ),
            "batch too big": (
                http.post(
                    "/v1/events",
                    json={"events": [{"user_id": "u", "item_id": "SKU-10001", "behavior": "view"}] * 1001},
                ),
                422,
                "invalid_request",
            ),
            "body too large": (
                http.post(
                    "/v1/events", content=b"x" * 2_000_000, headers={"content-type": "application/json"}
                ),
                413,
                "body_too_large",
            ),
            "no profile": (http.get("/v1/users/u050/profile"), 404, "profile_not_found"),
            "no route": (http.get("/v1/nothing"), 404, "not_found"),
            "bad signal": (
                http.post("/v1/users/u001/feedback", json={"item_id": "SKU-10001", "signal": "love"}),
                422,
                "invalid_request",
            ),
            "unknown feedback item": (
                http.post("/v1/users/u001/feedback", json={"item_id": "SKU-404", "signal": "like"}),
                404,
                "unknown_item",
            ),
            "price range": (
                http.get("/v1/users/u001/recommendations", params={"price_min": 50, "price_max": 10}),
                422,
                "invalid_request",
            ),
        }
    for name, (response, status, kind) in cases.items():
        assert response.status_code == status, (name, response.status_code, response.text)
        body = response.json()
        assert set(body) == {"error"} and body["error"]["type"] == kind, (name, body)
        assert body["error"]["request_id"] == response.headers["x-request-id"], name


def test_a_retried_post_with_the_same_key_is_counted_once(shared_service: LiveService) -> None:
    body = {"events": [{"user_id": "u010", "item_id": "SKU-10001", "behavior": "view"}]}
    with shared_service.client(shared_service.keys["rw"]) as http:
        before = http.get("/v1/stats").json()["events"]
        answers = [
            http.post("/v1/events", json=body, headers={"Idempotency-Key": "same-key-123"}) for _ in range(3)
        ]
        other = http.post(
            "/v1/events", json={"events": body["events"] * 2}, headers={"Idempotency-Key": "same-key-123"}
        )
        after = http.get("/v1/stats").json()["events"]
    assert [a.json()["replayed"] for a in answers] == [False, True, True]
    assert after == before + 1
    assert other.status_code == 409 and other.json()["error"]["type"] == "idempotency_conflict"


def test_rate_limits_answer_429_with_retry_after(tmp_path: Path, service_factory: typing.Any) -> None:
    from tests.service.conftest import make_keys

    store_url = f"sqlite:///{tmp_path / 'limited.sqlite'}"
    key = make_keys(store_url, {"k": ("shop", ("read",))})["k"]
    service = service_factory(store_url, base_url=None, extra=("--rate-limit", "0.5"))
    with service.client(key) as http:
        statuses = [http.get("/v1/stats").status_code for _ in range(45)]  # burst is 40
        limited = http.get("/v1/stats")
    assert statuses[:40] == [200] * 40 and 429 in statuses[40:]
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["type"] == "rate_limited"


def test_health_readiness_and_metrics(live_service: LiveService) -> None:
    with live_service.client(live_service.keys["ro"]) as http:
        http.get("/v1/users/u001/recommendations", params={"k": 3})
        http.get("/v1/users/stranger/recommendations", params={"k": 3})
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json()["status"] == "ready"
        text = http.get("/metrics").text
    for name in (
        'recagent_http_requests_total{method="GET",route="/v1/users/{user_id}/recommendations",status="200"} 2.0',
        'recagent_recommendations_total{mode="model"} 1.0',
        'recagent_recommendations_total{mode="cold_start"} 1.0',
        "recagent_model_calls_total 1.0",
        'recagent_model_tokens_total{kind="prompt"}',
        "recagent_model_cost_usd_total",
        'recagent_grounding_rate_count{kind="invented"} 1.0',
        "recagent_data_rebuild_seconds_count 1.0",  # the tenant's data, read once at the first request
    ):
        assert name in text, name
    assert "u001" not in text and "stranger" not in text


def test_the_dashboard_has_the_tenants_counts_and_this_processs_metrics(live_service: LiveService) -> None:
    with live_service.client(live_service.keys["ro"]) as http:
        empty = http.get("/v1/dashboard").json()
        http.get("/v1/users/u001/recommendations", params={"k": 3})
        http.get("/v1/users/stranger/recommendations", params={"k": 3})
        stats = http.get("/v1/stats").json()
        after = http.get("/v1/dashboard").json()
        text = http.get("/metrics").text
    assert empty["process"]["fallback_rate"] is None and empty["process"]["grounding"]["invented"] is None
    assert after["tenant"] == "shop"
    assert after["counts"] == {k: stats[k] for k in ("users", "items", "events", "feedback")}
    process = after["process"]
    # the numbers /metrics exposes, read back: one model list, one cold-start list
    assert process["lists_by_mode"] == {"model": 1, "cold_start": 1} and process["lists_served"] == 2
    assert process["model_calls"] == 1 and process["fallback_rate"] == 0.0
    assert f"recagent_model_calls_total {process['model_calls']}.0" in text
    assert process["prompt_tokens"] > 0 and process["cost_usd"] > 0
    assert process["grounding"]["invented"] is not None and 0 <= process["grounding"]["invented"] <= 1
    assert process["requests"] >= empty["process"]["requests"] + 4
    assert process["requests_last_minute"] >= empty["process"]["requests_last_minute"] + 4
    assert process["server_errors"] == 0


def test_access_logs_are_json_with_request_ids_and_no_raw_ids_or_keys(shared_service: LiveService) -> None:
    key = shared_service.keys["rw"]
    with shared_service.client(key) as http:
        response = http.get(
            "/v1/users/u001/recommendations", params={"k": 2}, headers={"X-Request-ID": "trace-abc-123"}
        )
    assert response.headers["x-request-id"] == "trace-abc-123"
    lines = [json.loads(line) for line in shared_service.log.read_text().splitlines() if line.startswith("{")]
    access = [
        entry
        for entry in lines
        if entry.get("logger") == "recagent.access" and entry["request_id"] == "trace-abc-123"
    ]
    assert (
        access and access[0]["route"] == "/v1/users/{user_id}/recommendations" and access[0]["status"] == 200
    )
    assert access[0]["user"].startswith("p_")
    raw = shared_service.log.read_text()
    assert key not in raw and "u001" not in raw


def test_the_committed_openapi_document_is_the_served_one(shared_service: LiveService) -> None:
    served = httpx.get(f"{shared_service.url}/openapi.json").json()
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert served == committed, "docs/openapi.json is stale: run `python scripts/export_openapi.py`"
    assert set(typing.get_args(api_models.Signal)) == set(SIGNALS)

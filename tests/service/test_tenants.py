"""Tenant isolation: every endpoint, tried with another tenant's key, finds nothing of the first.

Two tenants hold the same user ids and item ids with different data. Tenant A gets a profile,
feedback, a chat session and served recommendations; then every route of the OpenAPI
document is called with tenant B's key and every answer is searched for anything only A has.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.service.conftest import SAMPLE, make_keys

SECRET_TITLE = "Aardwolf Secret Prototype Kettle"


def _write_catalog(path: Path, title_of_first: str) -> Path:
    lines = (SAMPLE / "items.csv").read_text().splitlines()
    header, first, rest = lines[0], lines[1], lines[2:]
    columns = header.split(",")
    cells = first.split(",")
    cells[columns.index("title")] = title_of_first
    path.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    return path


def test_no_endpoint_leaks_across_tenants_and_read_keys_cannot_write(
    tmp_path: Path, service_factory: Any, standin_model: Any
) -> None:
    store_url = f"sqlite:///{tmp_path / 'tenants.sqlite'}"
    keys = make_keys(
        store_url,
        {
            "a": ("tenant-a", ("read", "write")),
            "b": ("tenant-b", ("read", "write")),
            "b_read": ("tenant-b", ("read",)),
        },
    )
    secret_items = _write_catalog(tmp_path / "a_items.csv", SECRET_TITLE)
    service = service_factory(
        store_url,
        base_url=standin_model.base_url,
        items=secret_items,
        events=SAMPLE / "events.csv",
        tenant="tenant-a",
    )
    first_item = (SAMPLE / "items.csv").read_text().splitlines()[1].split(",")[0]
    with service.client(keys["a"]) as a:
        assert a.post("/v1/users/u001/profile").status_code == 200
        recs = a.get("/v1/users/u001/recommendations", params={"k": 5}).json()
        feedback = a.post(
            "/v1/users/u001/feedback", json={"item_id": recs["items"][0]["item_id"], "signal": "dislike"}
        )
        assert feedback.status_code == 200
        chat = a.post("/v1/chat", json={"user_id": "u001", "message": "a board game please"})
        session = json.loads(chat.text.split("data:", 1)[1].split("\n", 1)[0])["session_id"]
        a_stats = a.get("/v1/stats").json()
    assert a_stats["items"] == 300 and a_stats["users"] > 0

    secrets = {
        SECRET_TITLE,
        recs["recommendation_id"],
        feedback.json()["feedback"]["feedback_id"],
        session,
    }
    document = httpx.get(f"{service.url}/openapi.json").json()
    answers: list[tuple[str, str, httpx.Response]] = []
    with service.client(keys["b"]) as b:
        for path, operations in document["paths"].items():
            if path in ("/healthz", "/readyz", "/metrics"):
                continue
            concrete = path.replace("{user_id}", "u001").replace("{item_id}", first_item)
            for method in operations:
                body = _body_for(path, method, session, recs["items"][1]["item_id"])
                params = {"k": 5} if "recommendations" in path else None
                answers.append((method, path, b.request(method.upper(), concrete, json=body, params=params)))
        b_stats = b.get("/v1/stats").json()
    leaks = [  # a secret in an answer that B did not itself send in the request
        (method, path, secret)
        for method, path, response in answers
        for secret in secrets
        if secret in response.text and secret not in (response.request.content or b"").decode()
    ]
    assert leaks == []
    assert len(answers) >= 12
    # tenant B sees only its own world: at most the one item it wrote, no events of A's users
    assert b_stats["items"] <= 1 and b_stats["users"] == 0 and b_stats["events"] == 0
    statuses = {(m, p): r.status_code for m, p, r in answers}
    assert statuses[("get", "/v1/users/{user_id}/profile")] == 404
    assert statuses[("get", "/v1/items/{item_id}")] == 404
    assert all(s < 500 for s in statuses.values()), statuses

    # a read-only key of B cannot write anything
    with service.client(keys["b_read"]) as reader:
        writes = [
            reader.post(
                "/v1/events", json={"events": [{"user_id": "x", "item_id": first_item, "behavior": "view"}]}
            ),
            reader.put("/v1/items", json={"items": [{"item_id": "z", "title": "Z"}]}),
            reader.post("/v1/users/u001/feedback", json={"item_id": first_item, "signal": "like"}),
            reader.post("/v1/users/u001/profile"),
        ]
    assert [w.status_code for w in writes] == [403] * 4
    # and A's data is untouched by everything B tried
    with service.client(keys["a"]) as a:
        after = a.get("/v1/stats").json()
    assert after["items"] == a_stats["items"] and after["feedback"] == a_stats["feedback"]


def _body_for(path: str, method: str, session: str, item_id: str) -> dict[str, Any] | None:
    if method == "get":
        return None
    if path == "/v1/events":
        return {"events": [{"user_id": "u001", "item_id": item_id, "behavior": "view"}]}
    if path == "/v1/items":
        return {"items": [{"item_id": "b-only", "title": "B's own item"}]}
    if path.endswith("/feedback"):
        return {"item_id": item_id, "signal": "like"}
    if path.endswith("/content"):
        return {"item_id": item_id, "kind": "description"}
    if path == "/v1/chat":
        return {"user_id": "u001", "message": "continue", "session_id": session}
    return None

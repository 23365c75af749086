"""Two service processes on one PostgreSQL database serve consistent data (a real server)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.service.conftest import fresh_database, make_keys


def test_two_instances_share_feedback_events_and_items_without_losing_updates(
    postgres_cluster: Any, service_factory: Any
) -> None:
    store_url = fresh_database(postgres_cluster)
    key = make_keys(store_url, {"w": ("shop", ("read", "write"))})["w"]
    one = service_factory(store_url, base_url=None, extra=("--rate-limit", "100000"))
    two = service_factory(store_url, base_url=None, items=None, events=None, extra=("--rate-limit", "100000"))
    headers = {"Authorization": f"Bearer {key}"}
    with (
        httpx.Client(base_url=one.url, headers=headers, timeout=30) as a,
        httpx.Client(base_url=two.url, headers=headers, timeout=30) as b,
    ):
        # what one instance writes, the other reads at once
        shown = a.get("/v1/users/u003/recommendations", params={"k": 5}).json()["items"]
        disliked = shown[0]["item_id"]
        assert (
            a.post("/v1/users/u003/feedback", json={"item_id": disliked, "signal": "dislike"}).status_code
            == 200
        )
        assert disliked not in [
            i["item_id"] for i in b.get("/v1/users/u003/recommendations", params={"k": 5}).json()["items"]
        ]
        b.put("/v1/items", json={"items": [{"item_id": "SKU-SHARED", "title": "Orrery Brass Globe Lamp"}]})
        assert a.get("/v1/items/SKU-SHARED").json()["title"] == "Orrery Brass Globe Lamp"

        # concurrent feedback through both instances: none lost, none doubled
        items = [
            i["item_id"]
            for i in a.get("/v1/users/stranger/recommendations", params={"k": 50}).json()["items"]
        ]

        def send(n: int) -> int:
            client = a if n % 2 else b
            return client.post(
                "/v1/users/u004/feedback",
                json={"item_id": items[n % len(items)], "signal": "click"},
                headers={"Idempotency-Key": f"both-{n:04d}"},
            ).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(send, range(120)))
        with ThreadPoolExecutor(8) as pool:  # every request retried with its key: counted once
            retried = list(pool.map(send, range(120)))
        stats_a, stats_b = a.get("/v1/stats").json(), b.get("/v1/stats").json()
    assert statuses == [200] * 120 and retried == [200] * 120
    assert stats_a["feedback"] == stats_b["feedback"] == 121  # 120 clicks + the dislike
    assert stats_a["events"] == stats_b["events"] and stats_a["items"] == stats_b["items"] == 301

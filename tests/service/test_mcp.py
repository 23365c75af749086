"""The MCP server through the official SDK's own client: over stdio (``recagent mcp``) and over
streamable HTTP (``/mcp`` in ``recagent serve``). Tools are listed and each is called; invalid
arguments and injected user ids become tool errors; the server keeps serving afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.service.conftest import LiveService, make_keys

RECAGENT = Path(sys.executable).with_name("recagent")
TOOLS = {"recommend_items", "explain_recommendation", "record_feedback", "describe_item"}
NO_FILTERS = {
    "request": None,
    "k": None,
    "categories": None,
    "exclude_categories": None,
    "price_min": None,
    "price_max": None,
    "required_terms": None,
    "excluded_terms": None,
    "more_like_item_ids": None,
    "exclude_item_ids": None,
}

Scenario = Callable[[ClientSession], Awaitable[dict[str, Any]]]


def _payload(result: Any) -> Any:
    return json.loads(result.content[0].text)


async def _exercise(session: ClientSession) -> dict[str, Any]:
    """List and call every tool, read the resources, get the prompts; return what was seen."""
    await session.initialize()
    seen: dict[str, Any] = {"tools": {t.name for t in (await session.list_tools()).tools}}
    recs = await session.call_tool(
        "recommend_items", {"args": {**NO_FILTERS, "request": "board game", "k": 3}}
    )
    assert not recs.is_error, recs.content
    items = _payload(recs)["items"]
    seen["items"] = items
    first = items[0]["item_id"]
    explain = await session.call_tool("explain_recommendation", {"args": {"item_id": first}})
    describe = await session.call_tool("describe_item", {"args": {"item_id": first, "kind": "summary"}})
    feedback = await session.call_tool(
        "record_feedback", {"args": {"item_id": first, "reaction": "dislike", "comment": None}}
    )
    seen["explain"], seen["describe"], seen["feedback"] = explain, describe, feedback
    again = await session.call_tool(
        "recommend_items", {"args": {**NO_FILTERS, "request": "board game", "k": 3}}
    )
    seen["after_dislike"] = [i["item_id"] for i in _payload(again)["items"]]
    # bad input: each a tool error, and the server keeps answering
    seen["errors"] = {
        "wrong type": await session.call_tool("recommend_items", {"args": {**NO_FILTERS, "k": "many"}}),
        "k out of range": await session.call_tool("recommend_items", {"args": {**NO_FILTERS, "k": 500}}),
        "unknown item": await session.call_tool("explain_recommendation", {"args": {"item_id": "SKU-NOPE"}}),
        "injected user": await session.call_tool(
            "recommend_items", {"args": {**NO_FILTERS, "user_id": "u002"}, "user_id": "u002"}
        ),
        "injected tenant": await session.call_tool(
            "record_feedback",
            {"args": {"item_id": first, "reaction": "like", "comment": None, "tenant": "other"}},
        ),
    }
    seen["still_up"] = not (
        await session.call_tool("recommend_items", {"args": {**NO_FILTERS, "k": 2}})
    ).is_error
    templates = {t.uri_template for t in (await session.list_resource_templates()).resource_templates}
    seen["templates"] = templates
    recent = await session.read_resource("recagent://recommendations/3")
    seen["recent"] = json.loads(recent.contents[0].text)["recommendations"]
    seen["prompts"] = {p.name for p in (await session.list_prompts()).prompts}
    prompt = await session.get_prompt("recommend_for_me", {"request": "a gift"})
    seen["prompt_text"] = prompt.messages[0].content.text
    return seen


def _check(seen: dict[str, Any], user: str) -> None:
    assert seen["tools"] == TOOLS
    assert len(seen["items"]) == 3 and all(
        i["source"] in ("llm", "retriever", "fallback") for i in seen["items"]
    )
    assert not seen["explain"].is_error and _payload(seen["explain"])["text"]
    assert not seen["describe"].is_error and _payload(seen["describe"])["kind"] == "summary"
    assert (
        not seen["feedback"].is_error and _payload(seen["feedback"])["item_id"] == seen["items"][0]["item_id"]
    )
    assert seen["items"][0]["item_id"] not in seen["after_dislike"]
    for name, result in seen["errors"].items():
        assert result.is_error, name
    injected = seen["errors"]["injected user"].content[0].text
    assert "user_id" in injected  # rejected as an unknown argument, not obeyed
    assert seen["still_up"]
    assert seen["templates"] == {"recagent://profile/{version}", "recagent://recommendations/{count}"}
    assert seen["recent"] and all(r["user_id"] == user for r in seen["recent"])
    assert seen["prompts"] == {"recommend_for_me", "explain_choice"}
    assert "a gift" in seen["prompt_text"]


def test_stdio_server_with_the_sdk_client(tmp_path: Path, standin_model: Any) -> None:
    params = StdioServerParameters(
        command=str(RECAGENT),
        args=[
            "mcp",
            "--user",
            "u001",
            "--db",
            str(tmp_path / "profiles.sqlite"),
            "--base-url",
            standin_model.base_url,
        ],
        env={
            **os.environ,
            "OPENAI_API_KEY": "test",
            "RECAGENT_PSEUDONYM_KEY": "mcp-tests-pseudonym-key-0123",
        },
    )

    async def run() -> dict[str, Any]:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            return await _exercise(session)

    seen = asyncio.run(asyncio.wait_for(run(), timeout=120))
    _check(seen, "u001")
    bodies = json.dumps([r.body for r in standin_model.requests], ensure_ascii=False)
    assert not re.search(r"(?<![\\\w])u002(?!\w)", bodies)  # nothing was ever asked for the injected user


async def _http_session(url: str, headers: dict[str, str], scenario: Scenario) -> dict[str, Any]:
    async with (
        httpx.AsyncClient(headers=headers, timeout=60) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as streams,
        ClientSession(streams[0], streams[1]) as session,
    ):
        return await scenario(session)


def test_http_transport_is_authenticated_and_scoped_to_the_key_and_user(live_service: LiveService) -> None:
    key = live_service.keys["rw"]
    seen = asyncio.run(
        asyncio.wait_for(
            _http_session(
                live_service.url, {"Authorization": f"Bearer {key}", "X-Recagent-User": "u001"}, _exercise
            ),
            120,
        )
    )
    _check(seen, "u001")
    with live_service.client(key) as http:
        # the dislike recorded through MCP is in the service's store for u001 (and not u002)
        served = http.get("/v1/users/u001/recommendations/recent", params={"limit": 10}).json()
        assert served and all(r["user_id"] == "u001" for r in served)
        assert http.get("/v1/users/u002/recommendations/recent").json() == []
        # no key, bad key, no user: refused before the MCP layer, in the service's error shape
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
        for headers, status, kind in (
            ({}, 401, "unauthenticated"),
            ({"Authorization": "Bearer rk_00000000_notakeynotakeynotakey"}, 401, "unauthenticated"),
            ({"Authorization": f"Bearer {key}"}, 400, "user_required"),
        ):
            response = httpx.post(
                f"{live_service.url}/mcp",
                json=init,
                headers={"Accept": "application/json, text/event-stream", **headers},
            )
            assert response.status_code == status and response.json()["error"]["type"] == kind


def test_http_read_only_keys_cannot_record_feedback(
    tmp_path: Path, service_factory: Any, standin_model: Any
) -> None:
    store_url = f"sqlite:///{tmp_path / 'mcp.sqlite'}"
    key = make_keys(store_url, {"ro": ("shop", ("read",))})["ro"]
    service = service_factory(store_url, base_url=standin_model.base_url)

    async def scenario(session: ClientSession) -> dict[str, Any]:
        await session.initialize()
        recs = await session.call_tool("recommend_items", {"args": {**NO_FILTERS, "k": 2}})
        item = _payload(recs)["items"][0]["item_id"]
        denied = await session.call_tool(
            "record_feedback", {"args": {"item_id": item, "reaction": "like", "comment": None}}
        )
        return {"recs": recs, "denied": denied}

    seen = asyncio.run(
        asyncio.wait_for(
            _http_session(
                service.url, {"Authorization": f"Bearer {key}", "X-Recagent-User": "u003"}, scenario
            ),
            120,
        )
    )
    assert not seen["recs"].is_error
    assert seen["denied"].is_error and "write" in seen["denied"].content[0].text

"""Tool calling: SDK-valid strict definitions, a handle() that never raises, the full loop."""

from __future__ import annotations

import json
import runpy
import sys
from typing import Any

import httpx2
import openai
import pandas as pd
import pytest
from openai.lib._parsing._completions import validate_input_tools
from openai.types.chat import ChatCompletionToolMessageParam, ChatCompletionToolParam
from pydantic import TypeAdapter

from agent.chat.domains import PRESETS
from agent.chat.tools import TOOL_MODELS, Toolbox, run_tool_loop, tool_definitions
from agent.cli.main import main
from agent.data.loading import align_catalog, load_events, load_items
from agent.llm.cassette import Cassette, ReplayTransport
from agent.llm.client import ChatClient, LLMConfig
from agent.profiles.store import open_store
from agent.recommender import RecommenderAgent
from agent.testing import standin_chat
from agent.testing.loopback import Fault, LoopbackServer, Reply, ScriptedResponder
from tests.conftest import ROOT, SAMPLE, chat_bodies

TOOL_PARAM = TypeAdapter(ChatCompletionToolParam)
TOOL_MESSAGE = TypeAdapter(ChatCompletionToolMessageParam)
RECOMMEND_ARGS = {
    "request": "a board game for two",
    "k": 3,
    "categories": ["Board Games"],
    "exclude_categories": None,
    "price_min": None,
    "price_max": 40.0,
    "required_terms": None,
    "excluded_terms": ["legacy"],
    "more_like_item_ids": None,
    "exclude_item_ids": None,
}


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    items = load_items(SAMPLE / "items.csv")
    return align_catalog(load_events(SAMPLE / "events.csv"), items).frame, items.frame


def _client(url: str) -> ChatClient:
    return ChatClient(LLMConfig(model="gpt-4.1-mini", base_url=url, api_key="x"), sleep=lambda s: None)


def _call(name: str, arguments: Any, call_id: str = "call_1") -> dict[str, Any]:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def _content(message: ChatCompletionToolMessageParam) -> dict[str, Any]:
    TOOL_MESSAGE.validate_python(message)
    assert message["role"] == "tool"
    content = message["content"]
    assert isinstance(content, str)
    return dict(json.loads(content))


def _strict(node: Any) -> None:
    if isinstance(node, dict):
        assert "default" not in node and "title" not in node
        if node.get("type") == "object":
            assert node["additionalProperties"] is False
            assert node["required"] == list(node["properties"])
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)


# -- definitions -----------------------------------------------------------------------
@pytest.mark.parametrize("domain", ["commerce", "content", "social"])
def test_definitions_are_strict_function_tools_the_sdk_accepts(domain: str) -> None:
    tools = tool_definitions(PRESETS[domain], categories=["Board Games", "Books"])
    assert [t["function"]["name"] for t in tools] == list(TOOL_MODELS)
    for tool in tools:
        TOOL_PARAM.validate_python(tool)  # the SDK's own TypedDict
        function = tool["function"]
        assert function["strict"] is True and "{" not in function.get("description", "")
        parameters = function["parameters"]
        assert parameters["type"] == "object"
        _strict(parameters)
        sdk_schema = openai.pydantic_function_tool(TOOL_MODELS[function["name"]])["function"]["parameters"]
        assert set(sdk_schema["properties"]) >= set(parameters["properties"])
    assert validate_input_tools(tools) == tools  # the SDK refuses non-strict tools for auto-parsing
    recommend = tools[0]["function"]["parameters"]["properties"]
    assert ("price_max" in recommend) == PRESETS[domain].has_prices
    assert recommend["categories"]["anyOf"][0]["items"]["enum"] == ["Board Games", "Books"]


def test_definitions_go_through_the_sdk_request_unchanged(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    with (
        LoopbackServer(responder=ScriptedResponder([Reply(content="hi")])) as srv,
        _client(srv.base_url) as client,
    ):
        toolbox = Toolbox(RecommenderAgent(*frames, client), "u001")
        sdk = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        assert run_tool_loop(sdk, "gpt-4.1-mini", [{"role": "user", "content": "hi"}], toolbox) == "hi"
        (body,) = chat_bodies(srv)
        sdk.close()
    assert body["tools"] == toolbox.definitions


# -- handle ----------------------------------------------------------------------------
def test_valid_recommend_call_returns_filtered_items(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    with LoopbackServer(responder=standin_chat.respond) as srv, _client(srv.base_url) as client:
        agent = RecommenderAgent(*frames, client)
        payload = _content(Toolbox(agent, "u001").handle(_call("recommend_items", RECOMMEND_ARGS, "call_9")))
    assert payload["ok"] is True
    items = payload["result"]["items"]
    assert 1 <= len(items) <= 3
    for item in items:
        info = agent.catalog.get(item["item_id"])
        assert info is not None and info.category == "Board Games" and item["price"] <= 40.0
        assert "legacy" not in (info.title + (info.description or "")).lower()


@pytest.mark.parametrize(
    ("call", "kind"),
    [
        (_call("recommend_items", "{not json"), "invalid_json"),
        (_call("recommend_items", {"request": "x"}), "invalid_arguments"),  # fields missing
        (_call("recommend_items", {**RECOMMEND_ARGS, "k": "three"}), "invalid_arguments"),
        (_call("recommend_items", {**RECOMMEND_ARGS, "k": 50}), "invalid_arguments"),
        (_call("recommend_items", {**RECOMMEND_ARGS, "colour": "red"}), "invalid_arguments"),
        (_call("recommend_items", {**RECOMMEND_ARGS, "categories": ["Cars"]}), "invalid_arguments"),
        (
            _call("record_feedback", {"item_id": "SKU-10014", "reaction": "meh", "comment": None}),
            "invalid_arguments",
        ),
        (_call("order_pizza", {}), "unknown_tool"),
        ({"id": "call_1", "function": {}}, "invalid_call"),
        (
            _call("record_feedback", {"item_id": "NOPE", "reaction": "like", "comment": None}),
            "UnknownItemError",
        ),
        (_call("describe_item", {"item_id": "NOPE", "kind": None}), "UnknownItemError"),
    ],
)
def test_invalid_calls_become_tool_results(
    frames: tuple[pd.DataFrame, pd.DataFrame], call: dict[str, Any], kind: str
) -> None:
    with LoopbackServer(responder=ScriptedResponder([])) as srv, _client(srv.base_url) as client:
        message = Toolbox(RecommenderAgent(*frames, client), "u001").handle(call)
        assert not srv.requests  # nothing reached the model
    payload = _content(message)
    assert message["tool_call_id"] == call["id"]
    assert payload["ok"] is False and payload["error"]["type"] == kind and payload["error"]["message"]
    if kind == "invalid_arguments":
        assert payload["error"].get("details") or "k must be" in payload["error"]["message"]


def test_failing_calls_become_tool_results(
    frames: tuple[pd.DataFrame, pd.DataFrame],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        LoopbackServer(responder=ScriptedResponder([]), faults=[Fault.http(401)]) as srv,
        _client(srv.base_url) as c,
    ):
        toolbox = Toolbox(RecommenderAgent(*frames, c), "u001")
        auth = _content(toolbox.handle(_call("explain_recommendation", {"item_id": "SKU-10014"})))
    assert auth["error"]["type"] == "AuthenticationError"

    def boom(self: Toolbox, args: Any) -> None:
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(Toolbox, "_tool_describe_item", boom)
    bug = _content(toolbox.handle(_call("describe_item", {"item_id": "SKU-10014", "kind": None})))
    assert bug["error"]["type"] == "internal_error" and "secret" not in json.dumps(bug)
    assert "secret internals" in caplog.text  # logged for the host's developers, not shown to the model


def test_feedback_is_stored_and_a_dislike_is_a_hard_filter(
    frames: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Any
) -> None:
    with (
        LoopbackServer(responder=standin_chat.respond) as srv,
        _client(srv.base_url) as client,
        open_store(tmp_path / "fb.sqlite") as store,
    ):
        toolbox = Toolbox(RecommenderAgent(*frames, client, store=store), "u001")
        first = _content(toolbox.handle(_call("recommend_items", RECOMMEND_ARGS)))["result"]["items"]
        first_id = toolbox.last_recommendation_id
        rejected = first[0]["item_id"]
        args = {"item_id": rejected, "reaction": "dislike", "comment": "not for me"}
        result = _content(toolbox.handle(_call("record_feedback", args)))["result"]
        again = _content(toolbox.handle(_call("recommend_items", RECOMMEND_ARGS)))["result"]["items"]
        never_shown = {"item_id": "SKU-10003", "reaction": "like", "comment": None}  # a kettle
        liked = _content(toolbox.handle(_call("record_feedback", never_shown)))
        stored = store.feedback("u001")
    assert result == {"item_id": rejected, "behavior": "dislike", "recorded": True}
    assert rejected not in [i["item_id"] for i in again]
    assert liked["ok"] is True and liked["result"]["recorded"] is True
    assert [(f.item_id, f.signal, f.comment) for f in stored] == [
        (rejected, "dislike", "not for me"),
        ("SKU-10003", "like", None),
    ]
    assert stored[0].recommendation_id == first_id and stored[1].recommendation_id is None
    assert [(e.signal, e.source, e.recorded) for e in toolbox.feedback] == [
        ("dislike", "tool", True),
        ("like", "tool", True),
    ]


# -- the full loop ---------------------------------------------------------------------
def test_full_tool_loop_with_the_real_sdk(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    host = ScriptedResponder(
        [
            Reply(tool_calls=[{"id": "call_a", "name": "recommend_items", "arguments": RECOMMEND_ARGS}]),
            Reply(content="Here are three two-player games."),
        ]
    )
    with LoopbackServer(responder=standin_chat.respond) as model, _client(model.base_url) as client:
        toolbox = Toolbox(RecommenderAgent(*frames, client), "u001")
        with LoopbackServer(responder=host) as srv:
            sdk = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
            messages: list[Any] = [{"role": "user", "content": "a board game for two under 40"}]
            answer = run_tool_loop(sdk, "gpt-4.1-mini", messages, toolbox)
            sdk.close()
            second = chat_bodies(srv)[1]
    assert answer == "Here are three two-player games."
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["tool_calls"][0]["id"] == "call_a"
    sent_tool = second["messages"][2]
    assert sent_tool["role"] == "tool" and sent_tool["tool_call_id"] == "call_a"
    assert json.loads(sent_tool["content"])["ok"] is True


def test_recorded_assistant_loop_replays(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """The loop of scripts/chat_demo.py on recorded (stand-in) responses, host and recagent both."""
    cassette = Cassette(ROOT / "fixtures" / "cassettes" / "chat.json")
    http = httpx2.Client(transport=ReplayTransport(cassette))
    config = LLMConfig(model=standin_chat.RECORDED_MODEL, api_key="x")
    with ChatClient(config, http_client=httpx2.Client(transport=ReplayTransport(cassette))) as client:
        toolbox = Toolbox(RecommenderAgent(*frames, client), standin_chat.RECORDED_USER, items=frames[1])
        sdk = openai.OpenAI(api_key="x", max_retries=0, http_client=http)
        messages: list[Any] = [{"role": "system", "content": _recorded_system()}]
        answers = []
        for text in standin_chat.RECORDED_ASSISTANT:
            messages.append({"role": "user", "content": text})
            answers.append(run_tool_loop(sdk, standin_chat.RECORDED_MODEL, messages, toolbox))
        sdk.close()
    assert answers[0].startswith("Here is what I found:") and answers[1].startswith("Suggested because")
    assert answers[2] == "Thanks, noted."
    assert [(e.signal, e.source) for e in toolbox.feedback] == [("like", "tool")]


def _recorded_system() -> str:
    namespace = runpy.run_path(str(ROOT / "scripts" / "record_chat_fixtures.py"))
    return str(namespace["ASSISTANT_SYSTEM"])


def test_chat_demo_script_runs_on_the_stand_in(capsys: pytest.CaptureFixture[str]) -> None:
    namespace = runpy.run_path(str(ROOT / "scripts" / "chat_demo.py"))
    assert namespace["main"](["--message", "a board game for two", "--message", "I love the first one"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Stand-in model over loopback HTTP")
    assert "Here is what I found:" in out and "Thanks, noted." in out and "feedback kept: ['like']" in out


def test_cli_chat_assistant_mode_with_piped_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("a board game for two\nwhy the first one?\n"))
    with LoopbackServer(responder=standin_chat.respond) as srv:
        code = main(["chat", "--user", "u001", "--assistant", "--base-url", srv.base_url, "--db", ":memory:"])
    out = capsys.readouterr().out
    assert code == 0 and "Here is what I found:" in out and "Suggested because" in out

"""Personalized content: the number fact check, the re-ask, streaming, the CLI and the recording."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx2
import pandas as pd
import pytest

from agent import errors
from agent.chat.content import ContentGenerator, TextFieldStream, check_numbers, numbers_in
from agent.chat.domains import PRESETS, make_agent
from agent.cli.main import main
from agent.data.loading import align_catalog, load_events, load_items
from agent.llm.cassette import Cassette, ReplayTransport
from agent.llm.client import ChatClient, LLMConfig
from agent.prompting.templates import PromptRenderer
from agent.recommender import RecommenderAgent
from agent.testing import standin_chat
from agent.testing.loopback import Fault, LoopbackServer, Reply, ScriptedResponder
from tests.conftest import ROOT, SAMPLE, chat_bodies

ITEM = "SKU-10014"  # Kitepost: Strategy Board Game for 2-4 Players, 42.99
CASSETTE = ROOT / "fixtures" / "cassettes" / "chat.json"
DATA = ["--events", str(SAMPLE / "events.csv"), "--items", str(SAMPLE / "items.csv")]


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    items = load_items(SAMPLE / "items.csv")
    return align_catalog(load_events(SAMPLE / "events.csv"), items).frame, items.frame


def _client(url: str) -> ChatClient:
    return ChatClient(LLMConfig(model="gpt-4.1-mini", base_url=url, api_key="x"), sleep=lambda s: None)


def _reply(text: str, facts: list[dict[str, str]] | None = None) -> str:
    return json.dumps(
        {"text": text, "facts_used": facts or [{"name": "price", "value": "42.99"}], "evidence": []}
    )


GOOD = "Kitepost is a tile-laying strategy game for 2-4 players at 42.99, about 45 minutes per game."
INVENTED = "Kitepost is a tile-laying strategy game for 2-4 players, now only $34.99 instead of $42.99."


# -- the deterministic check -----------------------------------------------------------
def test_numbers_are_read_with_thousands_decimals_and_ranges() -> None:
    assert [raw for raw, _ in numbers_in("1,299.00 W, 2-4 players, 0.9 kg, v1.2.3, ages 10+")] == [
        "1299.00", "2", "4", "0.9", "1", "2", "3", "10",
    ]  # fmt: skip
    assert dict(numbers_in("$42.90"))["42.90"] == Decimal("42.9")


@pytest.mark.parametrize(
    ("text", "ok", "unsupported"),
    [
        (GOOD, True, []),
        ("Costs 42.990, plays 2 to 4.", True, []),  # numerically equal
        (INVENTED, False, ["34.99"]),
        ("Around 43 dollars.", False, ["43"]),  # a rounded price is a different number
        ("Released in 2019.", False, ["2019"]),
        ("Includes 90 wooden pieces and a 1,500 W kettle.", True, []),
        ("No numbers at all.", True, []),
    ],
)
def test_check_numbers_accepts_only_numbers_in_the_sources(
    text: str, ok: bool, unsupported: list[str]
) -> None:
    record = {
        "title": "Kitepost: Strategy Board Game for 2-4 Players",
        "price": 42.99,
        "description": "Tile-laying strategy game for 2-4 players, about 45 minutes per game. 90 wooden pieces.",
        "nested": [{"watts": 1500}, float("nan"), None, True],
    }
    check = check_numbers(text, [record])
    assert (check.ok, check.unsupported) == (ok, unsupported)


def test_check_numbers_is_reusable_on_any_text() -> None:
    assert check_numbers("Ships in 3 days", ["ships in 3 to 5 days"]).ok
    assert check_numbers("Ships in 2 days", ["ships in 3 to 5 days"]).unsupported == ["2"]


# -- generation and the re-ask ---------------------------------------------------------
def test_invented_price_is_rejected_and_reasked_once(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    responder = ScriptedResponder([_reply(INVENTED), _reply(GOOD)])
    with LoopbackServer(responder=responder) as srv, _client(srv.base_url) as client:
        result = ContentGenerator(RecommenderAgent(*frames, client)).generate("u001", ITEM, "description")
        bodies = chat_bodies(srv)
    assert result.text == GOOD and result.reasked and result.fact_check.ok
    assert result.attempts == 2 and result.usage["requests"] == 2
    assert len(bodies) == 2
    first, second = bodies
    assert second["messages"][: len(first["messages"])] == first["messages"]
    assert second["messages"][-2] == {"role": "assistant", "content": _reply(INVENTED)}
    reask = second["messages"][-1]["content"]
    assert "34.99" in reask and "42.99" not in reask


def test_text_still_inventing_after_the_reask_raises(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    responder = ScriptedResponder([_reply(INVENTED), _reply("Now 19.99 only!")])
    with LoopbackServer(responder=responder) as srv, _client(srv.base_url) as client:
        with pytest.raises(errors.InvalidReplyError, match=r"19\.99") as caught:
            ContentGenerator(RecommenderAgent(*frames, client)).generate("u001", ITEM)
        assert len(chat_bodies(srv)) == 2  # exactly one re-ask
    assert caught.value.attempts == 2 and caught.value.usage.requests == 2
    assert "19.99" in (caught.value.last_reply or "")


def test_prompt_shows_the_item_record_history_and_no_user_id(
    frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    responder = ScriptedResponder([_reply(GOOD)])
    with LoopbackServer(responder=responder) as srv, _client(srv.base_url) as client:
        generator = ContentGenerator(RecommenderAgent(*frames, client), items=frames[1])
        result = generator.generate("u001", ITEM, "summary")
        (body,) = chat_bodies(srv)
        template = srv.requests[-1].headers["x-recagent-template"]
    blocks, kinds = standin_chat.parse(body["messages"][1]["content"])
    assert blocks["item"][0]["price"] == 42.99 and blocks["item"][0]["brand"]  # extra column included
    assert kinds["item"] == "summary" and blocks["history"]
    assert template.startswith("summarize@")
    assert "u001" not in json.dumps(body)
    schema = body["response_format"]["json_schema"]["schema"]
    assert "brand" in json.dumps(schema)  # fact names are an enum of the record's fields
    assert result.facts_used[0].name == "price"


def test_unknown_item_kind_and_missing_model_are_typed_errors(
    frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    with LoopbackServer(responder=ScriptedResponder([])) as srv, _client(srv.base_url) as client:
        generator = ContentGenerator(RecommenderAgent(*frames, client))
        with pytest.raises(errors.UnknownItemError):
            generator.generate("u001", "SKU-NOPE")
        with pytest.raises(errors.ConfigError, match="kind"):
            generator.generate("u001", ITEM, "poem")
        with pytest.raises(errors.UnknownUserError):
            generator.generate("nobody", ITEM)
        assert not srv.requests
    with pytest.raises(errors.ConfigError, match="needs a model"):
        ContentGenerator(RecommenderAgent(*frames, None)).generate("u001", ITEM)


def test_social_content_has_no_prices_and_uses_social_wording() -> None:
    social = ROOT / "fixtures" / "social"
    items = load_items(social / "items.csv")
    events = align_catalog(load_events(social / "events.csv"), items)
    with LoopbackServer(responder=standin_chat.respond) as srv, _client(srv.base_url) as client:
        agent = make_agent(PRESETS["social"], events.frame, items.frame, client)
        result = ContentGenerator(agent, items=items.frame).generate("m001", "G-001", "description")
        system = chat_bodies(srv)[0]["messages"][0]["content"]
    assert "introduction of this person or group" in system and "price" not in system
    assert result.fact_check.ok and "members" in result.text


# -- streaming -------------------------------------------------------------------------
class Collected:
    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.retracts = 0

    def text(self, delta: str) -> None:
        self.deltas.append(delta)

    def retract(self) -> None:
        self.retracts += 1
        self.deltas.append("<retract>")


def test_stream_shows_the_text_as_it_arrives(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    seen = Collected()
    with LoopbackServer(responder=standin_chat.respond) as srv, _client(srv.base_url) as client:
        generator = ContentGenerator(RecommenderAgent(*frames, client))
        result = generator.generate("u001", ITEM, stream=True, on_text=seen.text, on_retract=seen.retract)
        (body,) = chat_bodies(srv)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert len(seen.deltas) > 3  # the loopback server sends 16-character chunks
    assert "".join(seen.deltas) == result.text and seen.retracts == 0
    assert result.usage["prompt_tokens"] > 0 and result.usage["requests"] == 1


def test_stream_retracts_an_invented_price_and_streams_the_reask(
    frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    seen = Collected()
    responder = ScriptedResponder([_reply(INVENTED), _reply(GOOD)])
    with LoopbackServer(responder=responder) as srv, _client(srv.base_url) as client:
        generator = ContentGenerator(RecommenderAgent(*frames, client))
        result = generator.generate("u001", ITEM, stream=True, on_text=seen.text, on_retract=seen.retract)
    shown = "".join(seen.deltas)
    assert shown == INVENTED + "<retract>" + GOOD
    assert result.text == GOOD and result.reasked and seen.retracts == 1


def test_stream_that_fails_before_any_text_is_sent_again_without_streaming(
    frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    seen = Collected()
    responder = ScriptedResponder([_reply(GOOD)])
    with (
        LoopbackServer(responder=responder, faults=[Fault.http(503)]) as srv,
        _client(srv.base_url) as client,
    ):
        generator = ContentGenerator(RecommenderAgent(*frames, client))
        result = generator.generate("u001", ITEM, stream=True, on_text=seen.text)
        streams = [b.get("stream") for b in chat_bodies(srv)]
    assert streams == [True, None]
    assert seen.deltas == [GOOD] and result.text == GOOD and result.usage["requests"] == 2


def test_stream_refusal_is_a_refusal_error(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    responder = ScriptedResponder([Reply(content=None, refusal="I can't help with that.")])
    with (
        LoopbackServer(responder=responder) as srv,
        _client(srv.base_url) as client,
        pytest.raises(errors.RefusalError),
    ):
        ContentGenerator(RecommenderAgent(*frames, client)).generate("u001", ITEM, stream=True)


def test_text_field_stream_decodes_escapes_split_across_chunks() -> None:
    out: list[str] = []
    stream = TextFieldStream(out.append)
    payload = json.dumps(
        {"facts_used": [], "text": 'Line one\nsays "hi" \u00e9 \U0001f600 done', "evidence": []}
    )
    for i in range(0, len(payload), 3):
        stream.feed(payload[i : i + 3])
    assert "".join(out) == 'Line one\nsays "hi" \u00e9 \U0001f600 done' and stream.done


# -- recorded responses and the CLI ----------------------------------------------------
def test_recorded_description_and_explanation_replay(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    transport = ReplayTransport(Cassette(CASSETTE))
    config = LLMConfig(model=standin_chat.RECORDED_MODEL, api_key="x")
    with ChatClient(config, http_client=httpx2.Client(transport=transport)) as client:
        generator = ContentGenerator(RecommenderAgent(*frames, client), items=frames[1])
        for item_id, kind in standin_chat.RECORDED_CONTENT:
            result = generator.generate(standin_chat.RECORDED_USER, item_id, kind)
            assert result.fact_check.ok and not result.reasked and result.text
            if kind == "explanation":
                assert result.evidence and result.text.startswith("Suggested because")


def test_cli_generate_json_pretty_and_stream(capsys: pytest.CaptureFixture[str]) -> None:
    with LoopbackServer(responder=standin_chat.respond) as srv:
        base = ["generate", *DATA, "--user", "u001", "--item", ITEM, "--base-url", srv.base_url]
        assert main(base) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["fact_check"]["ok"] and result["kind"] == "description"
        assert main([*base, "--kind", "summary", "--pretty"]) == 0
        assert capsys.readouterr().out.strip() == result["text"]
        assert main([*base, "--stream"]) == 0
        assert capsys.readouterr().out.strip() == result["text"]


def test_cli_generate_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", *DATA, "--user", "u001", "--item", ITEM, "--backend", "fallback"]) == 2
    assert "needs a model" in capsys.readouterr().err
    with LoopbackServer(responder=standin_chat.respond) as srv:
        args = ["generate", *DATA, "--user", "u001", "--item", "NOPE", "--base-url", srv.base_url]
        assert main(args) == 3
    err = capsys.readouterr().err
    assert err.startswith("recagent: error:") and "NOPE" in err and len(err.strip().splitlines()) == 1


def test_content_prompts_render_once_when_the_history_fits(
    frames: tuple[pd.DataFrame, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prompt fitting probes the whole capped history first: when it fits, one render per prompt
    (no bisection), and the recorded prompts still match."""
    renders: list[str] = []
    original = PromptRenderer.render

    def counting(self: PromptRenderer, name: str, inputs: Any) -> Any:
        renders.append(name)
        return original(self, name, inputs)

    monkeypatch.setattr(PromptRenderer, "render", counting)
    transport = ReplayTransport(Cassette(CASSETTE))
    config = LLMConfig(model=standin_chat.RECORDED_MODEL, api_key="x")
    with ChatClient(config, http_client=httpx2.Client(transport=transport)) as client:
        generator = ContentGenerator(RecommenderAgent(*frames, client), items=frames[1])
        for item_id, kind in standin_chat.RECORDED_CONTENT:
            assert generator.generate(standin_chat.RECORDED_USER, item_id, kind).text
    assert renders == ["describe_item", "explain"]

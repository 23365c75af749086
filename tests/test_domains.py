"""Domains: presets by name, custom files, wording in every template, the social fixture end to end."""

from __future__ import annotations

import json
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from agent.chat.content import ContentInputs
from agent.chat.conversation import Constraints, Conversation, ExtractInputs
from agent.chat.domains import PRESETS, load_domain, make_agent, preset_for
from agent.chat.tools import tool_definitions
from agent.cli.main import main
from agent.data.loading import align_catalog, load_events, load_items
from agent.errors import ConfigError
from agent.llm.client import ChatClient, LLMConfig
from agent.prompting.templates import HistoryLine, ProfileInputs, PromptRenderer, RecommendInputs
from agent.testing.loopback import LoopbackServer
from agent.testing.standin_chat import respond
from tests.conftest import ROOT

SOCIAL = ROOT / "fixtures" / "social"
COMMERCE_WORDS = ("product", "shopper", "price")


@pytest.fixture(scope="module")
def social() -> tuple[pd.DataFrame, pd.DataFrame]:
    items = load_items(SOCIAL / "items.csv")
    events = align_catalog(load_events(SOCIAL / "events.csv"), items)
    assert events.report.rows_dropped == 0 and items.report.rows_dropped == 0
    return events.frame, items.frame


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer(responder=respond) as srv:
        yield srv


def test_presets_load_by_name_and_default_to_commerce() -> None:
    assert load_domain(None).key == "commerce"
    for name in ("commerce", "content", "social"):
        assert load_domain(name) is PRESETS[name]
    assert load_domain("social").domain.items_noun == "people and groups"
    assert load_domain("social").like_behavior == "follow"
    assert not load_domain("social").has_prices and load_domain("commerce").has_prices
    with pytest.raises(ConfigError, match="commerce, content, social"):
        load_domain("dating")


def test_custom_domain_from_toml_extends_a_preset(tmp_path: Path) -> None:
    path = tmp_path / "recipes.toml"
    path.write_text(
        'extends = "content"\n'
        "[domain]\n"
        'name = "recipe site"\nitem_noun = "recipe"\nitems_noun = "recipes"\n'
        "[behavior_weights]\n"
        "cook = 1.0\n",
        encoding="utf-8",
    )
    preset = load_domain(path)
    assert preset.key == "recipes"
    assert preset.domain.items_noun == "recipes" and preset.domain.user_noun == "reader"  # kept from content
    assert preset.behavior_weights == {"cook": 1.0}
    assert preset.retriever_config().behavior_weights["cook"] == 1.0
    assert preset.retriever_config().behavior_weights["purchase"] == 1.0  # defaults stay underneath


def test_custom_domain_from_json(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps({"key": "jobs", "domain": {"item_noun": "job", "items_noun": "jobs"}}))
    preset = load_domain(str(path))
    assert (preset.key, preset.domain.items_noun, preset.domain.user_noun) == ("jobs", "jobs", "shopper")


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("bad.toml", "behavior_weights = { like = 3.0 }\n", "behavior_weights"),
        ("bad.toml", "domain = [\n", "cannot read"),
        ("bad.json", '{"has_prices": "sometimes"}', "has_prices"),
        ("bad.json", '{"colour": "red"}', "colour"),
        ("bad.json", '["not", "an", "object"]', "top level"),
        ("bad.json", '{"extends": "nope"}', "extends"),
        ("bad.yaml", "key: x", "unknown domain"),
    ],
)
def test_invalid_domain_files_are_config_errors(tmp_path: Path, name: str, text: str, fragment: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=fragment):
        load_domain(path)
    with pytest.raises(ConfigError, match="not found"):
        load_domain(tmp_path / "missing.toml")


def test_preset_for_matches_an_agents_nouns() -> None:
    assert preset_for(PRESETS["social"].domain).key == "social"
    custom = preset_for(PRESETS["social"].domain.model_copy(update={"name": "club"}))
    assert custom.key == "custom" and custom.domain.name == "club" and custom.like_behavior == "like"


def _line() -> HistoryLine:
    return HistoryLine(
        n=1, date="2026-10-01", behavior="follow", item_id="G-001", title="Ridge Runners",
        category="Trail Running", price=None, value=None, text=None,
    )  # fmt: skip


def test_every_template_speaks_the_social_domain() -> None:
    preset = PRESETS["social"]
    d = preset.domain
    renderer = PromptRenderer()
    prompts = [
        renderer.render(
            "profile", ProfileInputs(domain=d, behaviors=preset.behaviors, history=[_line()], total_events=1)
        ),
        renderer.render(
            "recommend",
            RecommendInputs(domain=d, profile=None, history=[_line()], total_events=1, candidates=[], k=1),
        ),
        renderer.render(
            "extract_constraints",
            ExtractInputs(
                domain=d,
                has_prices=False,
                categories=["Trail Running"],
                constraints=Constraints().model_dump(mode="json"),
                shown=[],
                history=[],
                turns=[],
                message="hi",
            ),
        ),
    ]
    for kind, template in (
        ("description", "describe_item"),
        ("summary", "summarize"),
        ("explanation", "explain"),
    ):
        inputs = ContentInputs(
            domain=d, kind=kind, kind_name=preset.word_for(kind), consume_verb="follow", has_prices=False,
            item={"item_id": "G-001", "title": "Ridge Runners"}, history=[_line()], total_events=1, max_words=60,
        )  # fmt: skip
        prompts.append(renderer.render(template, inputs))
    for prompt in prompts:
        text = " ".join(m["content"] for m in prompt.messages).lower()
        assert "people and groups" in text or "person or group" in text, prompt.name
        system = prompt.messages[0]["content"].lower()
        # profile/recommend still mention prices ("unknown if absent"); ours never do without prices
        words = COMMERCE_WORDS if prompt.name not in ("profile", "recommend") else COMMERCE_WORDS[:2]
        assert not [w for w in words if w in system.replace("price_", "")], (prompt.name, system)
    tools = json.dumps(tool_definitions(preset))
    assert "people and groups" in tools and "price" not in tools and "{item" not in tools


def test_social_fixture_is_reproducible_from_its_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["make_social_data.py", "--out", str(tmp_path), "--seed", "11", "--members", "40"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "scripts" / "make_social_data.py"), run_name="__main__")
    assert done.value.code == 0
    for name in ("items.csv", "events.csv"):
        assert (tmp_path / name).read_bytes() == (SOCIAL / name).read_bytes(), name


def test_social_fixture_has_people_groups_and_social_behaviors(
    social: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    events, items = social
    assert set(items["kind"]) == {"person", "group"}
    assert items["price"].isna().all()
    assert {"follow", "like", "view", "comment"} <= set(events["behavior"])


def test_social_conversation_recommends_people_and_groups_and_likes_become_follows(
    social: tuple[pd.DataFrame, pd.DataFrame], server: LoopbackServer
) -> None:
    events, items = social
    preset = PRESETS["social"]
    with ChatClient(LLMConfig(model="gpt-4.1-mini", base_url=server.base_url, api_key="x")) as client:
        agent = make_agent(preset, events, items, client)
        assert agent.retriever.config.behavior_weights["follow"] == 1.0
        chat = Conversation(agent, k=3)
        first = chat.send("m001", "I'm looking for photography groups under 50")
        assert first.text.startswith("Here are 3 people and groups")
        assert {r.item_id[:2] for r in first.recommendations} <= {"P-", "G-"}
        assert first.constraints.price_max is None  # no prices in this domain: the amount is ignored
        second = chat.send("m001", "I like the second one", first.state)
    (event,) = second.feedback
    assert (event.signal, event.behavior) == ("like", "follow")
    assert event.item_id == first.recommendations[1].item_id
    sent = json.dumps([r.body for r in server.requests])
    assert "m001" not in sent and "shopper" not in sent


def test_cli_chat_social_uses_the_bundled_social_fixture(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", _stdin("photography please\n"))
    assert main(["chat", "--user", "m001", "--domain", "social", "--backend", "fallback", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "Here are 2 people and groups" in out and "No model available" in out
    assert main(["chat", "--user", "m001", "--domain", "content", "--backend", "fallback"]) == 2
    assert "no bundled data" in capsys.readouterr().err


def _stdin(text: str) -> object:
    import io

    return io.StringIO(text)

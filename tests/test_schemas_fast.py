"""Per-request reply models built from templates (``agent.prompting.schemas``) behave exactly like the
``create_model`` + ``Literal`` models they replace: the strict JSON schema sent to the API is
byte-identical (recorded cassettes are keyed by a hash of the request body) and validation
accepts, rejects and words its errors the same way (re-asks quote those errors)."""

from __future__ import annotations

import copy
import gc
import json
import logging
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError, create_model
from pydantic_core import SchemaError

from agent.llm.client import ChatClient, LLMConfig, build_request_body
from agent.prompting import schemas
from agent.prompting.schemas import (
    BehaviorProfile,
    Dislike,
    Interest,
    RankedItem,
    Recommendations,
    profile_model,
    recommendations_model,
    strict_json_schema,
)
from agent.prompting.templates import RenderedPrompt
from agent.recommender import ReplyContext
from agent.testing.loopback import LoopbackServer, ScriptedResponder
from tests.conftest import chat_bodies

# -- the reference: the construction as it was before templates (do not "fix" it) ------------


def reference_recommendations_model(
    candidate_ids: Sequence[Any], history_ids: Sequence[Any]
) -> type[Recommendations]:
    candidate_type: Any = Literal[tuple(candidate_ids)]
    evidence_type: Any = Literal[tuple(history_ids)] if history_ids else str
    item = create_model(
        "RankedItem",
        __base__=RankedItem,
        item_id=(candidate_type, Field(description="One of the candidate ids.")),
        evidence=(list[evidence_type], Field(description="History item ids the reason relies on.")),
    )
    return create_model("Recommendations", __base__=Recommendations, items=(list[item], ...))  # type: ignore[valid-type]


def reference_profile_model(history_ids: Sequence[Any]) -> type[BehaviorProfile]:
    if not history_ids:
        return BehaviorProfile
    evidence_type: Any = Literal[tuple(history_ids)]
    interest = create_model("Interest", __base__=Interest, evidence=(list[evidence_type], ...))
    dislike = create_model("Dislike", __base__=Dislike, evidence=(list[evidence_type], ...))
    return create_model(
        "BehaviorProfile",
        __base__=BehaviorProfile,
        interests=(list[interest], ...),  # type: ignore[valid-type]
        dislikes=(list[dislike], ...),  # type: ignore[valid-type]
    )


def reference_strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = copy.deepcopy(model.model_json_schema())

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("default", "title", "examples"):
                if key in node and not isinstance(node[key], dict):
                    node.pop(key)
            if node.get("type") == "object" or "properties" in node:
                node["additionalProperties"] = False
                node["required"] = list(node.get("properties", {}))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


# -- id lists ---------------------------------------------------------------------------------

CANDIDATES: dict[str, list[str]] = {
    "one": ["i1"],
    "two": ["i1", "i2"],
    "hundred": [f"item-{n:03d}" for n in range(100)],
    "quotes": ['say "hi"', "it's", "back\\slash", "tab\tnew\nline", "", " "],
    "unicode": ["café", "日本語", "emoji 🎧", "e\u0301", "\u2028sep", "\x00nul"],
    "json-like": ['"]', '["a"]', "{}", "\\u0041", '", "', "__recagent_id_candidates_0__"],
    "duplicates": ["a", "b", "a", "c", "b"],
    "duplicates-to-one": ["x", "x"],
}
HISTORIES: dict[str, list[str]] = {
    "empty": [],
    "one": ["h1"],
    "two": ["h1", "h2"],
    "fifty": [f"hist-{n}" for n in range(50)],
    "quotes-unicode": ['h "1"', "ü", "🎧", "\\", "__recagent_id_history_1__"],
    "overlaps-candidates": ["i1", "a", "x"],
    "duplicates-to-one": ["h", "h"],
}

PROMPT = RenderedPrompt(
    name="recommend",
    version="recommend@test",
    messages=[{"role": "system", "content": "You rank items."}, {"role": "user", "content": "candidates..."}],
)
CONFIG = LLMConfig(model="gpt-4o-mini", max_completion_tokens=1000, temperature=0.0, seed=7)


def dumps(schema: dict[str, Any]) -> list[str]:
    """The texts a schema can be sent as: default, compact (JSON mode prompt), cassette key style."""
    return [
        json.dumps(schema),
        json.dumps(schema, separators=(",", ":")),
        json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
    ]


def outcome(model: type[BaseModel], text: str) -> tuple[Any, ...]:
    """Everything a caller can observe from validating ``text``."""
    try:
        value = model.model_validate_json(text)
    except ValidationError as exc:
        return ("invalid", exc.title, exc.error_count(), exc.errors(), str(exc))
    return ("valid", value.model_dump(), value.model_dump_json(), repr(value))


def recommend_replies(candidates: Sequence[str], history: Sequence[str]) -> list[str]:
    evidence = [history[0]] if history else ["anything"]

    def item(item_id: Any, ev: Any = evidence, score: Any = 0.5, **extra: Any) -> dict[str, Any]:
        return {"item_id": item_id, "score": score, "reason": "fits", "evidence": ev, **extra}

    replies: list[Any] = [
        {"items": [item(candidates[-1])]},
        {"items": [item(c, score=0.9) for c in candidates[:3]]},
        {"items": []},
        {"items": [item("not-a-candidate-\u00e9")]},  # invented id
        {"items": [item(candidates[0], ["not-in-history"])]},  # evidence outside the history
        {"items": [item(candidates[0]), item("zz", ["yy"])]},  # errors further down the list
        {"items": [item(5, [7])]},  # wrong types
        {"items": [item(candidates[0], score=1.5)]},
        {"items": [item(candidates[0], extra_field=1)]},
        {"items": [{"item_id": candidates[0]}]},
        {"items": "nope"},
        {},
    ]
    return [*map(json.dumps, replies), "not json", '{"items": [']


def profile_replies(history: Sequence[str]) -> list[str]:
    evidence = [history[-1]] if history else []
    patterns = {
        "price_sensitivity": "medium",
        "typical_price_min": 10.0,
        "typical_price_max": None,
        "recent_focus": "boots",
        "exploration": "focused",
    }

    def profile(interest: Any, dislike: Any, **changes: Any) -> dict[str, Any]:
        return {
            "summary": "Likes boots.",
            "interests": [{"name": "boots", "strength": 0.8, "evidence": interest}],
            "dislikes": [{"name": "sandals", "evidence": dislike}],
            "patterns": patterns,
            **changes,
        }

    replies = [
        profile(evidence, evidence),
        profile([], []),
        profile(["invented"], evidence),
        profile(evidence, ["invented"]),
        profile([1], [None]),
        profile(evidence, evidence, patterns={**patterns, "exploration": "wild"}),
        profile(evidence, evidence, extra=True),
        {"summary": "x"},
    ]
    return [*map(json.dumps, replies), "[]"]


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    schemas.clear_reply_model_cache()
    yield
    schemas.clear_reply_model_cache()


# -- the strict schema is byte-identical --------------------------------------------------------


@pytest.mark.parametrize("history", HISTORIES.values(), ids=HISTORIES.keys())
@pytest.mark.parametrize("candidates", CANDIDATES.values(), ids=CANDIDATES.keys())
def test_recommendations_schema_is_byte_identical_to_the_create_model_one(
    candidates: list[str], history: list[str]
) -> None:
    fast = recommendations_model(candidates, history)
    reference = reference_recommendations_model(candidates, history)
    assert fast.__name__ == reference.__name__ == "Recommendations"
    assert dumps(strict_json_schema(fast)) == dumps(reference_strict_json_schema(reference))
    for json_schema in (True, False):
        assert build_request_body(CONFIG, PROMPT, fast, json_schema=json_schema) == build_request_body(
            CONFIG, PROMPT, reference, json_schema=json_schema
        )


@pytest.mark.parametrize("history", HISTORIES.values(), ids=HISTORIES.keys())
def test_profile_schema_is_byte_identical_to_the_create_model_one(history: list[str]) -> None:
    fast = profile_model(history)
    reference = reference_profile_model(history)
    assert fast.__name__ == reference.__name__ == "BehaviorProfile"
    assert dumps(strict_json_schema(fast)) == dumps(reference_strict_json_schema(reference))
    body = build_request_body(CONFIG, PROMPT, fast, json_schema=False)
    assert body == build_request_body(CONFIG, PROMPT, reference, json_schema=False)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    candidates=st.lists(st.text(max_size=6), min_size=1, max_size=8),
    history=st.lists(st.text(max_size=6), max_size=8),
)
def test_any_id_lists_give_the_reference_schema_and_validation(
    candidates: list[str], history: list[str]
) -> None:
    fast, reference = (
        recommendations_model(candidates, history),
        reference_recommendations_model(candidates, history),
    )
    assert dumps(strict_json_schema(fast)) == dumps(reference_strict_json_schema(reference))
    for reply in recommend_replies(candidates, history)[:6]:
        assert outcome(fast, reply) == outcome(reference, reply)
    fast_profile, reference_profile = profile_model(history), reference_profile_model(history)
    assert dumps(strict_json_schema(fast_profile)) == dumps(reference_strict_json_schema(reference_profile))
    for reply in profile_replies(history)[:4]:
        assert outcome(fast_profile, reply) == outcome(reference_profile, reply)


def test_reply_context_models_send_the_reference_schema() -> None:
    base = {"user_id": "u1", "history_ids": ["h1", "h2"], "events_total": 2, "events_shown": 2}
    recommend = ReplyContext(task="recommend", shown=["i2", "i1"], k=2, **base)  # type: ignore[arg-type]
    profile = ReplyContext(task="profile", **base)  # type: ignore[arg-type]
    assert strict_json_schema(recommend.output_model()) == reference_strict_json_schema(
        reference_recommendations_model(["i2", "i1"], ["h1", "h2"])
    )
    assert strict_json_schema(profile.output_model()) == reference_strict_json_schema(
        reference_profile_model(["h1", "h2"])
    )


# -- validation is unchanged --------------------------------------------------------------------


@pytest.mark.parametrize("history", HISTORIES.values(), ids=HISTORIES.keys())
@pytest.mark.parametrize("candidates", CANDIDATES.values(), ids=CANDIDATES.keys())
def test_recommendation_replies_validate_exactly_as_before(candidates: list[str], history: list[str]) -> None:
    fast = recommendations_model(candidates, history)
    reference = reference_recommendations_model(candidates, history)
    for reply in recommend_replies(candidates, history):
        assert outcome(fast, reply) == outcome(reference, reply), reply


@pytest.mark.parametrize("history", HISTORIES.values(), ids=HISTORIES.keys())
def test_profile_replies_validate_exactly_as_before(history: list[str]) -> None:
    fast, reference = profile_model(history), reference_profile_model(history)
    for reply in profile_replies(history):
        assert outcome(fast, reply) == outcome(reference, reply), reply


def test_ids_outside_the_enums_raise_validation_error() -> None:
    model = recommendations_model(["A", "B"], ["H1"])
    item = {"item_id": "A", "score": 0.5, "reason": "r", "evidence": ["H1"]}
    with pytest.raises(ValidationError, match=r"items\.0\.item_id\n  Input should be 'A' or 'B'"):
        model.model_validate_json(json.dumps({"items": [{**item, "item_id": "C"}]}))
    with pytest.raises(ValidationError, match=r"items\.0\.evidence\.0\n  Input should be 'H1'"):
        model.model_validate_json(json.dumps({"items": [{**item, "evidence": ["H2"]}]}))
    with pytest.raises(ValidationError, match=r"interests\.0\.evidence\.0"):
        profile_model(["H1", "H2"]).model_validate_json(
            json.dumps(
                {
                    "summary": "s",
                    "interests": [{"name": "n", "strength": 0.5, "evidence": ["H3"]}],
                    "dislikes": [],
                    "patterns": {
                        "price_sensitivity": "low",
                        "typical_price_min": None,
                        "typical_price_max": None,
                        "recent_focus": None,
                        "exploration": "mixed",
                    },
                }
            )
        )


def test_valid_replies_are_the_familiar_objects() -> None:
    model = recommendations_model(["A", "B"], ["H1"])
    value = model.model_validate_json(
        json.dumps({"items": [{"item_id": "B", "score": 0.75, "reason": "fits", "evidence": ["H1"]}]})
    )
    assert isinstance(value, model) and isinstance(value, Recommendations)
    item = value.items[0]
    assert (item.item_id, item.score, item.reason, item.evidence) == ("B", 0.75, "fits", ["H1"])
    assert type(item) is RankedItem  # a plain item: dumps, copies and pickles like any other
    assert item.model_dump() == {"item_id": "B", "score": 0.75, "reason": "fits", "evidence": ["H1"]}
    assert value.model_dump() == {"items": [item.model_dump()]}
    assert value.model_validate(value.model_dump()) == value


def test_a_reask_after_an_invented_id_sends_the_same_bodies_as_before() -> None:
    """Cassettes record re-asks too: the error text quoted to the model must not change."""
    bad = json.dumps({"items": [{"item_id": "Z", "score": 0.5, "reason": "r", "evidence": ["H9"]}]})
    good = json.dumps({"items": [{"item_id": "A", "score": 0.5, "reason": "r", "evidence": ["H1"]}]})
    sent = []
    for model in (
        recommendations_model(["A", "B"], ["H1"]),
        reference_recommendations_model(["A", "B"], ["H1"]),
    ):
        with LoopbackServer(responder=ScriptedResponder([bad, good])) as server:
            client = ChatClient(LLMConfig(base_url=server.base_url, api_key="sk-test", timeout_s=2.0))
            try:
                reply = client.complete(PROMPT, model)
            finally:
                client.close()
            assert reply.attempts == 2 and reply.value.items[0].item_id == "A"
            sent.append(chat_bodies(server))
    assert json.dumps(sent[0]) == json.dumps(sent[1])
    assert "Input should be 'A' or 'B'" in sent[0][1]["messages"][-1]["content"]


# -- construction, cache, fallbacks ---------------------------------------------------------------


def test_no_candidates_is_an_error_and_no_history_is_the_plain_profile() -> None:
    with pytest.raises(ValueError, match="at least one candidate"):
        recommendations_model([], ["h"])
    assert profile_model([]) is BehaviorProfile


def test_same_ids_give_the_same_class_and_schemas_are_fresh_copies() -> None:
    model = recommendations_model(["A", "B"], ["H1"])
    assert recommendations_model(["A", "B"], ("H1",)) is model
    assert recommendations_model(["B", "A"], ["H1"]) is not model
    assert profile_model(["H1"]) is profile_model(["H1"])
    schema = strict_json_schema(model)
    schema["$defs"]["RankedItem"]["properties"]["item_id"]["enum"].append("X")
    schema.clear()
    assert strict_json_schema(model)["$defs"]["RankedItem"]["properties"]["item_id"]["enum"] == ["A", "B"]
    static = strict_json_schema(BehaviorProfile)
    static.clear()
    assert strict_json_schema(BehaviorProfile) == reference_strict_json_schema(BehaviorProfile)


def test_every_shape_uses_the_fast_path() -> None:
    """A template failing its check against pydantic would silently cost ~2 ms per request again."""
    for n_candidates in (1, 2):
        for n_history in (0, 1, 2):
            assert schemas._template("recommend", n_candidates, n_history) is not None
    for n_history in (1, 2):
        assert schemas._template("profile", 0, n_history) is not None


def test_models_dropped_from_the_cache_are_freed() -> None:
    ref = weakref.ref(recommendations_model(["A", "B"], ["H1"]))
    profile_ref = weakref.ref(profile_model(["H1", "H2"]))
    schemas.clear_reply_model_cache()
    gc.collect()
    assert ref() is None and profile_ref() is None


def test_ids_pydantic_cannot_hold_fail_as_before() -> None:
    for build in (recommendations_model, reference_recommendations_model):
        with pytest.raises(SchemaError, match="error extracting str"):
            build(["ok", "\ud800lone"], [])  # a lone surrogate is not valid text


def test_non_string_ids_use_the_reference_construction() -> None:
    fast = recommendations_model([1, 2], [3])  # type: ignore[list-item]
    reference = reference_recommendations_model([1, 2], [3])
    assert dumps(strict_json_schema(fast)) == dumps(reference_strict_json_schema(reference))
    reply = json.dumps({"items": [{"item_id": 2, "score": 0.5, "reason": "r", "evidence": [4]}]})
    assert outcome(fast, reply) == outcome(reference, reply)


@pytest.fixture
def fresh_templates() -> Iterator[None]:
    schemas._template.cache_clear()
    yield
    schemas._template.cache_clear()


def test_a_template_that_loses_the_enums_is_caught_and_not_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_templates: None
) -> None:
    # With prebuilt validators on, pydantic-core validates nested items with RankedItem's own
    # validator (no enum): the check against the reference must notice and fall back.
    monkeypatch.setattr(
        schemas, "_schema_validator", lambda schema, config: schemas.SchemaValidator(schema, config)
    )
    with caplog.at_level(logging.WARNING, logger="agent.prompting.schemas"):
        model = recommendations_model(["A", "B"], ["H1"])
    assert "do not match" in caplog.text
    with pytest.raises(ValidationError, match="Input should be 'A' or 'B'"):
        model.model_validate_json(
            json.dumps({"items": [{"item_id": "C", "score": 0, "reason": "", "evidence": []}]})
        )
    reference = reference_recommendations_model(["A", "B"], ["H1"])
    assert dumps(strict_json_schema(model)) == dumps(reference_strict_json_schema(reference))

"""Pydantic models of the model's replies, written for strict structured outputs.

Strict mode (OpenAI ``response_format: json_schema, strict: true``; vLLM/Ollama/llama.cpp
grammar-constrained decoding) needs every field required, optional ones nullable, no free-form
dicts, and ``additionalProperties: false``. ``strict_json_schema`` turns a pydantic model into
such a schema. Reply models whose ids must come from one request's candidates or history are
built per request (``recommendations_model``, ``profile_model``) with enums, so an invented
item id cannot be produced by a server that enforces the schema; ``agent.ranking.grounding`` still
checks every reply, because not every server does.

Per-request models are on every request's path, so they are not built by pydantic's schema
generation (~1 ms each, and as much again for the JSON schema). Once per *shape* (one or
several candidates; no, one or several history ids) a reference model is built with
placeholder ids (``Literal`` enums, exactly as a hand-written model would be); a request's
model reuses its core schema and its strict JSON schema with the placeholders replaced by
that request's ids, and is checked against the reference once per shape at first use (any
difference: the reference construction is used instead, with a warning). Same JSON schema,
byte for byte, same validation and error texts, ~0.25 ms instead of ~2 ms
(``scripts/bench_schemas.py``); the last ``CACHE_SIZE`` id lists are cached. One visible
difference: nested items of a validated reply are the static ``RankedItem``/``Interest``/
``Dislike`` classes, not per-request subclasses.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic_core import SchemaValidator

log = logging.getLogger(__name__)

PriceSensitivity = Literal["low", "medium", "high", "unknown"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Interest(StrictModel):
    """One thing the user likes, with how strongly and the history items that show it."""

    name: str = Field(description="Short label, e.g. 'trail running' or 'space opera'.")
    strength: float = Field(ge=0.0, le=1.0, description="0 = faint, 1 = defining interest.")
    evidence: list[str] = Field(description="Item ids from the history that support this interest.")


class Dislike(StrictModel):
    """Something the user avoids (explicit dislikes, low ratings, abandoned carts)."""

    name: str
    evidence: list[str]


class BehaviorPatterns(StrictModel):
    price_sensitivity: PriceSensitivity
    typical_price_min: float | None = Field(description="Low end of what they pay; null if unknown.")
    typical_price_max: float | None = Field(description="High end of what they pay; null if unknown.")
    recent_focus: str | None = Field(description="What the most recent events concentrate on, if anything.")
    exploration: Literal["focused", "mixed", "exploratory"]

    @model_validator(mode="after")
    def _price_range(self) -> BehaviorPatterns:
        # Not in the JSON schema (strict mode has no cross-field rules): a reply that breaks it
        # fails validation and is re-asked with this message, like any other invalid reply.
        low, high = self.typical_price_min, self.typical_price_max
        for name, value in (("typical_price_min", low), ("typical_price_max", high)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a price >= 0 or null, got {value}")
        if low is not None and high is not None and low > high:
            raise ValueError(f"typical_price_min ({low:g}) is above typical_price_max ({high:g})")
        return self

    def without_prices(self) -> BehaviorPatterns:
        """These patterns with no price facts (for a catalog that has no prices)."""
        return self.model_copy(
            update={"price_sensitivity": "unknown", "typical_price_min": None, "typical_price_max": None}
        )


class BehaviorProfile(StrictModel):
    """A grounded summary of one user's tastes, built only from their history."""

    summary: str = Field(description="Two or three sentences; no personal data.")
    interests: list[Interest]
    dislikes: list[Dislike]
    patterns: BehaviorPatterns


class RankedItem(StrictModel):
    item_id: str
    score: float = Field(ge=0.0, le=1.0, description="Confidence the user will want this item.")
    reason: str = Field(description="One sentence citing what in the history makes this a fit.")
    evidence: list[str] = Field(description="History item ids the reason relies on.")


class Recommendations(StrictModel):
    """The model's ranking: best first, only candidate ids."""

    items: list[RankedItem]


class AgentReply(StrictModel):
    """One reply schema for both agent tasks: the shared alternative to per-request enums.

    Providers cache prompt prefixes, and OpenAI counts the response schema as the start of
    the prompt: with per-request schemas (``profile_model``, ``recommendations_model``, whose
    enums list each request's ids) no two requests share a prefix, whatever their messages.
    With this one schema for every profile and ranking request, one user's two requests share
    schema, system message and history, and every request shares schema and system message
    (``AgentConfig.reply_schema = "shared"``). The price: ids are no longer enums, so a server
    that enforces schemas can no longer rule out invented ids; grounding
    (``agent.ranking.grounding``) drops them, as it does for servers without strict schemas,
    and reports the rate. ``shared_reply_model(task)`` requires the task's field.
    """

    model_config = ConfigDict(extra="forbid", title="AgentReply")

    profile: BehaviorProfile | None = Field(
        description="The behavior profile when the task is profile, else null."
    )
    ranking: Recommendations | None = Field(
        description="The ranked candidates when the task is ranking, else null."
    )

    def answer(self) -> BehaviorProfile | Recommendations:
        """The filled field (``shared_reply_model`` guarantees one)."""
        answer = self.profile if self.profile is not None else self.ranking
        if answer is None:
            raise ValueError("an AgentReply with neither profile nor ranking")
        return answer


class _ProfileAgentReply(AgentReply):
    @model_validator(mode="after")
    def _requires_profile(self) -> _ProfileAgentReply:
        if self.profile is None or self.ranking is not None:
            raise ValueError("the task is profile: give 'profile' and set 'ranking' to null")
        return self


class _RankingAgentReply(AgentReply):
    @model_validator(mode="after")
    def _requires_ranking(self) -> _RankingAgentReply:
        if self.ranking is None or self.profile is not None:
            raise ValueError("the task is ranking: give 'ranking' and set 'profile' to null")
        return self


# Same name and title as AgentReply: the request body (schema and its name) must be identical
# for both tasks, or providers see two prefixes; the validators above are not in the schema.
# (Only these two are ever sent; AgentReply's own schema differs from theirs by its docstring.)
_ProfileAgentReply.__name__ = _RankingAgentReply.__name__ = "AgentReply"
_ProfileAgentReply.__qualname__ = _RankingAgentReply.__qualname__ = "AgentReply"


def shared_reply_model(task: Literal["profile", "recommend"]) -> type[AgentReply]:
    """The ``AgentReply`` schema, validating that the reply fills ``task``'s field only."""
    return _ProfileAgentReply if task == "profile" else _RankingAgentReply


CACHE_SIZE = 256
"""Per-request models kept per function, by id lists: covers the batch runner's plan-to-send
window (queue of 2 x concurrency plus those in flight) and the sync path's repeated calls."""

R = TypeVar("R", bound=BaseModel)


def recommendations_model(candidate_ids: Sequence[str], history_ids: Sequence[str]) -> type[Recommendations]:
    """A ``Recommendations`` subclass whose ids are enums of this request's candidates/history.

    ``item_id`` must be one of ``candidate_ids`` and every ``evidence`` id one of
    ``history_ids`` (any string when there is no history); anything else raises pydantic's
    ``ValidationError`` at validation. Duplicate ids count once. The same ids give the same
    class object (cached). Validated items are plain ``RankedItem`` instances. Raises
    ``ValueError`` without candidates.
    """
    if not candidate_ids:
        raise ValueError("a recommendation request needs at least one candidate")
    candidates, history = tuple(candidate_ids), tuple(history_ids)
    if not _all_str(candidates + history):
        return _literal_recommendations_model(candidates, history)
    return _cached_recommendations_model(candidates, history)


def profile_model(history_ids: Sequence[str]) -> type[BehaviorProfile]:
    """A ``BehaviorProfile`` subclass whose evidence ids are an enum of the shown history.

    ``BehaviorProfile`` itself when there is no history. Evidence ids outside ``history_ids``
    raise pydantic's ``ValidationError`` at validation. The same ids give the same class
    object (cached). Validated interests/dislikes are plain ``Interest``/``Dislike`` instances.
    """
    if not history_ids:
        return BehaviorProfile
    history = tuple(history_ids)
    if not _all_str(history):
        return _literal_profile_model(history)
    return _cached_profile_model(history)


def clear_reply_model_cache() -> None:
    """Forget cached per-request models (benchmarks; shape templates are kept)."""
    _cached_recommendations_model.cache_clear()
    _cached_profile_model.cache_clear()


# -- the reference construction (pydantic schema generation; slow) --------------------------


def _literal_recommendations_model(
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


def _literal_profile_model(history_ids: Sequence[Any]) -> type[BehaviorProfile]:
    evidence_type: Any = Literal[tuple(history_ids)]
    interest = create_model("Interest", __base__=Interest, evidence=(list[evidence_type], ...))
    dislike = create_model("Dislike", __base__=Dislike, evidence=(list[evidence_type], ...))
    return create_model(
        "BehaviorProfile",
        __base__=BehaviorProfile,
        interests=(list[interest], ...),  # type: ignore[valid-type]
        dislikes=(list[dislike], ...),  # type: ignore[valid-type]
    )


# -- the fast construction: per-shape templates ---------------------------------------------


@functools.lru_cache(maxsize=CACHE_SIZE)
def _cached_recommendations_model(
    candidates: tuple[str, ...], history: tuple[str, ...]
) -> type[Recommendations]:
    candidates, history = _unique(candidates), _unique(history)
    template = _template("recommend", _arity(candidates), _arity(history))
    if template is None:
        return _literal_recommendations_model(candidates, history)
    return template.instantiate(Recommendations, {"candidates": candidates, "history": history})


@functools.lru_cache(maxsize=CACHE_SIZE)
def _cached_profile_model(history: tuple[str, ...]) -> type[BehaviorProfile]:
    history = _unique(history)
    template = _template("profile", 0, _arity(history))
    if template is None:
        return _literal_profile_model(history)
    return template.instantiate(BehaviorProfile, {"history": history})


def _all_str(ids: tuple[Any, ...]) -> bool:
    return all(type(i) is str for i in ids)


def _unique(ids: tuple[str, ...]) -> tuple[str, ...]:
    # Literal[...] drops repeated values (first one kept), so the reference enums do too.
    return tuple(dict.fromkeys(ids))


def _arity(ids: tuple[str, ...]) -> int:
    """0, 1 or 2 (= several): pydantic writes no enum, a ``const`` or an ``enum`` for these."""
    return min(len(ids), 2)


def _placeholders(role: str, arity: int, tag: str) -> tuple[str, ...]:
    return tuple(f"__recagent_{tag}_{role}_{i}__" for i in range(arity))


@dataclass(frozen=True)
class _Template:
    """One shape's reference model taken apart: where a request's ids and classes go.

    ``edits`` mirrors the core schema down to the places to change: a nested dict per
    container on the way, a role name (``candidates``, ``history``, ``root``, ``class:<n>``)
    at each value to replace. ``json_parts`` is the strict JSON schema's text split at the
    placeholders: even items are text, odd items role names.
    """

    core_schema: dict[str, Any]
    config: Any
    edits: dict[Any, Any]
    fixed: dict[str, Any]
    json_parts: tuple[str, ...]
    arity: dict[str, int]

    def instantiate(self, base: type[R], ids: dict[str, tuple[str, ...]]) -> type[R]:
        """A new subclass of ``base`` validating with these ids; its strict schema is registered."""
        meta: Any = type(base)
        # defer_build: pydantic must not generate a schema (the slow part); it gets ours below.
        cls: type[R] = meta(
            base.__name__,
            (base,),
            {"__module__": __name__, "__qualname__": base.__qualname__, "__doc__": None},
            defer_build=True,
            __pydantic_reset_parent_namespace__=False,
        )
        cls.model_config = dict(base.model_config)  # type: ignore[assignment]
        values = {**self.fixed, "root": cls, **{role: list(v) for role, v in ids.items()}}
        schema = _apply_edits(self.core_schema, self.edits, values)
        cls.__pydantic_core_schema__ = schema
        cls.__pydantic_validator__ = _schema_validator(schema, self.config)
        # Nested models are the static classes and the fields serialize alike: reuse its serializer.
        cls.__pydantic_serializer__ = base.__pydantic_serializer__
        cls.__pydantic_complete__ = True
        rendered = {
            role: json.dumps(list(v) if self.arity[role] > 1 else v[0]) for role, v in ids.items() if v
        }
        text = "".join(rendered[part] if i % 2 else part for i, part in enumerate(self.json_parts))
        _STRICT_JSON[cls] = text
        return cls


@functools.cache
def _template(kind: Literal["recommend", "profile"], n_candidates: int, n_history: int) -> _Template | None:
    """The template of one shape, or None if it does not reproduce the reference exactly."""
    base: type[BaseModel] = Recommendations if kind == "recommend" else BehaviorProfile
    sentinels = {
        "candidates": _placeholders("candidates", n_candidates, "id"),
        "history": _placeholders("history", n_history, "id"),
    }
    probes = {
        "candidates": _placeholders("candidates", n_candidates, "probe"),
        "history": _placeholders("history", n_history, "probe"),
    }
    try:
        template = _build_template(kind, sentinels)
        if template is not None and _same_as_reference(template, base, kind, probes):
            return template
    except Exception:  # pydantic internals moved: the reference construction still works
        log.warning("fast %s reply models failed to build; using create_model", kind, exc_info=True)
        return None
    log.warning("fast %s reply models do not match pydantic's for this shape; using create_model", kind)
    return None


def _reference(kind: str, ids: dict[str, tuple[str, ...]]) -> type[BaseModel]:
    if kind == "recommend":
        return _literal_recommendations_model(ids["candidates"], ids["history"])
    return _literal_profile_model(ids["history"])


def _build_template(kind: str, sentinels: dict[str, tuple[str, ...]]) -> _Template | None:
    active = {role: ids for role, ids in sentinels.items() if ids}
    reference = _reference(kind, sentinels)
    literals = {ids: role for role, ids in active.items()}
    classes: dict[type, str] = {reference: "root"}
    fixed: dict[str, Any] = {}
    for static in (RankedItem, Interest, Dislike):
        fixed[f"class:{static.__name__}"] = static

    def match(node: dict[str, Any]) -> dict[str, str]:
        if node.get("type") == "literal" and tuple(node.get("expected", ())) in literals:
            return {"expected": literals[tuple(node["expected"])]}
        cls = node.get("cls")
        if node.get("type") == "model" and isinstance(cls, type):
            if cls in classes:
                return {"cls": classes[cls]}
            # create_model's per-request subclasses become the static classes they extend.
            static = next(
                (s for s in (RankedItem, Interest, Dislike) if cls is not s and issubclass(cls, s)), None
            )
            if static is not None:
                return {"cls": f"class:{static.__name__}"}
        return {}

    core_schema = reference.__pydantic_core_schema__
    edits = _edit_tree(core_schema, match)
    text = json.dumps(_strict_json_schema(reference))
    tokens = {json.dumps(list(ids) if len(ids) > 1 else ids[0]): role for role, ids in active.items()}
    if not tokens:
        parts: tuple[str, ...] = (text,)
    else:
        split = re.split("(" + "|".join(map(re.escape, tokens)) + ")", text)
        parts = tuple(tokens[part] if i % 2 else part for i, part in enumerate(split))
    if any("__recagent_id_" in part for part in parts[::2]):
        return None  # a placeholder in an unexpected form: do not guess
    return _Template(
        core_schema=dict(core_schema),
        config=core_schema.get("config"),
        edits=edits,
        fixed=fixed,
        json_parts=parts,
        arity={role: len(ids) for role, ids in sentinels.items()},
    )


def _same_as_reference(
    template: _Template, base: type[BaseModel], kind: str, ids: dict[str, tuple[str, ...]]
) -> bool:
    """Whether a model from ``template`` equals the reference one for ``ids``: schema and replies."""
    fast = template.instantiate(base, ids)
    reference = _reference(kind, ids)
    if _STRICT_JSON[fast] != json.dumps(_strict_json_schema(reference)):
        return False
    return all(_outcome(fast, reply) == _outcome(reference, reply) for reply in _probe_replies(kind, ids))


def _outcome(model: type[BaseModel], text: str) -> tuple[Any, ...]:
    try:
        value = model.model_validate_json(text)
    except ValidationError as exc:
        return ("invalid", exc.title, exc.errors(), str(exc))
    return ("valid", value.model_dump(), value.model_dump_json())


def _probe_replies(kind: str, ids: dict[str, tuple[str, ...]]) -> list[str]:
    history = ids["history"]
    good = [history[-1]] if history else ["anything"]
    bad, wrong_type = ["__recagent_invented__"], [7]
    if kind == "recommend":
        candidate = ids["candidates"][-1]

        def rec(item_id: Any, evidence: list[Any]) -> str:
            return json.dumps(
                {"items": [{"item_id": item_id, "score": 0.5, "reason": "r", "evidence": evidence}]}
            )

        return [
            rec(candidate, good),
            rec("__recagent_invented__", good),
            rec(candidate, bad),
            rec(5, wrong_type),
        ]

    def prof(interest: list[Any], dislike: list[Any]) -> str:
        patterns = {
            "price_sensitivity": "low",
            "typical_price_min": None,
            "typical_price_max": 3.5,
            "recent_focus": None,
            "exploration": "mixed",
        }
        return json.dumps(
            {
                "summary": "s",
                "interests": [{"name": "n", "strength": 0.5, "evidence": interest}],
                "dislikes": [{"name": "d", "evidence": dislike}],
                "patterns": patterns,
            }
        )

    return [prof(good, good), prof(bad, good), prof(good, bad), prof(wrong_type, wrong_type)]


def _edit_tree(node: Any, match: Any) -> dict[Any, Any]:
    """The places under ``node`` that ``match`` (dict node -> {key: role}) wants changed."""
    tree: dict[Any, Any] = {}
    if isinstance(node, dict):
        tree.update(match(node))
        children: Any = node.items()
    elif isinstance(node, list):
        children = enumerate(node)
    else:
        return tree
    for key, value in children:
        sub = _edit_tree(value, match)
        if sub:
            tree[key] = sub
    return tree


def _apply_edits(node: Any, edits: dict[Any, Any], values: dict[str, Any]) -> Any:
    """A copy of ``node`` with the edits applied; containers off the edited paths are shared."""
    new = dict(node) if isinstance(node, dict) else list(node)
    for key, sub in edits.items():
        new[key] = values[sub] if isinstance(sub, str) else _apply_edits(node[key], sub, values)
    return new


def _schema_validator(schema: Any, config: Any) -> SchemaValidator:
    # Prebuilt validators must be off: pydantic-core would otherwise validate a nested model
    # (a static RankedItem...) with that class's own validator, which has no enums.
    try:
        return SchemaValidator(schema, config, _use_prebuilt=False)
    except TypeError:  # a pydantic-core without the flag; the reference check decides
        return SchemaValidator(schema, config)


# -- strict JSON schema -------------------------------------------------------------------------

_UNSUPPORTED_KEYS = ("default", "title", "examples")

_STRICT_JSON: weakref.WeakKeyDictionary[type[BaseModel], str] = weakref.WeakKeyDictionary()
"""Strict schema text by class: per-request models at creation, other classes at first use."""


def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema made strict-mode compatible.

    Every object gets ``additionalProperties: false`` and all its properties required;
    defaults and titles are dropped. The root stays an object, as strict mode requires.
    Returns a new dict on every call. Memoized per class (a complete pydantic class's
    schema does not change); per-request reply models come with theirs.
    """
    text = _STRICT_JSON.get(model)
    if text is not None:
        return json.loads(text)
    schema = _strict_json_schema(model)
    if model.__dict__.get("__pydantic_complete__"):
        text = json.dumps(schema)
        if json.loads(text) == schema:  # only what survives JSON exactly (no tuples...)
            _STRICT_JSON[model] = text
    return schema


def _strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = copy.deepcopy(model.model_json_schema())

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key in _UNSUPPORTED_KEYS:
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

"""Tool calling: recagent as a set of OpenAI function tools inside a host's chat assistant.

``Toolbox(agent, user_id)`` is bound to the signed-in user of one chat session, so the host's
model never chooses whose data is read (a prompt injection cannot ask for another user's
history). ``toolbox.definitions`` are strict OpenAI function tools generated from the
argument models below (``agent.prompting.schemas.strict_json_schema``: every field required, optional
ones nullable, ``additionalProperties: false``); their descriptions use the domain's nouns.

``toolbox.handle(tool_call)`` takes an SDK tool call (or the same shape as a dict) and
always returns a ``{"role": "tool", "tool_call_id", "content"}`` message; it never raises
into the host's loop. ``content`` is JSON: ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": {"type", "message"}}`` for unknown tools, malformed JSON,
invalid arguments, recagent errors (unknown item, model failure...) and unexpected bugs
(logged with the traceback; the model only sees that the tool failed).

:func:`run_tool_loop` is a minimal assistant loop over the real ``openai`` SDK.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import openai
import pandas as pd
from openai.types.chat import ChatCompletionToolMessageParam, ChatCompletionToolParam
from pydantic import BaseModel, Field, ValidationError, create_model

from agent import errors
from agent.chat.constraints import Constraints, recommend_with_constraints
from agent.chat.content import ContentGenerator
from agent.chat.conversation import ChatFeedback, catalog_categories, record_feedback
from agent.chat.domains import DomainPreset, preset_for
from agent.prompting.schemas import StrictModel, strict_json_schema
from agent.recommender import RecommenderAgent

log = logging.getLogger(__name__)

MAX_K = 20


class RecommendItemsArgs(StrictModel):
    """Recommend {items} for the {user} in this chat. Hard filters are applied by code, so every
    returned {item} satisfies them. Use null or [] for filters the {user} did not ask for."""

    request: str | None = Field(
        description="What the {user} asked for, in their words; null if nothing specific."
    )
    k: int | None = Field(description="How many {items} to return (1-20); null for 5.")
    categories: list[str] | None = Field(description="Only these categories; null for any.")
    exclude_categories: list[str] | None = Field(description="Never these categories.")
    price_min: float | None = Field(description="Lowest acceptable price; null for none.")
    price_max: float | None = Field(description="Highest acceptable price; null for none.")
    required_terms: list[str] | None = Field(description="Words the {item} must mention, e.g. 'waterproof'.")
    excluded_terms: list[str] | None = Field(
        description="Words that rule out any {item} mentioning them, e.g. 'thriller'."
    )
    more_like_item_ids: list[str] | None = Field(description="Ids of {items} the {user} wants more like.")
    exclude_item_ids: list[str] | None = Field(description="Ids of {items} not to recommend.")


class ExplainRecommendationArgs(StrictModel):
    """Explain, from the {user}'s own history, why a recommended {item} suits them."""

    item_id: str = Field(description="Id of the {item} to explain (from recommend_items).")


class RecordFeedbackArgs(StrictModel):
    """Record the {user}'s reaction to one of the {items} ('I love it', 'not that one'). A
    dislike also keeps that {item} out of later recommendations in this chat."""

    item_id: str
    reaction: Literal["like", "dislike"]
    comment: str | None = Field(description="What the {user} said, if anything.")


class DescribeItemArgs(StrictModel):
    """Write a personalized description or summary of one of the {items} for the {user},
    stating only facts from its data."""

    item_id: str
    kind: Literal["description", "summary"] | None = Field(description="null for description.")


TOOL_MODELS: dict[str, type[StrictModel]] = {
    "recommend_items": RecommendItemsArgs,
    "explain_recommendation": ExplainRecommendationArgs,
    "record_feedback": RecordFeedbackArgs,
    "describe_item": DescribeItemArgs,
}
_PRICE_FIELDS = ("price_min", "price_max")


def _words(text: str, preset: DomainPreset) -> str:
    d = preset.domain
    return " ".join(
        text.replace("{items}", d.items_noun)
        .replace("{item}", d.item_noun)
        .replace("{user}", d.user_noun)
        .split()
    )


def argument_models(
    preset: DomainPreset, categories: list[str] | None = None
) -> dict[str, type[StrictModel]]:
    """The argument model of each tool for this domain: no price filters where items have no
    prices, and category filters as an enum of ``categories`` when given (at most 200)."""
    models = dict(TOOL_MODELS)
    fields: dict[str, Any] = {
        n: (f.annotation, f)
        for n, f in RecommendItemsArgs.model_fields.items()
        if preset.has_prices or n not in _PRICE_FIELDS
    }
    if categories and len(categories) <= 200:
        enum: Any = Literal[tuple(categories)]
        for name in ("categories", "exclude_categories"):
            fields[name] = (list[enum] | None, RecommendItemsArgs.model_fields[name])
    if len(fields) != len(RecommendItemsArgs.model_fields) or categories:
        models["recommend_items"] = create_model(
            "RecommendItemsArgs", __base__=StrictModel, __doc__=RecommendItemsArgs.__doc__, **fields
        )
    return models


def tool_definitions(
    preset: DomainPreset, categories: list[str] | None = None
) -> list[ChatCompletionToolParam]:
    """Strict OpenAI function tools (``tools=`` of ``chat.completions.create``) for ``preset``."""
    out: list[ChatCompletionToolParam] = []
    for name, model in argument_models(preset, categories).items():
        schema = json.loads(_words(json.dumps(strict_json_schema(model)), preset))
        schema.pop("description", None)  # the tool's description says it already
        out.append(
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": _words(model.__doc__ or name, preset),
                    "parameters": schema,
                    "strict": True,
                },
            }
        )
    return out


class ToolError(Exception):
    """Internal: a problem to report to the model as a tool result (never escapes ``handle``)."""

    def __init__(self, kind: str, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.details = details or []


class Toolbox:
    """The recagent tools for one user's chat session (see the module docstring)."""

    def __init__(
        self,
        agent: RecommenderAgent,
        user_id: str,
        *,
        preset: DomainPreset | None = None,
        items: pd.DataFrame | None = None,
        default_k: int = 5,
    ) -> None:
        self.agent = agent
        self.user_id = user_id
        self.preset = preset or preset_for(agent.config.domain)
        self.default_k = default_k
        categories = catalog_categories(agent)
        self.models = argument_models(self.preset, categories)
        self.definitions = tool_definitions(self.preset, categories)
        self.content = ContentGenerator(agent, preset=self.preset, items=items)
        self.feedback: list[ChatFeedback] = []
        self.excluded: list[str] = []
        self.last_recommendation_id: str | None = None
        self._last_items: set[str] = set()

    # -- the entry point ---------------------------------------------------------------
    def handle(self, tool_call: Any) -> ChatCompletionToolMessageParam:
        """Run one tool call and return the tool message for it. Never raises (``Exception``)."""
        call_id = _call_id(tool_call)  # first: every answer must carry the call's id
        try:
            name, arguments = _unpack(tool_call)
            payload: dict[str, Any] = {"ok": True, "result": self._run(name, arguments)}
        except ToolError as exc:
            payload = {"ok": False, "error": {"type": exc.kind, "message": str(exc)}}
            if exc.details:
                payload["error"]["details"] = exc.details
        except errors.RecommenderError as exc:
            payload = {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}}
        except Exception:
            log.exception("tool call %s failed unexpectedly", call_id)
            message = "the tool failed unexpectedly; tell the user it is unavailable right now"
            payload = {"ok": False, "error": {"type": "internal_error", "message": message}}
        content = json.dumps(payload, ensure_ascii=False, default=str)
        return {"role": "tool", "tool_call_id": call_id, "content": content}

    def _run(self, name: str, arguments: str) -> Any:
        model = self.models.get(name)
        if model is None:
            raise ToolError("unknown_tool", f"no tool named {name!r}; available: {', '.join(self.models)}")
        try:
            args = model.model_validate_json(arguments or "{}")
        except ValidationError as exc:
            details = [
                {"field": ".".join(str(p) for p in e["loc"]) or "(root)", "problem": e["msg"]}
                for e in exc.errors()
            ]
            raise ToolError("invalid_arguments", f"arguments for {name} are invalid", details[:10]) from None
        method = getattr(self, f"_tool_{name}")
        return method(args)

    # -- the tools ---------------------------------------------------------------------
    def _tool_recommend_items(self, args: BaseModel) -> dict[str, Any]:
        values = args.model_dump()
        k = values.get("k") or self.default_k
        if not 1 <= k <= MAX_K:
            raise ToolError("invalid_arguments", f"k must be between 1 and {MAX_K}, got {k}")
        constraints = Constraints(
            request=values.get("request"),
            categories=values.get("categories") or [],
            excluded_categories=values.get("exclude_categories") or [],
            price_min=values.get("price_min"),
            price_max=values.get("price_max"),
            required_terms=[t.lower() for t in values.get("required_terms") or []],
            excluded_terms=[t.lower() for t in values.get("excluded_terms") or []],
            more_like=[i for i in values.get("more_like_item_ids") or [] if i in self.agent.catalog],
            excluded_items=[*self.excluded, *(values.get("exclude_item_ids") or [])],
        )
        result, dropped = recommend_with_constraints(
            self.agent, self.user_id, constraints, k, has_prices=self.preset.has_prices
        )
        if result is None:
            return {"items": [], "filtered_out": dropped, "note": "nothing matches every filter; relax one"}
        self.last_recommendation_id = result.recommendation_id
        self._last_items = {r.item_id for r in result.items}
        items = []
        for rec in result.items:
            info = self.agent.catalog.get(rec.item_id)
            entry: dict[str, Any] = {"rank": rec.rank, "item_id": rec.item_id, "title": rec.title}
            if info and info.category:
                entry["category"] = info.category
            if info and info.price is not None and self.preset.has_prices:
                entry["price"] = info.price
            entry.update({"reason": rec.reason, "source": rec.source})
            items.append(entry)
        out: dict[str, Any] = {"items": items, "filtered_out": dropped}
        if result.fallback_reason:
            out["note"] = "ranked without the model: " + result.fallback_reason
        return out

    def _tool_explain_recommendation(self, args: ExplainRecommendationArgs) -> dict[str, Any]:
        generated = self.content.generate(self.user_id, args.item_id, "explanation")
        return {"item_id": args.item_id, "text": generated.text, "evidence": generated.evidence}

    def _tool_describe_item(self, args: DescribeItemArgs) -> dict[str, Any]:
        generated = self.content.generate(self.user_id, args.item_id, args.kind or "description")
        return {"item_id": args.item_id, "kind": generated.kind, "text": generated.text}

    def _tool_record_feedback(self, args: RecordFeedbackArgs) -> dict[str, Any]:
        if args.item_id not in self.agent.catalog:
            raise errors.UnknownItemError(f"item {args.item_id!r} is not in the catalog", column="item_id")
        behavior = self.preset.like_behavior if args.reaction == "like" else self.preset.dislike_behavior
        event = ChatFeedback(
            user_id=self.user_id,
            item_id=args.item_id,
            signal=args.reaction,
            behavior=behavior,
            timestamp=datetime.now(UTC),
            text=args.comment,
            source="tool",
            # link to the list that showed the item; otherwise the store links it (or not) itself
            recommendation_id=self.last_recommendation_id if args.item_id in self._last_items else None,
        )
        event = record_feedback(self.agent, event)
        self.feedback.append(event)
        if args.reaction == "dislike" and args.item_id not in self.excluded:
            self.excluded.append(args.item_id)
        return {"item_id": args.item_id, "behavior": behavior, "recorded": event.recorded}


def _call_id(tool_call: Any) -> str:
    raw = tool_call.get("id") if isinstance(tool_call, Mapping) else getattr(tool_call, "id", None)
    return str(raw or "unknown")


def _unpack(tool_call: Any) -> tuple[str, str]:
    """``(name, arguments)`` of an SDK tool call object or a dict of the same shape."""
    if isinstance(tool_call, Mapping):
        function = tool_call.get("function") or {}
        name, arguments = function.get("name"), function.get("arguments")
    else:
        function = getattr(tool_call, "function", None)
        name, arguments = getattr(function, "name", None), getattr(function, "arguments", None)
    if not isinstance(name, str) or not name:
        raise ToolError("invalid_call", "the tool call has no function name")
    if arguments is not None and not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    if arguments:
        try:
            json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise ToolError(
                "invalid_json", f"arguments are not valid JSON: {exc.msg} at char {exc.pos}"
            ) from None
    return name, arguments or "{}"


def run_tool_loop(
    sdk: openai.OpenAI,
    model: str,
    messages: list[Any],
    toolbox: Toolbox,
    *,
    max_rounds: int = 4,
) -> str:
    """Let the host's model call the tools until it answers in text; returns that text.

    ``messages`` (system, user, ... as dicts) is extended in place with the assistant's
    messages and the tool results, so the caller keeps the whole conversation. SDK errors
    (network, auth) propagate: they belong to the host, not to a tool.
    """
    for _ in range(max_rounds):
        completion = sdk.chat.completions.create(model=model, messages=messages, tools=toolbox.definitions)
        message = completion.choices[0].message
        messages.append(
            message.model_dump(exclude_none=True, exclude={"annotations", "audio", "function_call"})
        )
        if not message.tool_calls:
            return message.content or ""
        for call in message.tool_calls:
            messages.append(toolbox.handle(call))
    return f"(stopped after {max_rounds} rounds of tool calls without an answer)"

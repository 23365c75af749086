"""Domain presets: the same agent recommends products, articles/videos, or people/groups.

A domain is data, not code. It bundles

* the nouns every template speaks with (an ``agent.prompting.templates.Domain``: "shopper"/"product",
  "reader"/"article or video", "member"/"person or group");
* the behavior vocabulary of the domain's logs and how strongly each behavior signals
  interest (fed to the retriever, so a ``follow`` counts like a purchase on a social network);
* the behaviors a chat reaction is recorded as ("I like that one" is ``like`` in a shop and
  ``follow`` on a social network) and whether prices exist at all;
* the wording of the content-generation templates (what a "description", a "summary" and an
  "explanation" are called in this domain).

Built-in presets: ``commerce``, ``content``, ``social`` (``load_domain(name)``). A custom
domain is a TOML or JSON file with the fields of :class:`DomainPreset` (``load_domain(path)``);
fields left out take the ``commerce`` values, nouns included, so a file can change only what
differs. Invalid files raise ``ConfigError`` naming the file and the field.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.data.behaviors import DEFAULT_BEHAVIOR_WEIGHTS
from agent.errors import ConfigError
from agent.llm.client import ChatClient
from agent.prompting.templates import Domain
from agent.recommender import AgentConfig, RecommenderAgent
from agent.retrieval.candidates import Retriever, RetrieverConfig

__all__ = [
    "PRESETS",
    "ContentWording",
    "DomainPreset",
    "load_domain",
    "make_agent",
    "preset_for",
    "preset_names",
]


class ContentWording(BaseModel):
    """How the content templates name what they write, per kind (``description``, ...)."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(
        description="What a personalized item text is called, e.g. 'product description'."
    )
    summary: str = Field(description="What a short digest of an item is called, e.g. 'article summary'.")
    explanation: str = Field(description="What a 'why this fits you' text is called.")
    consume_verb: str = Field(description="What a user does with an item: 'buy', 'read or watch', 'follow'.")


class DomainPreset(BaseModel):
    """Everything that changes between e-commerce, content and social recommendations."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="Short name used on the command line, e.g. 'social'.")
    domain: Domain
    behaviors: list[str] = Field(description="The behavior vocabulary of this domain's logs.")
    behavior_weights: dict[str, float] = Field(
        description="Interest signal per behavior in [-1, 1] (unknown behaviors weigh like a view)."
    )
    like_behavior: str = Field(description="Behavior recorded when the user likes an item in chat.")
    dislike_behavior: str = Field(description="Behavior recorded when the user rejects an item in chat.")
    has_prices: bool = Field(description="Whether items have prices (price constraints are ignored if not).")
    wording: ContentWording

    @field_validator("behavior_weights")
    @classmethod
    def _weights_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not -1.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"behavior weights must be in [-1, 1], got {bad}")
        return value

    def retriever_config(self) -> RetrieverConfig:
        """Retriever settings that weigh this domain's behaviors (e.g. ``follow`` like a purchase)."""
        weights = {**DEFAULT_BEHAVIOR_WEIGHTS, **self.behavior_weights}
        return RetrieverConfig(behavior_weights=weights)

    def word_for(self, kind: str) -> str:
        """The domain's name for a content kind (``description``, ``summary``, ``explanation``)."""
        value = getattr(self.wording, kind, None)
        if not isinstance(value, str) or kind == "consume_verb":
            raise ConfigError(f"unknown content kind {kind!r}; use description, summary or explanation")
        return value


COMMERCE = DomainPreset(
    key="commerce",
    domain=Domain(name="e-commerce", user_noun="shopper", item_noun="product", items_noun="products"),
    behaviors=["view", "click", "cart", "purchase", "rating", "search", "like", "dislike"],
    behavior_weights=dict(DEFAULT_BEHAVIOR_WEIGHTS),
    like_behavior="like",
    dislike_behavior="dislike",
    has_prices=True,
    wording=ContentWording(
        description="product description",
        summary="product summary",
        explanation="explanation of why this product suits the shopper",
        consume_verb="buy",
    ),
)

CONTENT = DomainPreset(
    key="content",
    domain=Domain(
        name="content platform (articles and videos)",
        user_noun="reader",
        item_noun="article or video",
        items_noun="articles and videos",
    ),
    behaviors=["view", "click", "read", "watch", "like", "share", "comment", "rating", "search", "dislike"],
    behavior_weights={
        "view": 0.1,
        "click": 0.3,
        "read": 0.7,
        "watch": 0.7,
        "like": 0.8,
        "share": 1.0,
        "comment": 0.6,
        "search": 0.0,
        "dislike": -1.0,
    },
    like_behavior="like",
    dislike_behavior="dislike",
    has_prices=False,
    wording=ContentWording(
        description="personalized teaser",
        summary="summary",
        explanation="explanation of why this is worth the reader's time",
        consume_verb="read or watch",
    ),
)

SOCIAL = DomainPreset(
    key="social",
    domain=Domain(
        name="social network (people and groups to follow)",
        user_noun="member",
        item_noun="person or group",
        items_noun="people and groups",
    ),
    behaviors=["view", "follow", "like", "comment", "join", "search", "dislike"],
    behavior_weights={
        "view": 0.1,
        "like": 0.5,
        "comment": 0.7,
        "follow": 1.0,
        "join": 1.0,
        "search": 0.0,
        "dislike": -1.0,
    },
    like_behavior="follow",
    dislike_behavior="dislike",
    has_prices=False,
    wording=ContentWording(
        description="introduction of this person or group",
        summary="short profile summary",
        explanation="explanation of why the member might want to follow them",
        consume_verb="follow",
    ),
)

PRESETS: dict[str, DomainPreset] = {p.key: p for p in (COMMERCE, CONTENT, SOCIAL)}


def make_agent(
    preset: DomainPreset,
    events: pd.DataFrame,
    items: pd.DataFrame,
    client: ChatClient | None,
    **kwargs: Any,
) -> RecommenderAgent:
    """A ``RecommenderAgent`` for this domain: its nouns in every prompt and its behavior
    weights in the retriever. ``kwargs`` go to ``RecommenderAgent`` (``store=``...)."""
    config = AgentConfig(domain=preset.domain)
    retriever = Retriever.fit(events, items, preset.retriever_config())
    return RecommenderAgent(events, items, client, config, retriever=retriever, **kwargs)


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_for(domain: Domain) -> DomainPreset:
    """The preset whose nouns are ``domain`` (an agent's ``config.domain``); else ``commerce``
    behaviors and wording with these nouns."""
    for preset in PRESETS.values():
        if preset.domain == domain:
            return preset
    return COMMERCE.model_copy(update={"domain": domain, "key": "custom"})


def load_domain(name_or_path: str | Path | None) -> DomainPreset:
    """A built-in preset by name (``None`` = ``commerce``) or a custom one from a TOML/JSON file.

    Raises ``ConfigError`` for an unknown name, an unreadable or invalid file.
    """
    if name_or_path is None:
        return COMMERCE
    text = str(name_or_path)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if path.suffix.lower() not in (".toml", ".json"):
        raise ConfigError(f"unknown domain {text!r}: use one of {', '.join(PRESETS)} or a .toml/.json file")
    if not path.is_file():
        raise ConfigError(f"domain file not found: {path}")
    try:
        raw_text = path.read_text(encoding="utf-8")
        data: Any = tomllib.loads(raw_text) if path.suffix.lower() == ".toml" else json.loads(raw_text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read domain file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"domain file {path} must hold an object/table at the top level")
    base = PRESETS.get(str(data.get("extends", "commerce")))
    if base is None:
        raise ConfigError(f"domain file {path}: 'extends' must be one of {', '.join(PRESETS)}")
    data.pop("extends", None)
    merged = base.model_dump()
    for key, value in data.items():
        if key in ("domain", "wording") and isinstance(value, dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    if "key" not in data:
        merged["key"] = path.stem
    try:
        return DomainPreset.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "(root)"
        raise ConfigError(f"invalid domain file {path}: {where}: {first.get('msg')}") from None

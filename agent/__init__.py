"""recagent: behavior profiles and grounded, explained recommendations from any OpenAI-compatible chat API.

The public API is what this module exports; everything else may move between 0.x releases::

    from agent import RecommenderAgent, ChatClient, LLMConfig, load_events, load_items

    items = load_items("items.csv")
    events = align_catalog(load_events("events.csv"), items)
    agent = RecommenderAgent(events.frame, items.frame, ChatClient(LLMConfig.from_env()))
    result = agent.recommend("u001", k=10)

Names load on first use (PEP 562), so ``import agent`` costs nothing until one is touched:
the SDK, pandas and the retriever are imported by the code that needs them, which keeps the
command line's start-up fast. The package map is in the README's "Architecture" section.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # the agent facade
    "RecommenderAgent": "agent.recommender",
    "AgentConfig": "agent.recommender",
    "ProfileResult": "agent.recommender",
    "RecommendationResult": "agent.recommender",
    "Recommendation": "agent.recommender",
    # data in
    "load_events": "agent.data.loading",
    "load_items": "agent.data.loading",
    "align_catalog": "agent.data.loading",
    "Loaded": "agent.data.loading",
    # the model
    "ChatClient": "agent.llm.client",
    "LLMConfig": "agent.llm.client",
    "AsyncChatClient": "agent.llm.async_client",
    # retrieval, profiles, conversation, content
    "Retriever": "agent.retrieval.candidates",
    "RetrieverConfig": "agent.retrieval.candidates",
    "BehaviorProfile": "agent.prompting.schemas",
    "Store": "agent.profiles.store",
    "open_store": "agent.profiles.store",
    "Conversation": "agent.chat.conversation",
    "Toolbox": "agent.chat.tools",
    "ContentGenerator": "agent.chat.content",
    # errors (every one is a RecommenderError with an exit code)
    "RecommenderError": "agent.errors",
    "ConfigError": "agent.errors",
    "DataError": "agent.errors",
    "ModelError": "agent.errors",
    "StoreError": "agent.errors",
    "UnknownUserError": "agent.errors",
    "UnknownItemError": "agent.errors",
}

__all__ = [
    "AgentConfig",
    "AsyncChatClient",
    "BehaviorProfile",
    "ChatClient",
    "ConfigError",
    "ContentGenerator",
    "Conversation",
    "DataError",
    "LLMConfig",
    "Loaded",
    "ModelError",
    "ProfileResult",
    "Recommendation",
    "RecommendationResult",
    "RecommenderAgent",
    "RecommenderError",
    "Retriever",
    "RetrieverConfig",
    "Store",
    "StoreError",
    "Toolbox",
    "UnknownItemError",
    "UnknownUserError",
    "align_catalog",
    "load_events",
    "load_items",
    "open_store",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load lazily
    from agent.chat.content import ContentGenerator
    from agent.chat.conversation import Conversation
    from agent.chat.tools import Toolbox
    from agent.data.loading import Loaded, align_catalog, load_events, load_items
    from agent.errors import (
        ConfigError,
        DataError,
        ModelError,
        RecommenderError,
        StoreError,
        UnknownItemError,
        UnknownUserError,
    )
    from agent.llm.async_client import AsyncChatClient
    from agent.llm.client import ChatClient, LLMConfig
    from agent.profiles.store import Store, open_store
    from agent.prompting.schemas import BehaviorProfile
    from agent.recommender import (
        AgentConfig,
        ProfileResult,
        Recommendation,
        RecommendationResult,
        RecommenderAgent,
    )
    from agent.retrieval.candidates import Retriever, RetrieverConfig

"""Each tenant's live agent: its catalog and events from the store, kept fresh as data arrives.

Freshness policy (read-your-writes): every request first asks the store for the tenant's
``data_version`` (one indexed query). If events or items changed since the agent was built —
through this instance or any other on the same database — the new rows are read
incrementally, the histories and the retriever's item-item statistics are rebuilt once (one
rebuild serves every request waiting for it), and only then is the request answered. So an
event acknowledged by ``POST /v1/events`` is in the user's history and in the retriever's
statistics for the very next recommendation: staleness is zero, and the price is one rebuild
per burst of writes (measured in docs/BENCHMARKS.md, "Service"). Between writes, requests cost
only the version query.

Users with no events (new, or unknown to the tenant) get the agent's **cold-start**
recommendations (``RecommenderAgent``, ``AgentConfig.cold_start``): popular items, matched to
the request's query when there is one, marked ``source: "cold_start"``, never an error.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from agent.data.loading import align_catalog, clean_events, clean_items
from agent.llm.client import ChatClient
from agent.ranking.replies import RecommendationResult
from agent.recommender import AgentConfig, RecommenderAgent
from agent.service.storage import ServiceStore, TenantProfileStore

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("user_id", "item_id", "behavior", "timestamp", "value", "text")


@dataclass
class Snapshot:
    """One built agent and the data version it was built from."""

    agent: RecommenderAgent | None
    version: tuple[int, int]
    items: pd.DataFrame
    built_in_s: float


class TenantRuntime:
    """The agent of one tenant, rebuilt when the tenant's data changes (see module docstring)."""

    def __init__(
        self,
        store: ServiceStore,
        tenant: str,
        *,
        client: ChatClient | None,
        config: AgentConfig | None = None,
        on_rebuild: Callable[[float], None] | None = None,
    ) -> None:
        self.store = store
        self.tenant = tenant
        self.client = client
        self.config = config or AgentConfig()
        self.profiles: TenantProfileStore = store.profiles(tenant)
        self._lock = threading.Lock()
        self._events = pd.DataFrame({c: [] for c in EVENT_COLUMNS})
        self._items = pd.DataFrame({c: [] for c in ("item_id", "title")})
        self._seen: tuple[int, int] = (0, 0)
        self._snapshot: Snapshot | None = None
        self.rebuilds = 0
        self._on_rebuild = on_rebuild
        """Called with the seconds each rebuild took (the service's metrics)."""

    # -- freshness ---------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The agent as of the tenant's current data (rebuilt first if the data changed)."""
        version = self.store.data_version(self.tenant)
        current = self._snapshot
        if current is not None and current.version == version:
            return current
        with self._lock:  # one rebuild for everyone who arrived while the data was stale
            current = self._snapshot
            if current is not None and current.version >= version:
                return current
            return self._rebuild()

    def _rebuild(self) -> Snapshot:
        start = time.perf_counter()
        seq, rev = self._seen
        new_events = self.store.events(self.tenant, after_seq=seq)
        new_items = self.store.items(self.tenant, after_rev=rev)
        if new_items:
            fresh = pd.DataFrame(new_items)
            rev = max(rev, int(fresh["rev"].max()))
            fresh = fresh.drop(columns=["rev"])
            kept = self._items[~self._items["item_id"].isin(fresh["item_id"])] if len(self._items) else None
            self._items = pd.concat([kept, fresh], ignore_index=True) if kept is not None else fresh
        if new_events:
            fresh_events = pd.DataFrame(new_events)
            seq = max(seq, int(fresh_events["seq"].max()))
            fresh_events = fresh_events.drop(columns=["seq"])
            self._events = (
                pd.concat([self._events, fresh_events], ignore_index=True)
                if len(self._events)
                else fresh_events
            )
        self._seen = (seq, rev)
        agent = None
        items_frame = self._items
        if len(self._items):
            items = clean_items(self._items.copy(), file=f"tenant {self.tenant} items")
            items_frame = items.frame
            events = clean_events(self._events.copy(), file=f"tenant {self.tenant} events")
            events = align_catalog(events, items)
            agent = RecommenderAgent(events.frame, items.frame, self.client, self.config, store=self.profiles)
        took = time.perf_counter() - start
        self.rebuilds += 1
        if self._on_rebuild is not None:
            self._on_rebuild(took)
        self._snapshot = Snapshot(agent=agent, version=(seq, rev), items=items_frame, built_in_s=took)
        log.info("tenant data rebuilt in %.3f s (events seq %d, items rev %d)", took, seq, rev)
        return self._snapshot

    # -- recommendations ---------------------------------------------------------------------
    def recommend(
        self,
        user_id: str,
        k: int,
        query: str | None,
        run: Callable[[RecommenderAgent], RecommendationResult] | None = None,
    ) -> RecommendationResult:
        """``run(agent)`` on the fresh agent (default: ``agent.recommend``)."""
        snapshot = self.snapshot()
        agent = snapshot.agent
        if agent is None:
            return _empty(user_id, "the catalog is empty: POST /v1/items first")
        if run is not None:  # a user without events is served by the agent's own cold start
            return run(agent)
        return agent.recommend(user_id, k=k, query=query)


def _empty(user_id: str, why: str) -> RecommendationResult:
    return RecommendationResult(
        recommendation_id=uuid.uuid4().hex,
        user_id=user_id,
        items=[],
        candidates_considered=0,
        grounding={},
        fallback_reason=why,
        model=None,
        template_version=None,
        mode=None,
        usage={},
        orders=0,
    )

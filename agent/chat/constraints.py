"""Constraints of a conversation: what a message may change, how changes merge, and the filter.

* :class:`ConstraintUpdate` is what the model extracts from one message; :func:`update_model`
  narrows it for one request so categories and item ids are enums of what the model was shown
  (categories only up to ``MAX_CATEGORY_ENUM``).
* :func:`merge_update` is pure and deterministic. "cheaper" without an amount means *below
  the median price of the items just shown* (ignored without prices); rejected items stay
  excluded for the rest of the conversation, even after "start over"; at most
  ``MAX_MORE_LIKE`` "more like" items are kept (the latest).
* :func:`apply_constraints` keeps, in order, only the candidates that satisfy every hard
  filter (an item with no price fails any price filter; terms match whole words, plurals
  included) and counts the others by reason.
* :func:`recommend_with_constraints` retrieves with the request words (plus the titles of
  "more like" items), hard-filters, and has the agent rank only the survivors with the
  constraints as the request, so every recommendation satisfies them.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, create_model

from agent.prompting.schemas import StrictModel
from agent.recommender import RecommendationResult, RecommenderAgent
from agent.retrieval.candidates import Candidate

MAX_CATEGORY_ENUM = 200
"""Above this many catalog categories the extraction schema leaves categories free text."""
MAX_MORE_LIKE = 3
"""The "more like" items kept after a merge (the latest)."""


# -- models ----------------------------------------------------------------------------
class Constraints(BaseModel):
    """The merged request of a conversation; every field is applied by code as a hard filter."""

    request: str | None = None
    categories: list[str] = Field(default_factory=list)
    excluded_categories: list[str] = Field(default_factory=list)
    price_min: float | None = None
    price_max: float | None = None
    required_terms: list[str] = Field(default_factory=list)
    excluded_terms: list[str] = Field(default_factory=list)
    more_like: list[str] = Field(default_factory=list)
    less_like: list[str] = Field(default_factory=list)
    excluded_items: list[str] = Field(default_factory=list)

    def describe(self, titles: dict[str, str] | None = None) -> str:
        """The constraints in words (for the ranking prompt's request and the reply)."""
        titles = titles or {}
        parts = [self.request] if self.request else []
        if self.categories:
            parts.append("in " + " or ".join(self.categories))
        if self.price_min is not None:
            parts.append(f"from {self.price_min:g}")
        if self.price_max is not None:
            parts.append(f"up to {self.price_max:g}")
        if self.required_terms:
            parts.append("with " + ", ".join(self.required_terms))
        if self.more_like:
            parts.append("like " + ", ".join(titles.get(i, i) for i in self.more_like))
        nots = self.excluded_categories + self.excluded_terms
        nots += [titles.get(i, i) for i in self.less_like]
        if nots:
            parts.append("not " + ", ".join(nots))
        return "; ".join(parts)


class Reaction(StrictModel):
    item_id: str = Field(description="Id of a shown item the message reacts to.")
    reaction: Literal["like", "dislike"]


class ConstraintUpdate(StrictModel):
    """What one message changes; null, false and empty lists mean 'no change'.

    The defaults only serve code (``ConstraintUpdate(request=text)``): the strict schema the
    model gets has every field required.
    """

    request: str | None = Field(
        default=None, description="What they want now, in a few words; null to keep the previous."
    )
    start_over: bool = False
    add_categories: list[str] = Field(default_factory=list)
    exclude_categories: list[str] = Field(default_factory=list)
    price_min: float | None = None
    price_max: float | None = None
    cheaper: bool = Field(default=False, description="'cheaper' / 'less expensive' without an amount.")
    required_terms: list[str] = Field(default_factory=list)
    excluded_terms: list[str] = Field(default_factory=list)
    more_like: list[str] = Field(default_factory=list, description="Item ids the user wants more of.")
    less_like: list[str] = Field(default_factory=list, description="Item ids the user wants nothing like.")
    want_new: bool = Field(default=False, description="They want different items than those shown.")
    reactions: list[Reaction] = Field(default_factory=list)

    def only_reactions(self) -> bool:
        """True when the update changes nothing but reactions."""
        return self.model_dump(exclude={"reactions"}) == ConstraintUpdate().model_dump(exclude={"reactions"})


def update_model(categories: list[str], item_ids: list[str], shown_ids: list[str]) -> type[ConstraintUpdate]:
    """A ``ConstraintUpdate`` whose categories and ids are enums of what the model was shown."""
    fields: dict[str, Any] = {}
    if categories and len(categories) <= MAX_CATEGORY_ENUM:
        category: Any = Literal[tuple(categories)]
        fields["add_categories"] = (list[category], ...)
        fields["exclude_categories"] = (list[category], ...)
    if item_ids:
        ref: Any = Literal[tuple(item_ids)]
        fields["more_like"] = (list[ref], Field(description="Item ids the user wants more of."))
        fields["less_like"] = (list[ref], Field(description="Item ids the user wants nothing like."))
    if shown_ids:
        shown: Any = Literal[tuple(shown_ids)]
        reaction = create_model("Reaction", __base__=Reaction, item_id=(shown, ...))
        fields["reactions"] = (list[reaction], ...)  # type: ignore[valid-type]
    return create_model("ConstraintUpdate", __base__=ConstraintUpdate, **fields)


# -- merging and filtering (pure code) -------------------------------------------------
class Priced(Protocol):
    """An item the user was shown, as far as merging needs it (``conversation.ShownItem``)."""

    @property
    def price(self) -> float | None: ...


def _union(base: list[str], extra: list[str], minus: list[str] | None = None) -> list[str]:
    drop = {m.lower() for m in minus or []}
    return [x for x in dict.fromkeys([*base, *extra]) if x.lower() not in drop]


def _terms(words: list[str]) -> list[str]:
    return [w for w in dict.fromkeys(" ".join(t.lower().split()) for t in words) if w]


def merge_update(
    current: Constraints, update: ConstraintUpdate, shown: Sequence[Priced], *, has_prices: bool = True
) -> Constraints:
    """Apply one message's update to the constraints (see the module docstring for the rules)."""
    base = Constraints(excluded_items=current.excluded_items) if update.start_over else current
    new = base.model_copy(deep=True)
    if update.request:
        new.request = update.request.strip()
    new.categories = _union(new.categories, update.add_categories, update.exclude_categories)
    new.excluded_categories = _union(
        new.excluded_categories, update.exclude_categories, update.add_categories
    )
    required, excluded = _terms(update.required_terms), _terms(update.excluded_terms)
    new.required_terms = _union(new.required_terms, required, excluded)
    new.excluded_terms = _union(new.excluded_terms, excluded, required)
    if has_prices:
        if update.price_min is not None:
            new.price_min = update.price_min
        if update.price_max is not None:
            new.price_max = update.price_max
        elif update.cheaper:
            prices = [s.price for s in shown if s.price is not None]
            if prices:
                below = round(statistics.median(prices) - 0.01, 2)
                new.price_max = below if new.price_max is None else min(new.price_max, below)
    likes = [r.item_id for r in update.reactions if r.reaction == "like"]
    dislikes = [r.item_id for r in update.reactions if r.reaction == "dislike"]
    new.more_like = _union(new.more_like, [*update.more_like, *likes], [*update.less_like, *dislikes])
    new.more_like = new.more_like[-MAX_MORE_LIKE:]
    new.less_like = _union(new.less_like, update.less_like)
    new.excluded_items = _union(new.excluded_items, dislikes)
    return new


def _term_pattern(term: str) -> re.Pattern[str]:
    words = [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in term.split()]
    body = r"\W+".join(re.escape(w) + r"(?:s|es)?" for w in words)
    return re.compile(rf"(?<!\w){body}(?!\w)", re.I)


def apply_constraints(
    candidates: list[Candidate],
    constraints: Constraints,
    agent: RecommenderAgent,
    *,
    has_prices: bool = True,
    limit: int | None = None,
) -> tuple[list[Candidate], dict[str, int]]:
    """The candidates that satisfy every hard filter, in their order, and drops by reason.

    Stops after ``limit`` survivors (the drop counts then cover the candidates examined).
    """
    wanted = {c.lower() for c in constraints.categories}
    unwanted = {c.lower() for c in constraints.excluded_categories}
    required = [_term_pattern(t) for t in constraints.required_terms]
    excluded = [_term_pattern(t) for t in constraints.excluded_terms]
    blocked = set(constraints.excluded_items) | set(constraints.less_like)
    price_on = has_prices and (constraints.price_min is not None or constraints.price_max is not None)
    dropped: dict[str, int] = {}
    kept: list[Candidate] = []
    for candidate in candidates:
        if limit is not None and len(kept) >= limit:
            break
        info = agent.catalog.get(candidate.item_id)
        category = (info.category or "").lower() if info else ""
        text = " ".join(x for x in (info.title, info.category, info.description) if x) if info else ""
        reason = None
        if candidate.item_id in blocked:
            reason = "rejected"
        elif wanted and category not in wanted:
            reason = "category"
        elif category and category in unwanted:
            reason = "excluded_category"
        elif any(p.search(text) for p in excluded):
            reason = "excluded_term"
        elif not all(p.search(text) for p in required):
            reason = "required_term"
        elif price_on:
            price = info.price if info else None
            if (
                price is None
                or (constraints.price_min is not None and price < constraints.price_min)
                or (constraints.price_max is not None and price > constraints.price_max)
            ):
                reason = "price"
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
        else:
            kept.append(candidate)
    return kept, dropped


def recommend_with_constraints(
    agent: RecommenderAgent,
    user_id: str,
    constraints: Constraints,
    k: int,
    *,
    has_prices: bool = True,
    also_exclude: tuple[str, ...] = (),
) -> tuple[RecommendationResult | None, dict[str, int]]:
    """Retrieve, hard-filter and rank; ``(None, drops)`` when no candidate survives."""
    titles = [agent.catalog.title(i) for i in constraints.more_like]
    query = " ".join(x for x in (constraints.request, *constraints.required_terms, *titles) if x) or None
    exclude = (*constraints.excluded_items, *constraints.less_like, *also_exclude)
    pool = agent.retriever.candidates(
        user_id, n=None, query=query, exclude_consumed=agent.config.exclude_consumed, exclude=exclude
    )
    limit = max(agent.config.n_candidates, k)
    kept, dropped = apply_constraints(pool, constraints, agent, has_prices=has_prices, limit=limit)
    if not kept:
        return None, dropped
    names = {i: agent.catalog.title(i) for i in (*constraints.more_like, *constraints.less_like)}
    request = constraints.describe(names) or None
    result = agent.rank_candidates(user_id, kept, k=k, query=request)
    return result, dropped

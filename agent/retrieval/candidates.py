"""Candidate generation: the first stage of two-stage recommendation.

The model reranks and explains; the candidate set's hit rate is the ceiling of
everything after it. :class:`Retriever` blends four cheap, vectorized sources:

``cooccurrence``
    ItemKNN: cosine similarity (with shrinkage) between item columns of the sparse
    user×item matrix weighted by ``behavior_weight`` (purchase > cart > click > view;
    ratings count as a positive of weight 1 by default — ``rating_mode="implicit"`` — or
    by their value with ``"value"``). Pruned at fit time to the top ``neighbors`` per
    item, so querying is one sparse gather over the user's items. The user's items are
    weighted by recency relative to the user's *own* last event (half-lives in days
    and/or in events). Optionally (``window``) co-occurrence inside short windows of
    consecutive events counts extra, which makes the similarity sequence-aware.
``popularity``
    Behavior-weighted, time-decayed popularity (relative to the log's last event), mixed
    with popularity within the categories the user consumes (``category_share``).
``content``
    TF-IDF over title + category + description (+ ``genres`` when present); the user's
    profile is the recency-weighted mean of the consumed items' vectors.
``search``
    TF-IDF of the ``query=`` argument and of the user's past ``search`` events
    (recency-weighted) against the same item vectors.

Each source is normalized per user (divided by its max over the items still eligible)
and blended with ``RetrieverConfig.weights``. Users with no item history — unknown user
ids included — get popularity (and the query/search source if there is one): the
retriever never raises for an unknown user, the agent layer decides what to do.
Only positive-weight events feed the sources; every non-search event (dislikes
included) marks its item consumed, and consumed items are excluded by default. Items in
``exclude`` (the dislike hard filter) are never returned. Events on items missing from
``items`` are ignored. Tuning and measured quality/latency: docs/BENCHMARKS.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from agent.data.behaviors import DEFAULT_BEHAVIOR_WEIGHTS, DEFAULT_UNKNOWN_WEIGHT, RATING_SCALE
from agent.errors import ConfigError, DataError
from agent.retrieval.tfidf import TfidfVectorizer

__all__ = ["SOURCES", "Candidate", "FitCache", "Retriever", "RetrieverConfig"]

SOURCES: tuple[str, ...] = ("cooccurrence", "popularity", "content", "search")
_NS_PER_DAY = 86_400 * 1_000_000_000
_BLOCK_ITEMS = 2048  # rows of the item-item product computed (then pruned) at once


@dataclass(frozen=True)
class Candidate:
    """One retrieved item: blended ``score`` (higher is better) and per-source scores in [0, 1]."""

    item_id: str
    score: float
    sources: dict[str, float]


def _default_weights() -> dict[str, float]:
    # an explicit query outweighs every personal signal together (1 + 0.1 + 0.2 < 2)
    return {"cooccurrence": 1.0, "popularity": 0.1, "content": 0.2, "search": 2.0}


@dataclass(frozen=True)
class RetrieverConfig:
    """Retriever settings.

    The defaults are the compromise between ML-100K and Amazon Games chosen on validation
    targets only (2026-12-02): the validation split ``agent.retrieval.tuning`` cuts from each
    training split (each user's last training interaction), a 224-point grid over
    ``neighbors``, ``shrink``, ``window``, ``window_weight``, ``half_life_events`` and the
    content/popularity weights (``scripts/bench_retrieval.py --start-grid``); of the points no
    worse than the previous defaults on either data set, the one closest to each data set's
    best in the worse of the two (validation NDCG@10 + hit@50: ML-100K 0.634, Amazon 0.354;
    the previous defaults 0.472 and 0.353). Dense logs with session-like rating bursts gain
    from ``window``, sparse purchase sequences from more ``neighbors`` and ``shrink``. A
    compromise is weaker than settings tuned on a log's own last interactions:
    ``agent.retrieval.tuning.tune`` (``recagent tune``; ``recagent evaluate`` by default)
    starts from these and finds them. Test numbers: docs/BENCHMARKS.md.
    """

    weights: Mapping[str, float] = field(default_factory=_default_weights)
    """Blend weight per source (keys from ``SOURCES``; 0 switches a source off)."""
    neighbors: int = 400
    """Item-item neighbours kept per item (top-K pruning of the similarity matrix)."""
    shrink: float = 50.0
    """Cosine shrinkage: ``sim = co / (|i||j| + shrink)``; damps pairs seen by few users."""
    half_life_days: float | None = None
    """Recency half-life of a user's events, in days before the user's last event."""
    half_life_events: float | None = 3.0
    """Recency half-life in events: the user's n-th most recent item weighs 0.5**(n/h)."""
    rating_mode: Literal["implicit", "value"] = "implicit"
    """``implicit``: any rating is a positive (weight 1); ``value``: ``rating_weight`` (<=0 dropped)."""
    behavior_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_BEHAVIOR_WEIGHTS))
    popularity_half_life_days: float | None = 60.0
    """Popularity decay, in days before the log's last event (None: plain counts)."""
    window: int | None = 10
    """Also count co-occurrence within windows of this many consecutive events (sequence-aware)."""
    window_weight: float = 2.0
    """Weight of the windowed co-occurrence relative to the whole-history one."""
    category_share: float = 0.5
    """Share of the popularity source taken from popularity within the user's categories."""
    search_history_weight: float = 0.5
    """Weight of the user's past searches relative to the ``query=`` argument."""
    content_fields: tuple[str, ...] = ("title", "category", "description", "genres")
    """Item columns whose text feeds the TF-IDF vectors (missing columns are skipped)."""

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(SOURCES)
        if unknown:
            raise ConfigError(f"unknown retriever source(s) {sorted(unknown)}; known: {list(SOURCES)}")
        if any(w < 0 for w in self.weights.values()):
            raise ConfigError("retriever blend weights must be >= 0")
        if self.neighbors < 1:
            raise ConfigError("neighbors must be >= 1")
        if self.rating_mode not in ("implicit", "value"):
            raise ConfigError(f"rating_mode must be 'implicit' or 'value', got {self.rating_mode!r}")
        if self.window is not None and self.window < 2:
            raise ConfigError("window must be >= 2 events or None")
        if self.window_weight < 0 or self.search_history_weight < 0:
            raise ConfigError("window_weight and search_history_weight must be >= 0")
        if not 0.0 <= self.category_share <= 1.0:
            raise ConfigError("category_share must be in [0, 1]")
        for name in ("half_life_days", "half_life_events", "popularity_half_life_days"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0 or None")


def _decay(age: np.ndarray, half_life: float | None) -> np.ndarray:
    if half_life is None:
        return np.ones(len(age))
    return np.exp2(-np.asarray(age, dtype="float64") / half_life)


def _top_k_rows(block: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of every row of a CSR block (no duplicate entries)."""
    lengths = np.diff(block.indptr)
    if lengths.max(initial=0) <= k:
        return block
    keep = np.ones(block.nnz, dtype=bool)
    for row in np.flatnonzero(lengths > k):  # a loop over items, never over users or events
        start, end = block.indptr[row], block.indptr[row + 1]
        drop = np.argpartition(block.data[start:end], end - start - k)[: end - start - k]
        keep[start + drop] = False
    rows = np.repeat(np.arange(block.shape[0]), lengths)[keep]
    return sp.csr_matrix((block.data[keep], (rows, block.indices[keep])), shape=block.shape)


def _row_entries(matrix: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``matrix.data`` of the stored entries of ``rows`` (in order; rows < 0 are
    empty) and how many each row has."""
    rows = np.asarray(rows, dtype=np.int64)
    safe = np.where(rows >= 0, rows, 0)
    starts = matrix.indptr[safe]
    lengths = np.where(rows >= 0, matrix.indptr[safe + 1] - starts, 0)
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))
    return offsets, lengths


def _take_rows(matrix: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """``matrix[rows]`` keeping each row's stored order; rows < 0 give empty rows."""
    offsets, lengths = _row_entries(matrix, rows)
    indptr = np.r_[0, np.cumsum(lengths)]
    return sp.csr_matrix(
        (matrix.data[offsets], matrix.indices[offsets], indptr), shape=(len(lengths), matrix.shape[1])
    )


def _gather_rows(matrix: sp.csr_matrix, rows: np.ndarray, row_weights: np.ndarray, size: int) -> np.ndarray:
    """Dense ``row_weights @ matrix[rows]`` without building the slice."""
    starts, ends = matrix.indptr[rows], matrix.indptr[rows + 1]
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(size)
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(total)
    weights = matrix.data[offsets] * np.repeat(row_weights, lengths)
    return np.bincount(matrix.indices[offsets], weights=weights, minlength=size)


@dataclass(frozen=True)
class _Log:
    """The events and catalog parsed into arrays: what every fit of the same frames shares."""

    item_ids: np.ndarray
    item_index: dict[str, int]
    user_index: dict[str, int]
    user_codes: np.ndarray
    behavior_codes: np.ndarray
    behaviors: np.ndarray
    ts: np.ndarray
    value: np.ndarray
    item_codes: np.ndarray
    is_search: np.ndarray
    is_rating_event: np.ndarray
    category_codes: np.ndarray
    n_categories: int


def _parse_log(events: pd.DataFrame, items: pd.DataFrame) -> _Log:
    item_ids = items["item_id"].astype(str).to_numpy(dtype=object)
    catalog = pd.Index(item_ids)
    if not catalog.is_unique:
        raise DataError("items frame has duplicate item_id values", column="item_id")
    user_codes, users = pd.factorize(events["user_id"].astype(str), sort=False)
    behavior_codes, behavior_names = pd.factorize(events["behavior"].astype(str).str.lower())
    behaviors = np.asarray(behavior_names, dtype=object)
    value = events["value"].to_numpy(dtype="float64") if "value" in events else np.full(len(events), np.nan)
    event_items, distinct_items = pd.factorize(events["item_id"].astype(str))
    item_codes = catalog.get_indexer(distinct_items)[event_items] if len(distinct_items) else event_items
    category = items["category"] if "category" in items else pd.Series([None] * len(item_ids))
    codes, cats = pd.factorize(category.astype(object).where(category.notna(), None), sort=False)
    return _Log(
        item_ids=item_ids,
        item_index={item: i for i, item in enumerate(item_ids)},
        user_index={str(user): i for i, user in enumerate(users)},
        user_codes=user_codes,
        behavior_codes=behavior_codes,
        behaviors=behaviors,
        ts=events["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64"),
        value=value,
        item_codes=item_codes,
        is_search=behaviors[behavior_codes] == "search",
        is_rating_event=behaviors[behavior_codes] == "rating",
        category_codes=np.where(codes < 0, len(cats), codes),  # items without a category: one group
        n_categories=len(cats) + 1,
    )


def _fit_item_text(
    items: pd.DataFrame, fields: tuple[str, ...]
) -> tuple[TfidfVectorizer, sp.csr_matrix] | None:
    """TF-IDF vectors of the items' ``fields`` (None: no usable text at all)."""
    text = pd.Series([""] * len(items), index=items.index, dtype=object)
    for column in fields:
        if column in items:
            text = text + " " + items[column].astype(object).where(items[column].notna(), "").astype(str)
    vectorizer = TfidfVectorizer(dtype=np.float64)
    try:
        return vectorizer, vectorizer.fit_transform(text.tolist()).tocsr()
    except ValueError:  # empty vocabulary
        return None


def _similarity_key(cfg: RetrieverConfig) -> tuple[Any, ...]:
    """Every setting the item-item similarity depends on."""
    window = cfg.window if cfg.window and cfg.window_weight > 0 else None
    return (
        cfg.rating_mode,
        tuple(sorted(cfg.behavior_weights.items())),
        window,
        cfg.window_weight if window else None,
        cfg.shrink,
        cfg.neighbors,
    )


class FitCache:
    """Work that fits of the same ``events``/``items`` frames can share (retriever tuning).

    Parts that depend only on the frames (ids and codes, timestamps), or on the frames and a
    few settings (TF-IDF vectors: ``content_fields``; the item-item similarity: the settings in
    ``_similarity_key``), are computed once and keyed by those settings, so a fit through the
    cache equals a fit without it. Only the ``keep_similarities`` most recently used similarity
    matrices are kept (they are the large part).
    """

    def __init__(self, events: pd.DataFrame, items: pd.DataFrame, keep_similarities: int = 2) -> None:
        self.events, self.items = events, items
        self.keep_similarities = keep_similarities
        self._parts: dict[tuple[Any, ...], Any] = {}
        self._similarities: dict[tuple[Any, ...], sp.csr_matrix] = {}

    def part(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        if key not in self._parts:
            self._parts[key] = build()
        return self._parts[key]

    def similarity(self, key: tuple[Any, ...], build: Callable[[], sp.csr_matrix]) -> sp.csr_matrix:
        matrix = self._similarities.pop(key, None)
        if matrix is None:
            matrix = build()
        self._similarities[key] = matrix  # most recently used last
        while len(self._similarities) > self.keep_similarities:
            del self._similarities[next(iter(self._similarities))]
        return matrix


class Retriever:
    """A fitted candidate generator; build it with :meth:`Retriever.fit`."""

    def __init__(self) -> None:  # use Retriever.fit
        self.config = RetrieverConfig()
        self.item_ids: np.ndarray = np.array([], dtype=object)
        self._item_index: dict[str, int] = {}
        self._user_index: dict[str, int] = {}
        self._profile: sp.csr_matrix = sp.csr_matrix((0, 0))
        self._consumed: sp.csr_matrix = sp.csr_matrix((0, 0))
        self._similarity: sp.csr_matrix = sp.csr_matrix((0, 0))
        self._popularity: np.ndarray = np.zeros(0)
        self._category_popularity: np.ndarray = np.zeros(0)
        self._category_code: np.ndarray = np.zeros(0, dtype=np.int64)
        self._n_categories = 0
        self._category_matrix: sp.csr_matrix | None = None  # item × category indicator, built on demand
        self._tiebreak: np.ndarray = np.zeros(0, dtype=np.int64)
        self._vectorizer: TfidfVectorizer | None = None
        self._item_vectors: sp.csr_matrix | None = None
        self._searches: sp.csr_matrix | None = None

    # ------------------------------------------------------------------ fit

    @classmethod
    def fit(
        cls,
        events: pd.DataFrame,
        items: pd.DataFrame,
        config: RetrieverConfig | None = None,
        *,
        cache: FitCache | None = None,
    ) -> Retriever:
        """Fit every source on canonical ``events``/``items`` frames (docs/CONTRACT.md).

        ``cache``: a :class:`FitCache` of these very frames, to share the work that does not
        depend on ``config`` between fits (tuning); the result is the same with or without it.
        """
        self = cls()
        self.config = cfg = config or RetrieverConfig()
        for frame, name, columns in (
            (events, "events", ("user_id", "item_id", "behavior", "timestamp")),
            (items, "items", ("item_id", "title")),
        ):
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise DataError(f"{name} frame lacks required column(s) {missing}", column=missing[0])
        if cache is None:
            cache = FitCache(events, items)
        elif cache.events is not events or cache.items is not items:
            raise ValueError("this FitCache was made for other events/items frames")

        log = cache.part(("log",), lambda: _parse_log(events, items))
        self.item_ids, self._item_index, self._user_index = log.item_ids, log.item_index, log.user_index
        n_items, n_users = len(log.item_ids), len(log.user_index)
        user_codes, ts, value, item_codes = log.user_codes, log.ts, log.value, log.item_codes
        behavior_codes, behaviors = log.behavior_codes, log.behaviors
        is_search, is_rating_event = log.is_search, log.is_rating_event

        # behavior weight of each event (vectorized behavior_weight)
        per_behavior = [cfg.behavior_weights.get(b, DEFAULT_UNKNOWN_WEIGHT) for b in behaviors]
        weight = np.asarray(per_behavior, dtype="float64")[behavior_codes]
        is_rating = is_rating_event & ~np.isnan(value)
        if cfg.rating_mode == "implicit":
            weight[is_rating_event] = 1.0
        else:
            low, high = RATING_SCALE  # the vectorized form of agent.data.behaviors.rating_weight
            half = (high - low) / 2 or 1.0
            weight[is_rating] = np.clip((value[is_rating] - (low + high) / 2) / half, -1.0, 1.0)

        item_event = (item_codes >= 0) & ~is_search  # search events never mark an item consumed
        u, i, w, t = user_codes[item_event], item_codes[item_event], weight[item_event], ts[item_event]

        # recency relative to each user's own last event (days and/or events)
        last = np.full(n_users, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last, u, t)
        order = np.lexsort((t, u))
        counts = np.bincount(u, minlength=n_users)
        rank_in_user = np.empty(len(u), dtype=np.int64)
        rank_in_user[order] = np.arange(len(u)) - np.repeat(np.cumsum(counts) - counts, counts)
        since_last = counts[u] - 1 - rank_in_user
        recency = _decay((last[u] - t) / _NS_PER_DAY, cfg.half_life_days) * _decay(
            since_last, cfg.half_life_events
        )

        positive = w > 0
        shape = (n_users, n_items)
        self._consumed = sp.csr_matrix((np.ones(len(u), dtype=bool), (u, i)), shape=shape)
        self._consumed.sum_duplicates()
        self._profile = sp.csr_matrix(
            ((w * recency)[positive], (u[positive], i[positive])), shape=shape, dtype=np.float64
        )
        self._profile.sum_duplicates()
        interactions = sp.csr_matrix((w[positive], (u[positive], i[positive])), shape=shape, dtype=np.float64)
        interactions.sum_duplicates()
        if cfg.window and cfg.window_weight > 0:
            # windows of `window` consecutive events (two offsets) act as extra pseudo-users,
            # so items consumed close together in a sequence count as more similar
            pieces = [interactions]
            for offset in (0, cfg.window // 2):
                block = (rank_in_user + offset) // cfg.window
                rows, _ = pd.factorize(u.astype(np.int64) * (len(u) + 2) + block)
                pieces.append(
                    sp.csr_matrix(
                        ((w * np.sqrt(cfg.window_weight))[positive], (rows[positive], i[positive])),
                        shape=(rows.max(initial=-1) + 1, n_items),
                    )
                )
            interactions = sp.vstack(pieces, format="csr")
            interactions.sum_duplicates()

        self._similarity = sp.csr_matrix((n_items, n_items))
        if cfg.weights.get("cooccurrence", 0) > 0:
            self._similarity = cache.similarity(
                _similarity_key(cfg), lambda: self._item_similarity(interactions)
            )

        # popularity: time-decayed, global and within category
        age_days = (ts.max(initial=0) - t) / _NS_PER_DAY if len(t) else t
        pop_weight = w * _decay(age_days, cfg.popularity_half_life_days)  # behavior-weighted
        pop = np.bincount(i[positive], weights=pop_weight[positive], minlength=n_items)
        self._tiebreak = np.argsort(np.lexsort((np.arange(n_items), -pop)))  # rank: popular first
        self._popularity = pop / pop.max() if n_items and pop.max() > 0 else pop
        codes = self._category_code = log.category_codes
        self._n_categories = log.n_categories
        cat_max = np.zeros(self._n_categories)
        np.maximum.at(cat_max, codes, pop)
        self._category_popularity = np.divide(
            pop, cat_max[codes], out=np.zeros(n_items), where=cat_max[codes] > 0
        )

        self._fit_text(items, events, user_codes, is_search, ts, last, n_users, cache)
        return self

    def _item_similarity(self, interactions: sp.csr_matrix) -> sp.csr_matrix:
        """Cosine item-item similarity with shrinkage, top-``neighbors`` per item, no diagonal."""
        cfg = self.config
        n_items = interactions.shape[1]
        norms = np.sqrt(np.asarray(interactions.multiply(interactions).sum(axis=0)).ravel())
        by_item = interactions.T.tocsr()
        blocks = []
        for start in range(0, n_items, _BLOCK_ITEMS):
            block = (by_item[start : start + _BLOCK_ITEMS] @ interactions).tocsr()
            rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr)) + start
            block.data = block.data / (norms[rows] * norms[block.indices] + cfg.shrink + 1e-12)
            block.data[rows == block.indices] = 0.0
            block.eliminate_zeros()
            blocks.append(_top_k_rows(block, cfg.neighbors))
        if not blocks:
            return sp.csr_matrix((n_items, n_items))
        return sp.vstack(blocks, format="csr")

    def _fit_text(
        self,
        items: pd.DataFrame,
        events: pd.DataFrame,
        user_codes: np.ndarray,
        is_search: np.ndarray,
        ts: np.ndarray,
        last: np.ndarray,
        n_users: int,
        cache: FitCache,
    ) -> None:
        cfg = self.config
        if cfg.weights.get("content", 0) <= 0 and cfg.weights.get("search", 0) <= 0:
            return
        fields = tuple(cfg.content_fields)
        fitted = cache.part(("text", fields), lambda: _fit_item_text(items, fields))
        if fitted is None:  # empty vocabulary: no usable text at all
            return
        vectorizer, self._item_vectors = fitted
        self._vectorizer = vectorizer
        if "text" not in events:
            return
        texts = events["text"].to_numpy(dtype=object)
        has_text = is_search & pd.notna(texts)
        if not has_text.any():
            return
        rows = user_codes[has_text]
        recency = _decay((last[rows] - ts[has_text]) / _NS_PER_DAY, cfg.half_life_days)
        vectors = cache.part(
            ("searches", fields), lambda: vectorizer.transform([str(x) for x in texts[has_text]])
        )
        owner = sp.csr_matrix((recency, (rows, np.arange(len(rows)))), shape=(n_users, len(rows)))
        self._searches = (owner @ vectors).tocsr()

    # ------------------------------------------------------------------ query

    def scores(
        self,
        user_id: str,
        query: str | None = None,
        exclude_consumed: bool = True,
        exclude: Iterable[str] = (),
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Blended score per catalog item (``-inf`` where excluded) and the normalized sources.

        Index ``j`` refers to ``self.item_ids[j]``. Sources without any signal for this
        user are left out of the dict.
        """
        cfg = self.config
        n_items = len(self.item_ids)
        eligible = np.ones(n_items, dtype=bool)
        row = self._user_index.get(str(user_id))
        cols = vals = np.zeros(0, dtype=np.int64)
        if row is not None:
            p0, p1 = self._profile.indptr[row], self._profile.indptr[row + 1]
            cols, vals = self._profile.indices[p0:p1], self._profile.data[p0:p1]
            if exclude_consumed:
                c0, c1 = self._consumed.indptr[row], self._consumed.indptr[row + 1]
                eligible[self._consumed.indices[c0:c1]] = False
        if isinstance(exclude, str):  # one id, not an iterable of characters
            exclude = (exclude,)
        blocked = [self._item_index[x] for x in exclude if x in self._item_index]
        eligible[blocked] = False

        raw: dict[str, np.ndarray] = {}
        weights = cfg.weights
        if len(cols) and weights.get("cooccurrence", 0) > 0:
            raw["cooccurrence"] = _gather_rows(self._similarity, cols, vals, n_items)
        if weights.get("popularity", 0) > 0:
            pop = self._popularity
            if len(cols) and cfg.category_share > 0:
                affinity = np.bincount(self._category_code[cols], weights=vals, minlength=self._n_categories)
                affinity = affinity / (affinity.max() or 1.0)
                in_category = self._category_popularity * affinity[self._category_code]
                pop = (1 - cfg.category_share) * pop + cfg.category_share * in_category
            raw["popularity"] = pop
        if self._item_vectors is not None:
            if len(cols) and weights.get("content", 0) > 0:
                profile = _gather_rows(self._item_vectors, cols, vals, self._item_vectors.shape[1])
                raw["content"] = self._item_vectors @ profile
            if weights.get("search", 0) > 0:
                search = self._search_vector(row, query)
                if search is not None:
                    raw["search"] = self._item_vectors @ search

        blended = np.zeros(n_items)
        normalized: dict[str, np.ndarray] = {}
        for name, values in raw.items():
            top = values[eligible].max(initial=0.0)
            if top > 0:
                normalized[name] = np.clip(values / top, 0.0, 1.0)
                blended += weights.get(name, 0) * normalized[name]
        blended[~eligible] = -np.inf
        return blended, normalized

    def _search_vector(self, row: int | None, query: str | None) -> np.ndarray | None:
        assert self._vectorizer is not None and self._item_vectors is not None
        vector = np.zeros(self._item_vectors.shape[1])
        if query and query.strip():
            vector += self._vectorizer.transform([query]).toarray().ravel()
        if row is not None and self._searches is not None and self.config.search_history_weight > 0:
            s0, s1 = self._searches.indptr[row], self._searches.indptr[row + 1]
            history = np.zeros(len(vector))
            history[self._searches.indices[s0:s1]] = self._searches.data[s0:s1]
            norm = np.linalg.norm(history)
            if norm > 0:
                vector += self.config.search_history_weight * history / norm
        return vector if vector.any() else None

    def batch_scores(self, user_ids: Sequence[str], exclude_consumed: bool = True) -> np.ndarray:
        """Blended scores of many users at once (no ``query``, no extra ``exclude``).

        Row ``k`` equals ``scores(user_ids[k], exclude_consumed=exclude_consumed)[0]`` bit for
        bit (``tests/test_candidates.py`` checks it): the same products and sums in the same
        order, since sparse products over the users' profile rows accumulate over a user's items
        (or an item's terms) in the stored order, as ``_gather_rows``/``csr_matvec`` do. Every
        source is >= 0, so an eligible item's ``value / top`` is already in [0, 1] (the clip in
        ``scores`` changes nothing there) and a source with ``top == 0`` adds exact zeros;
        consumed items only need to drop out of each ``top``: they are zeroed, then set to -inf.
        Dense ``len(user_ids) × n_items``: pass blocks of users.
        """
        cfg, weights = self.config, self.config.weights
        n_items, n_users = len(self.item_ids), len(user_ids)
        rows = np.fromiter((self._user_index.get(str(u), -1) for u in user_ids), np.int64, n_users)
        profile = _take_rows(self._profile, rows)
        has_profile = np.diff(profile.indptr) > 0
        consumed = (np.zeros(0, dtype=np.int64),) * 2
        if exclude_consumed:
            offsets, lengths = _row_entries(self._consumed, rows)
            consumed = (np.repeat(np.arange(n_users), lengths), self._consumed.indices[offsets])

        blended = np.zeros((n_users, n_items))

        def add(name: str, values: np.ndarray) -> None:  # users × items, C order; modified
            values[consumed] = 0.0
            top = values.max(axis=1, initial=0.0)
            values /= np.where(top > 0, top, 1.0)[:, None]
            values *= weights.get(name, 0)
            np.add(blended, values, out=blended)  # in place: the closure cannot rebind it

        if weights.get("cooccurrence", 0) > 0 and has_profile.any():
            add("cooccurrence", (profile @ self._similarity).toarray())
        if weights.get("popularity", 0) > 0:
            if cfg.category_share > 0 and has_profile.any():
                if self._category_matrix is None:
                    self._category_matrix = sp.csr_matrix(
                        (np.ones(n_items), (np.arange(n_items), self._category_code)),
                        shape=(n_items, self._n_categories),
                    )
                affinity = (profile @ self._category_matrix).toarray()  # users × categories
                top = affinity.max(axis=1)
                affinity /= np.where(top > 0, top, 1.0)[:, None]
                pop = affinity[:, self._category_code]
                pop *= self._category_popularity
                pop *= cfg.category_share
                pop += (1 - cfg.category_share) * self._popularity
                pop[~has_profile] = self._popularity
            else:
                pop = np.tile(self._popularity, (n_users, 1))
            add("popularity", pop)
        if self._item_vectors is not None:
            vectors = self._item_vectors
            if weights.get("content", 0) > 0 and has_profile.any():
                content = vectors @ (profile @ vectors).T.toarray()  # items × users
                add("content", np.ascontiguousarray(content.T))
            if weights.get("search", 0) > 0 and self._searches is not None and cfg.search_history_weight > 0:
                searching = np.zeros((vectors.shape[1], n_users))
                for k in np.flatnonzero(rows >= 0):
                    row = int(rows[k])
                    if self._searches.indptr[row + 1] > self._searches.indptr[row]:
                        vector = self._search_vector(row, None)
                        if vector is not None:
                            searching[:, k] = vector
                if searching.any():
                    add("search", np.ascontiguousarray((vectors @ searching).T))
        blended[consumed] = -np.inf
        return blended

    def target_ranks(self, user_ids: Sequence[str], targets: Sequence[str], block: int = 32) -> np.ndarray:
        """1-based position of ``targets[k]`` in ``candidates(user_ids[k], n=None)``; 0 if absent.

        Exact and batched (``block`` users at a time; small blocks keep the dense arrays in
        cache): the position counts the eligible items scored higher, plus those tied with the
        target and ahead of it in the popularity tie-break, as ``candidates`` orders them.
        """
        ranks = np.zeros(len(user_ids), dtype=np.int64)
        columns = np.fromiter((self._item_index.get(str(t), -1) for t in targets), np.int64, len(targets))
        for start in range(0, len(user_ids), block):
            cols = columns[start : start + block]
            found = np.flatnonzero(cols >= 0)
            if not len(found):
                continue
            scores = self.batch_scores([user_ids[start + int(k)] for k in found])
            target = cols[found]
            score = scores[np.arange(len(found)), target][:, None]
            ahead = (scores > score).sum(axis=1)
            level = (scores >= score).sum(axis=1)  # ahead, the target and items tied with it
            for k in np.flatnonzero(level > ahead + 1):  # ties: the tie-break decides
                tied = (scores[k] == score[k]) & (self._tiebreak < self._tiebreak[target[k]])
                ahead[k] += int(tied.sum())
            ranks[start + found] = np.where(np.isfinite(score[:, 0]), 1 + ahead, 0)
        return ranks

    def candidates(
        self,
        user_id: str,
        n: int | None = 50,
        query: str | None = None,
        exclude_consumed: bool = True,
        exclude: Iterable[str] = (),
    ) -> list[Candidate]:
        """The ``n`` best items for ``user_id`` (``n=None``: the whole eligible catalog, ranked).

        Ties are broken by popularity, then catalog order, so results are deterministic.
        """
        blended, normalized = self.scores(user_id, query, exclude_consumed, exclude)
        eligible = np.flatnonzero(np.isfinite(blended))
        if n is not None:
            if n <= 0:
                return []
            if n < len(eligible):
                # keep everything tied with the n-th score so the tie-break stays exact
                kth = np.partition(blended[eligible], len(eligible) - n)[len(eligible) - n]
                eligible = eligible[blended[eligible] >= kth]
        order = eligible[np.lexsort((self._tiebreak[eligible], -blended[eligible]))]
        if n is not None:
            order = order[:n]
        # Whole columns to Python floats at once (indexing numpy scalars one by one is slow).
        ids, scores = self.item_ids[order].tolist(), blended[order].tolist()
        per_source = {name: values[order].tolist() for name, values in normalized.items()}
        return [
            Candidate(
                item_id=str(ids[i]),
                score=scores[i],
                sources={name: values[i] for name, values in per_source.items()},
            )
            for i in range(len(order))
        ]

    def __repr__(self) -> str:
        return (
            f"Retriever(users={len(self._user_index)}, items={len(self.item_ids)}, "
            f"neighbours={self._similarity.nnz}, config={self.config})"
        )

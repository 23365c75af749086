"""Offline evaluation: splits, candidate sets and scoring (the methods: ``agent.evaluation.methods``).

The stages are separate functions so the label can only flow where it must:

1. **Split** (:func:`leave_one_out`, :func:`time_split`, or the split a sequence dataset
   ships with): the training events hold only each evaluated user's events *before* the
   split point; the held-out item of each user goes to ``targets``.
2. **Candidate sets** (:func:`build_cases`): 1 target + N seeded random negatives, 1 target +
   the retriever's N best non-target items ("hard"), or the full catalog. The target is
   needed here (to put it in and keep it out of the negatives), and each set is stored in a
   seeded random order, so the target's position says nothing.
3. **Ranking** (``agent.evaluation.methods``): every method is built from :class:`TrainingData`
   (no targets) and ranks :class:`EvalCase` objects (user id + candidates, no target).
   Nothing a method does can depend on the label.
4. **Scoring** (:func:`score`): the only place that reads the targets after step 2.

With the leave-one-out split the models see other users' interactions that happen after a
user's split point (the usual protocol of LLMRank, SASRec...); the global time split does not.
Anything a method fits (e.g. the agent's fusion weights, ``--fusion fit``) is fit on a split
*inside* ``TrainingData.events`` (``leave_one_out(training.events, ...)``), never on the targets.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import numpy as np
import pandas as pd

from agent.errors import ConfigError, DataError
from agent.evaluation.metrics import evaluate_ranking
from agent.prompting.templates import Domain
from agent.retrieval.candidates import Retriever, RetrieverConfig

log = logging.getLogger(__name__)

SplitKind = Literal["loo", "time"]
Setting = Literal["sampled", "hard", "full"]
PROTOCOLS: dict[str, tuple[SplitKind, Setting]] = {
    "loo-sampled": ("loo", "sampled"),
    "loo-hard": ("loo", "hard"),
    "full": ("loo", "full"),
    "loo-full": ("loo", "full"),
    "time-sampled": ("time", "sampled"),
    "time-hard": ("time", "hard"),
    "time-full": ("time", "full"),
}
"""Protocol name -> (split, candidate setting). ``full`` is short for ``loo-full``."""
DATASET_DOMAINS: dict[str, Domain] = {
    "movielens": Domain(
        name="movie recommendations", user_noun="viewer", item_noun="movie", items_noun="movies"
    ),
    "amazon-seq": Domain(name="video game store", user_noun="player", item_noun="game", items_noun="games"),
}
PROFILE_TOKENS_GUESS = 400
"""Prompt tokens a profile adds to a ranking prompt (the profile is unknown before the call)."""


# --------------------------------------------------------------------------- data and splits


@dataclass(frozen=True)
class Split:
    """Training events, catalog and held-out targets (user id -> item id) of one protocol."""

    train: pd.DataFrame
    items: pd.DataFrame
    targets: dict[str, str]
    kind: SplitKind
    description: str
    skipped: dict[str, int] = field(default_factory=dict)
    """Users not evaluated, by reason."""


def stable_seed(*parts: object) -> int:
    """A stable 64-bit seed from any parts (no ``hash()`` randomisation)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def _item_rows(events: pd.DataFrame) -> np.ndarray:
    """Rows that are interactions with an item (searches and item-less rows are not)."""
    return ((events["item_id"] != "") & (events["behavior"] != "search")).to_numpy()


def _finish(
    train: pd.DataFrame,
    items: pd.DataFrame,
    candidates: dict[str, str],
    kind: SplitKind,
    description: str,
    skipped: dict[str, int],
    min_history: int,
) -> Split:
    """Drop users with too little history, repeat targets and targets outside the catalog."""
    rows = train[_item_rows(train)]
    history = rows.groupby("user_id", sort=False)["item_id"].agg(set).to_dict()
    catalog = set(items["item_id"])
    targets: dict[str, str] = {}
    for user, item in candidates.items():
        seen = history.get(user, set())
        reason = (
            f"fewer than {min_history} training interactions"
            if len(seen) < min_history
            else "target already in the training history"
            if item in seen
            else "target not in the catalog"
            if item not in catalog
            else None
        )
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            targets[user] = item
    return Split(train.reset_index(drop=True), items, targets, kind, description, skipped)


def leave_one_out(
    events: pd.DataFrame, items: pd.DataFrame, *, part: str = "test", min_history: int = 1
) -> Split:
    """Temporal leave-one-out: each user's last interaction is the test target, the one before
    it the validation target (``part="valid"``). Training keeps, for every user with a
    target, only the events before it (same-timestamp ties broken by file order); users without
    one keep all their events.
    """
    back = {"test": 0, "valid": 1}.get(part)
    if back is None:
        raise ConfigError(f"part must be 'test' or 'valid', got {part!r}")
    ev = events.reset_index(drop=True)
    item_rows = ev[_item_rows(ev)]
    from_end = item_rows.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
    target_rows = item_rows[from_end == back]
    split_at = pd.Series(target_rows.index.to_numpy(), index=target_rows["user_id"].to_numpy())
    limit = ev["user_id"].map(split_at).to_numpy(dtype="float64")
    keep = np.isnan(limit) | (np.arange(len(ev)) < np.nan_to_num(limit, nan=0.0))
    candidates = dict(zip(target_rows["user_id"], target_rows["item_id"], strict=True))
    skipped: dict[str, int] = {}
    too_short = ev.loc[_item_rows(ev), "user_id"].nunique() - len(candidates)
    if too_short:
        skipped["too few interactions for this part"] = int(too_short)
    what = "last" if back == 0 else "second-to-last"
    return _finish(
        ev[keep],
        items,
        candidates,
        "loo",
        f"temporal leave-one-out ({part}): target = each user's {what} interaction; "
        "training = each user's events before it",
        skipped,
        min_history,
    )


def time_split(
    events: pd.DataFrame, items: pd.DataFrame, *, cutoff: float | str = 0.9, min_history: int = 1
) -> Split:
    """Global time split: training = every event before the cutoff; target = each user's first
    interaction at or after it. ``cutoff`` is a quantile of interaction times in (0, 1) or a date.
    """
    ts = events["timestamp"]
    is_item = _item_rows(events)
    if isinstance(cutoff, float):
        if not 0.0 < cutoff < 1.0:
            raise ConfigError(f"--cutoff as a quantile must be in (0, 1), got {cutoff}")
        moment = cast(pd.Timestamp, ts[is_item].quantile(cutoff))  # a datetime column: a Timestamp
    else:
        try:
            moment = pd.Timestamp(cutoff)
        except ValueError as exc:
            raise ConfigError(f"--cutoff {cutoff!r} is neither a quantile nor a date") from exc
        moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    if moment is pd.NaT:
        raise ConfigError(f"--cutoff {cutoff!r} gives no usable time")
    after = events[is_item & (ts >= moment).to_numpy()].drop_duplicates("user_id", keep="first")
    candidates = dict(zip(after["user_id"], after["item_id"], strict=True))
    return _finish(
        events[(ts < moment).to_numpy()],
        items,
        candidates,
        "time",
        f"global time split at {moment.isoformat()}: training = every event before it; "
        "target = each user's first interaction at or after it",
        {},
        min_history,
    )


def load_split(
    dataset: str, path: str | Path, protocol: str, *, part: str = "test", cutoff: float | str = 0.9
) -> Split:
    """Load ``dataset`` (movielens, amazon-seq, generic) from ``path`` and split it for ``protocol``."""
    kind, _ = protocol_parts(protocol)
    if dataset == "amazon-seq":
        from agent.data.datasets import load_amazon_seq

        if kind != "loo":
            raise ConfigError("amazon-seq has no real timestamps: use a leave-one-out protocol")
        seq = load_amazon_seq(path, split=part)
        return _finish(
            seq.events,
            seq.items,
            dict(seq.targets),
            "loo",
            f"leave-one-out as shipped ({part}.inter): target = the next item after each history",
            {},
            1,
        )
    if dataset == "movielens":
        from agent.data.datasets import load_movielens

        events, items = load_movielens(path)
    elif dataset == "generic":
        events, items = _load_generic(Path(path))
    else:
        raise ConfigError(f"unknown dataset {dataset!r}; use movielens, amazon-seq or generic")
    if kind == "time":
        if part != "test":
            raise ConfigError(
                "--split valid applies to leave-one-out; for a time split pick an earlier --cutoff"
            )
        return time_split(events, items, cutoff=cutoff)
    return leave_one_out(events, items, part=part)


def _load_generic(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``events.*`` and ``items.*`` (csv/tsv/jsonl/json/parquet) from a directory."""
    from agent.data.loading import align_catalog, load_events, load_items

    if not root.is_dir():
        raise DataError("generic dataset path is not a directory", file=str(root))
    found = {}
    for stem in ("events", "items"):
        files = sorted(p for p in root.iterdir() if p.name.split(".")[0] == stem and p.is_file())
        if len(files) != 1:
            raise DataError(f"expected exactly one {stem}.* file, found {len(files)}", file=str(root))
        found[stem] = files[0]
    items = load_items(found["items"])
    return align_catalog(load_events(found["events"]), items).frame, items.frame


def protocol_parts(protocol: str) -> tuple[SplitKind, Setting]:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[protocol]


# --------------------------------------------------------------------------- training data


class TrainingData:
    """Everything a method may learn from: training events, catalog, fitted retriever.

    Holds no targets. ``consumed(user)`` = catalog positions of the user's training items
    (never ranked back); ``popularity`` = distinct training users per item.
    """

    def __init__(
        self, train: pd.DataFrame, items: pd.DataFrame, retriever_config: RetrieverConfig | None = None
    ) -> None:
        self.events = train
        self.items = items
        self.item_ids = items["item_id"].astype(str).to_numpy(dtype=object)
        self.index = {item: j for j, item in enumerate(self.item_ids)}
        rows = train[_item_rows(train)]
        codes = pd.Index(self.item_ids).get_indexer(rows["item_id"])
        pairs = pd.DataFrame({"user": rows["user_id"].to_numpy(), "code": codes})
        pairs = pairs[pairs["code"] >= 0].drop_duplicates()
        self._consumed = {
            str(u): g.to_numpy(dtype=np.int64) for u, g in pairs.groupby("user", sort=False)["code"]
        }
        self.popularity = np.bincount(pairs["code"].to_numpy(), minlength=len(self.item_ids))
        self.popularity_order = np.lexsort((np.arange(len(self.item_ids)), -self.popularity))
        self.popularity_rank = np.empty(len(self.item_ids), dtype=np.int64)
        self.popularity_rank[self.popularity_order] = np.arange(len(self.item_ids))
        self.retriever = Retriever.fit(train, items, retriever_config)

    def consumed(self, user_id: str) -> np.ndarray:
        return self._consumed.get(user_id, np.zeros(0, dtype=np.int64))

    def eligible(self, user_id: str) -> np.ndarray:
        """Catalog positions a full ranking may return for this user."""
        mask = np.ones(len(self.item_ids), dtype=bool)
        mask[self.consumed(user_id)] = False
        return np.flatnonzero(mask)

    def positions(self, ids: Iterable[str]) -> np.ndarray:
        try:
            return np.array([self.index[i] for i in ids], dtype=np.int64)
        except KeyError as exc:
            raise DataError(f"candidate item {exc.args[0]!r} is not in the catalog") from None


# --------------------------------------------------------------------------- candidate sets


@dataclass(frozen=True)
class EvalCase:
    """What a method ranks: a user and a candidate set (None = the full eligible catalog)."""

    user_id: str
    candidates: tuple[str, ...] | None


def sample_users(targets: Mapping[str, str], n: int | None, seed: int) -> list[str]:
    """All users with a target (sorted), or a seeded sample of ``n`` of them."""
    users = sorted(targets)
    if n is None or n >= len(users):
        return users
    if n < 1:
        raise ConfigError("--users must be at least 1")
    rng = np.random.default_rng(stable_seed(seed, "users"))
    return sorted(rng.choice(np.array(users, dtype=object), size=n, replace=False).tolist())


def build_cases(
    split: Split, training: TrainingData, users: Sequence[str], setting: Setting, *, negatives: int, seed: int
) -> list[EvalCase]:
    """One candidate set per user (see module docstring); seeded per user, so adding users
    never changes another user's set."""
    if setting != "full" and negatives < 1:
        raise ConfigError("--negatives must be at least 1")
    n_items = len(training.item_ids)
    cases = []
    for user in users:
        target = split.targets[user]
        if setting == "full":
            cases.append(EvalCase(user, None))
            continue
        rng = np.random.default_rng(stable_seed(seed, setting, user))
        if setting == "sampled":
            blocked = set(training.consumed(user).tolist()) | {training.index[target]}
            picked: list[int] = []
            want = min(negatives, n_items - len(blocked))
            while len(picked) < want:
                for j in rng.integers(0, n_items, size=2 * (want - len(picked)) + 8).tolist():
                    if j not in blocked and len(picked) < want:
                        blocked.add(j)
                        picked.append(j)
            ids = [str(training.item_ids[j]) for j in picked]
        else:
            found = training.retriever.candidates(user, n=negatives, exclude=(target,))
            ids = [c.item_id for c in found]
        pool = [target, *ids]
        cases.append(EvalCase(user, tuple(pool[i] for i in rng.permutation(len(pool)))))
    return cases


# --------------------------------------------------------------------------- scoring


def score(
    rankings: Mapping[str, Mapping[str, Sequence[str]]], targets: Mapping[str, str], ks: Sequence[int]
) -> dict[str, dict[str, list[float]]]:
    """Per-user metric values: method -> metric (``ndcg@10``, ``hit@10``, ``mrr``...) -> values
    in the order of each method's users. The only function that reads the targets."""
    out: dict[str, dict[str, list[float]]] = {}
    for method, per_user in rankings.items():
        values: dict[str, list[float]] = {}
        for user, ranked in per_user.items():
            for metric, value in evaluate_ranking(ranked, {targets[user]}, ks).items():
                values.setdefault(metric, []).append(value)
        out[method] = values
    return out

"""Counter and measure position bias: models favour (or simply copy) the order they are shown.

* ``shuffle_candidates``: a seeded, reproducible shuffle (same ids + seed -> same order on
  every machine and Python run; ``hash()`` randomisation plays no part).
* ``borda``: aggregate the rankings of several shuffles into one (LLMRank-style bootstrapping).
* ``input_order_copy_rate``: how much a returned ranking follows the shown order.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_left
from collections.abc import Sequence


def _rng(seed: int | str) -> random.Random:
    digest = hashlib.sha256(str(seed).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def shuffle_candidates(ids: Sequence[str], seed: int | str) -> list[str]:
    """A copy of ``ids`` in a pseudo-random order fixed by ``seed``.

    The seed goes through SHA-256 of ``str(seed)``, so ``42`` and ``"42"`` give the same
    order and nearby seeds ("run:1", "run:2") give unrelated ones.
    """
    out = list(ids)
    _rng(seed).shuffle(out)
    return out


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def borda(rankings: Sequence[Sequence[str]], universe: Sequence[str] | None = None) -> list[str]:
    """Borda count over several rankings, best first.

    With ``n`` items in the universe, the item at 0-based position ``p`` of a ranking gets
    ``n - p`` points from it; items absent from a ranking get 0 from it. Repeats within a
    ranking count once (first position). Ties keep universe order, which defaults to the
    order of first appearance across ``rankings`` (deterministic). When ``universe`` is
    given, the result is exactly the universe (unranked items last, in universe order)
    and items outside it are ignored.
    """
    items = _unique(universe) if universe is not None else _unique([i for r in rankings for i in r])
    order = {item: k for k, item in enumerate(items)}
    points = dict.fromkeys(items, 0)
    n = len(items)
    for ranking in rankings:
        for p, item in enumerate(i for i in _unique(ranking) if i in order):
            points[item] += n - p
    return sorted(items, key=lambda item: (-points[item], order[item]))


def input_order_copy_rate(shown: Sequence[str], returned: Sequence[str]) -> float:
    """How far ``returned`` copies the order of ``shown``, in [0, 1].

    Definition (a Kendall-tau agreement): the returned list is read as a ranking of the
    shown items in which every returned item is above every item that was not returned
    (those tie at the bottom). Over all pairs that this ranking orders (both returned, or
    one returned and one not), the rate is the fraction ordered as in ``shown``.

    * 1.0 exactly when ``returned`` is a prefix of ``shown`` (the model copied the list);
    * 0.0 for ``shown`` reversed;
    * about 0.5 for a random order, or any subset in random order.

    Returned ids not in ``shown`` and repeats are ignored. With no ordered pair (nothing
    valid returned, or a single shown item) there is no evidence either way: 0.5.
    """
    position = {item: k for k, item in enumerate(_unique(shown))}
    ranked = [position[i] for i in _unique(returned) if i in position]
    chosen = set(ranked)
    rest = sorted(p for p in position.values() if p not in chosen)
    agree = total = 0
    for a, p in enumerate(ranked):
        later = ranked[a + 1 :]
        agree += sum(q > p for q in later)
        below = len(rest) - bisect_left(rest, p)  # unreturned items shown after this one
        agree += below
        total += len(later) + len(rest)
    return agree / total if total else 0.5

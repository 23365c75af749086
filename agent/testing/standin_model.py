"""A deterministic stand-in for a chat model, used to author the recorded fixtures and in tests.

No model API is reachable where this project is built and tested, so the recordings in
``fixtures/`` are answers from this stand-in served over HTTP by ``agent.testing.loopback``. It reads
the data blocks of recagent's own prompts (history, candidates, request) and answers in the
shape a GPT-4-class model gives: a profile built from category/behavior counts and prices, a
ranking by category affinity, recency, price fit and query words, with reasons that cite
history items; and for refine prompts a profile delta from the net reaction per category.
It is NOT a recommender to measure: any quality number from it is meaningless.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from typing import Any

from agent.data.behaviors import behavior_weight

_BLOCK = re.compile(r'<data name="(?P<name>\w+)"(?P<attrs>[^>]*)>\n(?P<body>.*?)</data>', re.S)
_COLUMNS = re.compile(r'columns="([^"]*)"')
_ITEM_FIELDS = ("title", "category", "price")


def parse_data_blocks(user_message: str) -> tuple[dict[str, list[Any]], dict[str, str]]:
    """The rows of each ``<data name=...>`` block in a rendered user message, and its attributes.

    A block with a ``columns`` attribute holds JSON arrays: each becomes a dict of its columns.
    History rows get their item's title, category and price from the ``items`` block (the
    compact history states them once), so they read like full events.
    """
    blocks: dict[str, list[Any]] = {}
    attrs: dict[str, str] = {}
    for match in _BLOCK.finditer(user_message):
        rows = [json.loads(line) for line in match.group("body").split("\n") if line.strip()]
        columns = _COLUMNS.search(match.group("attrs"))
        if columns:
            names = columns.group(1).split(", ")
            rows = [dict(zip(names, row, strict=True)) for row in rows]
        blocks[match.group("name")] = rows
        attrs[match.group("name")] = match.group("attrs")
    items = {row["item_id"]: row for row in blocks.get("items", [])}
    for event in blocks.get("history", []):
        known = items.get(event.get("item_id"), {})
        event.update({name: known[name] for name in _ITEM_FIELDS if name in known and name not in event})
    return blocks, attrs


def parse_blocks(user_message: str) -> dict[str, list[Any]]:
    """The rows of each data block (see ``parse_data_blocks``)."""
    return parse_data_blocks(user_message)[0]


def _weights(history: list[dict[str, Any]]) -> tuple[Counter[str], dict[str, list[str]]]:
    """Category affinity (recency-weighted) and the best evidence ids per category.

    Items the user disliked or rated 2 or less never serve as evidence of an interest.
    """
    affinity: Counter[str] = Counter()
    evidence: dict[str, list[tuple[float, str]]] = defaultdict(list)
    negative = {e.get("item_id") for e in history if _is_negative(e)}
    n = len(history)
    for position, event in enumerate(history):
        category, item = event.get("category"), event.get("item_id")
        if not category or not item:
            continue
        recency = 0.5 ** ((n - 1 - position) / 30)
        weight = behavior_weight(event["behavior"], event.get("value")) * (0.5 + recency)
        affinity[category] += weight
        if weight > 0 and item not in negative:
            evidence[category].append((weight, item))
    best = {
        cat: list(dict.fromkeys(item for _, item in sorted(pairs, key=lambda p: -p[0])))[:3]
        for cat, pairs in evidence.items()
    }
    return affinity, best


def _is_negative(event: dict[str, Any]) -> bool:
    return event["behavior"] == "dislike" or (
        event["behavior"] == "rating" and (event.get("value") or 5) <= 2
    )


def profile_reply(history: list[dict[str, Any]]) -> dict[str, Any]:
    affinity, evidence = _weights(history)
    positive = [(cat, w) for cat, w in affinity.most_common() if w > 0 and evidence.get(cat)]
    top = positive[0][1] if positive else 1.0
    interests = [
        {"name": cat.lower(), "strength": round(min(1.0, 0.3 + 0.7 * w / top), 2), "evidence": evidence[cat]}
        for cat, w in positive[:4]
    ]
    disliked = list({e["item_id"]: e for e in history if _is_negative(e) and e.get("item_id")}.values())
    dislikes = [
        {
            "name": f"{(e.get('category') or 'item').lower()}: {e.get('title') or e.get('item_id')}",
            "evidence": [e["item_id"]],
        }
        for e in disliked[:3]
    ]
    paid = [e["price"] for e in history if e["behavior"] in ("purchase", "cart") and e.get("price")]
    if paid:
        spread = max(paid) / max(min(paid), 1.0)
        sensitivity = "high" if max(paid) < 60 else ("low" if spread > 4 or min(paid) > 150 else "medium")
        low, high = round(min(paid), 2), round(max(paid), 2)
    else:
        sensitivity, low, high = "unknown", None, None
    recent = [str(e["category"]) for e in history[-8:] if e.get("category")]
    recent_focus = Counter(recent).most_common(1)[0][0].lower() if recent else None
    searches = [e["text"] for e in history if e["behavior"] == "search" and e.get("text")]
    exploration = "focused" if len(positive) <= 2 else ("mixed" if len(positive) <= 4 else "exploratory")
    names = [str(i["name"]) for i in interests[:2]] or ["a range of products"]
    summary = f"Mostly engaged with {' and '.join(names)}"
    summary += f", buying in the {low:g}-{high:g} range." if paid else ", without many purchases yet."
    if searches:
        summary += f" Recent searches such as {searches[-1]!r} show what they are looking for now."
    return {
        "summary": summary,
        "interests": interests,
        "dislikes": dislikes,
        "patterns": {
            "price_sensitivity": sensitivity,
            "typical_price_min": low,
            "typical_price_max": high,
            "recent_focus": recent_focus,
            "exploration": exploration,
        },
    }


def recommend_reply(
    history: list[dict[str, Any]], candidates: list[dict[str, Any]], k: int, query: str | None
) -> dict[str, Any]:
    affinity, evidence = _weights(history)
    top = max([w for w in affinity.values() if w > 0], default=1.0)
    paid = [e["price"] for e in history if e["behavior"] in ("purchase", "cart") and e.get("price")]
    typical = sum(paid) / len(paid) if paid else None
    words = set(re.findall(r"[a-z]{3,}", (query or "").lower()))
    titles = {e.get("item_id"): e.get("title") for e in history}
    scored = []
    for cand in candidates:
        category: str = cand.get("category") or ""
        score = 0.15 + 0.6 * max(affinity.get(category, 0.0), 0.0) / top
        if typical and cand.get("price"):
            score += 0.15 * math.exp(-abs(math.log(cand["price"] / typical)))
        text = f"{cand.get('title', '')} {cand.get('description', '')} {category or ''}".lower()
        hits = sum(1 for w in words if w in text)
        score += 0.3 * hits / max(len(words), 1)
        scored.append((min(score, 0.99), cand))
    scored.sort(key=lambda pair: (-pair[0], pair[1]["item_id"]))
    items = []
    for position, (score, cand) in enumerate(scored[:k]):
        category = cand.get("category") or ""
        pool = evidence.get(category, [])
        cited = pool[position % len(pool) :][:1] + pool[: position % len(pool)][:1] if pool else []
        price_note = ""
        if typical and cand.get("price"):
            ratio = cand["price"] / typical
            price_note = (
                " and is priced below what they usually pay"
                if ratio < 0.8
                else (
                    " though it costs more than they usually pay"
                    if ratio > 1.5
                    else " at their usual price level"
                )
            )
        if cited:
            reason = f"Builds on their {category.lower()} interest ({titles.get(cited[0]) or cited[0]}){price_note}."
        elif words:
            reason = f"Matches the request for {' '.join(sorted(words))}{price_note}."
        else:
            reason = (
                f"A popular {(category or 'item').lower()} pick outside their usual categories, for variety."
            )
        items.append(
            {"item_id": cand["item_id"], "score": round(score, 2), "reason": reason, "evidence": cited}
        )
    return {"items": items}


_SIGNAL_STRENGTH = {"like": 1.0, "purchase": 1.0, "rating": 1.0, "dislike": 1.0, "not_interested": 1.0}
_SIGNAL_STRENGTH.update({"cart": 0.5, "click": 0.2, "skip": 0.05, "comment": 0.6})
_EXPLICIT = ("like", "dislike", "rating", "not_interested", "comment", "purchase")
_NEGATIVE_CUES = ("not ", "n't", "too ", "hate", "boring", "never", "no more", "less ", "rather not")
_POSITIVE_CUES = ("love", "great", "more like", "perfect", "excellent", "nice", "want more")


def _reaction_sign(reaction: dict[str, Any]) -> int:
    signal, value = reaction["signal"], reaction.get("value")
    if signal == "comment":
        text = f" {(reaction.get('comment') or '').lower()} "
        if any(cue in text for cue in _NEGATIVE_CUES):
            return -1
        return 1 if any(cue in text for cue in _POSITIVE_CUES) else 0
    if signal == "rating":
        return 1 if (value or 3) >= 4 else (-1 if (value or 3) <= 2 else 0)
    return -1 if signal in ("dislike", "not_interested", "skip") else 1


def _kind(title: str | None) -> str | None:
    """The kind of product a title names ("Rivet & Rail: Strategy Board Game for 1-4 Players"
    -> "strategy board games"): the last three words before " for "/" by ", after any colon."""
    if not title:
        return None
    core = re.split(r" (?:for|by|with) ", title.split(":")[-1])[0]
    words = re.findall(r"(?<![\w'-])[A-Za-z][A-Za-z'-]*", core)
    return (" ".join(words[-3:]).lower() + "s") if len(words) >= 2 else None


def refine_reply(profile: dict[str, Any], reactions: list[dict[str, Any]]) -> dict[str, Any]:
    """A profile delta, following the refine prompt's rules: a category interest moves only when
    all its reactions agree; an explicit positive reaction adds the product kind as an interest,
    an explicit negative one makes the kind a dislike; a kind with both is left alone."""
    existing = {i["name"].lower(): i["name"] for i in profile.get("interests", [])}
    disliked = {d["name"].lower() for d in profile.get("dislikes", [])}
    themes: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    kinds: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for reaction in reactions:
        sign = _reaction_sign(reaction)
        if sign and reaction.get("category"):
            themes[reaction["category"].lower()].append((sign, reaction))
        kind = _kind(reaction.get("title"))
        if sign and kind and reaction["signal"] in _EXPLICIT:
            kinds[kind].append((sign, reaction))
    interests: list[dict[str, Any]] = []
    dislikes: list[dict[str, Any]] = []
    for theme, pairs in themes.items():
        signs = {sign for sign, _ in pairs}
        weight = sum(_SIGNAL_STRENGTH.get(r["signal"], 0.2) for _, r in pairs)
        if theme not in existing or len(signs) > 1 or weight < 0.15:
            continue  # mixed reactions: one negative does not outweigh the rest
        action = "strengthen" if 1 in signs else "weaken"
        signals = ", ".join(sorted({r["signal"].replace("_", " ") for _, r in pairs}))
        interests.append(
            {
                "name": existing[theme],
                "action": action,
                "amount": round(min(0.3, 0.1 * weight), 2),
                "evidence": [r["id"] for _, r in pairs],
                "rationale": f"Every reaction to {theme} was {'positive' if action == 'strengthen' else 'negative'} ({signals}).",
            }
        )
    liked, avoided = [], []
    for kind, pairs in kinds.items():
        signs = {sign for sign, _ in pairs}
        ids = [r["id"] for _, r in pairs]
        titles = " and ".join(sorted({r.get("title") or r["item_id"] for _, r in pairs}))
        if signs == {1} and kind not in existing:
            liked.append(kind)
            interests.append(
                {
                    "name": kind,
                    "action": "add",
                    "amount": round(min(0.5, 0.3 + 0.1 * len(pairs)), 2),
                    "evidence": ids,
                    "rationale": f"Reacted positively to {titles}.",
                }
            )
        elif signs == {-1} and kind not in disliked:
            avoided.append(kind)
            how = ", ".join(sorted({r["signal"].replace("_", " ") for _, r in pairs}))
            dislikes.append({"name": kind, "evidence": ids, "rationale": f"Rejected {titles} ({how})."})
    summary = None
    if liked or avoided:
        summary = str(profile.get("summary", "")).strip()
        summary += f" Their feedback asks for more {' and '.join(liked)}." if liked else ""
        summary += f" They do not want {' or '.join(avoided)}." if avoided else ""
    return {"interests": interests, "dislikes": dislikes, "summary": summary}


def respond(body: dict[str, Any]) -> str:
    """Answer one chat.completions request body with JSON text, like a model would."""
    user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    blocks = parse_blocks(user)
    history = blocks.get("history", [])
    if "reactions" in blocks:
        return json.dumps(refine_reply((blocks.get("profile") or [{}])[0] or {}, blocks["reactions"]))
    # One schema for both tasks (AgentConfig.reply_schema "shared"): answer in its field.
    shared = ((body.get("response_format") or {}).get("json_schema") or {}).get("name") == "AgentReply"
    if "candidates" in blocks:
        k_match = re.search(r"best (\d+) of", user)
        k = int(k_match.group(1)) if k_match else 10
        query = blocks.get("request", [None])[0]
        ranking = recommend_reply(history, blocks["candidates"], k, query)
        return json.dumps({"profile": None, "ranking": ranking} if shared else ranking)
    profile = profile_reply(history)
    return json.dumps({"profile": profile, "ranking": None} if shared else profile)

"""A deterministic stand-in "model" for the chat prompts, to record fixtures and drive tests.

No model API is reachable where recagent is built, so the chat recordings in
``fixtures/cassettes/chat.json`` are answers from this stand-in served over HTTP by
``agent.testing.loopback``. It answers:

* ``extract_constraints`` prompts with a rule-based reading of the message (price words,
  "cheaper", "no more X", "not that one", "I like the second one", "something else"...);
* ``describe_item`` / ``summarize`` / ``explain`` prompts with text assembled from the item
  data and same-category history items (so every number in it comes from the data);
* requests with ``tools`` (a host assistant) with a tool call for a user message and a short
  text answer built from the tool results;
* everything else with :mod:`agent.testing.standin_model` (profiles, rankings).

It is NOT a language model and says nothing about quality; it proves the plumbing.
"""

from __future__ import annotations

import json
import re
from typing import Any

from agent.testing import standin_model
from agent.testing.loopback import Reply

_KIND = re.compile(r'kind="(\w+)"')
_ORDINALS = {
    "first": 1,
    "1st": 1,
    "second": 2,
    "2nd": 2,
    "third": 3,
    "3rd": 3,
    "fourth": 4,
    "4th": 4,
    "fifth": 5,
}
_NEGATIVE = re.compile(
    r"\b(not (?:that|this|the \w+) one|(?:don't|do not) (?:like|want)|hate|already (?:have|own|read|follow)|"
    r"not for me|not interested)\b"
)
_POSITIVE = re.compile(r"\b(i (?:really )?(?:like|love)|looks? great|sounds? good|perfect|i'll take)\b")
_EXCLUDE = re.compile(
    r"\b(?:no more|not another|no|without|avoid|except)\s+([a-z0-9][a-z0-9 &'-]*?)"
    r"(?=\s*(?:[,.;!?]|\band\b|\bbut\b|\bplease\b|$))"
)
_SKIP = {"that one", "this one", "thanks", "thank you", "idea", "worries", "problem", "more", "longer"}
_REQUEST = re.compile(
    r"(?:looking for|i want|i need|recommend(?: me)?|suggest|find me|show me|searching for|"
    r"in the mood for)\s+(.+?)(?=[,.;!?]|\bbut\b|$)"
)


def parse(user_message: str) -> tuple[dict[str, list[Any]], dict[str, str]]:
    """The rows of each data block, and each block's ``kind`` attribute if any."""
    blocks, attrs = standin_model.parse_data_blocks(user_message)
    kinds = {name: kind.group(1) for name, text in attrs.items() if (kind := _KIND.search(text))}
    return blocks, kinds


def _singular(text: str) -> str:
    return " ".join(
        w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in text.split()
    )


def _category(phrase: str, categories: list[str]) -> str | None:
    key = _singular(re.sub(r"[^a-z0-9 ]", " ", phrase.lower()))
    for category in categories:
        name = _singular(re.sub(r"[^a-z0-9 ]", " ", category.lower()))
        if key and (key == name or f" {name} " in f" {key} " or f" {key} " in f" {name} "):
            return category
    return None


def extract_reply(blocks: dict[str, list[Any]]) -> dict[str, Any]:
    """A ``ConstraintUpdate`` for the message block, by simple rules."""
    message = str(blocks["message"][0])
    low = message.lower()
    categories = [str(c) for c in blocks.get("categories", [])]
    shown = blocks.get("shown", [])
    out: dict[str, Any] = {
        "request": None,
        "start_over": bool(re.search(r"\b(start over|forget (?:it|that|everything)|from scratch)\b", low)),
        "add_categories": [],
        "exclude_categories": [],
        "price_min": None,
        "price_max": None,
        "cheaper": False,
        "required_terms": [],
        "excluded_terms": [],
        "more_like": [],
        "less_like": [],
        "want_new": bool(re.search(r"\b(something else|other ones|different ones|new ones)\b", low)),
        "reactions": [],
    }
    positions = [
        _ORDINALS[w] for w in re.findall(r"\b(first|1st|second|2nd|third|3rd|fourth|4th|fifth)\b", low)
    ]
    positions += [len(shown)] if re.search(r"\bthe last one\b", low) else []
    negative, positive = _NEGATIVE.search(low), _POSITIVE.search(low)
    if shown and (negative or positive):
        for n in positions or [1]:
            if 1 <= n <= len(shown):
                out["reactions"].append(
                    {"item_id": shown[n - 1]["item_id"], "reaction": "dislike" if negative else "like"}
                )
    if shown and re.search(r"\b(like that|like this|similar to|more like)\b", low) and not negative:
        out["more_like"] = [shown[(positions or [1])[0] - 1]["item_id"]]
    if between := re.search(r"between\s*\$?(\d+(?:\.\d+)?)\s*and\s*\$?(\d+(?:\.\d+)?)", low):
        out["price_min"], out["price_max"] = float(between.group(1)), float(between.group(2))
    else:
        if top := re.search(r"(?:under|below|less than|up to|no more than|max)\s*\$?\s*(\d+(?:\.\d+)?)", low):
            out["price_max"] = float(top.group(1))
        if bottom := re.search(r"(?:over|above|more than|at least)\s*\$?\s*(\d+(?:\.\d+)?)", low):
            out["price_min"] = float(bottom.group(1))
    if out["price_max"] is None and re.search(r"\b(cheaper|less expensive|more affordable)\b", low):
        out["cheaper"] = True
    for match in _EXCLUDE.finditer(low):
        phrase = re.sub(r"^(?:a|an|the|any|more)\s+", "", match.group(1).strip())
        if not phrase or phrase in _SKIP:
            continue
        category = _category(phrase, categories)
        out["exclude_categories" if category else "excluded_terms"].append(category or phrase)
    if request := _REQUEST.search(low):
        wanted = re.sub(r"\s+please$", "", request.group(1).strip())
        out["request"] = wanted
        for category in categories:
            if _category(wanted, [category]) or _singular(category.lower()) in _singular(wanted):
                out["add_categories"].append(category)
    return out


def content_reply(blocks: dict[str, list[Any]], kind: str) -> dict[str, Any]:
    """Text about the item block, using only its data and same-category history titles."""
    item = blocks["item"][0]
    history = blocks.get("history", [])
    title, category = item.get("title", item["item_id"]), item.get("category")
    positive = ("purchase", "like", "cart", "follow", "join", "read", "watch", "rating")
    related = list(
        dict.fromkeys(
            e["item_id"]
            for e in reversed(history)
            if e.get("item_id") and e.get("category") == category and e["behavior"] in positive
        )
    )[:2]
    titles = {e["item_id"]: e.get("title") or e["item_id"] for e in history if e.get("item_id")}
    description = str(item.get("description") or "")
    first = re.split(r"(?<=[.!?])\s", description, maxsplit=1)[0] if description else ""
    facts = [{"name": "title", "value": title}]
    price = item.get("price")
    price_text = f" at {price:.2f}" if isinstance(price, int | float) else ""
    if price_text:
        facts.append({"name": "price", "value": str(price)})
    if first:
        facts.append({"name": "description", "value": first})
    if kind == "explanation":
        if related:
            names = " and ".join(titles[i] for i in related)
            text = f"Suggested because you engaged with {names}, and {title} is also in {category or 'that area'}."
        else:
            text = f"The link to your history is weak: {title} is a popular pick in {category or 'its category'}."
    else:
        text = f"{title}{price_text}. {first}".strip()
        if related:
            text += f" It goes well with {titles[related[0]]}, which you already know."
    return {"text": text, "facts_used": facts, "evidence": related}


def assistant_reply(body: dict[str, Any]) -> Reply:
    """A host assistant: calls a tool for a user message, answers in text after tool results."""
    messages = body["messages"]
    last = messages[-1]
    tools = {t["function"]["name"]: t["function"] for t in body.get("tools", [])}
    if last["role"] == "tool":
        results = []
        for message in reversed(messages):
            if message["role"] != "tool":
                break
            results.append(json.loads(message["content"]))
        return Reply(content="\n".join(_say(result) for result in reversed(results)))
    text = str(last.get("content") or "").lower()
    recent = _last_items(messages)
    args: dict[str, Any]
    if recent and "why" in text and "explain_recommendation" in tools:
        name, args = "explain_recommendation", {"item_id": recent[0]}
    elif recent and _POSITIVE.search(text) and "record_feedback" in tools:
        args = {"item_id": recent[0], "reaction": "like", "comment": None}
        name = "record_feedback"
    else:
        props = tools["recommend_items"]["parameters"]["properties"]
        args = {key: None for key in props}
        args.update({"request": str(last.get("content") or ""), "k": 3})
        name = "recommend_items"
    return Reply(content=None, tool_calls=[{"id": f"call_{len(messages)}", "name": name, "arguments": args}])


def _last_items(messages: list[dict[str, Any]]) -> list[str]:
    for message in reversed(messages):
        if message["role"] == "tool":
            payload = json.loads(message["content"])
            items = (payload.get("result") or {}).get("items") if payload.get("ok") else None
            if items:
                return [i["item_id"] for i in items]
    return []


def _say(result: dict[str, Any]) -> str:
    if not result.get("ok"):
        return f"Sorry, that did not work: {result['error']['message']}"
    payload = result["result"]
    if "items" in payload:
        if not payload["items"]:
            return "Nothing matches all of that; could you relax one of your wishes?"
        lines = ["Here is what I found:"]
        for item in payload["items"]:
            price = f" ({item['price']:.2f})" if "price" in item else ""
            lines.append(f"{item['rank']}. {item['title']}{price}: {item['reason']}")
        return "\n".join(lines)
    if "text" in payload:
        return str(payload["text"])
    return "Thanks, noted."


def respond(body: dict[str, Any]) -> Reply:
    """Answer one chat.completions request body like a model would (see the module docstring)."""
    if body.get("tools"):
        return assistant_reply(body)
    users = [m for m in body["messages"] if m["role"] == "user"]
    data = next((m["content"] for m in users if "<data" in str(m["content"])), users[-1]["content"])
    blocks, kinds = parse(str(data))
    if "message" in blocks:
        return Reply(content=json.dumps(extract_reply(blocks)))
    if "item" in blocks:
        return Reply(content=json.dumps(content_reply(blocks, kinds.get("item", "description"))))
    return Reply(content=standin_model.respond(body))


# The scenarios recorded in fixtures/cassettes/chat.json (scripts/record_chat_fixtures.py);
# the tests replay exactly these, so changing one means re-recording.
RECORDED_USER = "u001"
RECORDED_CONVERSATION: tuple[str, ...] = (
    "I'm looking for a new board game for game night",
    "Something like that but cheaper, and no more legacy campaigns",
    "I like the second one",
)
RECORDED_CONTENT: tuple[tuple[str, str], ...] = (("SKU-10014", "description"), ("SKU-10014", "explanation"))
RECORDED_ASSISTANT: tuple[str, ...] = (
    "Can you suggest a board game for two players?",
    "Why the first one?",
    "I love the first one",
)
RECORDED_MODEL = "gpt-4.1-mini"

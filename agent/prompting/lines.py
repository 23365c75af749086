"""Prompt lines: the line models and their exact JSON text, computed once and shared.

A prompt shows history events and candidates as one JSON object per line,
``{{ line|compact|tojson }}``: the line's fields without nulls, Jinja's HTML-safe JSON with
``JSON_DUMPS_KWARGS``. ``dumped_lines`` turns line models into ``DumpedLine``s (equal to
``model_dump(mode="json")``) that carry that text, so a line shown in many prompts (a user's
history in their profile and recommend prompts, a catalog item in many users' candidates) is
dumped and encoded once. ``history_pieces`` gives a history line's text and token count
from cached per-field parts: the line is cut after every ", " between fields, each cut a
proven pre-token boundary (``agent.prompting.tokens``' lemma 2), so its count is a sum of cached counts.

The Jinja filters ``tojson`` and ``compact`` that templates use are here too
(``tojson_filter``, ``compact_filter``): they render these lines from their cached text.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import jinja2
import tiktoken
from jinja2.filters import do_tojson
from jinja2.nodes import EvalContext
from markupsafe import Markup
from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticSerializationError, to_json

from agent.prompting import tokens


class HistoryLine(BaseModel):
    """One event as the model sees it (no user id, free text already scrubbed)."""

    n: int
    date: str
    behavior: str
    item_id: str | None
    title: str | None
    category: str | None
    price: float | None
    value: float | None
    text: str | None


class CandidateLine(BaseModel):
    """One candidate as the model sees it. Frozen: the catalog shares one per item and setting."""

    model_config = ConfigDict(frozen=True)

    item_id: str
    title: str
    category: str | None
    price: float | None
    description: str | None


# -- JSON text exactly as the templates' ``tojson`` writes it --------------------------------
JSON_DUMPS_KWARGS: dict[str, Any] = {"sort_keys": False, "ensure_ascii": False}
"""``json.dumps`` options of every template's ``tojson``."""
_ENCODER = json.JSONEncoder(**JSON_DUMPS_KWARGS)  # what json.dumps(value, **JSON_DUMPS_KWARGS) uses
# json.dumps builds a C encoder on every call; this one is built once with the same options.
# It skips the cycle check: a value that contains itself runs into the recursion limit and is
# then encoded the usual way, which raises the usual ValueError.
_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODE = (
    None
    if _make_encoder is None
    else _make_encoder(
        None, _ENCODER.default, json.encoder.encode_basestring, None, ": ", ", ", False, False, True
    )
)


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return json.encoder.encode_basestring(value)
    if _C_ENCODE is not None:
        try:
            return "".join(_C_ENCODE(value, 0))
        except RecursionError:
            pass
    return _ENCODER.encode(value)


def tojson_text(value: Any) -> str:
    """Exactly what ``{{ value|tojson }}`` renders: Jinja's HTML-safe JSON with our options."""
    return (
        _json_text(value)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("'", "\\u0027")
    )


@jinja2.pass_eval_context
def tojson_filter(eval_ctx: EvalContext, value: Any, indent: int | None = None) -> Markup:
    """The templates' ``tojson``: Jinja's own text (its filter builds an encoder per call)."""
    policies = eval_ctx.environment.policies
    if (
        indent is not None
        or policies["json.dumps_function"] is not None
        or policies["json.dumps_kwargs"] != JSON_DUMPS_KWARGS
    ):
        return do_tojson(eval_ctx, value, indent)
    if type(value) is _CompactLine:
        return Markup(value._json)  # the text is already HTML-safe JSON
    return Markup(tojson_text(value))


def compact_filter(value: Any) -> Any:
    """The templates' ``compact``: a dict without its null values."""
    if type(value) is DumpedLine:
        return value._compact_line()
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value


# -- dumped lines ------------------------------------------------------------------------------
class DumpedLine(dict[str, Any]):
    """A dumped model (one prompt line) that computes ``{{ line|compact|tojson }}`` once.

    It equals (and renders like) the plain dict. Get them from ``dumped_lines``; do not
    modify one after creation (they are shared).
    """

    # Methods and properties would shadow keys of the same name in templates (``line.x``
    # tries the attribute first): only underscore names, refused to templates, live here.
    __slots__ = ("_compact", "_json", "_memo")
    _compact: _CompactLine | None
    _json: str | None
    _memo: dict[str, Any]

    def __init__(self, dumped: dict[str, Any], text: str | None = None) -> None:
        super().__init__(dumped)
        self._compact, self._json, self._memo = None, text, {}

    def _compact_line(self) -> _CompactLine:
        if self._compact is None:
            compact = _CompactLine({k: v for k, v in self.items() if v is not None})
            compact._json = self._json if self._json is not None else tojson_text(compact)
            self._compact = compact
        return self._compact


class _CompactLine(dict[str, Any]):
    """``compact`` of a ``DumpedLine``, with its ``tojson`` text."""

    __slots__ = ("_json",)
    _json: str  # what ``tojson`` renders for it


def compact_json(line: DumpedLine) -> str:
    """What ``{{ line|compact|tojson }}`` renders (computed once per line)."""
    return line._json if line._json is not None else line._compact_line()._json


def line_memo(line: DumpedLine) -> dict[str, Any]:
    """Room for what callers derive from a line once (e.g. its token count per encoding)."""
    return line._memo


PLAIN_LINE_MODELS: frozenset[type[BaseModel]] = frozenset({HistoryLine, CandidateLine})
"""Line models without custom serializers: their own dump is their part of any inputs' dump."""
LINE_CACHE_SIZE = 8192
"""Lines that ``dumped_lines`` remembers (the oldest are forgotten first)."""
_lines: OrderedDict[tuple[type, str | bytes], DumpedLine] = OrderedDict()
_lines_lock = threading.Lock()
_FROZEN_LINE_MODELS = frozenset(m for m in PLAIN_LINE_MODELS if m.model_config.get("frozen"))
# Shared frozen lines (the catalog's candidates) are found by identity, without their JSON.
_by_identity: OrderedDict[int, tuple[BaseModel, DumpedLine]] = OrderedDict()


def dumped_lines(models: Sequence[BaseModel]) -> list[DumpedLine]:
    """``[m.model_dump(mode="json") for m in models]`` as ``DumpedLine``s, shared across calls.

    The key is exact: the model's class and JSON (-0.0, 1.0 and inf stay distinct). Only for
    plain models (no custom serializers), whose own dump is their part of any inputs' dump.
    """
    out = []
    for model in models:
        shared = _by_identity.get(id(model)) if type(model) in _FROZEN_LINE_MODELS else None
        if shared is not None and shared[0] is model:  # the very instance (kept alive here)
            out.append(shared[1])
            continue
        values = _json_ready_fields(model)
        if values is not None:
            # Its dump is its field values, so its compact JSON (a field is None or shown)
            # is an exact key, and the text the prompt needs anyway.
            compact = tojson_text({k: v for k, v in values.items() if v is not None})
            text: str | None = compact
            key: tuple[type, str | bytes] = (type(model), compact)
        else:
            values = model.model_dump(mode="json")
            text = None
            try:
                # The dump, not the model: for a model, to_json ignores inf_nan_mode and
                # writes inf, -inf and NaN all as null (one key for three lines).
                key = (type(model), to_json(values, inf_nan_mode="constants"))
            except (PydanticSerializationError, TypeError, ValueError):
                out.append(DumpedLine(values))
                continue
        line = _lines.get(key)
        if line is None:
            line = DumpedLine(values, text)
            with _lines_lock:
                while len(_lines) >= LINE_CACHE_SIZE:
                    _lines.popitem(last=False)  # O(1); next(iter(dict)) scans deleted slots
                _lines[key] = line
        if type(model) in _FROZEN_LINE_MODELS:
            with _lines_lock:
                while len(_by_identity) >= LINE_CACHE_SIZE:
                    _by_identity.popitem(last=False)
                _by_identity[id(model)] = (model, line)
        out.append(line)
    return out


_FIELD_NAMES: dict[type[BaseModel], tuple[str, ...]] = {m: tuple(m.model_fields) for m in PLAIN_LINE_MODELS}


def _json_ready_fields(model: BaseModel) -> dict[str, Any] | None:
    """The field values of a plain line model if ``model_dump(mode="json")`` equals them and
    their JSON is an exact key: every value a str, int, finite float or None (inf and NaN
    take the general path)."""
    names = _FIELD_NAMES.get(type(model))
    values = model.__dict__
    if names is None or tuple(values) != names:
        return None
    for value in values.values():
        kind = type(value)
        if kind is float:
            if value - value != 0.0:  # inf or NaN
                return None
        elif kind is not str and kind is not int and value is not None:
            return None
    return values


_HISTORY_FIELDS = tuple(HistoryLine.model_fields)
_FIELD_JSON = {name: " " + tojson_text(name) + ": " for name in _HISTORY_FIELDS}
"""`` "name": `` of each history field (the names need no escaping)."""
PART_CACHE_SIZE = 1 << 15
"""Field parts (a field and value, as a history line shows it) whose text and count are kept."""


def history_pieces(
    models: Sequence[BaseModel], encoding: tiktoken.Encoding
) -> tuple[list[DumpedLine], list[tuple[str, int]]] | None:
    """History lines as ``DumpedLine``s (as ``dumped_lines`` gives them, but not shared) and
    each line as the history block shows it, ``compact_json(line) + "\\n"``, with its exact
    tokens in ``encoding``.

    None unless every model is a ``HistoryLine`` whose values are exact JSON (str, int, finite
    float or None: inf and NaN take ``dumped_lines``) and the encoding's pre-tokenizer is one
    lemma 2 was checked for. The text is the C encoder's: "{", the non-null ``"key": value``
    joined by ", ", "}" (a str is ``tojson_text`` of it, an int or float its ``repr``;
    HTML-escaping the whole equals escaping each value, the keys have nothing to escape). It
    is cut after every ", " between fields, so the count is the sum of the parts' counts, and
    a part (a field and its value) recurs across users: its text and count are cached. So are
    an item's fields (id, title, category, price), which close most lines (views, purchases),
    as one group per item, used while a line holds the very same value objects.
    """
    if tokens.pretokenizer_kind(encoding) is None:
        return None
    groups = _item_groups.setdefault(encoding.name, {})
    str_part = _str_part
    lines, pieces = [], []
    for model in models:
        values = model.__dict__
        if type(model) is not HistoryLine or tuple(values) != _HISTORY_FIELDS:
            return None
        n, date, behavior, item_id, title, category, price, value, text = values.values()
        entry = groups.get(item_id) if type(item_id) is str else None
        if entry is not None and not (entry[0] is title and entry[1] is category and entry[2] is price):
            entry = None  # the item's group was made from other values: rebuilt below
        if (
            entry is not None
            and type(n) is int
            and type(date) is str
            and type(behavior) is str
            and value is None
            and text is None
        ):  # the usual line: its item's fields (the same objects) close it
            opening, opening_tokens = _opening_part(encoding, n)
            date_part, date_tokens = str_part(encoding, "date", date)
            behavior_part, behavior_tokens = str_part(encoding, "behavior", behavior)
            line = opening + date_part + behavior_part + entry[3]
            total = opening_tokens + date_tokens + behavior_tokens + entry[4]
        else:
            written = _line_parts(encoding, values)
            if written is None:
                return None
            line, total = written
            if type(item_id) is str and entry is None:  # remember the item's fields as one group
                if len(groups) >= PART_CACHE_SIZE:
                    groups.clear()
                group = _line_parts(
                    encoding,
                    {"n": 0, "item_id": item_id, "title": title, "category": category, "price": price},
                )
                if group is not None:
                    group_text, group_tokens = group
                    cut = group_text.index(",") + 1  # after the "n" part
                    opening_tokens = _opening_part(encoding, 0)[1]
                    groups[item_id] = (
                        title,
                        category,
                        price,
                        group_text[cut:],
                        group_tokens - opening_tokens,
                    )
        lines.append(DumpedLine(values, line[:-1]))
        pieces.append((line, total))
    return lines, pieces


_item_groups: dict[str, dict[str, tuple[Any, Any, Any, str, int]]] = {}
"""Per encoding, per item id: its title, category and price (the very objects), and the
closing parts they make (`` "item_id": ..., "price": ...}\\n``) with their tokens."""


def _line_parts(encoding: tiktoken.Encoding, values: dict[str, Any]) -> tuple[str, int] | None:
    """The line's text (JSON + "\\n") and tokens from its fields' parts; None if a value is
    not exact JSON. ``values`` start with an int "n"."""
    n = values["n"]
    if type(n) is not int:
        return None
    # "n" opens the object; the other fields are written as middle parts (" ...,") and
    # the last one is then closed.
    opening, total = _opening_part(encoding, n)
    parts = [opening]
    for name, value in values.items():
        kind = type(value)
        if kind is str:
            if name == "text":  # free text rarely recurs: not cached
                part, tokens_in = _new_part(encoding, name, value)
            else:
                part, tokens_in = _str_part(encoding, name, value)
        elif value is None or name == "n":
            continue
        elif kind is float and value - value == 0.0:  # not inf or NaN
            part, tokens_in = _number_part(encoding, name, float.__repr__(value))
        elif kind is int:
            part, tokens_in = _number_part(encoding, name, int.__repr__(value))
        else:
            return None
        parts.append(part)
        total += tokens_in
    if len(parts) == 1:
        text = "{" + _FIELD_JSON["n"][1:] + int.__repr__(n) + "}\n"
        return text, tokens.count_clause(encoding, text)
    last = parts[-1]
    closing, closing_tokens = (
        _closing_part(encoding, last) if values.get("text") is None else _closed(encoding, last)
    )
    parts[-1] = closing
    return "".join(parts), total + closing_tokens - tokens_in


@lru_cache(maxsize=PART_CACHE_SIZE)
def _str_part(encoding: tiktoken.Encoding, name: str, value: str) -> tuple[str, int]:
    return _new_part(encoding, name, value)


def _new_part(encoding: tiktoken.Encoding, name: str, value: str) -> tuple[str, int]:
    part = _FIELD_JSON[name] + tojson_text(value) + ","
    return part, tokens.count_clause(encoding, part)


@lru_cache(maxsize=PART_CACHE_SIZE)
def _number_part(encoding: tiktoken.Encoding, name: str, written: str) -> tuple[str, int]:
    part = _FIELD_JSON[name] + written + ","
    return part, tokens.count_clause(encoding, part)


@lru_cache(maxsize=PART_CACHE_SIZE)
def _opening_part(encoding: tiktoken.Encoding, n: int) -> tuple[str, int]:
    opening = "{" + _FIELD_JSON["n"][1:] + int.__repr__(n) + ","
    return opening, tokens.count_clause(encoding, opening)


@lru_cache(maxsize=PART_CACHE_SIZE)
def _closing_part(encoding: tiktoken.Encoding, part: str) -> tuple[str, int]:
    return _closed(encoding, part)


def _closed(encoding: tiktoken.Encoding, part: str) -> tuple[str, int]:
    closing = part[:-1] + "}\n"
    return closing, tokens.count_clause(encoding, closing)

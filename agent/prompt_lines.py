"""Prompt lines: the line models and their exact JSON text, computed once and shared.

A prompt shows history events and candidates as one JSON object per line,
``{{ line|compact|tojson }}``: the line's fields without nulls, Jinja's HTML-safe JSON with
``JSON_DUMPS_KWARGS``. ``dumped_lines`` turns line models into ``DumpedLine``s (equal to
``model_dump(mode="json")``) that carry that text, so a line shown in many prompts (a user's
history in their profile and recommend prompts, a catalog item in many users' candidates) is
dumped and encoded once. A history line's text is built from cached per-field pieces and kept
cut after every ", " between fields (``line_parts``): each cut is a proven pre-token
boundary (``agent.tokens``' lemma 2), so its token count is a sum of cached counts.

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
from jinja2.filters import do_tojson
from jinja2.nodes import EvalContext
from markupsafe import Markup
from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticSerializationError, to_json


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
    __slots__ = ("_compact", "_json", "_memo", "_parts")
    _compact: _CompactLine | None
    _json: str | None
    _memo: dict[str, Any]
    _parts: list[str] | None

    def __init__(
        self, dumped: dict[str, Any], text: str | None = None, parts: list[str] | None = None
    ) -> None:
        super().__init__(dumped)
        self._compact, self._json, self._memo, self._parts = None, text, {}, parts

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


def line_parts(line: DumpedLine) -> list[str] | None:
    """``compact_json(line) + "\\n"`` cut after every ", " between two fields (each cut is
    a "," then a " "), for history lines; None for other lines."""
    return line._parts


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
        parts = None
        if values is not None:
            # Its dump is its field values, so its compact JSON (a field is None or shown)
            # is an exact key, and the text the prompt needs anyway.
            if type(model) is HistoryLine:
                parts = _history_parts(values)
                text = "".join(parts)[:-1]
            else:
                text = tojson_text({k: v for k, v in values.items() if v is not None})
            key: tuple[type, str | bytes] = (type(model), text)
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
            line = DumpedLine(values, text, parts)
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


_FIELD_JSON = {name: tojson_text(name) + ": " for name in HistoryLine.model_fields}
"""``"name": `` of each history field (the names need no escaping)."""


@lru_cache(maxsize=1 << 15)
def _string_json(text: str) -> str:
    return tojson_text(text)  # titles, categories, behaviors, dates and ids recur across users


def _history_parts(values: dict[str, Any]) -> list[str]:
    """``tojson_text`` of the non-null fields, + "\\n", cut after every ", " between fields.

    The same text as the C encoder's: "{", then ``"key": value`` joined by ", ", then "}";
    a str is ``tojson_text`` of it, an int or a finite float its ``repr`` (exact types only:
    ``_json_ready_fields`` holds). HTML-escaping the whole equals escaping each value (the
    keys have nothing to escape).
    """
    fields = []
    for name, value in values.items():
        if value is None:
            continue
        kind = type(value)
        encoded = (
            _string_json(value) if kind is str else float.__repr__(value) if kind is float else str(value)
        )
        fields.append(_FIELD_JSON[name] + encoded)
    if len(fields) == 1:
        return ["{" + fields[0] + "}\n"]
    return ["{" + fields[0] + ",", *[" " + field + "," for field in fields[1:-1]], " " + fields[-1] + "}\n"]

"""Prompt lines: the line models, and the JSON text the templates write for them.

A history event and a candidate are ``HistoryLine`` and ``CandidateLine``; the templates show
them as tables of JSON rows (``agent.prompting.tables``). The Jinja filters ``tojson`` and
``compact`` that templates use are here (``tojson_filter``, ``compact_filter``): ``tojson``
writes Jinja's HTML-safe JSON with ``JSON_DUMPS_KWARGS`` using one encoder built once.
"""

from __future__ import annotations

import json
from typing import Any

import jinja2
from jinja2.filters import do_tojson
from jinja2.nodes import EvalContext
from markupsafe import Markup
from pydantic import BaseModel, ConfigDict


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
    return Markup(tojson_text(value))


def compact_filter(value: Any) -> Any:
    """The templates' ``compact``: a dict without its null values."""
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value

"""Render prompt templates into chat messages, with a version for every request.

One ``.j2`` file per prompt in ``prompts/`` (shipped in the wheel as ``agent.templates``).
Each template defines two macros, ``system()`` and ``user()``; each is rendered with one
validated pydantic inputs model and ``StrictUndefined`` (a missing variable is an error, not
an empty string). Templates always render in Jinja's sandbox, because users can point
``template_dir`` (or ``RECAGENT_TEMPLATES``) at their own files; a user file with the same
name overrides the built-in one.

A template's version is ``name@<first 10 hex of sha256(source of it and of _base.j2)>``, so
editing a template changes the version, the request metadata and the cassette key.

Speed without changing a byte: ``tojson`` writes exactly Jinja's HTML-safe JSON with one
reused encoder, versions are cached by file path, mtime and size, and ``dumped_lines`` lets
a line shown in many prompts (history, candidates) be dumped and encoded once.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from stat import S_ISREG
from typing import Any

import jinja2
from jinja2.filters import do_tojson
from jinja2.nodes import EvalContext
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticSerializationError, to_json

from agent.errors import TemplateError

BUILTIN_TEMPLATE_DIR = (
    Path(__file__).parent / "templates"
    if (Path(__file__).parent / "templates").is_dir()
    else Path(__file__).resolve().parent.parent / "prompts"
)
SHARED_TEMPLATES = ("_base.j2",)


class Domain(BaseModel):
    """Nouns that let the same templates speak about products, articles or people."""

    name: str = "e-commerce"
    user_noun: str = "shopper"
    item_noun: str = "product"
    items_noun: str = "products"


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


class ProfileInputs(BaseModel):
    domain: Domain = Field(default_factory=Domain)
    behaviors: list[str]
    history: list[HistoryLine]
    total_events: int


class RecommendInputs(BaseModel):
    domain: Domain = Field(default_factory=Domain)
    profile: dict[str, Any] | None
    history: list[HistoryLine]
    total_events: int
    candidates: list[CandidateLine]
    k: int
    query: str | None = None


TEMPLATE_INPUTS: dict[str, type[BaseModel]] = {
    "profile": ProfileInputs,
    "recommend": RecommendInputs,
}


@dataclass(frozen=True)
class RenderedPrompt:
    name: str
    version: str
    messages: list[dict[str, str]]


class PromptRenderer:
    """Renders templates from an optional user directory, then the built-in one."""

    def __init__(self, template_dir: str | Path | None = None) -> None:
        user_dir = template_dir or os.environ.get("RECAGENT_TEMPLATES")
        search: Sequence[Path] = (
            [Path(user_dir), BUILTIN_TEMPLATE_DIR] if user_dir else [BUILTIN_TEMPLATE_DIR]
        )
        if user_dir and not Path(user_dir).is_dir():
            raise TemplateError(f"template directory not found: {user_dir}")
        self._search = list(search)
        self._env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader([str(p) for p in self._search]),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            trim_blocks=False,
            keep_trailing_newline=False,
        )
        # Keep field order (n first) and drop nulls: shorter prompts, same information.
        self._env.policies["json.dumps_kwargs"] = dict(JSON_DUMPS_KWARGS)
        self._env.filters["compact"] = _drop_nulls
        self._env.filters["tojson"] = _tojson
        self._versions: dict[tuple[tuple[str, int, int], ...], str] = {}

    def _path(self, filename: str) -> tuple[Path, os.stat_result]:
        for directory in self._search:
            path = directory / filename
            try:
                stat = path.stat()
            except OSError:
                continue
            if S_ISREG(stat.st_mode):
                return path, stat
        raise TemplateError(f"template {filename!r} not found in {', '.join(map(str, self._search))}")

    def _source(self, filename: str) -> str:
        return self._path(filename)[0].read_text(encoding="utf-8")

    def version(self, name: str) -> str:
        """``name@`` + 10 hex of sha256 over the sources of ``name.j2`` and ``_base.j2``.

        Cached by path, modification time and size, so an edited template gets a new version
        without every render reading and hashing the files again.
        """
        files = [self._path(filename) for filename in (f"{name}.j2", *SHARED_TEMPLATES)]
        key = tuple((str(path), stat.st_mtime_ns, stat.st_size) for path, stat in files)
        version = self._versions.get(key)
        if version is None:
            digest = hashlib.sha256()
            for path, _ in files:
                digest.update(path.read_text(encoding="utf-8").encode())
            version = self._versions[key] = f"{name}@{digest.hexdigest()[:10]}"
        return version

    def render(self, name: str, inputs: BaseModel) -> RenderedPrompt:
        """Render ``name`` with ``inputs`` into a system and a user message.

        Raises ``TemplateError`` for an unknown template, inputs of the wrong model, a
        variable the inputs lack, or a template without ``system``/``user`` macros.
        """
        self.check_inputs(name, inputs)
        return self.render_vars(name, inputs.model_dump(mode="json"))

    def has_stock_filters(self) -> bool:
        """True while ``tojson``, ``compact`` and the JSON policies are this module's."""
        filters, policies = self._env.filters, self._env.policies
        return (
            filters.get("tojson") is _tojson
            and filters.get("compact") is _drop_nulls
            and policies["json.dumps_function"] is None
            and policies["json.dumps_kwargs"] == JSON_DUMPS_KWARGS
        )

    @staticmethod
    def check_inputs(name: str, inputs: BaseModel) -> None:
        """Raise ``TemplateError`` if ``name`` takes another inputs model than ``inputs``."""
        expected = TEMPLATE_INPUTS.get(name)
        if expected is not None and not isinstance(inputs, expected):
            raise TemplateError(f"template {name!r} takes {expected.__name__}, got {type(inputs).__name__}")

    def render_vars(
        self, name: str, variables: dict[str, Any], *, version: str | None = None
    ) -> RenderedPrompt:
        """``render`` for inputs already dumped (``model_dump(mode="json")``), unchecked.

        For callers that render the same lines many times (``agent.prompt_fit``): list
        elements may be ``DumpedLine``s. ``version``, if given, must be ``self.version(name)``
        as the caller just read it.
        """
        try:
            template = self._env.get_template(f"{name}.j2")
            module = template.make_module(variables)
            system = str(module.system()).strip()  # type: ignore[attr-defined]
            user = str(module.user()).strip()  # type: ignore[attr-defined]
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(
                f"template {name!r} not found in {', '.join(map(str, self._search))}"
            ) from exc
        except AttributeError as exc:
            raise TemplateError(f"template {name!r} must define macros system() and user()") from exc
        except (jinja2.TemplateError, OverflowError, MemoryError) as exc:  # sandbox limits, too
            raise TemplateError(f"template {name!r} failed to render: {exc}") from exc
        return RenderedPrompt(
            name=name,
            version=version or self.version(name),
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        )

    def render_macro(self, filename: str, macro: str, *args: Any) -> str:
        """The text of macro ``macro`` of template ``filename`` (e.g. ``_base.j2``) called with ``args``.

        Only for macros that use nothing but their arguments (the module has no context).
        Raises ``TemplateError`` as ``render`` does.
        """
        try:
            return str(getattr(self._env.get_template(filename).module, macro)(*args))
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(
                f"template {filename!r} not found in {', '.join(map(str, self._search))}"
            ) from exc
        except AttributeError as exc:
            raise TemplateError(f"template {filename!r} has no macro {macro}()") from exc
        except (jinja2.TemplateError, OverflowError, MemoryError) as exc:
            raise TemplateError(f"macro {macro}() of {filename!r} failed to render: {exc}") from exc


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
def _tojson(eval_ctx: EvalContext, value: Any, indent: int | None = None) -> Markup:
    # Jinja's own filter builds a json.JSONEncoder per call; this one reuses ours. Same text.
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


class DumpedLine(dict[str, Any]):
    """A dumped model (one prompt line) that computes ``{{ line|compact|tojson }}`` once.

    It equals (and renders like) the plain dict. Get them from ``dumped_lines``; do not
    modify one after creation (they are shared).
    """

    # Methods and properties would shadow keys of the same name in templates (``line.x``
    # tries the attribute first): only underscore names, refused to templates, live here.
    __slots__ = ("_compact", "_memo")
    _compact: _CompactLine | None
    _memo: dict[str, Any]

    def __init__(self, dumped: dict[str, Any]) -> None:
        super().__init__(dumped)
        self._compact = None
        self._memo = {}

    def _compact_line(self) -> _CompactLine:
        if self._compact is None:
            compact = _CompactLine((k, v) for k, v in self.items() if v is not None)
            compact._json = tojson_text(compact)
            self._compact = compact
        return self._compact


def compact_json(line: DumpedLine) -> str:
    """What ``{{ line|compact|tojson }}`` renders (computed once per line)."""
    return line._compact_line()._json


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

    A line shown in many prompts (a user's history in their profile and recommend prompts, a
    catalog item in many users' candidates) is dumped and its JSON text computed once. The
    key is exact: the model's class and JSON (-0.0, 1.0 and inf stay distinct). Only for
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
            compact = _CompactLine({k: v for k, v in values.items() if v is not None})
            compact._json = tojson_text(compact)
            key: tuple[type, str | bytes] = (type(model), compact._json)
        else:
            compact, values = None, model.model_dump(mode="json")
            try:
                # The dump, not the model: for a model, to_json ignores inf_nan_mode and
                # writes inf, -inf and NaN all as null (one key for three lines).
                key = (type(model), to_json(values, inf_nan_mode="constants"))
            except (PydanticSerializationError, TypeError, ValueError):
                out.append(DumpedLine(values))
                continue
        line = _lines.get(key)
        if line is None:
            line = DumpedLine(values)
            line._compact = compact
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


class _CompactLine(dict[str, Any]):
    """``compact`` of a ``DumpedLine``, with its ``tojson`` text."""

    __slots__ = ("_json",)
    _json: str  # what ``tojson`` renders for it


def _drop_nulls(value: Any) -> Any:
    if type(value) is DumpedLine:
        return value._compact_line()
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value


@lru_cache(maxsize=4)
def default_renderer(template_dir: str | None = None) -> PromptRenderer:
    return PromptRenderer(template_dir)


def render(name: str, inputs: BaseModel, template_dir: str | None = None) -> RenderedPrompt:
    """Render a template with the default (or given) template directory."""
    return default_renderer(template_dir).render(name, inputs)

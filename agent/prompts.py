"""Render prompt templates into chat messages, with a version for every request.

One ``.j2`` file per prompt in ``prompts/`` (shipped in the wheel as ``agent.templates``).
Each template defines two macros, ``system()`` and ``user()``; each is rendered with one
validated pydantic inputs model and ``StrictUndefined`` (a missing variable is an error, not
an empty string). Templates always render in Jinja's sandbox, because users can point
``template_dir`` (or ``RECAGENT_TEMPLATES``) at their own files; a user file with the same
name overrides the built-in one.

A template's version is ``name@<first 10 hex of sha256(source of it and of _base.j2)>``, so
editing a template changes the version, the request metadata and the cassette key.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, Field

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
        self._env.policies["json.dumps_kwargs"] = {"sort_keys": False, "ensure_ascii": False}
        self._env.filters["compact"] = _drop_nulls

    def _source(self, filename: str) -> str:
        for directory in self._search:
            path = directory / filename
            if path.is_file():
                return path.read_text(encoding="utf-8")
        raise TemplateError(f"template {filename!r} not found in {', '.join(map(str, self._search))}")

    def version(self, name: str) -> str:
        digest = hashlib.sha256()
        for filename in (f"{name}.j2", *SHARED_TEMPLATES):
            digest.update(self._source(filename).encode())
        return f"{name}@{digest.hexdigest()[:10]}"

    def render(self, name: str, inputs: BaseModel) -> RenderedPrompt:
        """Render ``name`` with ``inputs`` into a system and a user message.

        Raises ``TemplateError`` for an unknown template, inputs of the wrong model, a
        variable the inputs lack, or a template without ``system``/``user`` macros.
        """
        expected = TEMPLATE_INPUTS.get(name)
        if expected is not None and not isinstance(inputs, expected):
            raise TemplateError(f"template {name!r} takes {expected.__name__}, got {type(inputs).__name__}")
        try:
            template = self._env.get_template(f"{name}.j2")
            module = template.make_module(inputs.model_dump(mode="json"))
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
            version=self.version(name),
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        )


def _drop_nulls(value: Any) -> Any:
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value


@lru_cache(maxsize=4)
def default_renderer(template_dir: str | None = None) -> PromptRenderer:
    return PromptRenderer(template_dir)


def render(name: str, inputs: BaseModel, template_dir: str | None = None) -> RenderedPrompt:
    """Render a template with the default (or given) template directory."""
    return default_renderer(template_dir).render(name, inputs)

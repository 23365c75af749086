"""Render prompt templates into chat messages, with a version for every request.

One ``.j2`` file per prompt in ``prompts/`` (shipped in the wheel as ``agent.templates``).
Each template defines two macros, ``system()`` and ``user()``; each is rendered with one
validated pydantic inputs model and ``StrictUndefined`` (a missing variable is an error, not
an empty string). Templates always render in Jinja's sandbox, because users can point
``template_dir`` (or ``RECAGENT_TEMPLATES``) at their own files; a user file with the same
name overrides the built-in one. Two more walls for user templates: a template file whose
real path (symlinks resolved) is outside the template directories is refused, so a committed
``leak.j2 -> ../secret.txt`` cannot send a file to the model API; and one render may take at
most ``render_timeout_s`` seconds (loops over ``range`` and every call or attribute access
check the clock; ``*`` and ``**`` refuse to build huge values), so ``range`` loops nested ten
deep end in a ``TemplateError`` instead of running for hours.

A template's version is ``name@<first 10 hex of sha256(source of it and of _base.j2)>``, so
editing a template changes the version, the request metadata and the cassette key.

Speed without changing a byte: ``tojson`` writes exactly Jinja's HTML-safe JSON with one
reused encoder, versions are cached by file path, mtime and size, and lines shown in many
prompts (history, candidates) are dumped and encoded once (``agent.prompting.lines``).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from stat import S_ISREG
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment, safe_range
from pydantic import BaseModel, Field

from agent.errors import TemplateError
from agent.prompting.lines import (  # re-exported: the line models are part of every inputs model
    JSON_DUMPS_KWARGS,
    CandidateLine,
    HistoryLine,
    compact_filter,
    tojson_filter,
)
from agent.prompting.tables import candidate_table, history_tables

BUILTIN_TEMPLATE_DIR = (
    Path(__file__).parents[1] / "templates"
    if (Path(__file__).parents[1] / "templates").is_dir()
    else Path(__file__).resolve().parents[2] / "prompts"
)
SHARED_TEMPLATES = ("_base.j2",)


class Domain(BaseModel):
    """Nouns that let the same templates speak about products, articles or people."""

    name: str = "e-commerce"
    user_noun: str = "shopper"
    item_noun: str = "product"
    items_noun: str = "products"


class ProfileInputs(BaseModel):
    domain: Domain = Field(default_factory=Domain)
    behaviors: list[str]
    history: list[HistoryLine]
    total_events: int


class RecommendInputs(BaseModel):
    domain: Domain = Field(default_factory=Domain)
    behaviors: list[str] = Field(default_factory=list)
    """The catalog's behavior names, shown before the history as in the profile prompt (so both
    prompts of one user start with the same text and provider prompt caching applies)."""
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


# The HTTP header that carries a request's template version (``RenderedPrompt.version``), so
# cassettes and server logs can tell which prompt produced it.
TEMPLATE_HEADER = "X-Recagent-Template"


RENDER_TIMEOUT_S = 5.0
"""Longest one render may take (the built-in templates take milliseconds)."""
MAX_BUILT_SIZE = 1_000_000
"""Largest string or list a template may build with ``*``, and largest result of ``**`` (digits)."""
_RENDER_FAILURES = (
    jinja2.TemplateError,  # sandbox refusals included (SecurityError)
    ArithmeticError,  # 1/0, a float power that overflows
    TypeError,  # len() of a number...
    ValueError,
    LookupError,
    MemoryError,
    RecursionError,  # a macro that calls itself
)
"""What rendering a (user) template may raise; each becomes one ``TemplateError``."""
_RENDER_DEADLINE: ContextVar[float | None] = ContextVar("recagent_render_deadline", default=None)


def _tick() -> None:
    """Raise ``SecurityError`` once the current render is past its deadline."""
    end = _RENDER_DEADLINE.get()
    if end is not None and time.monotonic() > end:
        raise SecurityError("rendering took too long (a loop that never ends in time?)")


def _ticking(values: Iterator[int]) -> Iterator[int]:
    for n, value in enumerate(values):
        if n % 1024 == 0:
            _tick()
        yield value


class _TimedRange:
    """``range`` for templates: the sandbox's size limit, and the clock checked while iterating."""

    def __init__(self, *args: int) -> None:
        self._range = safe_range(*args)

    def __iter__(self) -> Iterator[int]:
        return _ticking(iter(self._range))

    def __reversed__(self) -> Iterator[int]:
        return _ticking(reversed(self._range))

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index: Any) -> Any:
        return self._range[index]

    def __contains__(self, value: object) -> bool:
        return value in self._range


class _BoundedSandbox(SandboxedEnvironment):
    """Jinja's sandbox plus a time bound and size bounds on what a template builds."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.globals["range"] = _TimedRange

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(n, int)
                    and len(seq) * n > MAX_BUILT_SIZE
                ):
                    raise SecurityError(f"a template may not build values over {MAX_BUILT_SIZE:,} long")
        big_power = isinstance(left, int) and isinstance(right, int) and right * abs(left).bit_length()
        if operator == "**" and big_power and big_power > 4 * MAX_BUILT_SIZE:  # ~1.2M digits in bits
            raise SecurityError("a template may not compute powers that large")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)


class _ConfinedLoader(jinja2.FileSystemLoader):
    """``FileSystemLoader`` that refuses a file whose real path leaves the template directories."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        _check_confined(Path(filename), [Path(p) for p in self.searchpath], template)
        return source, filename, uptodate


def _check_confined(path: Path, directories: Sequence[Path], name: str) -> None:
    real = path.resolve()
    if not any(real.is_relative_to(d.resolve()) for d in directories):
        raise SecurityError(
            f"template {name!r} resolves to a file outside the template directories (a symlink?); refused"
        )


@dataclass(frozen=True)
class RenderedPrompt:
    name: str
    version: str
    messages: list[dict[str, str]]


class PromptRenderer:
    """Renders templates from an optional user directory, then the built-in one."""

    def __init__(
        self, template_dir: str | Path | None = None, *, render_timeout_s: float = RENDER_TIMEOUT_S
    ) -> None:
        self.render_timeout_s = render_timeout_s
        user_dir = template_dir or os.environ.get("RECAGENT_TEMPLATES")
        search: Sequence[Path] = (
            [Path(user_dir), BUILTIN_TEMPLATE_DIR] if user_dir else [BUILTIN_TEMPLATE_DIR]
        )
        if user_dir and not Path(user_dir).is_dir():
            raise TemplateError(f"template directory not found: {user_dir}")
        self._search = list(search)
        self._env = _BoundedSandbox(
            loader=_ConfinedLoader([str(p) for p in self._search]),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            trim_blocks=False,
            keep_trailing_newline=False,
        )
        # Keep field order (n first) and drop nulls: shorter prompts, same information.
        self._env.policies["json.dumps_kwargs"] = dict(JSON_DUMPS_KWARGS)
        self._env.filters["compact"] = compact_filter
        self._env.filters["tojson"] = tojson_filter
        self._env.filters["history_tables"] = history_tables
        self._env.filters["candidate_table"] = candidate_table
        self._versions: dict[tuple[tuple[str, int, int], ...], str] = {}

    def _path(self, filename: str) -> tuple[Path, os.stat_result]:
        for directory in self._search:
            path = directory / filename
            try:
                stat = path.stat()
            except OSError:
                continue
            if S_ISREG(stat.st_mode):
                try:
                    _check_confined(path, [directory], filename)
                except SecurityError as exc:
                    raise TemplateError(str(exc)) from None
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
        variables = inputs.model_dump(mode="json")
        token = _RENDER_DEADLINE.set(time.monotonic() + self.render_timeout_s)
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
        except _RENDER_FAILURES as exc:  # sandbox limits and a user template's own bugs
            raise TemplateError(f"template {name!r} failed to render: {exc}") from exc
        finally:
            _RENDER_DEADLINE.reset(token)
        return RenderedPrompt(
            name=name,
            version=self.version(name),
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        )

    @staticmethod
    def check_inputs(name: str, inputs: BaseModel) -> None:
        """Raise ``TemplateError`` if ``name`` takes another inputs model than ``inputs``."""
        expected = TEMPLATE_INPUTS.get(name)
        if expected is not None and not isinstance(inputs, expected):
            raise TemplateError(f"template {name!r} takes {expected.__name__}, got {type(inputs).__name__}")


def default_renderer(template_dir: str | None = None) -> PromptRenderer:
    """The shared renderer of ``template_dir`` (default ``RECAGENT_TEMPLATES``, else built-in).

    The environment is read on every call, before the cache: a renderer cached for "no
    directory" must not hide a ``RECAGENT_TEMPLATES`` set later (a missing directory is then
    a ``TemplateError``, not silently the built-in templates)."""
    return _cached_renderer(template_dir or os.environ.get("RECAGENT_TEMPLATES") or None)


@lru_cache(maxsize=4)
def _cached_renderer(template_dir: str | None) -> PromptRenderer:
    return PromptRenderer(template_dir)


def render(name: str, inputs: BaseModel, template_dir: str | None = None) -> RenderedPrompt:
    """Render a template with the default (or given) template directory."""
    return default_renderer(template_dir).render(name, inputs)

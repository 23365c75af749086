"""Fit a prompt to its token budget: the history the render-and-count bisection keeps, fast.

The reference (``fit_by_rendering``) renders and counts the prompt at every probe of a
bisection over how many priority-ordered history lines to keep. ``fit_prompt`` keeps the same
lines and returns the same messages, byte for byte. Every probe gets the exact count, so the
bisection takes the same steps; for the built-in templates (``FAST_TEMPLATE_VERSIONS``) the
count comes without rendering: the prompt is ``before + head(k) + lines + "</data>" + tail +
after`` (``_base.j2``'s history block in its frame; ``after`` holds the candidate lines,
spliced in), the frame comes from one render with a single history line and is cached (for
``recommend`` per number of candidates, not per candidate set), the lines' JSON is cached,
and the count is the sum of cached counts of the pieces, exact because every junction is a
proven pre-token boundary (``agent.prompting.tokens.split_is_exact``, checked). Each new frame is checked
against its render; the block against the macro's render on the first use of each template
version. Anything else falls back to the reference.
"""

from __future__ import annotations

import logging
import operator
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from itertools import accumulate
from typing import Any

import pandas as pd
import tiktoken
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError, to_json

from agent.data.event_columns import EventColumns
from agent.errors import TemplateError
from agent.prompting import tokens
from agent.prompting.history import fit_history, keep_priority
from agent.prompting.lines import (
    PLAIN_LINE_MODELS,
    DumpedLine,
    HistoryLine,
    compact_json,
    dumped_lines,
    history_pieces,
    line_memo,
)
from agent.prompting.templates import PromptRenderer, RecommendInputs, RenderedPrompt

log = logging.getLogger(__name__)

Builder = Callable[[list[HistoryLine]], tuple[str, BaseModel]]
"""``build(kept) -> (template name, inputs)``; the inputs may differ only in ``history``."""

_AGENT_VERSIONS = {"profile@04e8c52fd9", "recommend@67881841f9"}
_CONTENT_VERSIONS = {"describe_item@09cb835208", "explain@1de4fe51ef", "summarize@96e3f72b40"}
FAST_TEMPLATE_VERSIONS: frozenset[str] = frozenset(_AGENT_VERSIONS | _CONTENT_VERSIONS)
"""Built-in template versions whose user message shows ``history`` only through
``{{ base.history_block(history, total_events) }}`` (and whose system message not at all),
and ``recommend``'s ``candidates`` only as their number and as one run of
``{{ candidate|compact|tojson }}`` lines after that block (spliced into a shared frame).
After editing a template or ``_base.j2``, check that this still holds and update the versions
(tests/test_prompt_fit.py fails until then and compares the fast path with the reference)."""
FRAME_CACHE_SIZE = 256
"""Prompt frames remembered."""


def fit_prompt(
    renderer: PromptRenderer,
    build: Builder,
    user_events: pd.DataFrame | EventColumns,
    lines: list[HistoryLine],
    model: str,
    budget: int,
    max_events: int,
) -> tuple[RenderedPrompt, list[HistoryLine]]:
    """The prompt with as much history as ``budget`` tokens allow, and the lines it shows.

    ``lines`` are ``history_lines(user_events, ...)``. The kept lines are the longest prefix
    of ``keep_priority(user_events)[:max_events]`` that fits (as the bisection finds it), in
    time order; the prompt's ``count_messages`` never exceeds ``budget``. Raises
    ``ConfigError`` when even the empty history does not fit, and ``TemplateError`` as
    ``PromptRenderer.render`` does. Thread-safe.
    """
    fitted = _fit_builtin(renderer, build, lines, keep_priority(user_events)[:max_events], model, budget)
    return fitted or fit_by_rendering(renderer, build, user_events, lines, model, budget, max_events)


def fit_by_rendering(
    renderer: PromptRenderer,
    build: Builder,
    user_events: pd.DataFrame | EventColumns,
    lines: list[HistoryLine],
    model: str,
    budget: int,
    max_events: int,
) -> tuple[RenderedPrompt, list[HistoryLine]]:
    """The reference algorithm, for any template: render and count at every probe."""

    def measure(kept: list[HistoryLine]) -> int:
        return tokens.count_messages(renderer.render(*build(kept)).messages, model)

    kept = fit_history(user_events, lines, measure, budget, max_events)
    return renderer.render(*build(kept)), kept


def fast_version(renderer: PromptRenderer, name: str) -> str | None:
    """The template's version if the fast path serves it (a known built-in, stock filters)."""
    if type(renderer) is not PromptRenderer or not renderer.has_stock_filters():
        return None
    try:
        version = renderer.version(name)
    except TemplateError:  # rendering reports it, with the same message as before
        return None
    return version if version in FAST_TEMPLATE_VERSIONS else None


# What _base.j2's history_block writes around the lines (checked against it on every use).
def _head(shown: int, total: object) -> str:
    return f'<data name="history" order="chronological, oldest first" shown="{shown}" of="{total}">\n'


def _tail(line: dict[str, Any]) -> str:
    return f"\nThe most recent event is #{line['n']}, the last line of the history."


def _fit_builtin(
    renderer: PromptRenderer,
    build: Builder,
    lines: list[HistoryLine],
    priority: list[int],
    model: str,
    budget: int,
) -> tuple[RenderedPrompt, list[HistoryLine]] | None:
    """``fit_by_rendering``'s result for the built-in templates, or None to fall back to it."""
    encoding = tokens.encoding_for(model)
    kind = tokens.pretokenizer_kind(encoding)
    if kind is None or not priority:
        return None
    rows_all = sorted(priority)
    lines_all = [lines[i] for i in rows_all]
    name, inputs = build(lines_all)
    version = fast_version(renderer, name)
    if version is None or not _shows(inputs, lines_all):
        return None
    renderer.check_inputs(name, inputs)  # the error rendering would raise
    total, frame_key = getattr(inputs, "total_events", None), _frame_key(version, inputs)
    if total is None or frame_key is None or not all(type(line) is HistoryLine for line in lines_all):
        return None
    fast = history_pieces(lines_all, encoding)
    history, history_texts = fast if fast is not None else (dumped_lines(lines_all), None)
    shown = _spliced_lines(inputs)
    frame = _frames.get(frame_key)
    if frame is None:
        frame = _render_frame(renderer, name, version, inputs, history[-1], shown)
        if frame is None:
            return None
        with _lock:
            while len(_frames) >= FRAME_CACHE_SIZE:
                _frames.popitem(last=False)
            _frames[frame_key] = frame
    line_of = dict(zip(rows_all, history, strict=True))
    exact, count = partial(tokens.split_is_exact, kind), partial(tokens.count_encoded, encoding)
    # Junctions of the prediction: after `before` and the head, and around each line (the
    # JSON of a dict, '{...}', + "\n"; followed by another line or by "</data>"), and
    # around the spliced candidate lines (after a line break, before "<").
    if not (
        exact(frame.before, "<")
        and exact(_head(1, total), "{")
        and exact("}\n", "{")
        and exact("}\n", "<")
        and (
            frame.cut is None
            or (exact(frame.after[: frame.cut], "{") and exact("}\n", frame.after[frame.cut :]))
        )
    ):
        return None

    framing = frame.framing_tokens(encoding, model)
    spliced = _pieces(shown, encoding) if frame.cut is not None else []
    run, run_tokens = "".join(text for text, _ in spliced), sum(n for _, n in spliced)
    pieces = dict(zip(rows_all, history_texts or _pieces(history, encoding), strict=True))
    prefix_tokens = [0, *accumulate(pieces[row][1] for row in priority)]
    last_row = [-1, *accumulate(priority, max)]
    closing_tokens: dict[int, int] = {}

    def measure(k: int) -> int:  # exact tokens with the first k priority rows
        if k == 0:
            return framing + frame.tokens_after(encoding, kind, _head(0, total) + "</data>", run_tokens)
        last = last_row[k]
        if last not in closing_tokens:
            closing = "</data>" + _tail(line_of[last])
            closing_tokens[last] = frame.tokens_after(encoding, kind, closing, run_tokens)
        return framing + count(_head(k, total)) + prefix_tokens[k] + closing_tokens[last]

    k = tokens.longest_fitting_prefix(len(priority), measure, budget)
    rows = sorted(priority[:k])
    kept = [lines[i] for i in rows]
    if k < len(priority):
        final_name, final_inputs = build(kept)
        if (
            final_name != name
            or not _shows(final_inputs, kept)
            or not _same_but_history(inputs, final_inputs)
        ):
            return None  # the builder changes more than the history: only rendering is safe
        renderer.check_inputs(final_name, final_inputs)
    counted = _head(k, total) + "".join(pieces[row][0] for row in rows)
    counted += "</data>" + (_tail(line_of[rows[-1]]) if rows else "")
    if not _macro_checked(renderer, version, [line_of[row] for row in rows], total, counted):
        log.warning("template %s did not render as predicted; fitting its history by rendering", name)
        return None
    user = {"role": "user", "content": frame.before + counted + frame.splice(run)}
    return RenderedPrompt(name, version, [{"role": "system", "content": frame.system}, user]), kept


def _render_frame(
    renderer: PromptRenderer,
    name: str,
    version: str,
    inputs: BaseModel,
    last: DumpedLine,
    shown: list[DumpedLine],
) -> _Frame | None:
    """Render ``inputs`` with only the ``last`` history line and split off the frame around
    the block (the pinned templates show ``history`` nowhere else, so the frame is the same
    for any history). With ``shown`` (the candidates, see ``_spliced_lines``) their run of
    lines after the block is cut out too, so the frame serves any candidates of that number.
    None if the render is not as predicted."""
    lists = {  # candidates: lists of line models other than the history
        field: value
        for field, value in inputs
        if field != "history" and isinstance(value, list) and any(isinstance(m, BaseModel) for m in value)
    }
    if not all(type(m) in PLAIN_LINE_MODELS for models in lists.values() for m in models):
        return None
    variables = inputs.model_dump(mode="json", exclude={"history", *lists})
    variables.update({field: dumped_lines(models) for field, models in lists.items()}, history=[last])
    messages = renderer.render_vars(name, variables, version=version).messages
    system, user = (message["content"] for message in messages)
    head = _head(1, getattr(inputs, "total_events", None))
    at = user.find(head)
    if at < 0 or user.find(head, at + 1) >= 0:
        return None
    end = at + len(head) + len(compact_json(last)) + 1
    closing = "</data>" + _tail(last)
    if not user.startswith(compact_json(last) + "\n", at + len(head)) or not user.startswith(closing, end):
        return None
    after, cut = user[end + len(closing) :], None
    if shown:
        run = "".join(compact_json(line) + "\n" for line in shown)
        cut = after.find(run)
        if cut < 2 or after.find(run, cut + 1) >= 0:  # (a junction is judged by 2 characters)
            return None
        after = after[:cut] + after[cut + len(run) :]
    return _Frame(system, user[:at], after, cut)


def _spliced_lines(inputs: BaseModel) -> list[DumpedLine]:
    """The recommend template's candidates, which the frame leaves out ([] for other inputs)."""
    if type(inputs) is not RecommendInputs or not inputs.candidates:
        return []
    return dumped_lines(inputs.candidates)


_checked_versions: weakref.WeakKeyDictionary[PromptRenderer, set[str]] = weakref.WeakKeyDictionary()


def _macro_checked(
    renderer: PromptRenderer, version: str, shown: list[DumpedLine], total: object, counted: str
) -> bool:
    """True if ``_base.j2``'s history block renders ``shown`` as ``counted``: rendered and
    compared on the first use of each template version by each renderer, trusted after that
    (the block is a pinned template's loop over the lines' cached JSON; every new frame is
    checked against a real render with its user's last line)."""
    if version in _checked_versions.get(renderer, ()):
        return True
    if renderer.render_macro("_base.j2", "history_block", shown, total) != counted:
        return False
    with _lock:
        _checked_versions.setdefault(renderer, set()).add(version)
    return True


def _same_but_history(first: BaseModel, second: BaseModel) -> bool:
    """True if every input but ``history`` is the same: identical objects, or equal JSON."""
    totals = (repr(getattr(model, "total_events", None)) for model in (first, second))
    if type(first) is not type(second) or len(set(totals)) != 1:
        return False
    others = [(value, getattr(second, field)) for field, value in first if field != "history"]
    if all(a is b or _same_items(a, b) for a, b in others):
        return True
    dumped = _json_but_history(first)
    return dumped is not None and dumped == _json_but_history(second)


def _same_items(first: object, second: object) -> bool:
    """True for two lists of the very same objects (validation copies a list, not its items)."""
    return (
        type(first) is list
        and type(second) is list
        and len(first) == len(second)
        and all(map(operator.is_, first, second))
    )


def _json_but_history(inputs: BaseModel) -> bytes | None:
    return _json_without(inputs, {"history"})


def _json_without(inputs: BaseModel, exclude: set[str]) -> bytes | None:
    """The inputs' JSON without ``exclude`` (exact: -0.0, inf and NaN stay distinct); None if
    they cannot be written."""
    try:
        # The dump, not the model: for a model, to_json writes inf, -inf and NaN all as null.
        return to_json(inputs.model_dump(mode="json", exclude=exclude), inf_nan_mode="constants")
    except (PydanticSerializationError, TypeError, ValueError):
        return None


def _shows(inputs: BaseModel, kept: list[HistoryLine]) -> bool:
    """True if ``inputs.history`` holds the very ``kept`` lines (pydantic keeps instances)."""
    shown = getattr(inputs, "history", None)
    return isinstance(shown, list) and len(shown) == len(kept) and all(map(operator.is_, shown, kept))


class _Frame:
    """A prompt around its history block, with the tokens of everything but the block.

    With ``cut`` set, ``after`` lacks the run of candidate lines that goes at ``cut``.
    """

    __slots__ = ("_rest", "_tokens", "after", "before", "cut", "system")

    def __init__(self, system: str, before: str, after: str, cut: int | None = None) -> None:
        self.system, self.before, self.after, self.cut = system, before, after, cut
        self._tokens: dict[str, int] = {}
        self._rest: dict[str, tuple[int, int]] = {}

    def splice(self, run: str) -> str:
        """``after`` with the candidate lines ``run`` in their place."""
        return self.after if self.cut is None else self.after[: self.cut] + run + self.after[self.cut :]

    def framing_tokens(self, encoding: tiktoken.Encoding, model: str) -> int:
        """Tokens of the system message, of ``before`` and of both messages' framing."""
        count = self._tokens.get(encoding.name)
        if count is None:
            messages = [{"role": "system", "content": self.system}, {"role": "user", "content": ""}]
            count = tokens.count_messages(messages, model) + tokens.count_encoded(encoding, self.before)
            self._tokens[encoding.name] = count
        return count

    def tokens_after(self, encoding: tiktoken.Encoding, kind: str, text: str, run_tokens: int) -> int:
        """Tokens of ``text + splice(run)`` given the run's ``run_tokens``; ``after`` from its
        first proven line boundary on is counted once (the run's junctions are proven exact
        by the caller)."""
        split = self._rest.get(encoding.name)
        if split is None:
            cut = len(self.after) if self.cut is None else self.cut
            after, at = self.after, cut
            for i in range(2, cut):
                if after[i - 1] == "\n" and tokens.split_is_exact(kind, after[:i], after[i:]):
                    at = i
                    break
            rest = tokens.count_encoded(encoding, after[at:cut]) + tokens.count_encoded(encoding, after[cut:])
            split = self._rest[encoding.name] = (at, rest)
        at, rest = split
        return tokens.count_encoded(encoding, text + self.after[:at]) + rest + run_tokens


def _pieces(lines: list[DumpedLine], encoding: tiktoken.Encoding) -> list[tuple[str, int]]:
    """Each line as a block of lines shows it (JSON + "\\n") and its tokens, computed once
    per shared line."""
    name = encoding.name
    memos = [line_memo(line) for line in lines]
    pieces: list[tuple[str, int] | None] = [memo.get(name) for memo in memos]
    new = [i for i, piece in enumerate(pieces) if piece is None]
    texts = [compact_json(lines[i]) + "\n" for i in new]
    for i, text, count in zip(new, texts, tokens.count_lines(encoding, texts), strict=True):
        pieces[i] = memos[i][name] = (text, count)
    return pieces  # type: ignore[return-value]  # every None was filled


_frames: OrderedDict[tuple[str, bytes], _Frame] = OrderedDict()
_lock = threading.Lock()


def _frame_key(version: str, inputs: BaseModel) -> tuple[str, bytes] | None:
    # total_events only shows in the head, which is computed; the history is what varies,
    # and the recommend template's candidates, which are spliced in (their number shows).
    exclude = {"history", "total_events"}
    if type(inputs) is RecommendInputs and inputs.candidates:
        exclude.add("candidates")
        version = f"{version}:{len(inputs.candidates)}"
    dumped = _json_without(inputs, exclude)
    return None if dumped is None else (version, dumped)

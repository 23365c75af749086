"""Personalized content: item descriptions, summaries and explanations that state only facts.

``ContentGenerator(agent).generate(user_id, item_id, kind)`` renders ``describe_item.j2``,
``summarize.j2`` or ``explain.j2`` with the item's record and the user's history (trimmed to
the prompt budget, scrubbed, no user id) and gets back validated JSON: the text, the item
fields it used and the history item ids that shaped it.

**Numbers are facts.** :func:`check_numbers` is a deterministic check usable on any text:
every number in the text (prices, sizes, weights, counts, years) must equal a number in the
given sources. Here the sources are the item record the model was shown plus the titles of
the history items it cites as evidence. A reply that fails is re-asked once, naming the
unsupported numbers; if it fails again, ``InvalidReplyError`` is raised and nothing is
returned. Comparison is numeric ("1,500" = 1500, "42.90" = 42.9); a rounded price is a
different number and is rejected.

**Streaming** (``stream=True``, for chat): the ``text`` field is passed to ``on_text`` as it
arrives (decoded from the streamed JSON). The streamed text is provisional: if the fact check
then fails, ``on_retract()`` is called and the re-asked text streams again. Streaming makes
one attempt per request; when it fails before any text arrived, the request goes through
``ChatClient.complete`` (with its retries) and the text is passed on at once.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, Field, ValidationError, create_model

from agent import errors
from agent.chat.domains import DomainPreset, preset_for
from agent.data.privacy import Scrubber
from agent.errors import Usage
from agent.llm.client import ChatClient, StructuredReply, account, extract_json
from agent.prompting.fit import fit_prompt
from agent.prompting.schemas import StrictModel
from agent.prompting.templates import Domain, HistoryLine, RenderedPrompt
from agent.recommender import RecommenderAgent

log = logging.getLogger(__name__)

Kind = Literal["description", "summary", "explanation"]
KINDS: tuple[str, ...] = ("description", "summary", "explanation")
TEMPLATES: dict[str, str] = {"description": "describe_item", "summary": "summarize", "explanation": "explain"}
MAX_CONTENT_HISTORY = 60
TextSink = Callable[[str], None]


# -- the fact check --------------------------------------------------------------------
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def _pieces(token: str) -> list[str]:
    if _THOUSANDS.fullmatch(token):
        return [token.replace(",", "")]
    out: list[str] = []
    for part in token.split(","):  # "2,4" in prose is a list, not a decimal
        out.extend(part.split(".") if part.count(".") > 1 else [part])  # "1.2.3": versions, dates
    return [p for p in out if p]


def numbers_in(text: str) -> list[tuple[str, Decimal]]:
    """Every number written in ``text`` with its numeric value (``"1,299.00"`` -> 1299)."""
    found: list[tuple[str, Decimal]] = []
    for match in _NUMBER.finditer(text):
        for piece in _pieces(match.group()):
            try:
                found.append((piece, Decimal(piece)))
            except InvalidOperation:  # pragma: no cover - the regex only yields digits and dots
                continue
    return found


def _values(source: Any) -> set[Decimal]:
    if source is None or isinstance(source, bool):
        return set()
    if isinstance(source, int | float):
        if source != source:  # NaN
            return set()
        return {Decimal(str(source)), Decimal(f"{source:.2f}")}
    if isinstance(source, dict):
        return set().union(*(_values(v) for v in source.values())) if source else set()
    if isinstance(source, list | tuple | set):
        return set().union(*(_values(v) for v in source)) if source else set()
    return {value for _, value in numbers_in(str(source))}


class FactCheck(BaseModel):
    """Result of :func:`check_numbers`: ``ok`` when every number in the text is supported."""

    ok: bool
    numbers: list[str]
    unsupported: list[str]


def check_numbers(text: str, sources: Iterable[Any]) -> FactCheck:
    """Check that every number in ``text`` equals a number found in ``sources``.

    ``sources`` may hold strings (numbers are read out of them), numbers, and dicts/lists of
    those (an item record). Deterministic; no model involved.
    """
    allowed: set[Decimal] = set()
    for source in sources:
        allowed |= _values(source)
    written = numbers_in(text)
    unsupported = list(dict.fromkeys(raw for raw, value in written if value not in allowed))
    return FactCheck(ok=not unsupported, numbers=[raw for raw, _ in written], unsupported=unsupported)


# -- reply and result models -----------------------------------------------------------
class ItemFact(StrictModel):
    name: str = Field(description="A field of the item data, e.g. 'price'.")
    value: str = Field(description="Its value as written in the item data.")


class GeneratedText(StrictModel):
    """Personalized text about one item, with the facts and history evidence it used."""

    text: str
    facts_used: list[ItemFact]
    evidence: list[str] = Field(description="Ids of the history items that shaped the text.")


def generated_model(fields: list[str], history_ids: list[str]) -> type[GeneratedText]:
    """``GeneratedText`` with fact names an enum of the record's fields, evidence of the history ids."""
    name: Any = Literal[tuple(fields)]
    fact = create_model("ItemFact", __base__=ItemFact, name=(name, ...))
    evidence: Any = Literal[tuple(history_ids)] if history_ids else str
    return create_model(
        "GeneratedText",
        __base__=GeneratedText,
        facts_used=(list[fact], ...),  # type: ignore[valid-type]
        evidence=(list[evidence], Field(description="Ids of the history items that shaped the text.")),
    )


class ContentInputs(BaseModel):
    """Inputs of the content templates (no user id; free text scrubbed)."""

    domain: Domain
    kind: str
    kind_name: str
    consume_verb: str
    has_prices: bool
    item: dict[str, Any]
    history: list[HistoryLine]
    total_events: int
    max_words: int


class GeneratedContent(BaseModel):
    user_id: str
    item_id: str
    kind: str
    text: str
    facts_used: list[ItemFact]
    evidence: list[str]
    fact_check: FactCheck
    reasked: bool
    attempts: int
    model: str
    template_version: str
    usage: dict[str, Any]


# -- streaming -------------------------------------------------------------------------
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"'}


class TextFieldStream:
    """Fed chunks of a JSON object, passes the decoded ``"text"`` string to ``sink`` as it grows."""

    _START = re.compile(r'"text"\s*:\s*"')

    def __init__(self, sink: TextSink) -> None:
        self.sink = sink
        self._buf = ""
        self._pos: int | None = None
        self.done = False
        self.emitted = False

    def feed(self, chunk: str) -> None:
        self._buf += chunk
        if self.done:
            return
        if self._pos is None:
            match = self._START.search(self._buf)
            if match is None:
                return
            self._pos = match.end()
        buf, i, out = self._buf, self._pos, []
        while i < len(buf):
            char = buf[i]
            if char == '"':
                self.done = True
                break
            if char != "\\":
                out.append(char)
                i += 1
                continue
            if i + 1 >= len(buf):
                break  # the escape is split across chunks: wait for the rest
            code = buf[i + 1]
            if code != "u":
                out.append(_ESCAPES.get(code, code))
                i += 2
                continue
            if i + 6 > len(buf):
                break
            point = int(buf[i + 2 : i + 6], 16)
            if 0xD800 <= point < 0xDC00:  # a surrogate pair: \\ud83d\\ude00
                if i + 12 > len(buf):
                    break
                low = int(buf[i + 8 : i + 12], 16)
                out.append(chr(0x10000 + ((point - 0xD800) << 10) + (low - 0xDC00)))
                i += 12
                continue
            out.append(chr(point))
            i += 6
        self._pos = i
        if out:
            self.emitted = True
            self.sink("".join(out))


def stream_structured(
    client: ChatClient, prompt: RenderedPrompt, output: type[GeneratedText], sink: TextSink
) -> StructuredReply[GeneratedText]:
    """Like ``ChatClient.complete`` but streamed; the ``text`` field goes to ``sink`` as it arrives.

    Raises the same ``ModelError`` subclasses as ``complete``.
    """
    usage = Usage(requests=1)
    fields = TextFieldStream(sink)
    parts: list[str] = []
    finish: str | None = None
    refusal = ""
    model = client.config.model
    try:
        stream = client.open_stream(prompt, output)
        for chunk in stream:
            model = chunk.model or model
            if chunk.usage is not None:
                account(chunk, usage, client.prices, client.config.model)
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
                    fields.feed(choice.delta.content)
                refusal += getattr(choice.delta, "refusal", None) or ""
                finish = choice.finish_reason or finish
    except Exception as exc:
        mapped = client.map_error(exc, attempts=1, usage=usage, template=prompt.version)
        if mapped is None:
            if not isinstance(exc, json.JSONDecodeError):
                raise
            mapped = errors.TransportError(
                f"malformed stream: {exc}", attempts=1, usage=usage, template=prompt.version
            )
        schema_rejected = isinstance(mapped, errors.BadRequestError) and (
            "response_format" in str(mapped) or "json_schema" in str(mapped)
        )
        if parts or not (isinstance(mapped, errors.TransportError) or schema_rejected):
            raise mapped from None
        log.warning("streaming request failed (%s); sending it without streaming", mapped)
        return _complete_at_once(client, prompt, output, sink, usage)
    raw = "".join(parts)
    common: dict[str, Any] = {"attempts": 1, "last_reply": raw, "usage": usage, "template": prompt.version}
    if refusal:
        raise errors.RefusalError(f"model refused: {refusal}", **common)
    if finish == "content_filter":
        raise errors.RefusalError("reply stopped by the provider's content filter", **common)
    if finish == "length":
        raise errors.TruncatedReplyError("reply hit max_completion_tokens (not re-asked)", **common)
    try:
        value = output.model_validate_json(extract_json(raw))
    except ValidationError as exc:
        log.warning("streamed reply invalid; re-asking without streaming: %s", exc.errors()[:1])
        again = "Your reply did not match the required JSON schema. Reply again with the corrected JSON only."
        retract = fields.emitted
        return _complete_at_once(client, _reask(prompt, raw, again), output, sink, usage, retract=retract)
    return StructuredReply(
        value=value,
        raw=raw,
        usage=usage,
        attempts=1,
        mode="json_schema" if client.json_schema_supported else "json_object",
        model=model,
        template_version=prompt.version,
    )


def _reask(prompt: RenderedPrompt, raw: str, message: str) -> RenderedPrompt:
    """``prompt`` followed by the model's last reply and a request to correct it."""
    turns = [{"role": "assistant", "content": raw}, {"role": "user", "content": message}]
    return RenderedPrompt(name=prompt.name, version=prompt.version, messages=[*prompt.messages, *turns])


def _complete_at_once(
    client: ChatClient,
    prompt: RenderedPrompt,
    output: type[GeneratedText],
    sink: TextSink,
    spent: Usage,
    *,
    retract: bool = False,
) -> StructuredReply[GeneratedText]:
    withdraw = getattr(sink, "retract", None)
    if retract and callable(withdraw):
        withdraw()
    reply = client.complete(prompt, output)
    reply.usage.add(spent)
    reply.attempts = reply.usage.requests
    sink(reply.value.text)
    return reply


class _Sink:
    """Bundles ``on_text`` and ``on_retract`` so streaming helpers can withdraw text."""

    def __init__(self, on_text: TextSink | None, on_retract: Callable[[], None] | None) -> None:
        self._on_text = on_text
        self._on_retract = on_retract

    def __call__(self, text: str) -> None:
        if self._on_text:
            self._on_text(text)

    def retract(self) -> None:
        if self._on_retract:
            self._on_retract()


# -- the generator ---------------------------------------------------------------------
class ContentGenerator:
    """Writes personalized descriptions, summaries and explanations for one agent's data.

    ``items`` (the canonical items frame) adds the catalog's extra columns (brand, author,
    members...) to the item record; without it the record has id, title, category, price
    and description.
    """

    def __init__(
        self,
        agent: RecommenderAgent,
        *,
        preset: DomainPreset | None = None,
        items: pd.DataFrame | None = None,
        max_words: int = 80,
    ) -> None:
        self.agent = agent
        self.preset = preset or preset_for(agent.config.domain)
        self.max_words = max_words
        self._extras: dict[str, dict[str, Any]] = {}
        if items is not None:
            extra = [
                c for c in items.columns if c not in ("item_id", "title", "category", "description", "price")
            ]
            for row in items[["item_id", *extra]].itertuples(index=False):
                values = {c: v for c, v in zip(extra, row[1:], strict=True) if not pd.isna(v)}
                self._extras[str(row[0])] = {
                    c: v.item() if hasattr(v, "item") else v for c, v in values.items()
                }

    def record(self, item_id: str, scrubber: Scrubber | None = None) -> dict[str, Any]:
        """The item data the model is shown (and the fact check accepts). Raises ``UnknownItemError``."""
        info = self.agent.catalog.get(item_id)
        if info is None:
            raise errors.UnknownItemError(f"item {item_id!r} is not in the catalog", column="item_id")
        scrub = (scrubber or Scrubber(enabled=self.agent.config.scrub_personal_data)).scrub
        out: dict[str, Any] = {"item_id": item_id, "title": info.title, "category": info.category}
        if self.preset.has_prices and info.price is not None:
            out["price"] = info.price
        out["description"] = scrub(info.description)
        for key, value in self._extras.get(item_id, {}).items():
            out[key] = scrub(value) if isinstance(value, str) else value
        return {k: v for k, v in out.items() if v is not None}

    def generate(
        self,
        user_id: str,
        item_id: str,
        kind: str = "description",
        *,
        stream: bool = False,
        on_text: TextSink | None = None,
        on_retract: Callable[[], None] | None = None,
    ) -> GeneratedContent:
        """Generate, fact-check (one re-ask) and return the text for ``user_id`` and ``item_id``.

        Raises ``ConfigError`` (no model, unknown kind), ``UnknownUserError``,
        ``UnknownItemError``, or a ``ModelError`` (``InvalidReplyError`` when the text still
        states unsupported numbers after the re-ask).
        """
        client = self.agent.client
        if client is None:
            raise errors.ConfigError("content generation needs a model; the fallback backend has none")
        if kind not in KINDS:
            raise errors.ConfigError(f"unknown content kind {kind!r}; use {', '.join(KINDS)}")
        user_events = self.agent.histories.for_user(user_id)
        scrubber = Scrubber(enabled=self.agent.config.scrub_personal_data)
        record = self.record(item_id, scrubber)
        prompt, kept = self._prompt(kind, record, user_events, scrubber, client.config.model)
        history_ids = list(dict.fromkeys(line.item_id for line in kept if line.item_id))
        output = generated_model(list(record), history_ids)
        sink = _Sink(on_text, on_retract)

        def ask(p: RenderedPrompt) -> StructuredReply[GeneratedText]:
            return stream_structured(client, p, output, sink) if stream else client.complete(p, output)

        usage = Usage()
        reply = ask(prompt)
        usage.add(reply.usage)
        check = self._check(reply.value, record, kept)
        reasked = not check.ok
        if reasked:
            log.info("generated text states unsupported numbers %s; re-asking once", check.unsupported)
            if stream:
                sink.retract()
            noun = self.preset.domain.item_noun
            reask = _reask(
                prompt,
                reply.raw,
                f"Your text states numbers that are not in the {noun}'s data: {', '.join(check.unsupported)}. "
                "Write only numbers that appear in the item data (or none). "
                "Reply again with the corrected JSON object only.",
            )
            reply = ask(reask)
            usage.add(reply.usage)
            check = self._check(reply.value, record, kept)
            if not check.ok:
                raise errors.InvalidReplyError(
                    f"generated text still states numbers not in the {noun}'s data after one re-ask: "
                    + ", ".join(check.unsupported),
                    attempts=usage.requests,
                    last_reply=reply.raw,
                    usage=usage,
                    template=prompt.version,
                )
        facts = [f for f in reply.value.facts_used if f.name in record]
        return GeneratedContent(
            user_id=user_id,
            item_id=item_id,
            kind=kind,
            text=reply.value.text,
            facts_used=[ItemFact(name=f.name, value=f.value) for f in facts],
            evidence=[str(e) for e in reply.value.evidence],
            fact_check=check,
            reasked=reasked,
            attempts=usage.requests,
            model=reply.model,
            template_version=reply.template_version,
            usage=usage.as_dict(),
        )

    def _check(self, value: GeneratedText, record: dict[str, Any], kept: list[HistoryLine]) -> FactCheck:
        cited = set(map(str, value.evidence))
        titles = [line.title for line in kept if line.item_id in cited and line.title]
        return check_numbers(value.text, [record, *titles])

    def _prompt(
        self,
        kind: str,
        record: dict[str, Any],
        user_events: pd.DataFrame,
        scrubber: Scrubber,
        model: str,
    ) -> tuple[RenderedPrompt, list[HistoryLine]]:
        agent = self.agent

        def build(kept: list[HistoryLine]) -> tuple[str, ContentInputs]:
            return TEMPLATES[kind], ContentInputs(
                domain=self.preset.domain,
                kind=kind,
                kind_name=self.preset.word_for(kind),
                consume_verb=self.preset.wording.consume_verb,
                has_prices=self.preset.has_prices,
                item=record,
                history=kept,
                total_events=len(user_events),
                max_words=self.max_words,
            )

        return fit_prompt(
            agent.renderer,
            build,
            user_events,
            agent.catalog,
            scrubber,
            model,
            agent.config.prompt_budget_tokens,
            min(agent.config.max_history_events, MAX_CONTENT_HISTORY),
        )

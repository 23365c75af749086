"""The per-user overhead fast paths give exactly what their slow paths give.

``dumped_lines``/``compact_json`` vs ``model_dump`` and Jinja's ``tojson``; the catalog's shared
candidate lines vs building them; ``ground`` without a title index vs with one; ``count_lines``
vs a full encode; ``prompt_fit``'s once-per-version history-block check vs rendering.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, ValidationError

import agent.prompting.fit as prompt_fit
import agent.prompting.lines as prompt_lines
import agent.ranking.grounding as grounding
from agent.data.loading import align_catalog, load_events, load_items
from agent.data.privacy import Scrubber
from agent.prompting.history import Catalog, history_lines
from agent.prompting.lines import CandidateLine, HistoryLine, compact_json, dumped_lines, history_pieces
from agent.prompting.schemas import recommendations_model
from agent.prompting.templates import PromptRenderer, RecommendInputs, RenderedPrompt
from agent.prompting.tokens import count_lines, count_messages, encoding_for
from agent.ranking.grounding import ground
from agent.recommender import RecommenderAgent

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "sample"
MODEL = "gpt-4o-mini"
Build = Callable[[list[HistoryLine]], tuple[str, BaseModel]]
Cases = list[tuple[pd.DataFrame, Build, list[HistoryLine]]]

PIECES = [*"aZ09 \"'<>&{}[]\\/:,.-\t\r\n\u2028\x85é中😀\u0301", ", ", "'s", "</data>"]
HOSTILE = st.lists(st.sampled_from([*PIECES, "<|endoftext|>"]), max_size=30).map("".join)
FLOATS = st.one_of(
    st.none(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e16, 1e-7, 19.99, 1e308]),
)  # inf and NaN: see test_inf_and_nan_lines_are_model_dump
TEXT = st.one_of(st.none(), HOSTILE)
TITLE = st.one_of(TEXT, st.text(max_size=200))


def lines_of(model: type[BaseModel], *fields: st.SearchStrategy[Any]) -> st.SearchStrategy[BaseModel]:
    """Instances of ``model`` with its fields, in order, drawn from ``fields``."""
    return st.tuples(*fields).map(lambda values: model(**dict(zip(model.model_fields, values, strict=True))))


HISTORY_LINES = lines_of(
    HistoryLine, st.integers(), HOSTILE, HOSTILE, TEXT, TITLE, TEXT, FLOATS, FLOATS, TEXT
)
CANDIDATE_LINES = lines_of(
    CandidateLine, HOSTILE, st.one_of(HOSTILE, st.text(max_size=200)), TEXT, FLOATS, TEXT
)
LINES = st.lists(st.one_of(HISTORY_LINES, CANDIDATE_LINES), max_size=6)


def exact(value: dict[str, Any]) -> str:
    """``repr`` of the items: tells -0.0 from 0.0, 1 from 1.0, keeps order, nan == nan."""
    return repr(list(value.items()))


REFERENCE_ENV = PromptRenderer()._env  # Jinja's own tojson, a plain compact, our JSON options
REFERENCE_ENV.filters["tojson"] = jinja2.filters.do_tojson
REFERENCE_ENV.filters["compact"] = lambda v: {k: x for k, x in v.items() if x is not None}
STOCK = PromptRenderer()._env.from_string("{{ line|compact|tojson }}")
REFERENCE = REFERENCE_ENV.from_string("{{ line|compact|tojson }}")


# -- 1. dumped_lines and compact_json ----------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(models=LINES)
def test_dumped_lines_are_model_dump_and_render_like_jinja(models: list[BaseModel]) -> None:
    lines = dumped_lines(models)
    assert len(lines) == len(models)
    for model, line in zip(models, lines, strict=True):
        dump = model.model_dump(mode="json")
        assert exact(line) == exact(dump)
        text = compact_json(line)
        assert text == STOCK.render(line=line) == STOCK.render(line=dump)
        assert text == REFERENCE.render(line=dump)
    twins = [type(m)(**dict(m)) for m in models]  # new instances, equal JSON: the same lines
    assert all(a is b for a, b in zip(lines, dumped_lines(twins), strict=True))


@settings(max_examples=300, deadline=None)
@given(models=st.lists(HISTORY_LINES, min_size=1, max_size=4))
def test_history_pieces_are_the_lines_and_their_exact_counts(models: list[HistoryLine]) -> None:
    for model_name in (MODEL, "gpt-4"):  # o200k and cl100k
        encoding = encoding_for(model_name)
        got = history_pieces(models, encoding)
        finite = all(
            not isinstance(v, float) or math.isfinite(v) for m in models for v in m.__dict__.values()
        )
        if not finite:  # inf or NaN: the general path (dumped_lines, counted from the text)
            assert got is None
            continue
        assert got is not None
        lines, pieces = got
        for model, line, (text, count) in zip(models, lines, pieces, strict=True):
            dump = model.model_dump(mode="json")
            assert exact(line) == exact(dump)
            assert text == compact_json(line) + "\n" == REFERENCE.render(line=dump) + "\n"
            assert count == len(encoding.encode(text, disallowed_special=()))
        again = history_pieces(models, encoding)  # from the cached parts: the same
        assert again is not None and again[1] == pieces


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"price": 0.0}, {"price": -0.0}),
        ({"title": "Tetris"}, {"title": "Tetris 99"}),
        ({"category": None}, {"category": "Puzzle"}),
        ({"price": 5.0}, {"price": None}),
        ({"value": None}, {"value": 4.0}),
        ({"text": None}, {"text": "great, really"}),
    ],
)
def test_an_items_cached_fields_never_stand_in_for_other_values(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    encoding = encoding_for(MODEL)
    base = {"n": 1, "date": "2026-01-01", "behavior": "view", "item_id": "SKU-7", "title": "Tetris"}
    base |= {"category": "Puzzle", "price": 5.0, "value": None, "text": None}
    one, two = HistoryLine.model_validate(base | first), HistoryLine.model_validate(base | second)
    for models in ([one, two, one, two], [two, one, two, one]):
        got = history_pieces(models, encoding)
        assert got is not None
        for model, (text, count) in zip(models, got[1], strict=True):
            assert text == REFERENCE.render(line=model.model_dump(mode="json")) + "\n"
            assert count == len(encoding.encode(text))


def test_history_pieces_refuse_what_they_cannot_write_exactly() -> None:
    encoding = encoding_for(MODEL)
    base = {"n": 1, "date": "2026-01-01", "behavior": "view", "item_id": None, "title": None}
    base |= {"category": None, "price": None, "value": None, "text": None}
    assert history_pieces([HistoryLine.model_validate(base | {"value": math.nan})], encoding) is None

    class Line(HistoryLine):
        pass

    assert history_pieces([Line.model_validate(base)], encoding) is None
    only_n = HistoryLine.model_construct(**(base | {"date": None, "behavior": None}))
    got = history_pieces([only_n], encoding)
    assert got is not None and got[1] == [('{"n": 1}\n', len(encoding.encode('{"n": 1}\n')))]


@pytest.mark.parametrize(
    ("field", "first", "second"),
    [
        ("price", 0.0, -0.0),
        ("price", math.inf, None),
        ("value", 1e16, 1e16 + 2),
        ("n", 1, 2),
        ("text", "1", None),
        ("title", "", None),
    ],
)
def test_distinct_json_gives_distinct_lines(field: str, first: object, second: object) -> None:
    base = {"n": 1, "date": "2026-01-01", "behavior": "view", "item_id": "SKU-1", "title": "T"}
    base |= {"category": None, "price": None, "value": None, "text": None}
    a, b = (HistoryLine.model_validate(base | {field: v}) for v in (first, second))
    lines = dumped_lines([a, b])
    assert lines[0] is not lines[1] and compact_json(lines[0]) != compact_json(lines[1])
    for model, line in zip((a, b), lines, strict=True):
        assert exact(line) == exact(model.model_dump(mode="json"))
        assert compact_json(line) == REFERENCE.render(line=model.model_dump(mode="json"))


@pytest.fixture
def fresh_caches() -> Iterator[None]:
    """Cold line and frame caches; what a test leaves in them is not served to other tests."""
    caches = (
        prompt_lines._lines,
        prompt_lines._by_identity,
        prompt_fit._frames,
        prompt_fit._checked_versions,
    )
    for cache in caches:
        cache.clear()
    yield
    for cache in caches:
        cache.clear()


def inf_nan_history(value: float) -> HistoryLine:
    base = {"n": 7, "date": "overhead", "behavior": "rating", "item_id": None, "title": None}
    return HistoryLine.model_validate(base | {"category": None, "price": None, "value": value, "text": None})


def inf_nan_candidate(price: float) -> CandidateLine:
    return CandidateLine(item_id="SKU-inf", title="T", category=None, price=price, description=None)


@pytest.mark.usefixtures("fresh_caches")
@pytest.mark.parametrize("make", [inf_nan_history, inf_nan_candidate])
def test_inf_and_nan_lines_are_model_dump(make: Callable[[float], BaseModel]) -> None:
    models = [make(v) for v in (math.inf, -math.inf, math.nan, math.inf)]
    lines = dumped_lines(models)
    for m, line in zip(models, lines, strict=True):
        dump = m.model_dump(mode="json")  # pydantic 2.14 keeps inf/NaN here (not None)
        assert exact(line) == exact(dump)
        assert compact_json(line) == REFERENCE.render(line=dump)
    assert lines[0] is lines[3] and len({id(line) for line in lines}) == 3


# -- 2. Catalog.candidate_line ------------------------------------------------------------------
PII = ["help@tents.example", " +49 30 1234567 ", "4111 1111 1111 1111", " 221B Baker Street"]
DESCRIPTIONS = st.lists(st.sampled_from([*PIECES, *PII]), max_size=12).map("".join)
SETTINGS = [(True, None), (False, None), (True, ("email",)), (True, ("phone", "card"))]


def scrubber_for(enabled: bool, kinds: tuple[str, ...] | None) -> Scrubber:
    return Scrubber(enabled=enabled) if kinds is None else Scrubber(enabled=enabled, kinds=kinds)


def expected_line(item: dict[str, Any], scrubber: Scrubber, chars: int) -> CandidateLine:
    title = item["title"] if len(item["title"]) <= 200 else item["title"][:199] + "…"
    description = scrubber.scrub(item["description"][:chars] if item["description"] else None)
    return CandidateLine.model_validate(
        item | {"title": title or item["item_id"], "description": description}
    )


@settings(max_examples=60, deadline=None)
@given(
    description=st.one_of(st.none(), DESCRIPTIONS),
    title=st.one_of(HOSTILE, st.text(min_size=195, max_size=210)),
    chars=st.sampled_from([0, 5, 40, 240]),
    setting=st.sampled_from(SETTINGS),
)
def test_shared_candidate_lines_equal_fresh_ones(
    description: str | None, title: str, chars: int, setting: tuple[bool, tuple[str, ...] | None]
) -> None:
    item = {"item_id": "SKU-1", "title": title, "category": "Tents", "price": 9.5, "description": description}
    catalog = Catalog(pd.DataFrame([item]))
    shared = []
    for _ in range(3):
        scrubber, reference = scrubber_for(*setting), scrubber_for(*setting)
        scrubber.counts["before"] = 1
        shared.append(catalog.candidate_line("SKU-1", scrubber, chars))
        expected = expected_line(item, reference, chars)
        assert exact(dict(shared[-1])) == exact(dict(expected))
        assert scrubber.counts == reference.counts + Counter(before=1)
    assert shared[0] is shared[1] is shared[2]
    assert dumped_lines(shared[:1])[0] is dumped_lines(shared[1:2])[0]
    for other_chars, other in [(chars + 1, setting), *((chars, s) for s in SETTINGS if s != setting)]:
        line = catalog.candidate_line("SKU-1", scrubber_for(*other), other_chars)
        assert exact(dict(line)) == exact(dict(expected_line(item, scrubber_for(*other), other_chars)))


def test_candidate_lines_are_frozen_and_subclasses_and_unknown_ids_get_fresh_ones() -> None:
    item = {"item_id": "SKU-1", "title": "Tent", "category": None, "price": None}
    catalog = Catalog(pd.DataFrame([item | {"description": "mail help@tents.example"}]))
    line = catalog.candidate_line("SKU-1", Scrubber())
    with pytest.raises(ValidationError):
        line.title = "changed"

    class Shouting(Scrubber):
        def scrub(self, text: str | None) -> str | None:
            self.counts["shout"] += 1
            return None if text is None else text.upper()

    scrubber = Shouting()
    first, second = (catalog.candidate_line("SKU-1", scrubber) for _ in range(2))
    assert first is not second and first == second
    assert first.description == "MAIL HELP@TENTS.EXAMPLE" and scrubber.counts == {"shout": 2}
    unknown = catalog.candidate_line("SKU-404", Scrubber())
    assert (unknown.item_id, unknown.title, unknown.description) == ("SKU-404", "SKU-404", None)


# -- 3. ground without the title index ---------------------------------------------------------
CANDIDATES = {"SKU-1": "The Shadow (1994)", "SKU-2": "Die Hard 2", "tt-3": "Heat"}
HISTORY_TITLES = {"SKU-9": "Cliffhanger"}
IDS = ("tt-3", "SKU-1", "tt-3")


@pytest.fixture
def no_title_index(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(title: str) -> object:
        raise AssertionError(f"the title index was built (for {title!r})")

    monkeypatch.setattr(grounding, "title_keys", refuse)


def test_exact_structured_ids_never_build_the_title_index(no_title_index: None) -> None:
    model = recommendations_model(list(CANDIDATES), ["SKU-9"])
    rows = [{"item_id": i, "score": 0.5, "reason": f"because {i}", "evidence": ["SKU-9"]} for i in IDS]
    reply = model.model_validate({"items": rows})
    got = ground(reply, CANDIDATES, ["SKU-9"], HISTORY_TITLES)
    assert got.item_ids == ["tt-3", "SKU-1"] and got.duplicates == ["tt-3"]
    assert got.reasons == {"tt-3": "because tt-3", "SKU-1": "because SKU-1"}
    assert (got.missing, got.invented, got.n_mentions) == (["SKU-2"], [], 3)
    with pytest.raises(AssertionError, match="title index"):  # the patch does bite
        ground([{"title": "Heat"}], CANDIDATES)


class Extra(BaseModel):
    model_config = ConfigDict(extra="allow")
    score: float = 0.0

    @property
    def title(self) -> str:
        return "Die Hard 2"


def test_pydantic_elements_are_read_like_getattr(no_title_index: None) -> None:
    by_id = Extra(movie_id="tt-3", why="it is Heat")  # type: ignore[call-arg]
    assert (by_id.model_extra, by_id.title) == ({"movie_id": "tt-3", "why": "it is Heat"}, "Die Hard 2")
    got = ground([by_id], CANDIDATES)
    assert (got.item_ids, got.reasons) == (["tt-3"], {"tt-3": "it is Heat"})


def test_titles_and_properties_still_ground_with_an_index_built_on_demand() -> None:
    reply: list[object] = [{"title": "Heat"}, {"title": "the shadow"}, {"title": "Cliffhanger"}]
    reply += [{"title": "Die Hard 7"}, Extra(), Extra(score=1.0)]  # Extra: no id, a @property title
    got = ground(reply, CANDIDATES, ["SKU-9"], HISTORY_TITLES)
    assert (got.item_ids, got.duplicates) == (["tt-3", "SKU-1", "SKU-2"], ["SKU-2"])
    assert (got.history_hits, got.invented) == (["SKU-9"], ["Die Hard 7"])


# -- 4. count_lines ------------------------------------------------------------------------------
LONG = st.text(st.sampled_from([*"abc XYZ,.'\"é中😀"]), min_size=161, max_size=400)
VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), HOSTILE, LONG)


@st.composite
def jsonish_lines(draw: st.DrawFn) -> str:
    record = draw(st.dictionaries(st.one_of(HOSTILE, st.sampled_from(["n", "title"])), VALUES, max_size=8))
    text = json.dumps(record, ensure_ascii=draw(st.booleans()))  # ", " and ": " separators
    if draw(st.booleans()):
        text = draw(st.sampled_from([", ", ",  ", ",\n", "\n", " \n", "\n\n"])).join([text, draw(HOSTILE)])
    return text + draw(st.sampled_from(["", "\n", "\r\n", " \n", ", ", ",\n"]))


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(
        st.one_of(jsonish_lines(), st.lists(st.one_of(HOSTILE, LONG), max_size=6).map(", ".join)), max_size=4
    )
)
def test_count_lines_is_a_full_encode(texts: list[str]) -> None:
    encoding = encoding_for("gpt-4.1-mini")
    full = [len(encoding.encode(text, disallowed_special=())) for text in texts]
    assert count_lines(encoding, texts) == full
    assert count_lines(encoding, texts[::-1]) == full[::-1]  # now from the caches


# -- 5. prompt_fit checks the history block once per renderer and version ----------------------
@pytest.fixture(scope="module")
def cases() -> Cases:
    """(events, builder, lines) of a few sample users' profile and recommend prompts."""
    items = load_items(SAMPLE / "items.csv")
    agent = RecommenderAgent(
        align_catalog(load_events(SAMPLE / "events.csv"), items).frame, items.frame, None
    )
    agent.token_model = MODEL
    found = []

    def capture(
        self: RecommenderAgent, user_events: pd.DataFrame, build: Build, scrubber: Scrubber
    ) -> tuple[RenderedPrompt, list[HistoryLine]]:
        found.append((user_events, build, history_lines(user_events, self.catalog, scrubber)))
        return self.renderer.render(*build([])), []

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RecommenderAgent, "_fit_prompt", capture)
        for user in ("u001", "u002", "u003"):
            agent.prepare_profile(user)
            agent.prepare_recommend(user)
    return found


def counted_macro(patch: pytest.MonkeyPatch, renderer: PromptRenderer, result: str | None) -> list[object]:
    """Make ``renderer.render_macro`` record its calls (and return ``result`` if given)."""
    calls: list[object] = []
    real = renderer.render_macro

    def render_macro(filename: str, macro: str, *args: Any) -> str:
        calls.append((filename, macro))
        return real(filename, macro, *args) if result is None else result

    patch.setattr(renderer, "render_macro", render_macro)
    return calls


@pytest.mark.usefixtures("fresh_caches")
def test_the_history_block_is_rendered_once_per_renderer_and_version(
    cases: Cases, monkeypatch: pytest.MonkeyPatch
) -> None:
    renderer = PromptRenderer()
    calls = counted_macro(monkeypatch, renderer, None)
    for slack in (300, 10**6):
        for index, (events, build, lines) in enumerate(cases):
            budget = count_messages(renderer.render(*build([])).messages, MODEL) + slack
            before = len(calls)
            got = prompt_fit.fit_prompt(renderer, build, events, lines, MODEL, budget, 300)
            assert len(calls) - before == (slack == 300 and index < 2)  # first profile, first recommend
            assert got == prompt_fit.fit_by_rendering(renderer, build, events, lines, MODEL, budget, 300)
    versions = {renderer.version(build([])[0]) for _, build, _ in cases}
    assert set(versions) <= prompt_fit._checked_versions[renderer]


@pytest.mark.usefixtures("fresh_caches")
def test_a_block_rendered_otherwise_falls_back_to_rendering(
    cases: Cases,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    renderer = PromptRenderer()
    calls = counted_macro(monkeypatch, renderer, '<data name="history">something else</data>')
    for events, build, lines in cases[:2] * 2:
        budget = count_messages(renderer.render(*build([])).messages, MODEL) + 300
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="agent.prompting.fit"):
            got = prompt_fit.fit_prompt(renderer, build, events, lines, MODEL, budget, 300)
        assert got == prompt_fit.fit_by_rendering(renderer, build, events, lines, MODEL, budget, 300)
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert "did not render as predicted" in caplog.records[0].getMessage()
        assert renderer.version(build([])[0]) not in prompt_fit._checked_versions.get(renderer, set())
    assert len(calls) == 4  # never trusted: checked again every time


@pytest.mark.usefixtures("fresh_caches")
def test_candidates_priced_inf_or_nan_get_their_own_frame() -> None:
    history = [inf_nan_history(float(n)) for n in range(3)]
    events = pd.DataFrame({"behavior": ["rating"] * 3, "text": [None] * 3})
    renderer = PromptRenderer()
    for price in (math.inf, math.nan, -math.inf):
        candidates = [inf_nan_candidate(price)]

        def build(kept: list[HistoryLine], shown: list[Any] = candidates) -> tuple[str, BaseModel]:
            return "recommend", RecommendInputs(
                profile=None, history=kept, total_events=3, candidates=shown, k=1
            )

        expected = prompt_fit.fit_by_rendering(renderer, build, events, history, MODEL, 10**6, 300)
        assert prompt_fit.fit_prompt(renderer, build, events, history, MODEL, 10**6, 300) == expected

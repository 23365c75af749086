"""The per-user overhead fast paths give exactly what their slow paths give.

The catalog's shared candidate lines vs building them; ``ground`` without a title index vs
with one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, ValidationError

import agent.ranking.grounding as grounding
from agent.data.privacy import Scrubber
from agent.prompting.history import Catalog
from agent.prompting.lines import CandidateLine, HistoryLine
from agent.prompting.schemas import recommendations_model
from agent.prompting.templates import PromptRenderer
from agent.ranking.grounding import ground

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

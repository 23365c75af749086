"""Prompt fitting returns byte for byte what the render-and-count bisection returned.

The algorithm before issue #6 is kept here verbatim as the reference: numpy priority order,
pandas history lines, Jinja's own ``tojson`` filter, a full tiktoken count at every probe of
the bisection. Recorded cassettes are keyed by the request body, so "the same prompt" means
identical messages and identical kept history lines, for every sample user, budget and task.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import agent.prompting.tokens as tokens_module
from agent.chat.content import ContentInputs
from agent.data.behaviors import DEFAULT_BEHAVIOR_WEIGHTS, DEFAULT_UNKNOWN_WEIGHT, KNOWN_BEHAVIORS
from agent.data.event_columns import EventColumns
from agent.data.loading import align_catalog, load_events, load_items
from agent.data.privacy import Scrubber
from agent.errors import ConfigError
from agent.prompting.fit import fit_lines
from agent.prompting.history import Catalog, consumed_items, history_lines, keep_priority
from agent.prompting.lines import tojson_text
from agent.prompting.templates import (
    BUILTIN_TEMPLATE_DIR,
    CandidateLine,
    Domain,
    HistoryLine,
    ProfileInputs,
    PromptRenderer,
    RecommendInputs,
    RenderedPrompt,
)
from agent.prompting.tokens import (
    _PRETOKEN_PATTERNS,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
    TOKENS_REPLY_PRIMING,
    count_encoded,
    count_messages,
    encoding_for,
    split_is_exact,
)
from agent.recommender import RecommenderAgent

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "fixtures" / "sample"
MODEL = "gpt-4o-mini"
Build = Callable[[list[HistoryLine]], tuple[str, BaseModel]]


# -- the reference: the algorithm before issue #6 --------------------------------------------
def reference_keep_priority(user_events: pd.DataFrame, keep_recent: int = 5) -> list[int]:
    n = len(user_events)
    weights = user_events["behavior"].map(DEFAULT_BEHAVIOR_WEIGHTS).fillna(DEFAULT_UNKNOWN_WEIGHT).abs()
    is_rating = (user_events["behavior"] == "rating").to_numpy()
    signal = weights.to_numpy(dtype=float, copy=True)
    signal[is_rating] = 0.7
    has_text = user_events["text"].notna().to_numpy()
    signal = signal + 0.2 * has_text
    position = np.arange(n)
    recent = position >= n - keep_recent
    order = np.lexsort((-position, -signal, ~recent))
    return [int(i) for i in order]


def _clip(text: str | None, limit: int) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"


def reference_history_lines(
    user_events: pd.DataFrame, catalog: Catalog, scrubber: Scrubber
) -> list[HistoryLine]:
    dates: list[str] = user_events["timestamp"].dt.strftime("%Y-%m-%d").tolist()
    items: list[str] = user_events["item_id"].astype(str).tolist()
    behaviors: list[str] = user_events["behavior"].astype(str).tolist()
    values: list[float] = user_events["value"].astype(float).tolist()
    texts: list[object] = user_events["text"].tolist()
    lines: list[HistoryLine] = []
    for n, (date, item_id, behavior, value, text) in enumerate(
        zip(dates, items, behaviors, values, texts, strict=True), start=1
    ):
        info = catalog.get(item_id) if item_id else None
        lines.append(
            HistoryLine(
                n=n,
                date=date,
                behavior=behavior,
                item_id=item_id or None,
                title=_clip(info.title, 200) if info else None,
                category=info.category if info else None,
                price=info.price if info else None,
                value=None if value != value else value,
                text=_clip(scrubber.scrub(text), 500) if isinstance(text, str) else None,
            )
        )
    return lines


def reference_consumed_items(user_events: pd.DataFrame) -> list[str]:
    items = user_events.loc[user_events["item_id"] != "", "item_id"]
    return list(dict.fromkeys(items.tolist()))


def reference_count(messages: Sequence[Mapping[str, Any]], model: str = MODEL) -> int:
    """count_messages as it was: one full encode per string."""
    total = TOKENS_REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, str):
                total += _full_count(value, model)
            if key == "name":
                total += TOKENS_PER_NAME
    return total


@cache
def _full_count(text: str, model: str) -> int:  # memoized only to keep this file fast
    return len(encoding_for(model).encode(text, disallowed_special=()))


def reference_fit_to_budget(
    n_items: int, priority: Sequence[int], measure: Callable[[list[int]], int], budget: int
) -> list[int]:
    if measure([]) > budget:
        raise ConfigError(f"prompt budget of {budget} tokens is too small even for an empty history")
    low, high = 0, n_items
    if measure(sorted(priority[:high])) <= budget:
        return sorted(priority[:high])
    while high - low > 1:
        mid = (low + high) // 2
        if measure(sorted(priority[:mid])) <= budget:
            low = mid
        else:
            high = mid
    return sorted(priority[:low])


def reference_fit(
    renderer: PromptRenderer,
    build: Build,
    user_events: pd.DataFrame,
    lines: list[HistoryLine],
    budget: int,
    max_events: int = 300,
) -> tuple[RenderedPrompt, list[HistoryLine]]:
    """RecommenderAgent._fit_prompt before issue #6 (fit_history + render + count_messages)."""
    priority = reference_keep_priority(user_events)[:max_events]

    def measure(rows: list[int]) -> int:
        return reference_count(renderer.render(*build([lines[i] for i in rows])).messages)

    kept = [lines[i] for i in reference_fit_to_budget(len(priority), priority, measure, budget)]
    return renderer.render(*build(kept)), kept


def jinja_renderer(template_dir: str | Path | None = None) -> PromptRenderer:
    """A renderer with Jinja's own ``tojson`` and a plain ``compact``, as before issue #6."""
    renderer = PromptRenderer(template_dir)
    renderer._env.filters["tojson"] = jinja2.filters.do_tojson
    renderer._env.filters["compact"] = lambda v: (
        {k: x for k, x in v.items() if x is not None} if isinstance(v, dict) else v
    )
    return renderer


def outcome(fit: Callable[..., tuple[RenderedPrompt, list[HistoryLine]]], *args: Any) -> object:
    """``fit(*args)``, or the ConfigError it raises (compared by message)."""
    try:
        return fit(*args)
    except ConfigError as exc:
        return ("ConfigError", str(exc))


# -- every sample user, several budgets, both tasks ------------------------------------------
@dataclass
class Case:
    user: str
    task: str
    user_events: pd.DataFrame
    build: Build
    lines: list[HistoryLine]
    reference_lines: list[HistoryLine]


@pytest.fixture(scope="module")
def sample_agent() -> RecommenderAgent:
    items = load_items(SAMPLE / "items.csv")
    events = align_catalog(load_events(SAMPLE / "events.csv"), items)
    agent = RecommenderAgent(events.frame, items.frame, None)
    agent.token_model = MODEL
    return agent


@pytest.fixture(scope="module")
def users(sample_agent: RecommenderAgent) -> list[str]:
    return sorted(load_events(SAMPLE / "events.csv").frame["user_id"].unique())


@pytest.fixture(scope="module")
def cases(sample_agent: RecommenderAgent, users: list[str]) -> list[Case]:
    """The builder of every sample user's profile and recommend prompt, as the agent makes them."""
    found: list[Case] = []

    def capture(
        self: RecommenderAgent, columns: EventColumns, build: Build, scrubber: Scrubber
    ) -> tuple[RenderedPrompt, list[HistoryLine]]:
        name = build([])[0]
        user_events = self.histories.for_user(current)  # what the reference reads
        lines = history_lines(columns, self.catalog, scrubber)  # what the agent reads
        reference_lines = reference_history_lines(user_events, self.catalog, scrubber)
        found.append(Case(current, name, user_events, build, lines, reference_lines))
        return reference_fit(self.renderer, build, user_events, reference_lines, budget=10**6)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RecommenderAgent, "_fit_prompt", capture)
        for current in users:
            sample_agent.prepare_profile(current)
            sample_agent.prepare_recommend(current)
        for current in users[:5]:  # a request block, too
            sample_agent.prepare_recommend(current, query="cozy <b>co-op</b> game & 'dice' 🎲 under 40")
    return found


def test_new_history_lines_and_priority_equal_the_reference(
    sample_agent: RecommenderAgent, cases: list[Case]
) -> None:
    assert len(cases) == 2 * 50 + 5
    for case in cases:
        assert case.lines == case.reference_lines, case.user
        assert keep_priority(case.user_events) == reference_keep_priority(case.user_events), case.user
        assert consumed_items(case.user_events) == reference_consumed_items(case.user_events)
        for keep_recent in (0, 1, 3, 400):
            assert keep_priority(case.user_events, keep_recent) == reference_keep_priority(
                case.user_events, keep_recent
            )


def _budgets(case: Case, reference: PromptRenderer) -> dict[str, int]:
    empty = reference_count(reference.render(*case.build([])).messages)
    return {
        "too small": empty - 1,
        "empty only": empty,
        "tight": empty + 60,
        "mid": empty + 1500,
        "default": 6000,
    }


@pytest.mark.parametrize("budget_kind", ["too small", "empty only", "tight", "mid", "default", "huge"])
def test_fast_fit_equals_the_reference_for_every_sample_user(
    sample_agent: RecommenderAgent, cases: list[Case], budget_kind: str
) -> None:
    reference = jinja_renderer()
    for case in cases:
        budget = 10**6 if budget_kind == "huge" else _budgets(case, reference)[budget_kind]
        expected = outcome(
            reference_fit, reference, case.build, case.user_events, case.reference_lines, budget
        )
        got = outcome(
            fit_lines, sample_agent.renderer, case.build, case.user_events, case.lines, MODEL, budget, 300
        )
        assert got == expected, (case.user, case.task, budget)
        if isinstance(got, tuple) and isinstance(got[0], RenderedPrompt):
            assert reference_count(got[0].messages) <= budget


def test_fewer_max_events_and_other_models_equal_the_reference(
    sample_agent: RecommenderAgent, cases: list[Case]
) -> None:
    reference = jinja_renderer()
    for case in cases[::7]:
        for max_events, budget in ((0, 6000), (1, 6000), (10, 6000), (40, 3500)):
            expected = outcome(
                reference_fit,
                reference,
                case.build,
                case.user_events,
                case.reference_lines,
                budget,
                max_events,
            )
            got = outcome(
                fit_lines,
                sample_agent.renderer,
                case.build,
                case.user_events,
                case.lines,
                MODEL,
                budget,
                max_events,
            )
            assert got == expected, (case.user, case.task, max_events)


def test_the_wired_agent_prepares_the_same_requests(
    sample_agent: RecommenderAgent, users: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """RecommenderAgent._fit_prompt (lines built only for the rows it may show) vs the reference."""

    def old_fit_prompt(
        self: RecommenderAgent, columns: EventColumns, build: Build, scrubber: Scrubber
    ) -> tuple[RenderedPrompt, list[HistoryLine]]:
        user_events = as_frame(columns)  # the reference reads a frame
        lines = reference_history_lines(user_events, self.catalog, scrubber)
        return reference_fit(
            jinja_renderer(),
            build,
            user_events,
            lines,
            self.config.prompt_budget_tokens,
            self.config.max_history_events,
        )

    some = users[::10]
    after = [(sample_agent.prepare_profile(u), sample_agent.prepare_recommend(u)) for u in some]
    monkeypatch.setattr(RecommenderAgent, "_fit_prompt", old_fit_prompt)
    before = [(sample_agent.prepare_profile(u), sample_agent.prepare_recommend(u)) for u in some]
    assert after == before


def as_frame(columns: EventColumns) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": pd.array(columns.items, dtype="str"),
            "behavior": pd.array(columns.behaviors, dtype="str"),
            "timestamp": pd.to_datetime(columns.dates, utc=True),
            "value": pd.array(columns.values, dtype="float64"),
            "text": pd.Series(columns.texts, dtype=object),
        }
    )


@pytest.mark.parametrize("template", ["describe_item", "explain", "summarize"])
def test_content_templates_equal_the_reference(
    sample_agent: RecommenderAgent, cases: list[Case], template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """agent.chat.content's prompts share the history block, so the fast path serves them too."""
    record = {"item_id": "SKU-10014", "title": "Kitepost <Strategy> & 'Co'", "price": 42.99, "category": None}
    reference = jinja_renderer()
    for case in cases[::15]:

        def build(kept: list[HistoryLine], total: int = len(case.lines)) -> tuple[str, BaseModel]:
            return template, ContentInputs(
                domain=Domain(),
                kind="description",
                kind_name="product description",
                consume_verb="buy",
                has_prices=True,
                item=record,
                history=kept,
                total_events=total,
                max_words=80,
            )

        for budget, max_events in ((1200, 60), (2000, 60), (10**6, 300)):
            expected = outcome(
                reference_fit, reference, build, case.user_events, case.reference_lines, budget, max_events
            )
            got = outcome(
                fit_lines,
                sample_agent.renderer,
                build,
                case.user_events,
                case.lines,
                MODEL,
                budget,
                max_events,
            )
            assert got == expected, (case.user, template, budget)


# -- user template directories keep working ---------------------------------------------------
@pytest.mark.parametrize(
    ("filename", "edit"),
    [
        ("profile.j2", lambda s: s.replace("Write the behavior profile", "Profile")),
        ("recommend.j2", lambda s: s.replace("best first.", "best first, please.")),
        # A history block of its own: rows as plain text instead of JSON arrays.
        ("_base.j2", lambda s: s.replace("{{ row|tojson }}", "{{ row|join(' | ') }}")),
        ("_base.j2", lambda s: s.replace("shown=", "count=")),
    ],
)
def test_user_templates_equal_the_reference(
    sample_agent: RecommenderAgent,
    cases: list[Case],
    tmp_path: Path,
    filename: str,
    edit: Callable[[str], str],
) -> None:
    (tmp_path / filename).write_text(edit((BUILTIN_TEMPLATE_DIR / filename).read_text(encoding="utf-8")))
    custom = PromptRenderer(tmp_path)
    reference = jinja_renderer(tmp_path)
    for case in cases[::9]:
        for budget in (3000, 6000):
            expected = outcome(
                reference_fit, reference, case.build, case.user_events, case.reference_lines, budget
            )
            got = outcome(fit_lines, custom, case.build, case.user_events, case.lines, MODEL, budget, 300)
            assert got == expected, (case.user, case.task, budget)


def test_a_builder_that_changes_more_than_the_history_falls_back(
    sample_agent: RecommenderAgent, cases: list[Case]
) -> None:
    case = next(c for c in cases if c.task == "profile")

    def build(kept: list[HistoryLine]) -> tuple[str, BaseModel]:
        return "profile", ProfileInputs(behaviors=["view"], history=kept, total_events=len(kept))

    reference = jinja_renderer()
    expected = reference_fit(reference, build, case.user_events, case.reference_lines, 3000)
    assert fit_lines(sample_agent.renderer, build, case.user_events, case.lines, MODEL, 3000, 300) == expected


# -- random histories: hostile text, the budget is never exceeded -----------------------------
HOSTILE = st.lists(
    st.sampled_from(
        [
            *"abcXYZ 0123456789\"'<>&{}[]/\\:,.-",
            "\n",
            "\t",
            "\u2028",
            "\u00a0",
            "é",
            "中",
            "😀",
            "🎲",
            "\u0301",
            "</data>",
        ]
    ),
    max_size=40,
).map("".join)
NUMBERS = st.one_of(
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from([0.0, -0.0, 1.0, 19.99, 1e21, 1e-7, math.inf]),
)


@st.composite
def histories(draw: st.DrawFn) -> tuple[pd.DataFrame, list[HistoryLine]]:
    n = draw(st.integers(0, 24))
    lines = []
    for i in range(n):
        title = draw(st.one_of(st.none(), HOSTILE, st.text(min_size=150, max_size=220)))
        lines.append(
            HistoryLine(
                n=i + 1,
                date=draw(st.sampled_from(["2026-08-08", "1999-12-31", "2026-11-27"])),
                behavior=draw(st.sampled_from([*KNOWN_BEHAVIORS, "wishlist"])),
                item_id=draw(st.one_of(st.none(), st.from_regex(r"SKU-[0-9]{1,6}", fullmatch=True))),
                title=title,
                category=draw(st.one_of(st.none(), HOSTILE)),
                price=draw(NUMBERS),
                value=draw(NUMBERS),
                text=draw(st.one_of(st.none(), HOSTILE)),
            )
        )
    frame = pd.DataFrame(
        {"behavior": [line.behavior for line in lines], "text": [line.text for line in lines]}
    )
    return frame, lines


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=histories(),
    task=st.sampled_from(["profile", "recommend"]),
    candidates=st.lists(
        st.builds(
            CandidateLine,
            item_id=st.from_regex(r"SKU-[0-9]{1,4}", fullmatch=True),
            title=HOSTILE,
            category=st.one_of(st.none(), HOSTILE),
            price=NUMBERS,
            description=st.one_of(st.none(), HOSTILE),
        ),
        max_size=4,
    ),
    query=st.one_of(st.none(), HOSTILE),
    slack=st.one_of(st.integers(-3, 40), st.integers(40, 2500)),
    max_events=st.sampled_from([300, 5, 1]),
)
def test_random_histories_equal_the_reference_and_never_exceed_the_budget(
    history: tuple[pd.DataFrame, list[HistoryLine]],
    task: str,
    candidates: list[CandidateLine],
    query: str | None,
    slack: int,
    max_events: int,
) -> None:
    frame, lines = history
    domain = Domain(user_noun="reader <b>", items_noun="books & 'zines'")

    def build(kept: list[HistoryLine]) -> tuple[str, BaseModel]:
        if task == "profile":
            return "profile", ProfileInputs(
                domain=domain, behaviors=["view", "rat<ing>"], history=kept, total_events=len(lines)
            )
        return "recommend", RecommendInputs(
            domain=domain,
            profile={"summary": "likes <tents> & 'stoves' 😀", "n": -0.0} if query else None,
            history=kept,
            total_events=len(lines),
            candidates=candidates,
            k=2,
            query=query,
        )

    reference = jinja_renderer()
    budget = reference_count(reference.render(*build([])).messages) + slack
    expected = outcome(reference_fit, reference, build, frame, lines, budget, max_events)
    got = outcome(fit_lines, PromptRenderer(), build, frame, lines, MODEL, budget, max_events)
    assert got == expected
    if slack < 0:
        assert isinstance(got, tuple) and got[0] == "ConfigError"
    else:
        assert isinstance(got, tuple) and isinstance(got[0], RenderedPrompt)
        assert reference_count(got[0].messages) <= budget


# -- the pieces: counts that add up, tojson that is Jinja's ----------------------------------
@pytest.fixture(scope="module")
def encodings() -> dict[str, tuple[str, tiktoken.Encoding]]:
    """Every pre-tokenizer pattern the lemma covers, with cl100k's ranks (the lemma is about the regex)."""
    ranks = encoding_for(MODEL)._mergeable_ranks
    return {
        f"{kind}-{i}": (
            kind,
            tiktoken.Encoding(f"lemma-{i}", pat_str=pattern, mergeable_ranks=ranks, special_tokens={}),
        )
        for i, (pattern, kind) in enumerate(_PRETOKEN_PATTERNS.items())
    }


NASTY = st.lists(
    st.sampled_from(
        [
            *"abcXYZ019 \t\n\r'/\"{}<>.,:;-_!?",
            "\u00a0",
            "\u2028",
            "\x1c",
            "\x85",
            "é",
            "ß",
            "\u0301",
            "中",
            "😀",
            "ǅ",
            "Ⅻ",
            "٣",
            "'s",
            "'LL",
            "\r\n",
            "  ",
        ]
    ),
    max_size=16,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(left=NASTY, right=NASTY, which=st.integers(0, 4))
def test_counts_add_up_where_the_split_is_proven_exact(
    encodings: dict[str, tuple[str, tiktoken.Encoding]], left: str, right: str, which: int
) -> None:
    kind, encoding = list(encodings.values())[which]

    def full(text: str) -> int:
        return len(encoding.encode(text, disallowed_special=()))

    # Lemma 2 (agent.prompting.tokens._count_clauses): a "," then a " " is always a boundary.
    assert full(left + "," + " " + right) == full(left + ",") + full(" " + right)
    left += "\n"
    if split_is_exact(kind, left, right):
        assert full(left + right) == full(left) + full(right)
    for text in (left + right + "\n" + right + left, f"{left}, {right}, x, {right},\n, {left}"):
        assert count_encoded(encoding, text) == full(text)


def test_sample_prompts_count_the_same_as_a_full_encode(
    sample_agent: RecommenderAgent, cases: list[Case]
) -> None:
    for case in cases:
        prompt, _ = fit_lines(
            sample_agent.renderer, case.build, case.user_events, case.lines, MODEL, 10**6, 300
        )
        assert count_messages(prompt.messages, MODEL) == reference_count(prompt.messages)


def _forget_everything() -> None:
    for cached in (tokens_module._count_cached, tokens_module._count_short):
        cached.cache_clear()


def test_cold_caches_give_the_same_prompts(sample_agent: RecommenderAgent, cases: list[Case]) -> None:
    reference = jinja_renderer()
    for case in cases[::6]:
        for budget in (2500, 6000):
            _forget_everything()
            got = outcome(
                fit_lines,
                sample_agent.renderer,
                case.build,
                case.user_events,
                case.lines,
                MODEL,
                budget,
                300,
            )
            expected = outcome(
                reference_fit, reference, case.build, case.user_events, case.reference_lines, budget
            )
            assert got == expected, (case.user, case.task, budget)


def test_threads_share_the_caches_safely(sample_agent: RecommenderAgent, cases: list[Case]) -> None:
    chosen = cases[:24]

    def fit(case: Case) -> object:
        return outcome(
            fit_lines, sample_agent.renderer, case.build, case.user_events, case.lines, MODEL, 4000, 300
        )

    _forget_everything()
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(fit, chosen * 3))
    sequential = [fit(case) for case in chosen * 3]
    assert concurrent == sequential


JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), HOSTILE),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(HOSTILE, inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(value=JSONISH)
def test_tojson_is_jinjas_tojson(value: object) -> None:
    env = jinja2.Environment()
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "ensure_ascii": False}
    assert tojson_text(value) == str(jinja2.filters.do_tojson(jinja2.nodes.EvalContext(env), value))


def test_cached_descriptions_still_count_what_was_scrubbed() -> None:
    items = pd.DataFrame(
        {
            "item_id": ["SKU-1"],
            "title": ["Tent"],
            "category": [None],
            "price": [math.nan],
            "description": ["Questions? write to help@tents.example or call +49 30 1234567"],
        }
    )
    catalog = Catalog(items)
    lines = []
    for _ in range(2):  # the second description comes from the cache
        scrubber = Scrubber()
        lines.append(catalog.candidate_line("SKU-1", scrubber))
        assert dict(scrubber.counts) == {"email": 1, "phone": 1}
    assert lines[0] == lines[1]
    assert lines[0].description == Scrubber().scrub(items["description"][0])
    assert catalog.candidate_line("SKU-1", Scrubber(enabled=False)).description == items["description"][0]


def test_an_edited_template_gets_a_new_version(tmp_path: Path) -> None:
    source = (BUILTIN_TEMPLATE_DIR / "profile.j2").read_text(encoding="utf-8")
    (tmp_path / "profile.j2").write_text(source)
    renderer = PromptRenderer(tmp_path)
    first = renderer.version("profile")
    assert first == PromptRenderer().version("profile")  # same sources, same version
    (tmp_path / "profile.j2").write_text(source.replace("Write the", "Now write the"))
    assert renderer.version("profile") != first


def test_tojson_reports_a_cycle_like_json_does() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular reference"):
        tojson_text(cycle)

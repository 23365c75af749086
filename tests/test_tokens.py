"""Token counting, the prompt budget and cost, offline."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import warnings
from pathlib import Path

import pytest
import tiktoken

from agent.errors import ConfigError
from agent.prompting import tokens
from agent.prompting.tokens import (
    ENCODINGS,
    EncodingSpec,
    PriceTable,
    bundled_encoding,
    count_messages,
    count_text,
    encoding_for,
    fit_to_budget,
    pretokenizer_kind,
)

ROOT = Path(__file__).resolve().parent.parent


def test_counting_works_offline_and_includes_message_framing() -> None:
    assert encoding_for("gpt-4.1-mini").name == "o200k_base"  # bundled, hash-verified: no download
    text = "waterproof trail running shoes"
    bare = count_text(text, "gpt-4.1-mini")
    framed = count_messages([{"role": "user", "content": text}], "gpt-4.1-mini")
    assert bare > 0
    # 3 framing tokens per message + the role + 3 reply-priming tokens.
    assert framed == bare + 3 + count_text("user", "gpt-4.1-mini") + 3


@pytest.mark.parametrize("budget", [5, 17, 40, 100, 1000])
def test_fit_to_budget_never_exceeds_the_budget_and_keeps_the_priority_prefix(budget: int) -> None:
    sizes = [7, 3, 11, 5, 2, 9]
    priority = [5, 4, 3, 2, 1, 0]  # newest first

    def measure(rows: list[int]) -> int:
        return 4 + sum(sizes[r] for r in rows)

    kept = fit_to_budget(len(sizes), priority, measure, budget)
    assert measure(kept) <= budget
    assert kept == sorted(priority[: len(kept)])
    if len(kept) < len(sizes):  # maximal: one more row would not fit
        assert measure(sorted(priority[: len(kept) + 1])) > budget


def test_fit_to_budget_refuses_a_budget_too_small_for_the_empty_prompt() -> None:
    with pytest.raises(ConfigError, match="too small"):
        fit_to_budget(3, [0, 1, 2], lambda rows: 50 + len(rows), budget=10)


def test_cost_uses_cached_and_batch_prices() -> None:
    table = PriceTable()
    full = table.cost("gpt-4o-mini", 1_000_000, 1_000_000)
    assert full == pytest.approx(0.15 + 0.60)
    cached = table.cost("gpt-4o-mini", 1_000_000, 0, cached_tokens=1_000_000)
    assert cached == pytest.approx(0.075)
    assert table.cost("gpt-4o-mini", 1_000_000, 1_000_000, batch=True) == pytest.approx(full / 2)
    # Dated snapshots use the base model's price; unknown (local) models cost 0.
    assert table.cost("gpt-4o-mini-2024-07-18", 1_000_000, 0) == pytest.approx(0.15)
    assert table.cost("llama3.1:8b", 1_000_000, 1_000_000) == 0.0


def test_price_table_from_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"my-model": {"input": 1.0, "output": 2.0}}))
    monkeypatch.setenv("RECAGENT_PRICES", str(path))
    assert PriceTable.from_env().cost("my-model", 1_000_000, 1_000_000) == pytest.approx(3.0)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="RECAGENT_PRICES"):
        PriceTable.from_env()


# -- the model's own encoding, offline ------------------------------------------------------
# A fixed text and its token ids in both encodings. Derived once with the encodings built here
# and checked then against the Rust tokenizer of the bpe-openai package (GitHub's ``bpe``
# crate, an implementation independent of tiktoken); test_bundled_encodings_agree_with_an_
# independent_tokenizer repeats that check on every run.
FIXED_TEXT = 'Because you watched "Die Hard 2" (1990): Cliffhanger — 4.5★ for $12.99\n'
FIXED_IDS = {
    "cl100k_base": [
        *(18433, 499, 15746, 330, 18674, 11481, 220, 17, 1, 320, 2550, 15, 1680, 48952),
        *(71, 4091, 2001, 220, 19, 13, 20, 27347, 369, 400, 717, 13, 1484, 198),
    ],
    "o200k_base": [
        *(30105, 481, 25301, 392, 8796, 16454, 220, 17, 1, 350, 3204, 15, 3127, 86168),
        *(147938, 2733, 220, 19, 13, 20, 12087, 395, 548, 899, 13, 2058, 198),
    ],
}
# Published ids: tiktoken's own tests (tests/test_encoding.py::test_simple) for cl100k_base and
# openai/harmony's tests (o200k_harmony = o200k_base's ranks) for o200k_base.
HELLO_WORLD_IDS = {"cl100k_base": [15339, 1917], "o200k_base": [24912, 2375]}


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4.1-mini", "o200k_base"),
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o3", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-oss-20b", "o200k_base"),  # o200k_harmony counts like o200k_base
        ("gpt-4", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
    ],
)
def test_models_get_their_own_encoding_offline_without_a_warning(
    model: str, encoding: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_download(name: str) -> tiktoken.Encoding:
        raise AssertionError(f"tiktoken was asked to load {name}")

    monkeypatch.setattr(tiktoken, "get_encoding", no_download)
    with caplog.at_level(logging.WARNING, logger="agent.prompting.tokens"):
        got = encoding_for.__wrapped__(model)  # uncached: a warning would be logged now
    assert got.name == encoding
    assert got.encode(FIXED_TEXT) == FIXED_IDS[encoding]
    assert not caplog.records


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_a_fixed_text_has_known_token_ids_in_both_encodings(name: str) -> None:
    encoding = bundled_encoding(name)
    assert encoding is not None
    assert encoding.encode(FIXED_TEXT) == FIXED_IDS[name]
    assert encoding.encode("hello world") == HELLO_WORLD_IDS[name]
    assert encoding.decode(FIXED_IDS[name]) == FIXED_TEXT
    assert count_text(FIXED_TEXT, "gpt-4o-mini" if name == "o200k_base" else "gpt-4") == len(FIXED_IDS[name])
    assert pretokenizer_kind(encoding) == name.split("_")[0]  # the line-sum lemma applies


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_bundled_encodings_agree_with_an_independent_tokenizer(name: str) -> None:
    with warnings.catch_warnings():  # its package __init__ uses a deprecated importlib call
        warnings.simplefilter("ignore", DeprecationWarning)
        from bpe_openai import _bindings  # the Rust tokenizer, not the package's Python wrapper

    rust = _bindings.tokenizer_for_encoding(name)
    encoding = bundled_encoding(name)
    assert encoding is not None
    with (ROOT / "fixtures" / "sample" / "items.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    catalog = "\n".join(json.dumps(row, ensure_ascii=False) for row in rows)
    for text in (FIXED_TEXT, catalog):
        assert encoding.encode(text) == rust.encode(text)
    assert rust.encode(FIXED_TEXT) == FIXED_IDS[name]


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_encoding_specs_are_tiktokens_own(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hash, pattern and special tokens equal what tiktoken's constructor would use."""
    from tiktoken_ext import openai_public

    asked: list[tuple[str, str | None]] = []

    def load(path: str, expected_hash: str | None = None) -> dict[bytes, int]:
        asked.append((path, expected_hash))
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", load)
    constructed = openai_public.ENCODING_CONSTRUCTORS[name]()
    spec = ENCODINGS[name]
    assert asked == [(f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken", spec.sha256)]
    assert constructed["pat_str"] == spec.pat_str
    assert constructed["special_tokens"] == dict(spec.special_tokens)


def test_a_bundled_file_with_another_hash_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    good = bundled_encoding("o200k_base")
    assert good is not None
    lines = [b"IQ== 0", b"Ig== 1"]  # a well-formed file, but not tiktoken's
    package = tmp_path / "fake_bpe_pkg"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise AssertionError('the package must not be imported')\n")
    (package / "data" / "o200k_base.tiktoken.gz").write_bytes(gzip.compress(b"\n".join(lines)))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ENCODINGS["o200k_base"]
    fake = EncodingSpec(
        spec.sha256, spec.pat_str, spec.special_tokens, (("fake_bpe_pkg", "data/o200k_base.tiktoken.gz"),)
    )
    monkeypatch.setattr(tokens, "ENCODINGS", {**ENCODINGS, "o200k_base": fake})
    assert hashlib.sha256(b"\n".join(lines)).hexdigest() != spec.sha256
    with caplog.at_level(logging.WARNING, logger="agent.prompting.tokens"):
        assert bundled_encoding.__wrapped__("o200k_base") is None
    assert "sha256" in caplog.text
    # The real file passes the same check.
    monkeypatch.setattr(tokens, "ENCODINGS", ENCODINGS)
    rebuilt = bundled_encoding.__wrapped__("o200k_base")
    assert rebuilt is not None and rebuilt.encode(FIXED_TEXT) == FIXED_IDS["o200k_base"]


def test_unknown_models_are_counted_with_cl100k_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.prompting.tokens"):
        got = encoding_for.__wrapped__("llama3.1:8b")
    assert got.name == "cl100k_base"
    assert "estimates" in caplog.text and "llama3.1:8b" in caplog.text

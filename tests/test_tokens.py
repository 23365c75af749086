"""Token counting, the prompt budget and cost, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.prompting.tokens import PriceTable, count_messages, count_text, encoding_for, fit_to_budget


def test_counting_works_offline_and_includes_message_framing() -> None:
    assert encoding_for("gpt-4.1-mini").name  # bundled cl100k_base when tiktoken can't download
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

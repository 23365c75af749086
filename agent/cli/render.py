"""Human-readable terminal output for the CLI (``--pretty`` and the demo), via rich."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from agent.recommender import ProfileResult, RecommendationResult
from agent.secrets import redact

console = Console(soft_wrap=False)
R = TypeVar("R", bound=BaseModel)


def _scrubbed(result: R) -> R:
    """``result`` without any key a server echoed into the reply's text (agent.secrets)."""
    return type(result).model_validate_json(redact(result.model_dump_json()))


def print_profile(result: ProfileResult) -> None:
    result = _scrubbed(result)
    profile = result.profile
    console.rule(
        f"[bold]Profile of {result.user_id}[/] ({result.events_shown}/{result.events_total} events shown)"
    )
    console.print(profile.summary)
    table = Table("interest", "strength", "evidence", title="Interests", title_justify="left")
    for interest in sorted(profile.interests, key=lambda i: -i.strength):
        table.add_row(interest.name, f"{interest.strength:.2f}", ", ".join(interest.evidence[:4]))
    console.print(table)
    if profile.dislikes:
        console.print("Dislikes: " + "; ".join(d.name for d in profile.dislikes))
    p = profile.patterns
    price = (
        f"{p.typical_price_min:g}-{p.typical_price_max:g}"
        if p.typical_price_min is not None and p.typical_price_max is not None
        else "n/a"
    )
    console.print(
        f"Patterns: price sensitivity {p.price_sensitivity}, usual price {price}, {p.exploration}; "
        f"recent focus: {p.recent_focus or 'n/a'}"
    )
    _usage_line(result.usage, result.model, result.template_version)


def print_recommendations(result: RecommendationResult) -> None:
    result = _scrubbed(result)
    console.rule(f"[bold]Top {len(result.items)} for {result.user_id}[/]")
    if result.fallback_reason:
        console.print(f"[yellow]Fallback:[/] {result.fallback_reason}")
    table = Table("#", "item", "title", "score", "source", "why")
    for item in result.items:
        table.add_row(str(item.rank), item.item_id, item.title, f"{item.score:.2f}", item.source, item.reason)
    console.print(table)
    if result.grounding:
        rates = ", ".join(
            f"{k} {v:.0%}" if k.endswith("_rate") else f"{k} {v:g}" for k, v in result.grounding.items()
        )
        console.print(f"Grounding: {rates} (of {result.candidates_considered} candidates)")
    if result.model:
        blend = (
            f"{result.fusion} blend of the model's rank and the retriever's score"
            if result.fusion
            else "the model's order, back-filled by the retriever"
        )
        orders = f" over {result.orders} shuffled orders (Borda)" if result.orders > 1 else ""
        console.print(f"Order: {blend}{orders}")
        _usage_line(result.usage, result.model, result.template_version or "")


def _usage_line(usage: dict[str, object], model: str, template: str) -> None:
    console.print(
        f"[dim]{model} · {template} · {usage.get('requests')} request(s) · "
        f"{usage.get('prompt_tokens')} prompt + {usage.get('completion_tokens')} completion tokens · "
        f"${float(usage.get('cost_usd', 0.0)):.4f}[/]"  # type: ignore[arg-type]
    )

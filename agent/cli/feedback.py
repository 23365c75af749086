"""CLI of the feedback loop: ``feedback``, ``refine``, ``profile show|history|diff`` (also spelled
``profiles``), the ``--db`` option, and the loop the demo shows (recommend → scripted reactions →
refined profile with its diff → new recommendations without the disliked items).

Output is JSON on stdout (``--pretty``: readable text); errors are ``RecommenderError``s that
``agent.cli.main.main`` prints as one line.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.cli.options import (
    add_db_arg,
    add_profile_store_args,
    build_agent,
    emit_json,
    load_inputs,
    make_client,
    store_for,
)
from agent.data.behaviors import SIGNALS
from agent.errors import ConfigError, InvalidFeedbackError, ProfileNotFoundError

if TYPE_CHECKING:  # loaded by the commands that use them, so `recagent --help` stays fast
    from agent.profiles.store import Store
    from agent.profiles.versions import Change, ProfileVersion

PROFILE_ACTIONS = ("show", "history", "diff")


def register(
    sub: Any, *, common: Callable[[argparse.ArgumentParser], None], data_args: Callable[..., None]
) -> dict[str, Callable[[argparse.Namespace], int]]:
    feedback = sub.add_parser("feedback", help="record a reaction to a (recommended) item")
    data_args(feedback)
    feedback.add_argument("--user", required=True)
    feedback.add_argument("--item", required=True)
    feedback.add_argument("--signal", required=True, choices=SIGNALS)
    feedback.add_argument("--value", type=float, help="rating value (rating), or price paid (purchase)")
    feedback.add_argument("--comment", help="the user's own words (comment, or with any explicit signal)")
    feedback.add_argument("--rec-id", help="the recommendation answered (default: the latest that showed it)")
    feedback.add_argument("--timestamp", help="when it happened, ISO-8601 with a zone (default: now)")
    feedback.add_argument(
        "--refine", action="store_true", help="then refine the profile if it is worth a call"
    )
    add_db_arg(feedback)
    common(feedback)

    refine = sub.add_parser(
        "refine", help="refine a stored profile from new feedback (no call without enough)"
    )
    data_args(refine)
    refine.add_argument("--user", required=True)
    refine.add_argument("--force", action="store_true", help="call the model for any new feedback")
    add_db_arg(refine)
    common(refine)

    profiles = sub.add_parser(
        "profiles", help="stored profile versions (same as `profile show|history|diff`)"
    )
    profiles.add_argument("action", choices=PROFILE_ACTIONS)
    profiles.add_argument("--user", required=True)
    profiles.add_argument(
        "--items", type=Path, help="the data set's catalog: picks its default store (without --db)"
    )
    add_profile_store_args(profiles)
    profiles.add_argument("--pretty", action="store_true", help="readable text instead of JSON")
    profiles.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    return {"feedback": cmd_feedback, "refine": cmd_refine, "profiles": run_profile_action}


def _timestamp(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidFeedbackError(
            f"invalid --timestamp {text!r}: use ISO-8601, e.g. 2026-08-03T07:07:08Z"
        ) from None


def _loaded_agent(args: argparse.Namespace, with_model: bool) -> Any:
    events, items = load_inputs(args, args.events, args.items)
    client = make_client(args, default_backend="openai")[0] if with_model else None
    return build_agent(args, events, items, client)


def cmd_feedback(args: argparse.Namespace) -> int:
    agent = _loaded_agent(args, with_model=args.refine)
    stored = agent.feedback(
        args.user,
        args.item,
        args.signal,
        value=args.value,
        comment=args.comment,
        recommendation_id=args.rec_id,
        timestamp=_timestamp(args.timestamp),
    )
    payload: dict[str, Any] = {"feedback": stored.model_dump(mode="json")}
    payload["blocked_items"] = sorted(agent.store.blocked_items(args.user))
    if args.refine:
        payload["refine"] = agent.refine(args.user).model_dump(mode="json")
    if not args.pretty:
        emit_json(payload)
        return 0
    from agent.cli.render import console

    console.print(f"Recorded {stored.signal} of {stored.item_id} by {stored.user_id} (#{stored.seq}).")
    if "refine" in payload:
        _print_refine(payload["refine"], agent.catalog.title)
    return 0


def cmd_refine(args: argparse.Namespace) -> int:
    agent = _loaded_agent(args, with_model=True)
    result = agent.refine(args.user, force=args.force)
    if args.pretty:
        _print_refine(result.model_dump(mode="json"), agent.catalog.title)
    else:
        emit_json(result.model_dump(mode="json"))
    return 0


# -- profile show | history | diff -------------------------------------------------------
def run_profile_action(args: argparse.Namespace) -> int:
    store = store_for(args)
    if store is None:  # pragma: no cover - every parser that routes here adds --db
        raise ConfigError("profile show|history|diff needs --db")
    with store:
        versions = store.profile_history(args.user)
        if not versions:
            hint = ""
            if args.db is None and getattr(args, "items", None) is None and not os.environ.get("RECAGENT_DB"):
                hint = "; profiles are stored per data set: pass its --items (or --db)"
            raise ProfileNotFoundError(
                f"no stored profile for user {args.user!r} in {store_name(store)}{hint}"
            )
        by_number = {v.version: v for v in versions}

        def pick(number: int | None, default: ProfileVersion, what: str) -> ProfileVersion:
            if number is None:
                return default
            if number not in by_number:
                raise ProfileNotFoundError(
                    f"user {args.user!r} has no profile version {number} ({what}; versions 1-{versions[-1].version})"
                )
            return by_number[number]

        if args.action == "show":
            version = pick(args.version, versions[-1], "--version")
            if args.pretty:
                _print_version(version)
            else:
                emit_json(version.model_dump(mode="json"))
        elif args.action == "history":
            if args.pretty:
                _print_history(versions)
            else:
                emit_json([_history_row(v) for v in versions])
        else:
            new = pick(args.to_version, versions[-1], "--to")
            default_old = by_number.get(new.version - 1)
            if args.from_version is None and default_old is None:
                raise ProfileNotFoundError(
                    f"user {args.user!r} has only version {new.version}: nothing to diff"
                )
            old = pick(args.from_version, default_old or new, "--from")
            payload = diff_payload(old, [v for v in versions if old.version < v.version <= new.version])
            if args.pretty:
                print_diff(payload, lambda item_id: item_id)
            else:
                emit_json(payload)
    return 0


def store_name(store: Store) -> str:
    return str(getattr(store, "path", type(store).__name__))


def diff_payload(old: ProfileVersion, newer: Sequence[ProfileVersion]) -> dict[str, Any]:
    """What changed from ``old`` to the last of ``newer`` and why (the versions' own changes)."""
    new = newer[-1] if newer else old
    return {
        "user_id": old.user_id,
        "from": old.version,
        "to": new.version,
        "diff": [c.model_dump(mode="json") for c in _diff(old, new)],
        "explained_by": [
            {
                "version": v.version,
                "producer": v.producer,
                "model": v.model,
                "template_version": v.template_version,
                "evidence": v.evidence,
                "changes": [c.model_dump(mode="json") for c in v.changes],
            }
            for v in newer
        ],
    }


def _diff(old: ProfileVersion, new: ProfileVersion) -> list[Change]:
    from agent.profiles.refine import diff_states

    return diff_states(old.state, new.state)


def _history_row(v: ProfileVersion) -> dict[str, Any]:
    return {
        "version": v.version,
        "created_at": v.created_at.isoformat(),
        "producer": v.producer,
        "model": v.model,
        "template_version": v.template_version,
        "evidence": v.evidence,
        "feedback_upto": v.feedback_upto,
        "changes": len(v.changes),
        "interests": {i.name: i.strength for i in v.state.profile.interests},
        "blocked_items": v.state.blocked_ids(),
        "usage": v.usage,
    }


# -- readable output ---------------------------------------------------------------------
_MARKS = {
    "interest_added": "+",
    "interest_strengthened": "▲",
    "interest_weakened": "▼",
    "interest_decayed": "▽",
    "interest_removed": "-",
    "dislike_added": "+ dislike",
    "dislike_removed": "- dislike",
    "item_blocked": "⛔ blocked",
    "item_unblocked": "unblocked",
    "summary_changed": "✎",
    "ignored": "· ignored",
}


def describe(change: Change, title: Callable[[str], str]) -> str:
    """One readable line for a change (with its rationale when it has one)."""
    mark = _MARKS.get(change.kind, change.kind)
    if change.kind in ("item_blocked", "item_unblocked"):
        name = f"{change.name} {title(change.name)!r}" if title(change.name) != change.name else change.name
    else:
        name = change.name
    strength = ""
    if change.before is not None and change.after is not None:
        strength = f" {change.before:.2f} → {change.after:.2f}"
    elif change.after is not None:
        strength = f" {change.after:.2f}"
    elif change.before is not None:
        strength = f" (was {change.before:.2f})"
    why = f" — {change.rationale}" if change.rationale else ""
    cited = f" [{len(change.evidence)} reaction(s)]" if change.evidence else ""
    return f"{mark} {name}{strength}{why}{cited}"


def print_diff(payload: dict[str, Any], title: Callable[[str], str]) -> None:
    """The structural diff, each line with the rationale recorded by the version that made it."""
    from agent.cli.render import console

    console.rule(f"[bold]Profile of {payload['user_id']}: version {payload['from']} → {payload['to']}[/]")
    from agent.profiles.versions import Change

    recorded = [Change.model_validate(c) for v in payload["explained_by"] for c in v["changes"]]
    why = {(c.kind, c.name): c for c in recorded}  # later versions win
    shown = set()
    for entry in payload["diff"]:
        change = Change.model_validate(entry)
        explained = why.get((change.kind, change.name))
        if explained is not None:
            shown.add((change.kind, change.name))
            change = change.model_copy(
                update={"rationale": explained.rationale, "evidence": explained.evidence}
            )
        console.print("  " + describe(change, title), markup=False)
    for change in recorded:
        if (change.kind, change.name) not in shown and change.kind in ("ignored", "interest_decayed"):
            console.print("  " + describe(change, title), markup=False)
    for version in payload["explained_by"]:
        console.print(
            f"[dim]v{version['version']} by {version['producer']} · {version['model'] or 'no model'} · "
            f"{version['template_version'] or '-'} · {len(version['evidence'])} reaction(s) as evidence[/]"
        )


def _print_refine(result: dict[str, Any], title: Callable[[str], str], *, changes: bool = True) -> None:
    from agent.cli.render import console

    if result["status"] == "skipped":
        console.print(f"Refinement skipped: {result['reason']}.")
        return
    from agent.profiles.versions import ProfileVersion

    version = ProfileVersion.model_validate(result["version"])
    console.print(
        f"Refined profile of {result['user_id']}: version {result['previous_version']} → {version.version} "
        f"({result['reason']}; {result['usage'].get('requests', 0)} request(s), "
        f"${float(result['usage'].get('cost_usd', 0.0)):.4f})"
    )
    for change in version.changes if changes else []:
        console.print("  " + describe(change, title), markup=False)


def _print_version(version: ProfileVersion) -> None:
    from agent.cli.render import console

    profile = version.state.profile
    console.rule(f"[bold]Profile of {version.user_id}, version {version.version}[/] ({version.producer})")
    console.print(profile.summary, markup=False)
    for interest in sorted(profile.interests, key=lambda i: -i.strength):
        console.print(
            f"  {interest.strength:.2f}  {interest.name}  ({', '.join(interest.evidence[:4])})", markup=False
        )
    if profile.dislikes:
        console.print("Dislikes: " + "; ".join(d.name for d in profile.dislikes), markup=False)
    if version.state.blocked:
        console.print("Blocked items: " + ", ".join(version.state.blocked_ids()), markup=False)
    console.print(
        f"[dim]{version.created_at:%Y-%m-%d %H:%M} UTC · {version.model or 'no model'} · "
        f"{version.template_version or '-'} · evidence: {len(version.evidence)} reaction(s)[/]"
    )


def _print_history(versions: Sequence[ProfileVersion]) -> None:
    from agent.cli.render import console

    console.rule(f"[bold]Profile versions of {versions[0].user_id}[/]")
    for v in versions:
        ranked = sorted(v.state.profile.interests, key=lambda i: -i.strength)[:3]
        console.print(
            f"v{v.version}  {v.created_at:%Y-%m-%d %H:%M} UTC  {v.producer:<7}  {v.model or 'no model'}  "
            f"{v.template_version or '-'}  evidence: {len(v.evidence)} reaction(s), {len(v.changes)} change(s)",
            markup=False,
        )
        top = ", ".join(f"{i.name} {i.strength:.2f}" for i in ranked) or "none"
        blocked = f"; blocked: {', '.join(v.state.blocked_ids())}" if v.state.blocked else ""
        console.print(f"     interests: {top}{blocked}", markup=False)


# -- the demo's loop ---------------------------------------------------------------------
def scripted_reactions(first: Any) -> list[tuple[str, str, str | None]]:
    """Deterministic reactions to ``first`` (a RecommendationResult): like the top item, comment
    warmly on the second, dislike the last two (which would otherwise stay in a new top-k)."""
    items = [r.item_id for r in first.items]
    if len(items) < 4:
        return []
    return [
        (items[0], "like", None),
        (items[1], "comment", "Great pick, more like this please."),
        (items[-2], "dislike", None),
        (items[-1], "dislike", None),
    ]


def record_scripted_reactions(agent: Any, first: Any) -> list[tuple[str, str, str | None]]:
    """Record ``scripted_reactions(first)`` through ``agent.profiles.feedback``; returns them."""
    reactions = scripted_reactions(first)
    # Dated just after the user's last event (never the wall clock), so the refine prompt, and
    # therefore the recording it replays, is the same on every run.
    start = agent.histories.for_user(first.user_id)["timestamp"].max().to_pydatetime() + timedelta(days=1)
    for n, (item_id, signal, comment) in enumerate(reactions):
        when = start + timedelta(minutes=5 * n)
        agent.feedback(
            first.user_id,
            item_id,
            signal,
            comment=comment,
            recommendation_id=first.recommendation_id,
            timestamp=when,
        )
    return reactions


def demo_feedback_loop(agent: Any, first: Any) -> None:
    """Print the loop for the user of ``first``: reactions, refinement, diff, new top-10."""
    from agent.cli.render import console, print_recommendations

    user_id = first.user_id
    console.rule(f"[bold]Feedback loop for {user_id}[/]")
    reactions = record_scripted_reactions(agent, first)
    for item_id, signal, comment in reactions:
        said = f' "{comment}"' if comment else ""
        console.print(f"  {signal:<8} {item_id} {agent.catalog.title(item_id)}{said}", markup=False)
    if agent.client is None:
        console.print("No model (--backend fallback): no refinement, but dislikes are still hard filters.")
    else:
        result = agent.refine(user_id)
        _print_refine(result.model_dump(mode="json"), agent.catalog.title, changes=False)
        if result.version is not None:
            history = agent.store.profile_history(user_id)
            old = next(v for v in history if v.version == result.previous_version)
            print_diff(diff_payload(old, [result.version]), agent.catalog.title)
    second = agent.recommend(user_id, k=len(first.items))
    print_recommendations(second)
    before, after = [r.item_id for r in first.items], [r.item_id for r in second.items]
    disliked = [item for item, signal, _ in reactions if signal == "dislike"]
    back = [item for item in disliked if item in after]
    console.print(
        f"Changed: {len([i for i in after if i not in before])} new item(s), "
        f"{len([i for i in before if i not in after])} gone; "
        + (
            f"[red]disliked items came back: {', '.join(back)}[/]"
            if back
            else f"disliked items gone: {', '.join(disliked)} ✓"
        )
    )


def memory_db(args: argparse.Namespace) -> None:
    """The demo keeps nothing unless ``--db`` is given."""
    if getattr(args, "db", None) is None:
        from agent.profiles.store import MEMORY

        args.db = MEMORY

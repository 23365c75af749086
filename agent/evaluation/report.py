"""What an evaluation leaves behind: candidate sets, ranked lists, metrics, a report, a plot.

Files written by :func:`write_outputs` (all in one directory):

* ``candidates.json`` — the protocol, seed and every user's candidate set and target; load it
  with :func:`load_candidates` (``recagent evaluate --candidates``) to evaluate another model on
  exactly the same sets.
* ``rankings.jsonl`` — one line per (method, user): the ranked ids (for the agent also where
  each item came from, fallbacks and usage); :func:`rescore` recomputes every metric from it
  and ``candidates.json`` without any model call.
* ``metrics.json`` — method -> metric (``ndcg@10``, ``hit@10``, ``recall@10``, ``mrr``...) ->
  mean over users.
* ``run.json`` — settings, confidence intervals, paired differences, timings, skipped users,
  the agent's token usage and cost.
* ``report.md`` and ``metrics.png`` (NDCG@K and Hit@K per method, 95% CI error bars).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, DataError
from agent.evaluation.metrics import mean_ci
from agent.evaluation.protocol import EvalCase, score

CANDIDATES_FORMAT = "recagent-candidates/1"
MetricSummary = dict[str, dict[str, tuple[float, float]]]


@dataclass
class EvalRun:
    """One finished evaluation: inputs, per-user outputs and bookkeeping."""

    config: dict[str, Any]
    description: str
    cases: list[EvalCase]
    targets: dict[str, str]
    rankings: dict[str, dict[str, list[str]]]
    per_user: dict[str, dict[str, list[float]]]
    skipped: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    agent: dict[str, Any] | None = None
    """details (user -> sources/fallback/usage), usage, estimate; None when no agent ran."""
    notes: list[str] = field(default_factory=list)


def summarize(per_user: Mapping[str, Mapping[str, Sequence[float]]]) -> MetricSummary:
    """method -> metric -> (mean, 95% CI half-width)."""
    return {m: {k: mean_ci(v) for k, v in metrics.items()} for m, metrics in per_user.items()}


def paired_difference(
    per_user: Mapping[str, Mapping[str, Sequence[float]]], a: str, b: str, metric: str
) -> tuple[float, float]:
    """Mean and 95% CI half-width of ``a - b`` on ``metric`` over the same users (paired)."""
    left, right = per_user[a][metric], per_user[b][metric]
    return mean_ci([x - y for x, y in zip(left, right, strict=True)])


def comparisons(methods: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs worth a paired test: the agent against each classic method, else the
    retriever against popularity."""
    if "agent" in methods:
        return [("agent", m) for m in ("retriever", "popularity") if m in methods]
    return [("retriever", "popularity")] if {"retriever", "popularity"} <= set(methods) else []


def table_metrics(ks: Sequence[int]) -> list[str]:
    """Columns of the printed table: NDCG@K (K > 1; NDCG@1 = Hit@1), Hit@K, MRR."""
    return [f"ndcg@{k}" for k in ks if k > 1] + [f"hit@{k}" for k in ks] + ["mrr"]


def format_table(summary: MetricSummary, ks: Sequence[int], n_users: int) -> str:
    """Plain-text table of mean ± 95% CI half-width, one row per method."""
    columns = table_metrics(ks)
    width = max(len("method"), *(len(m) for m in summary))
    header = f"{'method':<{width}}  " + "  ".join(f"{c:>15}" for c in columns)
    lines = [header, "-" * len(header)]
    for method, metrics in summary.items():
        cells = [f"{metrics[c][0]:.4f} ± {metrics[c][1]:.4f}" for c in columns]
        lines.append(f"{method:<{width}}  " + "  ".join(f"{c:>15}" for c in cells))
    lines.append(f"mean ± 95% CI half-width over {n_users} users; one held-out item, so recall@K = hit@K.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- candidate sets


def write_candidates(
    path: Path, config: Mapping[str, Any], cases: Sequence[EvalCase], targets: Mapping[str, str]
) -> None:
    payload = {
        "format": CANDIDATES_FORMAT,
        **{k: config[k] for k in ("dataset", "protocol", "split", "negatives") if k in config},
        "seed": config.get("candidate_seed", config.get("seed")),  # the seed that drew these sets
        "users": [
            {
                "user_id": c.user_id,
                "target": targets[c.user_id],
                "candidates": None if c.candidates is None else list(c.candidates),
            }
            for c in cases
        ],
    }
    path.write_text(json.dumps(payload, ensure_ascii=False) + "\n", encoding="utf-8")


def load_candidates(path: Path) -> tuple[dict[str, Any], list[EvalCase], dict[str, str]]:
    """``(settings, cases, targets)`` from a ``candidates.json``. DataError if unusable."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read candidate file: {exc}", file=str(path)) from exc
    if not isinstance(payload, dict) or payload.get("format") != CANDIDATES_FORMAT:
        raise DataError(f"not a {CANDIDATES_FORMAT} file", file=str(path))
    cases, targets = [], {}
    try:
        for row in payload["users"]:
            user, candidates = str(row["user_id"]), row["candidates"]
            if candidates is not None and str(row["target"]) not in candidates:
                raise DataError(f"user {user!r}: target missing from its candidates", file=str(path))
            cases.append(EvalCase(user, None if candidates is None else tuple(map(str, candidates))))
            targets[user] = str(row["target"])
    except (KeyError, TypeError) as exc:
        raise DataError(f"malformed candidate file ({exc!r})", file=str(path)) from exc
    settings = {k: v for k, v in payload.items() if k not in ("format", "users")}
    return settings, cases, targets


def check_candidates(targets: Mapping[str, str], loaded: Mapping[str, str], path: Path) -> None:
    """The loaded sets must come from this very split: same users, same targets."""
    for user, target in loaded.items():
        if targets.get(user) != target:
            raise DataError(
                f"candidate file does not match this dataset/split: user {user!r} has target "
                f"{target!r} there and {targets.get(user)!r} here",
                file=str(path),
            )


# --------------------------------------------------------------------------- outputs


def _means(per_user: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, dict[str, float]]:
    return {m: {k: sum(v) / len(v) for k, v in metrics.items()} for m, metrics in per_user.items()}


def rescore(out_dir: Path, ks: Sequence[int] | None = None) -> dict[str, dict[str, float]]:
    """Metrics recomputed from ``rankings.jsonl`` + ``candidates.json`` (no model calls);
    the same shape as ``metrics.json``. ``ks`` defaults to the run's."""
    out_dir = Path(out_dir)
    _, _, targets = load_candidates(out_dir / "candidates.json")
    if ks is None:
        ks = json.loads((out_dir / "run.json").read_text(encoding="utf-8"))["config"]["ks"]
    rankings: dict[str, dict[str, list[str]]] = {}
    with (out_dir / "rankings.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            rankings.setdefault(row["method"], {})[row["user_id"]] = row["ranked"]
    return _means(score(rankings, targets, list(ks)))


def write_outputs(out_dir: Path, run: EvalRun) -> dict[str, Path]:
    """Write every file listed in the module docstring; returns name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        name: out_dir / name
        for name in (
            "candidates.json",
            "rankings.jsonl",
            "metrics.json",
            "run.json",
            "report.md",
            "metrics.png",
        )
    }
    write_candidates(paths["candidates.json"], run.config, run.cases, run.targets)
    details = (run.agent or {}).get("details", {})
    with paths["rankings.jsonl"].open("w", encoding="utf-8") as out:
        for method, per_user in run.rankings.items():
            for user, ranked in per_user.items():
                row: dict[str, Any] = {"method": method, "user_id": user, "ranked": ranked}
                if method == "agent" and user in details:
                    row.update(details[user])
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = summarize(run.per_user)
    paths["metrics.json"].write_text(json.dumps(_means(run.per_user), indent=2) + "\n", encoding="utf-8")
    paths["run.json"].write_text(
        json.dumps(run_record(run, summary), indent=2, default=str) + "\n", encoding="utf-8"
    )
    paths["report.md"].write_text(markdown(run, summary), encoding="utf-8")
    plot(
        summary,
        run.config["ks"],
        paths["metrics.png"],
        title=f"{run.config['dataset']} · {run.config['protocol']}",
    )
    return paths


def agent_stats(run: EvalRun) -> dict[str, Any] | None:
    """Fallback count and reasons, item sources, usage of the agent (None if it did not run)."""
    if run.agent is None:
        return None
    details = run.agent.get("details", {})
    reasons = Counter(
        d["fallback_reason"].split(":")[0] for d in details.values() if d.get("fallback_reason")
    )
    sources = Counter(s for d in details.values() for s in d.get("sources", []))
    return {
        "users": len(details),
        "fell_back": sum(reasons.values()),
        "fallback_reasons": dict(reasons),
        "item_sources": dict(sources),
        "usage": run.agent.get("usage"),
        "estimate": run.agent.get("estimate"),
    }


def run_record(run: EvalRun, summary: MetricSummary) -> dict[str, Any]:
    methods = list(run.per_user)
    return {
        "config": run.config,
        "description": run.description,
        "users": len(run.cases),
        "skipped": run.skipped,
        "timings_s": {k: round(v, 3) for k, v in run.timings.items()},
        "metrics": {m: {k: {"mean": v[0], "ci95": v[1]} for k, v in ms.items()} for m, ms in summary.items()},
        "paired": {
            f"{a} - {b}": {
                metric: dict(
                    zip(("mean", "ci95"), paired_difference(run.per_user, a, b, metric), strict=True)
                )
                for metric in table_metrics(run.config["ks"])
            }
            for a, b in comparisons(methods)
        },
        "agent": agent_stats(run),
        "notes": run.notes,
    }


def markdown(run: EvalRun, summary: MetricSummary) -> str:
    ks, config = run.config["ks"], run.config
    columns = table_metrics(ks)
    lines = [
        f"# Evaluation: {config['dataset']}, {config['protocol']}",
        "",
        f"- Command: `{config.get('command', '')}`",
        f"- Date: {config.get('date', '')}; seed {config['seed']}; {len(run.cases)} users",
        f"- Protocol: {run.description}",
    ]
    if config.get("candidate_setting") != "full":
        what = (
            "random items the user never interacted with"
            if "sampled" in config["protocol"]
            else ("the retriever's best non-target items")
        )
        lines.append(f"- Candidates: the target + {config['negatives']} {what}, in a seeded random order")
    else:
        lines.append(
            f"- Full ranking over the catalog minus each user's training items; lists cut at "
            f"{config['depth']} (so MRR is RR@{config['depth']}); the agent reranks the retriever's top {config['rerank']}"
        )
    if config.get("retriever_settings"):
        lines.append(f"- Retriever settings: {config['retriever_settings']}")
    if run.skipped:
        lines.append("- Users skipped: " + ", ".join(f"{n} ({why})" for why, n in run.skipped.items()))
    lines += ["", "| method | " + " | ".join(columns) + " |", "|---" + "|---:" * len(columns) + "|"]
    for method, metrics in summary.items():
        lines.append(
            f"| {method} | "
            + " | ".join(f"{metrics[c][0]:.4f} ± {metrics[c][1]:.4f}" for c in columns)
            + " |"
        )
    lines += [
        "",
        "Mean ± 95% CI half-width (normal approximation); one held-out item, so recall@K = hit@K.",
        "",
    ]
    for a, b in comparisons(list(summary)):
        k = 10 if 10 in ks else max(ks)
        diffs = []
        for metric in (f"ndcg@{k}", f"hit@{k}", "mrr"):
            mean, half = paired_difference(run.per_user, a, b, metric)
            diffs.append(f"{metric} {mean:+.4f} ± {half:.4f}")
        lines.append(f"- Paired difference {a} − {b}: " + "; ".join(diffs))
    stats = agent_stats(run)
    if stats:
        usage = stats["usage"] or {}
        lines += [
            f"- Agent: fell back to the retriever's order for {stats['fell_back']} of {stats['users']} users "
            f"{stats['fallback_reasons'] or ''}; item sources {stats['item_sources']}",
            f"- Agent usage: {usage.get('requests', 0)} requests, {usage.get('prompt_tokens', 0)} prompt + "
            f"{usage.get('completion_tokens', 0)} completion tokens, ${usage.get('cost_usd', 0):.4f}",
        ]
    lines += [f"- {note}" for note in run.notes]
    lines += ["", "![metrics](metrics.png)", ""]
    return "\n".join(lines)


def plot(summary: MetricSummary, ks: Sequence[int], path: Path, *, title: str = "") -> None:
    """NDCG@K and Hit@K curves per method with 95% CI error bars, as a PNG (Agg, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not ks:
        raise ConfigError("no K values to plot")
    figure = Figure(figsize=(10, 4), dpi=120)
    FigureCanvasAgg(figure)
    for index, (metric, label) in enumerate((("ndcg", "NDCG@K"), ("hit", "Hit@K (= recall@K)")), 1):
        axes = figure.add_subplot(1, 2, index)
        for method, metrics in summary.items():
            means = [metrics[f"{metric}@{k}"][0] for k in ks]
            errors = [metrics[f"{metric}@{k}"][1] for k in ks]
            axes.errorbar(list(ks), means, yerr=errors, marker="o", capsize=3, label=method)
        axes.set_xlabel("K")
        axes.set_ylabel(label)
        axes.set_xticks(list(ks))
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.set_title(label)
    figure.axes[0].legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path)

"""``recagent evaluate``: random, popularity, the retriever and the LLM agent on the same users
and candidate sets, with a table on stdout and every artifact in ``--out``.

Registered by ``agent.cli.main`` (``EXTENSION_MODULES``). Notices, the cost estimate and progress
go to stderr (a live bar on a terminal; with ``-v``, one line per method otherwise); before any paid call
(``--backend openai``) the estimated tokens and cost are printed and confirmed on stdin
unless ``--yes``. Errors are one ``recagent: error: ...`` line with the error's exit code.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.cli.options import emit_json, output_dir
from agent.errors import ConfigError, Usage

if TYPE_CHECKING:  # the evaluation machinery (pandas, scikit-learn...) loads only when it runs
    from agent.evaluation.methods import AgentMethod
    from agent.evaluation.protocol import EvalCase

Handler = Callable[[argparse.Namespace], int]
METHODS = ("random", "popularity", "retriever", "agent")
PROTOCOL_NAMES = ("loo-sampled", "loo-hard", "full", "loo-full", "time-sampled", "time-hard", "time-full")
"""The keys of ``agent.evaluation.protocol.PROTOCOLS`` (repeated so building the parser stays light)."""
DEFAULT_PROTOCOL = "loo-sampled"


def register(
    sub: Any, *, common: Callable[[argparse.ArgumentParser], None], data_args: Callable[..., None]
) -> dict[str, Handler]:
    parser = sub.add_parser(
        "evaluate",
        help="offline metrics for random, popularity, the retriever and the LLM agent on the same users",
        description=(
            "Evaluate random, popularity, the retriever and the LLM agent on the same users and "
            "candidate sets. Prints mean ± 95% CI per method; writes metrics.json, run.json, "
            "report.md, metrics.png, candidates.json and rankings.jsonl to --out. Asks before "
            "paid model calls unless --yes; --backend fallback runs without a model."
        ),
    )
    data = parser.add_argument_group("data and protocol")
    data.add_argument("--dataset", choices=("movielens", "amazon-seq", "generic"), required=True)
    data.add_argument(
        "--path", type=Path, required=True, help="dataset directory (generic: events.* and items.*)"
    )
    data.add_argument(
        "--protocol",
        choices=PROTOCOL_NAMES,
        help=f"split and candidates (default {DEFAULT_PROTOCOL}; full = loo-full)",
    )
    data.add_argument(
        "--split", choices=("test", "valid"), default="test", help="which held-out item (default test)"
    )
    data.add_argument(
        "--cutoff", default="0.9", help="time split: a quantile in (0, 1) or a date (default 0.9)"
    )
    data.add_argument("--negatives", type=int, help="negatives per user for sampled/hard (default 19)")
    data.add_argument("--users", type=int, help="evaluate a seeded sample of N users (default: all)")
    data.add_argument("--seed", type=int, help="seed of samples, candidate order and shuffles (default 42)")
    data.add_argument("--candidates", type=Path, help="reuse the candidate sets of an earlier run")
    run = parser.add_argument_group("evaluation")
    run.add_argument(
        "-k", dest="ks", default="1,5,10,20", help="cut-offs, comma-separated (default 1,5,10,20)"
    )
    run.add_argument("--methods", default=",".join(METHODS), help="subset of " + ",".join(METHODS))
    run.add_argument("--depth", type=int, default=100, help="full ranking: list length kept (default 100)")
    run.add_argument(
        "--rerank", type=int, default=20, help="full ranking: retriever items the agent reranks (default 20)"
    )
    run.add_argument(
        "--retriever-config",
        help="RetrieverConfig fields as JSON or a JSON file, e.g. '{\"window\": 10}' or one written by "
        "`recagent tune` (default: tuned on the training split, see --no-tune)",
    )
    run.add_argument(
        "--no-tune",
        action="store_true",
        help="without --retriever-config: use the retriever's built-in defaults instead of tuning "
        "them on the training split (each user's last training interaction held out)",
    )
    run.add_argument(
        "--tune-budget", type=float, default=60.0, help="seconds of retriever tuning at most (default 60)"
    )
    run.add_argument(
        "--with-profile", action="store_true", help="agent: build each profile first (2 calls/user)"
    )
    run.add_argument("--concurrency", type=int, default=4, help="agent requests in flight (default 4)")
    from agent.cli.options import add_ranking_args

    add_ranking_args(run, allow_fit=True)
    run.add_argument(
        "--fusion-users", type=int, default=200, help="--fusion fit: users to fit on (default 200)"
    )
    run.add_argument(
        "--out", type=output_dir, help="output directory (default out/eval/DATASET-PROTOCOL-SPLIT)"
    )
    run.add_argument("--yes", action="store_true", help="do not ask before paid model calls")
    run.add_argument(
        "--json",
        action="store_true",
        help="print the results as one JSON object instead of the table (the table is the default)",
    )
    common(parser)
    return {"evaluate": cmd_evaluate}


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"-k must be comma-separated integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise ConfigError("-k values must be integers >= 1")
    return ks


def _cutoff(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _methods(text: str) -> list[str]:
    from agent.evaluation.methods import EXTRA_METHODS

    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = set(names) - set(METHODS) - set(EXTRA_METHODS)
    if unknown or not names:
        raise ConfigError(f"--methods: unknown {sorted(unknown)}; choose from {', '.join(METHODS)}")
    return names


def _tune_retriever(train: Any, items: Any, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Retriever settings tuned on the training split alone (``agent.retrieval.tuning``)."""
    from agent.retrieval.tuning import tune

    if args.tune_budget <= 0:
        raise ConfigError("--tune-budget must be positive")
    print(
        f"tuning the retriever on the training split (at most {args.tune_budget:g} s; --no-tune skips)",
        file=sys.stderr,
    )
    count = 0
    started = last_note = time.perf_counter()

    def progress(trial: Any, best: Any) -> None:
        nonlocal count, last_note
        count += 1
        if args.verbose:
            change = ", ".join(f"{k}={v}" for k, v in trial.change.items()) or "start"
            metrics = "  ".join(f"{k} {v:.4f}" for k, v in trial.metrics.items())
            print(f"tune: trial {count} {change}: {metrics}{'  *' if trial is best else ''}", file=sys.stderr)
        elif time.perf_counter() - last_note >= 10:  # a progress line every 10 s or so
            last_note = time.perf_counter()
            metrics = "  ".join(f"{k} {v:.4f}" for k, v in best.metrics.items())
            print(
                f"tune: {count} trials in {last_note - started:.0f} s; best validation {metrics}",
                file=sys.stderr,
            )

    result = tune(train, items, time_budget_s=args.tune_budget, on_trial=progress)
    report = result.report()
    print(
        f"tuned the retriever in {report['seconds']} s ({report['trials']} trials, {report['stopped']}): "
        f"validation {report['start_metrics']} -> {report['metrics']}",
        file=sys.stderr,
    )
    return result.config, report


def _settings_note(args: argparse.Namespace, tuning: dict[str, Any] | None) -> str:
    if tuning is not None:
        return (
            f"tuned on the training split only ({tuning['validation_users']} users' last training "
            f"interaction held out; {tuning['trials']} trials, {tuning['seconds']} s, {tuning['stopped']}; "
            f"validation ndcg@10 {tuning['start_metrics']['ndcg@10']} -> {tuning['metrics']['ndcg@10']}, "
            f"hit@50 {tuning['start_metrics']['hit@50']} -> {tuning['metrics']['hit@50']}); "
            f"changed from the defaults: {json.dumps(tuning['changed'])}"
        )
    if args.retriever_config:
        return "given by --retriever-config"
    return "RetrieverConfig() defaults (--no-tune)"


def _retriever_config(text: str | None) -> Any:
    """A ``RetrieverConfig`` from JSON text or a JSON file, e.g. one written by ``recagent tune``
    (``weights`` merge into the defaults)."""
    if not text:
        return None
    from agent.retrieval.tuning import load_config

    try:
        return load_config(text)
    except ConfigError as exc:
        raise ConfigError(f"--retriever-config: {exc}") from None


def _note(text: str) -> None:
    print(f"recagent: {text}", file=sys.stderr, flush=True)


class _Steps:
    """Progress of the long steps on stderr (with ``-v`` or on a terminal): what starts, and
    the wall time since the command started, so no step is silent for minutes."""

    def __init__(self, verbose: bool, started: float) -> None:
        self.shown = verbose or sys.stderr.isatty()
        self.started = started

    def __call__(self, text: str) -> None:
        if self.shown:
            _note(f"[{time.perf_counter() - self.started:6.1f} s] {text}")


def _usable_ks(ks: list[int], cases: list[EvalCase], notes: list[str]) -> list[int]:
    """The cut-offs below the smallest candidate set: with ``n`` candidates every list holds
    the target by rank ``n``, so hit@k and recall@k for k >= n are 1.0 whatever the method, and
    reporting them would only flatter. Full-catalog cases (no candidate set) limit nothing."""
    sizes = [len(c.candidates) for c in cases if c.candidates is not None]
    if not sizes:
        return ks
    smallest = min(sizes)
    kept = [k for k in ks if k < smallest]
    dropped = [k for k in ks if k >= smallest]
    if not kept:
        raise ConfigError(
            f"every -k value ({', '.join(map(str, ks))}) is >= the {smallest} candidates per user, "
            "where hit@k is always 1; use smaller cut-offs or more --negatives"
        )
    if dropped:
        notes.append(
            f"cut-offs {', '.join(map(str, dropped))} not reported: with {smallest} candidates per "
            "user, hit@k for k >= that is always 1.0"
        )
    return kept


# --------------------------------------------------------------------------- cost estimate


@dataclass(frozen=True)
class CostEstimate:
    """Upper-bound estimate: every request is charged ``max_completion_tokens`` of output."""

    requests: int
    prompt_tokens: int
    completion_tokens: int
    usd: float
    model: str
    sampled_users: int


def estimate_cost(
    method: AgentMethod,
    cases: list[EvalCase],
    *,
    sample: int = 200,
    seed: int = 0,
    extra_ranking_requests: int = 0,
) -> CostEstimate:
    """Render the prompts of a seeded sample of ``cases`` (no network) and extrapolate.

    ``extra_ranking_requests`` (e.g. ``--fusion fit``) are priced at the sample's mean tokens
    per request."""
    import numpy as np

    from agent.evaluation.protocol import PROFILE_TOKENS_GUESS, stable_seed
    from agent.prompting.tokens import count_messages

    model = method.client.config.model
    if not cases:
        return CostEstimate(0, 0, 0, 0.0, model, 0)
    rng = np.random.default_rng(stable_seed(seed, "estimate"))
    picked = [cases[i] for i in sorted(rng.choice(len(cases), size=min(sample, len(cases)), replace=False))]
    prompts = [method.prepare(case) for case in picked]
    scale = len(cases) / len(picked)
    requests = round(sum(len(p) for p in prompts) * scale)
    tokens = round(sum(count_messages(p.messages, model) for ps in prompts for p in ps) * scale)
    tokens += PROFILE_TOKENS_GUESS * len(cases) if method.with_profile else 0
    if extra_ranking_requests and requests:
        tokens += round(tokens / requests * extra_ranking_requests)
        requests += extra_ranking_requests
    completion = requests * method.client.config.max_completion_tokens
    return CostEstimate(
        requests, tokens, completion, method.client.prices.cost(model, tokens, completion), model, len(picked)
    )


def _confirm(estimate: CostEstimate) -> None:
    sampled = f" (prompts rendered for {estimate.sampled_users} users and extrapolated)"
    _note(
        f"estimated cost: {estimate.requests:,} requests to {estimate.model}, ~{estimate.prompt_tokens:,} "
        f"prompt tokens + at most {estimate.completion_tokens:,} completion tokens ≈ at most "
        f"${estimate.usd:,.2f}{sampled}"
    )
    print("Continue with these paid calls? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise ConfigError("not confirmed: no model calls were made (pass --yes to skip the question)")


def _fit_fusion(
    args: argparse.Namespace, training: Any, agent: AgentMethod, seed: int, notes: list[str]
) -> Any:
    """``--fusion fit``: weights fit on a validation split of the training events.

    The fit holds out each sampled user's last *training* interaction (a validation item), so
    the evaluation's held-out targets are never seen: they are not in ``training``.
    """
    from agent.evaluation.fusion_fit import fit_fusion

    _note(f"--fusion fit: asking the model for up to {args.fusion_users} validation lists first")
    report = fit_fusion(
        training.events,
        training.items,
        agent.client,
        config=agent.agent.config,
        max_users=args.fusion_users,
        seed=seed,
    )
    agent.usage.add(Usage.from_dict(report.usage))  # the fit's calls are the agent method's spend too
    mrr = ", ".join(f"{name} {value:.4f}" for name, value in report.mrr.items())
    notes.append(
        f"fusion fit on {report.lists_used} validation lists ({report.note}); in-sample MRR: {mrr or 'n/a'}; "
        f"{report.usage.get('requests', 0)} requests"
    )
    return report.weights


# --------------------------------------------------------------------------- progress


@contextmanager
def _progress(total: int, methods: list[str]) -> Iterator[Callable[[str], Callable[[int], None]]]:
    """``start(method)`` -> ``advance(n)``: a rich bar on a terminal, plain lines otherwise."""
    if not sys.stderr.isatty():
        yield lambda method: lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description:>12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        tasks = {m: bar.add_task(m, total=total) for m in methods}
        yield lambda method: lambda n: bar.advance(tasks[method], n)


# --------------------------------------------------------------------------- the command


def _backend(args: argparse.Namespace) -> str:
    if args.backend:
        return str(args.backend)
    live = os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL") or args.base_url
    if not live:
        _note(
            "no model configured: evaluating random, popularity and the retriever only "
            "(set OPENAI_API_KEY or OPENAI_BASE_URL, or pass --backend, to include the LLM agent)"
        )
    return "openai" if live else "fallback"


def cmd_evaluate(args: argparse.Namespace) -> int:
    started = time.perf_counter()  # wall time from the command's start, imports and all
    steps = _Steps(args.verbose, started)
    from agent.cli.options import bootstrap_orders, fusion_weights, make_client, model_settings
    from agent.evaluation.methods import (
        EXTRA_METHODS,
        AgentMethod,
        Method,
        PopularityMethod,
        RandomMethod,
        RetrieverMethod,
    )
    from agent.evaluation.protocol import (
        DATASET_DOMAINS,
        TrainingData,
        build_cases,
        load_split,
        protocol_parts,
        sample_users,
        score,
    )
    from agent.evaluation.report import (
        EvalRun,
        check_candidates,
        format_table,
        load_candidates,
        summarize,
        write_outputs,
    )

    ks, wanted = _ks(args.ks), _methods(args.methods)
    bootstrap = bootstrap_orders(args.bootstrap)
    # read now, so a bad weights file fails before any work; `fit` is fit further down
    fusion = None if args.fusion == "fit" else fusion_weights(args.fusion)
    for name in ("depth", "rerank", "concurrency", "fusion_users"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1")
    if "agent" in wanted:
        model_settings(args)  # a bad URL, timeout or model name fails before loading the data set
    timings: dict[str, float] = {}
    loaded = load_candidates(args.candidates) if args.candidates else None
    protocol = args.protocol or (loaded[0].get("protocol") if loaded else None) or DEFAULT_PROTOCOL
    seed = args.seed if args.seed is not None else int(loaded[0].get("seed", 42)) if loaded else 42
    negatives = (
        args.negatives
        if args.negatives is not None
        else int(loaded[0].get("negatives") or 19)
        if loaded
        else 19
    )
    if loaded and args.users is not None:
        raise ConfigError("--users cannot be combined with --candidates: the file fixes the users")
    if loaded:
        for key, value in (("protocol", protocol), ("split", args.split), ("dataset", args.dataset)):
            if loaded[0].get(key) not in (None, value):
                raise ConfigError(f"--candidates was made with {key} {loaded[0][key]!r}, not {value!r}")
    _, setting = protocol_parts(protocol)
    if setting != "full" and not loaded and min(ks) >= negatives + 1:  # known before any work
        raise ConfigError(
            f"every -k value ({', '.join(map(str, ks))}) is >= the {negatives + 1} candidates per user, "
            "where hit@k is always 1; use smaller cut-offs or more --negatives"
        )

    steps(f"loading {args.dataset} from {args.path} and splitting ({protocol}, {args.split})")
    split = load_split(args.dataset, args.path, protocol, part=args.split, cutoff=_cutoff(args.cutoff))
    timings["load_and_split"] = time.perf_counter() - started
    t0 = time.perf_counter()
    steps(f"fitting the retriever on {len(split.train):,} training events")
    retriever_config = _retriever_config(args.retriever_config)
    tuning = None
    if retriever_config is None and not args.no_tune:
        retriever_config, tuning = _tune_retriever(split.train, split.items, args)
        timings["tune"] = time.perf_counter() - t0
        t0 = time.perf_counter()
    training = TrainingData(split.train, split.items, retriever_config)
    timings["fit"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    steps("building the candidate sets" if not loaded else f"reading the candidate sets of {args.candidates}")
    if loaded:
        _, cases, targets = loaded
        check_candidates(split.targets, targets, args.candidates)
    else:
        users = sample_users(split.targets, args.users, seed)
        if not users:
            raise ConfigError("no user has a held-out item under this protocol")
        cases = build_cases(split, training, users, setting, negatives=negatives, seed=seed)
        targets = {u: split.targets[u] for u in users}
    timings["candidates"] = time.perf_counter() - t0
    notes: list[str] = []
    ks = _usable_ks(ks, cases, notes)
    # from here on, methods see only `training` and `cases`; `targets` is read by score() alone

    methods: list[Method] = []
    builders: dict[str, Callable[[], Method]] = {
        "random": lambda: RandomMethod(training, seed=seed, depth=args.depth),
        "popularity": lambda: PopularityMethod(training, depth=args.depth),
        "retriever": lambda: RetrieverMethod(training, depth=args.depth),
    }
    methods += [builders[m]() for m in METHODS[:3] if m in wanted]
    agent: AgentMethod | None = None
    backend = _backend(args) if "agent" in wanted else "fallback"
    if "agent" in wanted:
        client, source = make_client(args, default_backend=backend)
        _note(source)
        if client is None:
            notes.append("agent not run: --backend fallback has no model (its ranking is the retriever's)")
        else:
            domain = DATASET_DOMAINS.get(args.dataset)
            agent = AgentMethod(
                training,
                client,
                domain=domain,
                seed=seed,
                depth=args.depth,
                rerank=args.rerank,
                with_profile=args.with_profile,
                concurrency=args.concurrency,
                fusion=fusion,
                bootstrap=bootstrap,
            )
            methods.append(agent)
    methods += [EXTRA_METHODS[m](training) for m in wanted if m in EXTRA_METHODS]

    estimate = None
    fit_users = (
        min(args.fusion_users, len(training.events["user_id"].unique())) if args.fusion == "fit" else 0
    )
    if agent is not None and backend == "openai":
        estimate = estimate_cost(agent, cases, seed=seed, extra_ranking_requests=fit_users)
        if args.yes:
            _note(
                f"estimated cost ≈ at most ${estimate.usd:,.2f} ({estimate.requests:,} requests); --yes given"
            )
        else:
            _confirm(estimate)
    if agent is not None and args.fusion == "fit":  # after the confirmation: these calls are paid
        agent.agent.config.fusion = _fit_fusion(args, training, agent, seed, notes)

    rankings: dict[str, dict[str, list[str]]] = {}
    with _progress(len(cases), [m.name for m in methods]) as start:
        for method in methods:
            t0 = time.perf_counter()
            steps(f"ranking {len(cases):,} users with {method.name}")
            ranked = method.rank_all(cases, start(method.name))
            timings[method.name] = time.perf_counter() - t0
            rankings[method.name] = {c.user_id: r for c, r in zip(cases, ranked, strict=True)}
            if not sys.stderr.isatty() and args.verbose:
                _note(f"{method.name}: {len(cases)} users in {timings[method.name]:.1f} s")
    steps("scoring and writing the outputs")
    per_user = score(rankings, targets, ks)
    timings["total"] = time.perf_counter() - started  # up to the outputs; the wall time is printed last

    out_dir = args.out or Path("out") / "eval" / f"{args.dataset}-{protocol}-{args.split}"
    config = {
        "command": "recagent " + shlex.join(sys.argv[1:])
        if sys.argv and sys.argv[0].endswith("recagent")
        else "",
        "date": dt.date.today().isoformat(),
        "dataset": args.dataset,
        "path": str(args.path),
        "protocol": protocol,
        "candidate_setting": setting,
        "split": args.split,
        "negatives": negatives if setting != "full" else None,
        "seed": seed,
        "candidate_seed": int(loaded[0].get("seed", seed)) if loaded else seed,
        "ks": ks,
        "depth": args.depth,
        "rerank": args.rerank,
        "backend": backend,
        "model": agent.client.config.model if agent else None,
        "with_profile": args.with_profile,
        "fusion": args.fusion,
        "fusion_weights": asdict(agent.agent.config.fusion) if agent and agent.agent.config.fusion else None,
        "bootstrap": args.bootstrap,
        "retriever_config": repr(retriever_config) if retriever_config else "RetrieverConfig() defaults",
        "retriever_settings": _settings_note(args, tuning),
        "retriever_tuning": tuning,
        "candidates_from": str(args.candidates) if args.candidates else None,
    }
    run = EvalRun(
        config=config,
        description=split.description,
        cases=cases,
        targets=targets,
        rankings=rankings,
        per_user=per_user,
        skipped=split.skipped,
        timings=timings,
        agent=None
        if agent is None
        else {
            "details": agent.details,
            "usage": agent.usage.as_dict(),
            "estimate": asdict(estimate) if estimate else None,
        },
        notes=notes,
    )
    paths = write_outputs(out_dir, run)
    summary = summarize(per_user)
    fell_back = sum(1 for d in agent.details.values() if d.get("fallback_reason")) if agent else 0
    if args.json:
        emit_json(
            {
                "dataset": args.dataset,
                "protocol": protocol,
                "split": args.split,
                "description": split.description,
                "users": len(cases),
                "ks": ks,
                "metrics": {
                    method: {name: {"mean": mean, "ci95": ci} for name, (mean, ci) in metrics.items()}
                    for method, metrics in summary.items()
                },
                "notes": notes,
                "agent": None if agent is None else {**agent.usage.as_dict(), "fell_back_users": fell_back},
                "out": str(out_dir),
            }
        )
    else:
        print(f"{args.dataset} · {protocol} ({args.split}) · {split.description}")
        print(format_table(summary, ks, len(cases)))
        for note in notes:
            print(note)
        if agent is not None:
            usage = agent.usage.as_dict()
            print(
                f"agent: {usage['requests']} requests, {usage['prompt_tokens']:,} prompt + "
                f"{usage['completion_tokens']:,} completion tokens, ${usage['cost_usd']:.4f}; "
                f"fell back to the retriever for {fell_back} of {len(cases)} users"
            )
    wall = time.perf_counter() - started
    _note(f"wrote {', '.join(p.name for p in paths.values())} to {out_dir}; wall time {wall:.1f} s")
    return 0

"""What the ``recagent`` commands share: the model/backend, data, ranking and store options,
loading the inputs, making the chat client (closed by ``close_clients`` when a command ends),
building the agent, and JSON output.

Command modules import this one and never each other's internals, so the CLI has no import cycle.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.data.loading import Loaded
    from agent.llm.client import ChatClient, LLMConfig
    from agent.profiles.store import Store
    from agent.ranking.fusion import FusionWeights

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO_ROOT / "fixtures" / "sample"
DEMO_CASSETTE = REPO_ROOT / "fixtures" / "cassettes" / "demo.json"
DEMO_USERS = ("u001", "u002", "u003")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and backend")
    group.add_argument("--model", help="chat model (default: $RECAGENT_MODEL or gpt-4.1-mini)")
    group.add_argument("--base-url", help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL)")
    group.add_argument(
        "--backend",
        choices=("openai", "replay", "fallback"),
        help="openai: live API; replay: recorded responses; fallback: no model, retriever only",
    )
    group.add_argument("--cassette", type=Path, help="recorded responses for --backend replay")
    group.add_argument("--record", type=Path, help="with --backend openai: also save every exchange here")
    group.add_argument(
        "--timeout",
        type=float,
        help="seconds for each whole request: connect, send and the full reply (default 60)",
    )
    group.add_argument(
        "--reply-schema",
        choices=("per-request", "shared"),
        default="per-request",
        help="per-request (default): enums of each request's ids, invented ids impossible on servers "
        "that enforce schemas; shared: one schema for all requests, so provider prompt caching applies "
        "(cheaper input; ids checked by grounding only)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--pretty", action="store_true", help="readable tables instead of JSON")
    out.add_argument(
        "-v", "--verbose", action="store_true", help="print cleaning reports and progress to stderr"
    )


def output_dir(text: str) -> Path:
    """An argparse ``type=`` for ``--out DIR``: a directory or a path not yet there.

    An existing file would otherwise surface deep in the run as a ``FileExistsError``
    traceback; as a type error it is the one usage line (exit 2) before any work.
    """
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    return path


def add_data_args(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--events", type=Path, required=required, help="behavior log (.csv/.jsonl/.parquet)")
    parser.add_argument("--items", type=Path, required=required, help="item catalog (.csv/.jsonl/.parquet)")
    parser.add_argument(
        "--encoding",
        default="utf-8",
        help="text encoding of --events and --items (default utf-8; e.g. latin-1)",
    )


FUSION_HELP = (
    "final order: 'prior' (default: the documented blend of model rank and retriever score), "
    "'off' (the model's order, back-filled by the retriever) or a weights file from fusion-fit"
)
FIT_HELP = "; 'fit': fit the weights on a validation split of the training events first (more calls)"


def add_ranking_args(parser: argparse.ArgumentParser, *, allow_fit: bool = False) -> None:
    """``--fusion`` and ``--bootstrap`` for a command that ranks with the model."""
    parser.add_argument(
        "--fusion",
        default="prior",
        metavar="{prior,off,fit,FILE}" if allow_fit else "{prior,off,FILE}",
        help=FUSION_HELP + (FIT_HELP if allow_fit else ""),
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1,
        metavar="B",
        help="rank B shuffled candidate orders (B model calls) and merge them by Borda count (default 1)",
    )


def check_k(k: int, flag: str = "-k") -> int:
    """``k`` within ``agent.recommender.MAX_K``; a ``ConfigError`` naming the option otherwise."""
    from agent.recommender import MAX_K

    if k < 1:
        raise ConfigError(f"{flag} must be at least 1")
    if k > MAX_K:
        raise ConfigError(f"{flag} must be at most {MAX_K}, got {k}")
    return k


def model_failed_exit(result: Any) -> int:
    """The exit code of a command that printed ``result``: 5 (model/API) when a model was
    configured but every call failed and the retriever's order was served instead, else 0.

    The output is still printed (it is usable), but a refused connection, an exhausted quota
    or a wrong endpoint must not look like success to a script; the line says what happened.
    """
    from agent.errors import ModelError

    if getattr(result, "model_error", None):
        print(
            f"recagent: error: every model call failed, the output is the retriever's fallback "
            f"({result.fallback_reason})",
            file=sys.stderr,
        )
        return ModelError.exit_code
    return 0


def add_retriever_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--retriever FILE``: retriever settings, e.g. written by ``recagent tune``."""
    parser.add_argument(
        "--retriever",
        type=Path,
        metavar="FILE",
        help="retriever settings (JSON) written by `recagent tune` (default: the built-in defaults)",
    )


def retriever_settings(args: argparse.Namespace) -> Any:
    """The ``RetrieverConfig`` named by ``--retriever``, or None."""
    path = getattr(args, "retriever", None)
    if path is None:
        return None
    from agent.retrieval.tuning import load_config  # pandas: only when needed

    if not Path(path).is_file():
        raise ConfigError(f"--retriever: no such file {path}")
    return load_config(path)


def fusion_weights(text: str) -> FusionWeights | None:
    """``--fusion`` as weights: ``prior``, ``off`` (None) or a file written by ``fusion-fit``."""
    from agent.ranking.fusion import FusionWeights

    if text == "prior":
        return FusionWeights.prior()
    if text == "off":
        return None
    if not Path(text).is_file():
        raise ConfigError(f"--fusion: expected prior, off or a weights file; {text} is not a file")
    return FusionWeights.load(text)


def bootstrap_orders(value: int) -> int:
    if value < 1:
        raise ConfigError("--bootstrap must be at least 1")
    return value


def add_db_arg(parser: argparse.ArgumentParser, *, memory_default: bool = False) -> None:
    default = (
        "an in-memory store"
        if memory_default
        else "$RECAGENT_DB, else one file per data set (--items) in the user data dir, created on first write"
    )
    parser.add_argument(
        "--db", help=f"profile store, a SQLite file (default: {default}; ':memory:' keeps nothing)"
    )


def add_profile_store_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``profile show|history|diff``; ``--db`` also applies to building a profile."""
    group = parser.add_argument_group("stored profiles (show, history, diff)")
    group.add_argument("--version", type=int, help="show: this version (default: the latest)")
    group.add_argument("--from", dest="from_version", type=int, help="diff: older version (default: to - 1)")
    group.add_argument("--to", dest="to_version", type=int, help="diff: newer version (default: the latest)")
    add_db_arg(parser)


def store_for(args: argparse.Namespace) -> Store | None:
    """The store named by ``--db``, else ``RECAGENT_DB``, else the default store of the data
    set (``--items``), created on its first write (``agent.profiles.lazy``); None for
    commands without ``--db``."""
    if not hasattr(args, "db"):
        return None
    from agent.profiles.lazy import open_dataset_store

    return open_dataset_store(args.db, getattr(args, "items", None))


def load_inputs(args: argparse.Namespace, events_path: Path, items_path: Path) -> tuple[Loaded, Loaded]:
    from agent.data.loading import align_catalog, load_events, load_items  # pandas: only when needed

    encoding = getattr(args, "encoding", "utf-8")
    items = load_items(items_path, encoding=encoding)
    events = align_catalog(load_events(events_path, encoding=encoding), items)
    if args.verbose:
        for report in (events.report, items.report):
            print("cleaning: " + report.summary(), file=sys.stderr)
            if report.examples:
                print("cleaning: example rows " + json.dumps(report.examples), file=sys.stderr)
    return events, items


_OPEN_CLIENTS: list[ChatClient] = []


def model_settings(args: argparse.Namespace) -> LLMConfig:
    """The model settings of ``args`` and the environment, checked (``LLMConfig`` raises
    ``ConfigError`` for a malformed base URL, a bad timeout or an empty model name).

    Commands call it before loading data, so a typo never costs a load nor looks like a run.
    """
    from agent.llm.client import LLMConfig

    return LLMConfig.from_env(model=args.model, base_url=args.base_url, timeout_s=args.timeout)


def make_client(args: argparse.Namespace, *, default_backend: str) -> tuple[ChatClient | None, str]:
    """The chat client for ``args`` and a one-line description of where answers come from.

    Clients made here are closed by ``close_clients`` (``main`` calls it when the command ends).
    """
    backend = args.backend or default_backend
    config = model_settings(args)
    if backend == "fallback":
        return None, "No model: recommendations come from the retriever alone (--backend fallback)."
    import httpx2  # the HTTP stack and the SDK load only for commands that talk to a model

    from agent.llm.cassette import Cassette, RecordingTransport, ReplayTransport
    from agent.llm.client import ChatClient

    if backend == "replay":
        path = args.cassette or DEMO_CASSETTE
        if not path.is_file():
            raise ConfigError(f"cassette not found: {path}")
        transport = ReplayTransport(Cassette(path))
        client = ChatClient(config, http_client=httpx2.Client(transport=transport))
        _OPEN_CLIENTS.append(client)
        return client, f"Replaying recorded responses from {_shown(path)} (no live API calls)."
    if not config.api_key and not config.base_url:
        raise ConfigError("--backend openai needs OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)")
    from agent.llm.deadline import DeadlineTransport

    http_client = None
    if args.record:
        inner = DeadlineTransport(config.timeout_s)  # --timeout bounds whole requests when recording too
        http_client = httpx2.Client(transport=RecordingTransport(Cassette(args.record), inner))
    client = ChatClient(config, http_client=http_client)
    _OPEN_CLIENTS.append(client)
    from agent.secrets import safe_url

    where = safe_url(config.base_url) if config.base_url else "the OpenAI API"
    return client, f"Calling {config.model} live at {where}."


def close_clients() -> None:
    """Close every client ``make_client`` made."""
    while _OPEN_CLIENTS:
        _OPEN_CLIENTS.pop().close()


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def emit_json(payload: Any) -> None:
    """``payload`` as JSON on stdout, without any key a server echoed into a reply (agent.secrets)."""
    from agent.secrets import redact

    print(redact(json.dumps(payload, indent=2, ensure_ascii=False, default=str)))


def agent_config(args: argparse.Namespace) -> Any:
    """The ``AgentConfig`` of ``args`` (``--fusion``, ``--bootstrap`` where the command has them)."""
    from agent.recommender import AgentConfig  # heavy imports only when needed

    return AgentConfig(
        fusion=fusion_weights(getattr(args, "fusion", "prior")),
        bootstrap_orders=bootstrap_orders(getattr(args, "bootstrap", 1)),
        retriever=retriever_settings(args),
        reply_schema="shared" if getattr(args, "reply_schema", None) == "shared" else "per_request",
    )


def build_agent(
    args: argparse.Namespace, events: Loaded, items: Loaded, client: ChatClient | None, config: Any = None
) -> Any:
    from agent.recommender import RecommenderAgent  # heavy imports only when needed

    config = config or agent_config(args)
    return RecommenderAgent(events.frame, items.frame, client, config, store=store_for(args))

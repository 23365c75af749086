"""Start-up of the service: open the store, import the configured files, build the app, run uvicorn.

``run(config)`` serves until SIGINT/SIGTERM. On SIGTERM uvicorn stops accepting connections,
lets in-flight requests finish (up to ``graceful_timeout`` seconds), then exits; because a
write is acknowledged only after it commits, nothing acknowledged is lost. With several
workers, uvicorn starts each through ``app_from_environment`` (the config travels as JSON in
``RECAGENT_SERVE_CONFIG_JSON``); every worker opens the same store.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.llm.client import ChatClient, LLMConfig
from agent.service.config import ServiceConfig
from agent.service.observability import configure_logging
from agent.service.storage import ServiceStore

CONFIG_ENV = "RECAGENT_SERVE_CONFIG_JSON"


def import_files(
    store: ServiceStore, tenant: str, items_path: str | None, events_path: str | None
) -> dict[str, int]:
    """Load (and clean) the files into ``tenant``: items are upserted; each distinct events file
    is imported once (an idempotency key of its content), so restarts don't duplicate events."""
    from agent.data.loading import align_catalog, load_events, load_items

    out = {"items": 0, "events": 0}
    if items_path is None:
        return out
    items = load_items(items_path)
    rows = _records(items.frame)
    with store.db.transaction() as cur:
        store.upsert_items(cur, tenant, rows)
    out["items"] = len(rows)
    if events_path is None:
        return out
    events = align_catalog(load_events(events_path), items)
    frame = events.frame.copy()
    frame["timestamp"] = frame["timestamp"].map(lambda t: t.isoformat())
    event_rows = _records(frame)
    digest = hashlib.sha256(Path(events_path).read_bytes()).hexdigest()[:32]

    def write(cur: Any) -> tuple[int, Any]:
        return 200, {"events": store.add_events(cur, tenant, event_rows)}

    _, response, replayed = store.idempotent(tenant, f"import:{digest}", digest, write)
    out["events"] = 0 if replayed else int(response["events"])
    return out


def _records(frame: Any) -> list[dict[str, Any]]:
    records = []
    for row in frame.to_dict(orient="records"):
        records.append(
            {k: (None if _missing(v) else (v.item() if hasattr(v, "item") else v)) for k, v in row.items()}
        )
    return records


def _missing(value: Any) -> bool:
    try:
        return bool(value != value) or value is None  # NaN, NaT, None
    except (TypeError, ValueError):
        return False


def make_client(config: ServiceConfig) -> ChatClient | None:
    if config.backend == "fallback":
        return None
    llm = LLMConfig.from_env(model=config.model, base_url=config.base_url, timeout_s=config.timeout)
    if not llm.api_key and not llm.base_url:
        raise ConfigError("the openai backend needs OPENAI_API_KEY or --base-url (or use --backend fallback)")
    return ChatClient(llm)


def app_from_environment() -> Any:
    """The app of one uvicorn worker (``factory=True``): config from ``RECAGENT_SERVE_CONFIG_JSON``."""
    from agent.service.app import create_app

    raw = os.environ.get(CONFIG_ENV)
    if raw is None:
        raise ConfigError(f"{CONFIG_ENV} is not set; start the service with `recagent serve`")
    config = ServiceConfig(**json.loads(raw))
    configure_logging(config.log_level)
    store = ServiceStore.open(config.store)
    return create_app(config, store, make_client(config))


def run(config: ServiceConfig) -> None:
    """Serve ``config`` on uvicorn until stopped."""
    import uvicorn

    os.environ[CONFIG_ENV] = json.dumps(asdict(config))
    uvicorn.run(
        "agent.service.server:app_from_environment",
        factory=True,
        host=config.host,
        port=config.port,
        workers=config.workers,
        log_level=config.log_level,
        access_log=False,  # our own JSON access log carries the request id (observability.py)
        timeout_graceful_shutdown=config.graceful_timeout,
        log_config=None,
    )

"""``recagent serve`` (the REST API) and ``recagent keys create|list|revoke``.

Registered by ``agent.cli.main`` (``EXTENSION_MODULES``). The service needs the ``service``
extra (FastAPI, uvicorn, psycopg); a missing one is a one-line error, not a traceback.

``serve --demo`` is one command for a first look: the bundled sample data in a fresh SQLite
file, an admin key printed once, and answers from the deterministic stand-in model of
``agent.testing`` on a loopback port (not a language model; set OPENAI_API_KEY and drop
``--demo`` for a real one).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.cli.options import SAMPLE_DIR
from agent.errors import ConfigError

Handler = Callable[[argparse.Namespace], int]
DEMO_TENANT = "demo"


def register(
    sub: Any, *, common: Callable[[argparse.ArgumentParser], None], data_args: Callable[..., None]
) -> dict[str, Handler]:
    serve = sub.add_parser(
        "serve",
        help="run the REST API (keys, tenants, live events, SQLite or PostgreSQL)",
        description="Settings come from flags, RECAGENT_SERVE_<NAME> variables or a TOML file (flags win).",
    )
    serve.add_argument("--config", type=Path, help="TOML file with the settings below (top level or [serve])")
    serve.add_argument(
        "--demo", action="store_true", help="bundled sample data, stand-in model, a printed key"
    )
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    serve.add_argument("--workers", type=int, help="uvicorn worker processes (default 1)")
    serve.add_argument("--store", help="sqlite:///PATH (default) or postgresql://user@host:port/db")
    serve.add_argument("--tenant", help="tenant that --items/--events are imported into (default 'default')")
    serve.add_argument("--items", help="catalog to import at start (.csv/.jsonl/.parquet)")
    serve.add_argument("--events", help="behavior log to import at start (once per distinct file)")
    serve.add_argument("--model", help="chat model (default: $RECAGENT_MODEL or gpt-4.1-mini)")
    serve.add_argument("--base-url", dest="base_url", help="OpenAI-compatible endpoint")
    serve.add_argument(
        "--backend", choices=("openai", "fallback"), help="openai (default) or fallback (no model)"
    )
    serve.add_argument("--rate-limit", dest="rate_limit", type=float, help="requests/s per key (default 20)")
    serve.add_argument("--cors-origins", dest="cors_origins", help="comma-separated origins allowed by CORS")
    serve.add_argument("--log-level", dest="log_level", choices=("debug", "info", "warning", "error"))

    keys = sub.add_parser("keys", help="create, list or revoke API keys of the service")
    keys.add_argument("action", choices=("create", "list", "revoke"))
    keys.add_argument("key_id", nargs="?", help="revoke: the key id shown by `keys list`")
    keys.add_argument(
        "--store", help="the service's store URL (default: $RECAGENT_SERVE_STORE or the default)"
    )
    keys.add_argument("--tenant", help="create: the key's tenant; list: only this tenant")
    keys.add_argument(
        "--scopes", default="read", help="create: comma-separated read,write,admin (default read)"
    )
    keys.add_argument("--name", help="create: a label for people")
    keys.add_argument("--pretty", action="store_true", help="readable text instead of JSON")
    return {"serve": cmd_serve, "keys": cmd_keys}


def _service_modules() -> Any:
    try:
        from agent.service import config as service_config
        from agent.service import keys as service_keys
        from agent.service import server, storage
    except ImportError as exc:  # the optional extra is not installed
        raise ConfigError(
            f"the service needs its extra: pip install 'recagent[service]' ({exc.name} missing)"
        ) from None
    return service_config, service_keys, server, storage


def cmd_serve(args: argparse.Namespace) -> int:
    service_config, service_keys, server, storage = _service_modules()
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "demo")}
    if args.cors_origins is not None:
        flags["cors_origins"] = args.cors_origins
    standin = None
    if args.demo:
        flags.setdefault("tenant", None)
        flags["tenant"] = flags["tenant"] or DEMO_TENANT
        flags["items"] = flags["items"] or str(SAMPLE_DIR / "items.csv")
        flags["events"] = flags["events"] or str(SAMPLE_DIR / "events.csv")
        if flags.get("store") is None:
            flags["store"] = "sqlite:///" + str(
                Path(tempfile.mkdtemp(prefix="recagent-demo-")) / "service.sqlite"
            )
        if flags.get("base_url") is None and flags.get("backend") != "fallback":
            standin = _start_standin()
            flags["base_url"] = standin.base_url
    config = service_config.ServiceConfig.load(flags, toml=args.config)
    store = storage.ServiceStore.open(config.store)
    try:
        imported = server.import_files(store, config.tenant, config.items, config.events)
        if imported["items"]:
            print(
                f"imported {imported['items']} items and {imported['events']} new events into tenant "
                f"{config.tenant!r}",
                file=sys.stderr,
            )
        if args.demo:
            key = service_keys.create_key(store, config.tenant, ("read", "write", "admin"), "demo")
            print(
                f"recagent demo: http://{config.host}:{config.port}  tenant {config.tenant!r}",
                file=sys.stderr,
            )
            print(f"API key (shown once): {key}", file=sys.stderr)
            if standin is not None:
                print(
                    f"answers come from the deterministic stand-in model at {standin.base_url} "
                    "(not a language model)",
                    file=sys.stderr,
                )
    finally:
        store.close()
    if standin is not None:
        import os

        os.environ.setdefault("OPENAI_API_KEY", "standin-demo")
    try:
        server.run(config)
    finally:
        if standin is not None:
            standin.close()
    return 0


def _start_standin() -> Any:
    """The demo's model: the stand-in on a loopback port (the one place serve uses agent.testing)."""
    from agent.testing import standin_chat
    from agent.testing.loopback import LoopbackServer

    return LoopbackServer(responder=standin_chat.respond)  # serving from here until close()


def cmd_keys(args: argparse.Namespace) -> int:
    service_config, service_keys, _, storage = _service_modules()
    config = service_config.ServiceConfig.load({"store": args.store})
    store = storage.ServiceStore.open(config.store)
    try:
        if args.action == "create":
            if not args.tenant:
                raise ConfigError("keys create needs --tenant")
            scopes = service_keys.parse_scopes(args.scopes)
            key = service_keys.create_key(store, args.tenant, scopes, args.name)
            payload: Any = {
                "key": key,
                "tenant": args.tenant,
                "scopes": list(scopes),
                "note": "shown once; stored hashed",
            }
        elif args.action == "list":
            payload = [
                {
                    "key_id": r.key_id,
                    "tenant": r.tenant,
                    "scopes": list(r.scopes),
                    "name": r.name,
                    "created_at": r.created_at,
                    "revoked_at": r.revoked_at,
                }
                for r in store.keys(args.tenant)
            ]
        else:
            if not args.key_id:
                raise ConfigError("keys revoke needs the key id (see `recagent keys list`)")
            if not store.revoke_key(args.key_id):
                raise ConfigError(f"no active key with id {args.key_id!r}")
            payload = {"revoked": args.key_id}
    finally:
        store.close()
    print(json.dumps(payload, indent=2))
    return 0

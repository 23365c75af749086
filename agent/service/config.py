"""Configuration of ``recagent serve``: flags over environment over a TOML file over defaults.

Every setting has one name, used three ways: ``--store`` (flag), ``RECAGENT_SERVE_STORE``
(environment) and ``store = "..."`` (TOML, top level or under ``[serve]``). A value that
cannot be parsed, an unknown TOML key or a missing file is a ``ConfigError`` (exit 2) before
anything starts: a typo never looks like success.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from agent.errors import ConfigError


@dataclass
class ServiceConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    store: str = "sqlite:///recagent-service.sqlite"
    """``sqlite:///PATH`` (embedded, one machine) or ``postgresql://user@host:port/db``."""
    tenant: str = "default"
    """The tenant that ``items``/``events`` are imported into at start."""
    items: str | None = None
    events: str | None = None
    model: str | None = None
    base_url: str | None = None
    backend: str = "openai"
    """openai (live API or ``base_url``), fallback (retriever only, no model)."""
    timeout: float = 60.0
    rate_limit: float = 20.0
    """Requests per second per API key (token bucket; ``burst`` at most at once)."""
    burst: int = 40
    max_body_bytes: int = 1_048_576
    cors_origins: list[str] = field(default_factory=list)
    log_level: str = "info"
    graceful_timeout: int = 30
    """Seconds SIGTERM waits for in-flight requests before closing."""

    @classmethod
    def load(
        cls, flags: Mapping[str, Any], env: Mapping[str, str] | None = None, toml: str | Path | None = None
    ) -> ServiceConfig:
        """Merge the sources (flags win); raises ``ConfigError`` on any bad value."""
        env = os.environ if env is None else env
        names = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        if toml is not None:
            values.update(_read_toml(Path(toml), names))
        for name in names:
            raw = env.get(f"RECAGENT_SERVE_{name.upper()}")
            if raw is not None and raw != "":
                values[name] = raw
        values.update({k: v for k, v in flags.items() if k in names and v is not None})
        config = cls()
        for name, raw in values.items():
            setattr(config, name, _coerce(name, raw, getattr(cls(), name)))
        config.validate()
        return config

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range 0-65535")
        if self.workers < 1:
            raise ConfigError("workers must be at least 1")
        if self.backend not in ("openai", "fallback"):
            raise ConfigError(f"backend {self.backend!r}: use openai or fallback")
        if self.timeout <= 0 or self.rate_limit <= 0 or self.burst < 1 or self.max_body_bytes < 1024:
            raise ConfigError("timeout and rate_limit must be > 0, burst >= 1, max_body_bytes >= 1024")
        if self.workers > 1 and self.store.startswith("sqlite") and ":memory:" in self.store:
            raise ConfigError("several workers cannot share an in-memory SQLite store")
        for path in (self.items, self.events):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"file not found: {path}")
        if self.events is not None and self.items is None:
            raise ConfigError("--events needs --items (the catalog the events refer to)")


def _read_toml(path: Path, names: Mapping[str, Any]) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    section = data.get("serve", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [serve] must be a table")
    unknown = sorted(set(section) - set(names) - {"serve"})
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    return {k: v for k, v in section.items() if k != "serve"}


def _coerce(name: str, raw: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, list):
            return [s.strip() for s in raw.split(",") if s.strip()] if isinstance(raw, str) else list(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid value for {name}: {raw!r}") from None

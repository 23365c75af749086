"""API keys: created once and shown once, stored only as a hash, scoped to one tenant.

A key is ``rk_<key id>_<secret>``: the key id (8 hex) names it in ``recagent keys list`` and
logs; the secret is 32 random bytes (``secrets.token_urlsafe``). The store keeps
SHA-256(key). A fast hash is the right one here: the input is 256 bits of randomness, so there
is nothing to brute-force, and the per-request look-up is one indexed equality on the hash
(no secret-dependent string comparison). Passwords, which people choose, would need a slow
hash; these keys are never chosen by people.

Scopes: ``read`` (GET endpoints, recommendations, chat), ``write`` (events, items, feedback),
``admin`` (everything, including the dashboard's counters of the tenant).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from agent.errors import ConfigError
from agent.service.storage import KeyRecord, ServiceStore

SCOPES = ("read", "write", "admin")
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEY = re.compile(r"^rk_([0-9a-f]{8})_[A-Za-z0-9_-]{20,}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_tenant(tenant: str) -> str:
    if not _TENANT.match(tenant):
        raise ConfigError(f"invalid tenant {tenant!r}: use 1-64 letters, digits, '_', '.', '-'")
    return tenant


def parse_scopes(text: str) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise ConfigError(f"invalid scopes {text!r}: use a comma-separated subset of {', '.join(SCOPES)}")
    return scopes


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: the tenant and scopes of its key (never anything from the body)."""

    tenant: str
    key_id: str
    scopes: tuple[str, ...]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def create_key(store: ServiceStore, tenant: str, scopes: tuple[str, ...], name: str | None = None) -> str:
    """Create a key for ``tenant`` and return it; this is the only time it is ever visible."""
    check_tenant(tenant)
    key_id = secrets.token_hex(4)
    key = f"rk_{key_id}_{secrets.token_urlsafe(32)}"
    store.add_key(hash_key(key), key_id, tenant, scopes, name)
    return key


def authenticate(store: ServiceStore, key: str) -> Principal | None:
    """The principal of a valid, unrevoked ``key``; None otherwise."""
    if not _KEY.match(key):
        return None
    record: KeyRecord | None = store.key_by_hash(hash_key(key))
    if record is None or record.revoked_at is not None:
        return None
    return Principal(tenant=record.tenant, key_id=record.key_id, scopes=record.scopes)

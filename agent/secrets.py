"""Keep API keys out of everything recagent prints or persists.

Promise: text passed through ``redact`` holds none of the secrets registered in this process
(the configured API key, credentials found in a base URL) and nothing shaped like a key
(``sk-...``) or a bearer token (``Bearer ...``); ``safe_url`` is a URL without its user info
and with the values of credential-like query parameters (``api-key=``, ``token=``...) hidden.
Errors (``agent.errors.ModelError``), cassettes, ledgers, results, failure files, the profile
store and log lines all go through here, so a server that echoes the key back in an error or a
reply cannot get it written down.

Base layer: depends on nothing else in ``agent``.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 6
"""Shorter registered "secrets" (``not-needed``-style placeholders aside) would redact ordinary words."""

# Key-shaped text: OpenAI-style keys, and bearer tokens (a digit required, so "Ring Bearer
# Pillow" in a title stays as it is).
_SHAPED = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{6,}|\bBearer\s+(?=\S*\d)[A-Za-z0-9_\-*.~+/=]{8,}")
_CREDENTIAL_PARAM = re.compile(r"key|token|secret|password|passwd|auth|sig|credential", re.IGNORECASE)
_PLACEHOLDERS = frozenset({"not-needed"})

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()


def register(secret: str | None) -> None:
    """Add ``secret`` (an API key, a password) to what ``redact`` hides from now on."""
    global _secrets
    if not secret or len(secret) < MIN_SECRET_LENGTH or secret in _PLACEHOLDERS:
        return
    with _lock:
        _secrets = _secrets | {secret}


def register_url(url: str | None) -> None:
    """Register the credentials a base URL carries (user info, credential-like query values)."""
    if not url:
        return
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    register(parts.password)
    register(parts.username if parts.password is None else None)  # http://KEY@host
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if _CREDENTIAL_PARAM.search(name):
            register(value)


def redact(text: str) -> str:
    """``text`` with every registered secret and key- or token-shaped string replaced."""
    for secret in sorted(_secrets, key=len, reverse=True):  # longest first: no partial leftovers
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _SHAPED.sub(REDACTED, text)


def redact_json(value: Any) -> Any:
    """``value`` (parsed JSON) with ``redact`` applied to every string, keys included."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_json(k): redact_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_json(v) for v in value]
    return value


def safe_url(url: object) -> str:
    """``url`` fit for a message: no ``user:password@``, credential-like query values hidden."""
    text = str(url)
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        query = urlencode(
            [
                (name, REDACTED if _CREDENTIAL_PARAM.search(name) else value)
                for name, value in parse_qsl(parts.query, keep_blank_values=True)
            ],
            safe="[]",
        )
        text = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        pass
    return redact(text)

"""Recorded responses at the HTTP seam: record real exchanges, replay them in tests and demos.

The openai SDK (3.x) sends requests through an ``httpx2`` client; ``ReplayTransport`` and
``RecordingTransport`` plug in there, so the real SDK code path (serialisation, response
parsing, error mapping) runs in replay too. A request is matched by the sha256 of its
canonical body (JSON with sorted keys, volatile fields removed) plus the template version
from the ``X-Recagent-Template`` header: editing a prompt changes the body and so
invalidates its recordings, instead of silently replaying a stale answer.

Nothing secret is written: request headers are not stored at all, only the response's
``retry-after*`` and ``x-ratelimit-*`` headers are kept, and every string is redacted
(``agent.secrets``). A cassette is written atomically and only to a regular file or a new
path (``agent.files``); an unreadable, truncated or invalid cassette is a ``ConfigError``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import httpx2
import openai

from agent.errors import ConfigError
from agent.files import atomic_writer, check_target
from agent.prompting.templates import TEMPLATE_HEADER
from agent.secrets import redact_json

CASSETTE_VERSION = 1
# Fields that change between otherwise identical requests and must not affect matching.
VOLATILE_BODY_FIELDS = ("user", "safety_identifier", "metadata", "stream_options")


# The script that re-records each bundled cassette (by file name); others were made with --record.
RECORD_SCRIPTS = {
    "demo.json": "python scripts/record_fixtures.py",
    "chat.json": "python scripts/record_chat_fixtures.py",
}


class CassetteMiss(openai.OpenAIError):
    """Raised inside the transport; the SDK re-raises OpenAIError subclasses unchanged.

    The message says what kind of difference made the miss (``why``, from
    ``Cassette.explain_miss``) and how this cassette is re-recorded.
    """

    def __init__(self, key: str, template: str, path: str, why: str = "") -> None:
        self.key = key
        self.template = template
        self.path = path
        self.why = why
        script = RECORD_SCRIPTS.get(Path(path).name)
        how = (
            f"re-record with `{script}` (see fixtures/README.md)"
            if script
            else "record it again with --backend openai --record " + path
        )
        super().__init__(
            f"no recorded response for template {template} (key {key[:12]}) in {path}"
            f"{'; ' + why if why else ''}. To replay this request, {how}"
        )


def _settings(body: dict[str, Any]) -> dict[str, Any]:
    """A request's settings apart from its inputs: the messages and the schema (whose enums
    list the candidates and history items) are inputs, the response format's type is not."""
    kept = {k: v for k, v in body.items() if k not in ("messages", "response_format")}
    kept["response_format"] = (body.get("response_format") or {}).get("type")
    return kept


def canonical_body(body: bytes | str) -> dict[str, Any]:
    data = json.loads(body)
    for name in VOLATILE_BODY_FIELDS:
        data.pop(name, None)
    return data


def request_key(method: str, path: str, body: dict[str, Any], template: str) -> str:
    canonical = json.dumps(
        {"method": method, "path": path, "body": body, "template": template},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class Cassette:
    """A JSON file of request/response pairs, keyed by request hash. Thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.interactions: dict[str, dict[str, Any]] = {}
        for entry in _load(self.path):
            self.interactions[entry["key"]] = entry

    def check_writable(self) -> None:
        """Raise ``ConfigError`` now if ``save`` could never write this path (a directory, a device)."""
        check_target(self.path, ConfigError, "cassette")

    def get(self, key: str) -> dict[str, Any] | None:
        return self.interactions.get(key)

    def explain_miss(self, template: str, body: dict[str, Any]) -> str:
        """Why a request with ``template`` and canonical ``body`` has no recording, in words.

        Compared with the recordings of the same template: none at all (this command or user
        was never recorded), another template version (the prompt file was edited), another
        model or settings, or the same prompt with other inputs (history, candidates, query,
        k, or a profile from the store).
        """
        name = template.split("@", 1)[0]
        same_name = [e for e in self.interactions.values() if e["template"].split("@", 1)[0] == name]
        if not same_name:
            return f"nothing was recorded with the {name} template (this command was never recorded)"
        versions = sorted({e["template"] for e in same_name})
        if template not in versions:
            return f"the {name} template changed since recording (recorded {', '.join(versions)})"
        recorded = [e["request"]["body"] for e in same_name if e["template"] == template]
        models = sorted({str(b.get("model")) for b in recorded})
        if body.get("model") not in models:
            return f"the model differs (recorded: {', '.join(models)}; now: {body.get('model')})"
        if all(_settings(b) != _settings(body) for b in recorded):
            return "the request settings differ (max tokens, temperature, seed or response format)"
        return (
            "the prompt's inputs differ from every recording: another user or options, a changed "
            "history or catalog, or a stored profile (--db) used in the prompt"
        )

    def put(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.interactions[entry["key"]] = entry

    def save(self) -> None:
        """Write every interaction, merged with what the file holds now (ours win on a key).

        Merging means two ``Cassette`` objects on one path (e.g. two clients recording in one
        process) no longer drop each other's entries. To start a recording afresh, delete the
        file first (the record scripts do). Writers in different processes are not coordinated.
        """
        with self._lock:
            for entry in _load(self.path):
                self.interactions.setdefault(entry["key"], entry)
            ordered = sorted(self.interactions.values(), key=lambda e: (e["template"], e["key"]))
            # A server may echo the key in a body: never write it (agent.secrets).
            payload = redact_json({"version": CASSETTE_VERSION, "interactions": ordered})
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the directory of cassette {self.path}: {exc}") from None
            with atomic_writer(self.path, ConfigError, "cassette") as handle:
                handle.write(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")


def _load(path: Path) -> list[dict[str, Any]]:
    """The interactions stored in ``path`` ([] if it does not exist); ``ConfigError`` if unusable."""
    if not path.exists():
        return []
    check_target(path, ConfigError, "cassette")  # never read a device or a FIFO: it may never end
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data.get("interactions", []) if isinstance(data, dict) else None
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("key"), str) for e in entries
        ):
            raise ValueError("no list of interactions with keys")
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"cassette {path} is not valid JSON (truncated?): {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"cannot read cassette {path}: {exc}") from None
    return entries


def _describe(request: httpx2.Request) -> tuple[str, dict[str, Any], str, str]:
    body = canonical_body(request.content or b"{}")
    template = request.headers.get(TEMPLATE_HEADER, "unknown")
    path = request.url.path
    return path, body, template, request_key(request.method, path, body, template)


class ReplayTransport(httpx2.BaseTransport):
    """Answers every request from a cassette; a request it has not seen raises ``CassetteMiss``."""

    def __init__(self, cassette: Cassette) -> None:
        self.cassette = cassette
        self.requests: list[dict[str, Any]] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        path, body, template, key = _describe(request)
        self.requests.append({"path": path, "body": body, "template": template})
        entry = self.cassette.get(key)
        if entry is None:
            raise CassetteMiss(
                key, template, str(self.cassette.path), self.cassette.explain_miss(template, body)
            )
        response = entry["response"]
        return httpx2.Response(
            status_code=response["status"],
            headers={"content-type": "application/json", **response.get("headers", {})},
            content=json.dumps(response["body"]).encode(),
            request=request,
        )


class RecordingTransport(httpx2.BaseTransport):
    """Passes requests to a real transport and stores each exchange in the cassette."""

    def __init__(self, cassette: Cassette, inner: httpx2.BaseTransport | None = None) -> None:
        cassette.check_writable()  # refuse a directory or a device before any request is paid
        self.cassette = cassette
        self.inner = inner or httpx2.HTTPTransport()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        path, body, template, key = _describe(request)
        response = self.inner.handle_request(request)
        content = response.read()
        try:
            parsed: Any = json.loads(content)
        except ValueError:
            parsed = content.decode("utf-8", "replace")
        kept_headers = {
            name: value
            for name, value in response.headers.items()
            if name.lower() in ("retry-after", "retry-after-ms") or name.lower().startswith("x-ratelimit-")
        }
        self.cassette.put(
            {
                "key": key,
                "template": template,
                "request": {"method": request.method, "path": path, "body": body},
                "response": {"status": response.status_code, "headers": kept_headers, "body": parsed},
            }
        )
        self.cassette.save()
        return httpx2.Response(
            status_code=response.status_code,
            headers=response.headers,
            content=content,
            request=request,
        )

    def close(self) -> None:
        self.inner.close()

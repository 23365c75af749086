"""In-memory Files + Batch API for :mod:`agent.testing.loopback` (standard library only).

Implements ``POST /v1/files`` (multipart), ``GET /v1/files[/{id}[/content]]``,
``DELETE /v1/files/{id}``, ``POST /v1/batches``, ``GET /v1/batches[/{id}]`` and
``POST /v1/batches/{id}/cancel`` in the shapes of openai-python's ``FileObject`` and
``Batch``. A batch is created ``validating``; each ``retrieve`` advances it one step
(``in_progress``, then ``completed``, ``expired`` or ``failed``) and the JSONL lines are
answered through the server's responder on the completing poll (see ``BatchConfig``).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

__all__ = ["BatchConfig", "BatchStore", "StoredFile", "parse_multipart"]

Completer = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]
"""Answers one batch line body: returns (HTTP status, JSON body)."""
Result = tuple[int, "dict[str, Any] | bytes"]
"""(status, JSON object or raw bytes) handed back to the HTTP layer."""

FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
BATCH_ENDPOINTS = ("/v1/chat/completions",)
TERMINAL = ("completed", "failed", "expired", "cancelled")
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


@dataclass
class BatchConfig:
    """How batches progress and which lines misbehave.

    ``polls_to_complete``: the number of ``GET /v1/batches/{id}`` calls after which the
    batch is processed and final (0: processed at creation; default 2: validating ->
    in_progress -> completed). Each id in ``fail_custom_ids`` / ``expire_custom_ids`` fails
    (HTTP ``fail_status`` in the error file) / expires (``batch_expired`` in the error file,
    batch status ``expired``) the FIRST time it is seen only, so a re-queued request succeeds.
    """

    polls_to_complete: int = 2
    fail_custom_ids: Collection[str] = ()
    expire_custom_ids: Collection[str] = ()
    fail_status: int = 500
    rename_id: Callable[[str], str] | None = None
    """Maps every file and batch id the server makes to the one it serves: e.g.
    ``lambda i: "../../" + i`` plays a hostile (or broken) Batch API whose ids would climb out of
    a client's directory if used as paths."""


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class _Batch:
    obj: dict[str, Any]
    polls: int = 0


def parse_multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Split a multipart/form-data body into {field name: (filename or None, bytes)}."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise ValueError("multipart body without a boundary")
    out: dict[str, tuple[str | None, bytes]] = {}
    for part in raw.split(b"--" + m.group(1).encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        text = head.decode("utf-8", "replace")
        name = re.search(r'\bname="([^"]*)"', text)
        filename = re.search(r'\bfilename="([^"]*)"', text)
        if name:
            out[name.group(1)] = (filename.group(1) if filename else None, data.removesuffix(b"\r\n"))
    return out


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> Result:
    err = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return status, {"error": err}


def _listing(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": False,
    }


class BatchStore:
    """Files and batches kept in memory; thread-safe. ``handle`` routes one request."""

    def __init__(self, complete: Completer, config: BatchConfig | None = None) -> None:
        self.config = config or BatchConfig()
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, _Batch] = {}
        self._complete = complete
        self._lock = threading.RLock()
        self._failed_once: set[str] = set()
        self._expired_once: set[str] = set()

    def _id(self, prefix: str) -> str:
        fresh = _new_id(prefix)
        return self.config.rename_id(fresh) if self.config.rename_id else fresh

    def handle(self, method: str, path: str, content_type: str, raw: bytes) -> Result | None:
        """Answer a /v1/files* or /v1/batches* request; None when the path is not ours."""
        # Ids arrive percent-encoded as one path segment each (a hostile id may hold "/").
        parts = [unquote(part) for part in path.strip("/").split("/")[1:]]  # drop "v1"
        if not parts or parts[0] not in ("files", "batches"):
            return None
        with self._lock:
            if parts[0] == "files":
                return self._files(method, parts[1:], content_type, raw)
            return self._batches(method, parts[1:], raw)

    # -- files ---------------------------------------------------------------------------
    def add_file(self, data: bytes, *, filename: str = "upload.jsonl", purpose: str = "batch") -> StoredFile:
        with self._lock:
            f = StoredFile(self._id("file"), filename, purpose, data)
            self.files[f.id] = f
            return f

    def _files(self, method: str, rest: list[str], content_type: str, raw: bytes) -> Result:
        if method == "POST" and not rest:
            try:
                form = parse_multipart(content_type, raw)
            except ValueError as exc:
                return _error(400, str(exc))
            purpose = form.get("purpose", (None, b""))[1].decode()
            if purpose not in FILE_PURPOSES:
                return _error(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
            if "file" not in form:
                return _error(400, "Missing required parameter: 'file'.", param="file")
            filename, data = form["file"]
            return 200, self.add_file(data, filename=filename or "upload", purpose=purpose).to_json()
        if method == "GET" and not rest:
            return 200, _listing([f.to_json() for f in self.files.values()])
        f = self.files.get(rest[0]) if rest else None
        if f is None:
            return _error(404, f"No such File object: {rest[0] if rest else ''}", param="id")
        if method == "GET" and len(rest) == 1:
            return 200, f.to_json()
        if method == "GET" and rest[1:] == ["content"]:
            return 200, f.data
        if method == "DELETE" and len(rest) == 1:
            del self.files[f.id]
            return 200, {"id": f.id, "object": "file", "deleted": True}
        return _error(404, f"Unknown request URL: {method} /v1/files/{'/'.join(rest)}")

    # -- batches -------------------------------------------------------------------------
    def _batches(self, method: str, rest: list[str], raw: bytes) -> Result:
        if method == "POST" and not rest:
            return self._create(raw)
        if method == "GET" and not rest:
            return 200, _listing([b.obj for b in reversed(self.batches.values())])
        b = self.batches.get(rest[0]) if rest else None
        if b is None:
            return _error(404, f"No batch found with id '{rest[0] if rest else ''}'.", param="batch_id")
        if method == "GET" and len(rest) == 1:
            self._advance(b)
            return 200, b.obj
        if method == "POST" and rest[1:] == ["cancel"]:
            if b.obj["status"] in TERMINAL:
                return _error(409, f"Cannot cancel a batch with status '{b.obj['status']}'.")
            b.obj.update(status="cancelling", cancelling_at=int(time.time()))
            return 200, b.obj
        return _error(404, f"Unknown request URL: {method} /v1/batches/{'/'.join(rest)}")

    def _create(self, raw: bytes) -> Result:
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            return _error(400, "Invalid JSON body.")
        f = self.files.get(str(req.get("input_file_id")))
        if f is None or f.purpose != "batch":
            return _error(
                400, "Invalid 'input_file_id': no file with purpose 'batch'.", param="input_file_id"
            )
        if req.get("endpoint") not in BATCH_ENDPOINTS:
            return _error(400, f"Unsupported endpoint {req.get('endpoint')!r}.", param="endpoint")
        if req.get("completion_window") != "24h":
            return _error(400, "completion_window must be '24h'.", param="completion_window")
        now = int(time.time())
        obj: dict[str, Any] = {
            "id": self._id("batch"),
            "object": "batch",
            "endpoint": req["endpoint"],
            "errors": None,
            "input_file_id": f.id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": req.get("metadata"),
            "model": None,
            "usage": None,
        }
        b = self.batches[obj["id"]] = _Batch(obj)
        if self.config.polls_to_complete <= 0:
            self._finish(b)
        return 200, obj

    def _advance(self, b: _Batch) -> None:
        status = b.obj["status"]
        if status in TERMINAL:
            return
        if status == "cancelling":
            b.obj.update(status="cancelled", cancelled_at=int(time.time()))
            return
        b.polls += 1
        if b.polls >= self.config.polls_to_complete:
            self._finish(b)
        elif status == "validating":
            b.obj.update(status="in_progress", in_progress_at=int(time.time()))

    def _validate(self, lines: list[str], endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        requests: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                req = json.loads(line)
            except ValueError:
                req = None
            if not isinstance(req, dict):
                errors.append(
                    {"code": "invalid_json_line", "line": n, "message": "Line is not a JSON object."}
                )
                continue
            cid = req.get("custom_id")
            problem = (
                "Missing 'custom_id'."
                if not isinstance(cid, str)
                else f"Duplicate custom_id {cid!r}."
                if cid in seen
                else f"'url' must be {endpoint!r}."
                if req.get("url") != endpoint
                else "'method' must be 'POST'."
                if req.get("method") != "POST"
                else "'body' must be an object."
                if not isinstance(req.get("body"), dict)
                else None
            )
            if problem:
                errors.append({"code": "invalid_request", "line": n, "message": problem, "param": None})
                continue
            seen.add(str(cid))
            requests.append(req)
        return requests, errors

    def _finish(self, b: _Batch) -> None:
        obj, now = b.obj, int(time.time())
        obj["in_progress_at"] = obj["in_progress_at"] or now
        lines = self.files[obj["input_file_id"]].data.decode("utf-8", "replace").splitlines()
        requests, errors = self._validate(lines, obj["endpoint"])
        if errors or not requests:
            errors = errors or [{"code": "empty_file", "line": None, "message": "The input file is empty."}]
            obj.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
            return
        out: list[dict[str, Any]] = []
        err: list[dict[str, Any]] = []
        usage = {"input_tokens": 0, "cached_tokens": 0, "output_tokens": 0}
        for req in requests:
            cid: str = req["custom_id"]
            line: dict[str, Any] = {
                "id": _new_id("batch_req"),
                "custom_id": cid,
                "response": None,
                "error": None,
            }
            if cid in self.config.expire_custom_ids and cid not in self._expired_once:
                self._expired_once.add(cid)
                line["error"] = {"code": "batch_expired", "message": EXPIRED_MESSAGE}
                err.append(line)
                continue
            if cid in self.config.fail_custom_ids and cid not in self._failed_once:
                self._failed_once.add(cid)
                status = self.config.fail_status
                body: dict[str, Any] = {
                    "error": {"message": "Injected batch line failure.", "type": "server_error"}
                }
            else:
                status, body = self._complete(req["body"])
            line["response"] = {"status_code": status, "request_id": _new_id("req"), "body": body}
            (out if status == 200 else err).append(line)
            u = body.get("usage") if status == 200 else None
            if isinstance(u, dict):
                usage["input_tokens"] += int(u.get("prompt_tokens") or 0)
                usage["output_tokens"] += int(u.get("completion_tokens") or 0)
                usage["cached_tokens"] += int(
                    (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                )
        expired = any(e["error"] for e in err)
        obj.update(
            status="expired" if expired else "completed",
            finalizing_at=now,
            completed_at=None if expired else now,
            expired_at=now if expired else None,
            model=requests[0]["body"].get("model"),
            request_counts={"total": len(requests), "completed": len(out), "failed": len(err)},
            usage={
                "input_tokens": usage["input_tokens"],
                "input_tokens_details": {"cached_tokens": usage["cached_tokens"]},
                "output_tokens": usage["output_tokens"],
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage["input_tokens"] + usage["output_tokens"],
            },
        )
        for key, rows, suffix in (("output_file_id", out, "output"), ("error_file_id", err, "errors")):
            if rows:
                data = "".join(json.dumps(r) + "\n" for r in rows).encode()
                obj[key] = self.add_file(
                    data, filename=f"{obj['id']}_{suffix}.jsonl", purpose="batch_output"
                ).id

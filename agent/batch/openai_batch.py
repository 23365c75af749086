"""The OpenAI Batch API flow: prepare, submit, status, collect (half price, separate limits).

Same requests and same interpretation as the synchronous runner: ``prepare`` builds each
line's body with ``agent.batch.runner.Planner`` (so a key means the same request on both paths and
finished keys are never prepared again), and ``collect`` turns each reply into a result with
``agent.llm.client.read_reply`` and ``agent.recommender.interpret_reply``, writing the same
``results.jsonl``/``failures.jsonl`` from the same ledger. Key states: ``pending`` (in a
prepared file) → ``submitted`` → ``done`` or ``failed``.

* ``prepare`` rewrites every unsubmitted request file: one model per file, split at
  ``MAX_REQUESTS`` lines or ``MAX_BYTES`` bytes (the API's limits: 50,000 requests, 200 MB).
  Each key's reply context goes into the ledger, so ``collect`` needs no input data.
* ``submit`` uploads each unsubmitted file and creates its batch. The file's sha256 goes into
  the batch metadata, and an existing batch with that digest is adopted instead of creating a
  second one, so a ``submit`` interrupted after the batch was created never pays twice.
* ``collect`` downloads the output and error files of finished batches (kept under
  ``batch_output/``), joins lines by ``custom_id`` (the output order is not guaranteed), and
  re-queues expired and failed requests that have attempts left into ``retry-<batch>.jsonl``,
  an unsubmitted file for the next ``submit``. Collecting twice changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import openai
from openai.types.chat import ChatCompletion
from pydantic import ValidationError

from agent import errors
from agent.batch.ledger import Ledger
from agent.batch.runner import BatchSettings, Planner, check_run_identity, error_record
from agent.errors import Usage
from agent.llm.client import LLMConfig, StructuredReply, account, read_reply, short_validation_error
from agent.prompting.tokens import PriceTable
from agent.recommender import PreparedRequest, RecommenderAgent, ReplyContext, interpret_reply
from agent.secrets import redact

log = logging.getLogger(__name__)

ENDPOINT: Final = "/v1/chat/completions"
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1000 * 1000
INPUT_DIR = "batch_input"
OUTPUT_DIR = "batch_output"
TERMINAL = ("completed", "failed", "expired", "cancelled")


class _Splitter:
    """Writes request lines into numbered files, starting a new one at either limit."""

    def __init__(self, directory: Path, stem: str, max_requests: int, max_bytes: int) -> None:
        self.directory, self.stem = directory, stem
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.files: list[tuple[Path, int]] = []
        self._handle: Any = None
        self._count = self._bytes = 0

    def add(self, line: bytes) -> None:
        if (
            self._handle is None
            or self._count >= self.max_requests
            or self._bytes + len(line) > self.max_bytes
        ):
            self._roll()
        self._handle.write(line)
        self._count += 1
        self._bytes += len(line)

    def _roll(self) -> None:
        self.close()
        path = self.directory / f"{self.stem}-{len(self.files) + 1:04d}.jsonl"
        self._handle = path.open("wb")
        self.files.append((path, 0))
        self._count = self._bytes = 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self.files[-1] = (self.files[-1][0], self._count)
            self._handle = None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _file_name(*parts: str, suffix: str) -> str:
    """A file name built from server-chosen ids that can hold no path: only ``[A-Za-z0-9._-]``,
    no leading dot, and a digest of the raw ids when any character had to be replaced (two
    hostile ids must not share a file)."""
    raw = "-".join(parts)
    name = _safe(raw).lstrip(".") or "_"
    if name != raw:
        name += "-" + hashlib.sha256(raw.encode()).hexdigest()[:10]
    return name + suffix


def _confined(path: Path, root: Path) -> Path:
    """``path`` if it resolves inside ``root`` (the run's ``--out``); else a typed error.

    Names derived from server data go through ``_file_name`` first; this is the second wall.
    """
    if not path.resolve().is_relative_to(root.resolve()):
        raise errors.TransportError(f"refusing to write {path}: it is outside the output directory {root}")
    return path


def _server_id(value: object, what: str) -> str:
    """An id the Batch API returned, checked before it is used in a URL or a file name."""
    text = str(value) if value is not None else ""
    # The SDK refuses "." and ".." as path segments with a bare ValueError; ids are short tokens.
    if text in ("", ".", "..") or len(text) > 256 or any(ord(c) < 32 for c in text):
        raise errors.TransportError(f"the Batch API returned an unusable {what}: {text[:80]!r}")
    return text


def _line(custom_id: str, body: dict[str, Any]) -> bytes:
    request = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
    return (json.dumps(request, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def prepare(
    agent: RecommenderAgent,
    config: LLMConfig,
    settings: BatchSettings,
    *,
    max_requests: int = MAX_REQUESTS,
    max_bytes: int = MAX_BYTES,
) -> dict[str, Any]:
    """Write the request files of every key not done, not in flight and with attempts left."""
    planner = Planner(agent, config, settings)
    directory = Path(settings.out_dir) / INPUT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    counts = {"requests": 0, "already_done": 0, "in_flight": 0, "unusable": 0, "exhausted": 0}
    with Ledger(settings.out_dir) as ledger:
        check_run_identity(ledger, settings, config.model)
        for stale in ledger.inputs(submitted=False):  # regenerated below, never sent twice
            Path(stale["path"]).unlink(missing_ok=True)
            ledger.drop_input(stale["path"])
        generation = ledger.new_generation()
        splitter = _Splitter(
            directory, f"requests-g{generation}-{_safe(config.model)}", max_requests, max_bytes
        )
        try:
            for item in planner.plan(planner.users()):
                context = _stored_context(item.prepared, config) if item.prepared else None
                entry = ledger.plan(item.custom_id, item.user_id, item.task, generation, context)
                if entry.status == "done":
                    counts["already_done"] += 1
                elif entry.status == "submitted":
                    counts["in_flight"] += 1
                elif entry.status == "failed" and entry.attempts >= settings.max_attempts:
                    counts["exhausted"] += 1
                elif item.error is not None or item.body is None:
                    ledger.record_failed(item.custom_id, error_record(item.error or ValueError()), Usage())
                    counts["unusable"] += 1
                else:
                    ledger.set_status(item.custom_id, "pending")
                    splitter.add(_line(item.custom_id, item.body))
                    counts["requests"] += 1
        finally:
            splitter.close()
            for path, n in splitter.files:
                ledger.add_input(str(path), config.model, n)
            ledger.write_outputs()
    return {**counts, "files": [str(path) for path, _ in splitter.files], "model": config.model}


def _stored_context(prepared: PreparedRequest, config: LLMConfig) -> str:
    """What ``collect`` needs to interpret the reply, kept in the ledger (no prompt text)."""
    return json.dumps(
        {
            "context": prepared.context.model_dump(mode="json"),
            "template": prepared.prompt.version,
            "max_completion_tokens": config.max_completion_tokens,
        }
    )


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _custom_ids(path: Path) -> Iterator[str]:
    with path.open("rb") as handle:
        for raw in handle:
            if raw.strip():
                yield str(json.loads(raw)["custom_id"])


def submit(client: openai.OpenAI, out_dir: Path) -> list[dict[str, Any]]:
    """Upload and create a batch for every unsubmitted request file; returns what was created."""
    created: list[dict[str, Any]] = []
    with Ledger(out_dir) as ledger:
        for entry in ledger.inputs(submitted=False):
            path = Path(entry["path"])
            if entry["requests"] == 0 or not path.is_file():
                ledger.drop_input(entry["path"])
                continue
            digest = _digest(path)
            batch = _existing_batch(client, digest)
            if batch is None:
                upload = client.files.create(file=path, purpose="batch")
                batch = client.batches.create(
                    input_file_id=upload.id,
                    endpoint=ENDPOINT,
                    completion_window="24h",
                    metadata={"recagent_input_sha256": digest, "recagent_file": path.name},
                )
            batch_id = _server_id(batch.id, "batch id")
            ledger.add_batch(batch_id, str(path), batch.input_file_id, entry["model"], batch.status)
            ledger.mark_submitted(str(path), batch_id, _custom_ids(path))
            created.append({"batch_id": batch_id, "file": str(path), "requests": entry["requests"]})
    return created


def _existing_batch(client: openai.OpenAI, digest: str) -> Any:
    for batch in client.batches.list(limit=100):
        if (batch.metadata or {}).get("recagent_input_sha256") == digest and batch.status != "cancelled":
            return batch
    return None


def status(client: openai.OpenAI, out_dir: Path) -> list[dict[str, Any]]:
    """The provider's current state of every batch of this directory."""
    rows = []
    with Ledger(out_dir) as ledger:
        for known in ledger.batches():
            batch = client.batches.retrieve(_server_id(known["batch_id"], "batch id"))
            ledger.set_batch(known["batch_id"], status=batch.status, collected=bool(known["collected"]))
            counts = batch.request_counts.model_dump() if batch.request_counts else {}
            rows.append(
                {
                    "batch_id": known["batch_id"],
                    "status": batch.status,
                    "collected": bool(known["collected"]),
                    **counts,
                }
            )
    return rows


def collect(
    client: openai.OpenAI, out_dir: Path, *, max_attempts: int = 3, prices: PriceTable | None = None
) -> dict[str, Any]:
    """Collect every finished, uncollected batch; see the module docstring."""
    prices = prices or PriceTable.from_env()
    totals = {"done": 0, "failed": 0, "requeued": 0, "batches_collected": 0, "batches_waiting": 0}
    usage = Usage()
    with Ledger(out_dir) as ledger:
        for known in ledger.batches():
            if known["collected"]:
                continue
            batch_id = _server_id(known["batch_id"], "batch id")
            batch = client.batches.retrieve(batch_id)
            ledger.set_batch(batch_id, status=batch.status)
            if batch.status not in TERMINAL:
                totals["batches_waiting"] += 1
                continue
            input_path = Path(known["input_path"])
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    local = _download(client, _server_id(file_id, "file id"), out_dir, batch_id)
                    for line in _read_jsonl(local):
                        outcome = _apply(ledger, line, known["model"], prices, usage)
                        if outcome:
                            totals[outcome] += 1
            whole = _batch_error(batch)
            for cid in _custom_ids(input_path):  # lines the provider never answered
                entry = ledger.get(cid)
                if entry is not None and entry.status == "submitted":
                    if whole is not None:
                        ledger.record_failed(cid, error_record(whole), Usage())
                        totals["failed"] += 1
                    else:  # cancelled before it ran: not the request's fault
                        ledger.set_status(cid, "pending")
            totals["requeued"] += _requeue(
                ledger, input_path, batch_id, known["model"], max_attempts, Path(out_dir)
            )
            ledger.set_batch(batch_id, status=batch.status, collected=True)
            totals["batches_collected"] += 1
        results, failures = ledger.write_outputs()
    return {
        **totals,
        "results": results,
        "failures": failures,
        **{f"this_collect_{k}": v for k, v in usage.as_dict().items()},
    }


def _download(client: openai.OpenAI, file_id: str, out_dir: Path, batch_id: str) -> Path:
    """The file ``file_id``, kept as ``batch_output/<batch>-<file>.jsonl`` under ``out_dir`` (and
    nowhere else, whatever the ids hold)."""
    target = _confined(
        Path(out_dir) / OUTPUT_DIR / _file_name(batch_id, file_id, suffix=".jsonl"), Path(out_dir)
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_file():
        tmp = target.with_name(target.name + ".tmp")
        try:
            with client.files.with_streaming_response.content(file_id) as response, tmp.open("wb") as sink:
                for raw in response.iter_lines():  # a server may echo the key in a line: never kept
                    sink.write((redact(raw) + "\n").encode())
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as handle:
        for raw in handle:
            if raw.strip():
                yield json.loads(raw)


def _batch_error(batch: Any) -> errors.ModelError | None:
    if batch.status == "failed":
        data = batch.errors.data if batch.errors and batch.errors.data else []
        detail = "; ".join(f"{e.code}: {e.message}" for e in data[:3]) or "no details"
        return errors.BadRequestError(f"the provider rejected batch {batch.id} ({detail})")
    if batch.status == "expired":
        return errors.TransportError(f"batch {batch.id} expired before this request ran")
    return None


def _apply(ledger: Ledger, line: dict[str, Any], model: str, prices: PriceTable, usage: Usage) -> str | None:
    """Record one output/error line; returns "done", "failed" or None (unknown or already recorded)."""
    cid = str(line.get("custom_id"))
    entry, known = ledger.get(cid), ledger.context(cid)
    if entry is None or known is None or entry.status != "submitted" or known[2] is None:
        return None  # not ours, or recorded by an earlier (interrupted) collect
    stored = json.loads(known[2])
    context = ReplyContext.model_validate(stored["context"])
    call = Usage(requests=1)
    response = line.get("response") or {}
    try:
        if line.get("error"):
            err = line["error"]
            raise errors.TransportError(f"{err.get('code')}: {err.get('message')}", attempts=1)
        if response.get("status_code") != 200:
            raise _status_error(response)
        completion = ChatCompletion.model_validate(response["body"])
        account(completion, call, prices, model, batch=True)
        common: dict[str, Any] = {
            "attempts": 1,
            "last_reply": completion.choices[0].message.content,
            "usage": call,
            "template": stored["template"],
        }
        output = context.output_model()
        try:
            value = read_reply(
                completion, output, max_completion_tokens=stored["max_completion_tokens"], common=common
            )
        except ValidationError as exc:
            raise errors.InvalidReplyError(
                f"reply invalid (no re-ask in the Batch API): {short_validation_error(exc)}", **common
            ) from None
    except (errors.ModelError, ValidationError, KeyError, TypeError) as exc:
        error = (
            exc if isinstance(exc, errors.ModelError) else errors.TransportError(f"unreadable line: {exc}")
        )
        ledger.record_failed(cid, error_record(error), call)
        usage.add(call)
        return "failed"
    reply = StructuredReply(
        value=value,
        raw=completion.choices[0].message.content or "",
        usage=call,
        attempts=1,
        mode="json_schema",
        model=completion.model or model,
        template_version=stored["template"],
        request_ids=[str(response.get("request_id") or completion.id)],
    )
    ledger.record_done(cid, interpret_reply(context, reply).model_dump_json(), call)
    usage.add(call)
    return "done"


def _status_error(response: dict[str, Any]) -> errors.ModelError:
    code = int(response.get("status_code") or 0)
    body = response.get("body") or {}
    detail = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
    message = f"HTTP {code}: {detail or 'no detail'}"
    if code == 429:
        return errors.RateLimitError(message, attempts=1)
    if code >= 500 or code in (408, 409):
        return errors.TransportError(message, attempts=1)
    return errors.BadRequestError(message, attempts=1)


def _requeue(
    ledger: Ledger, input_path: Path, batch_id: str, model: str, max_attempts: int, out_dir: Path
) -> int:
    """Copy the lines of retryable keys into ``retry-<batch>.jsonl`` (unsubmitted)."""
    target = _confined(input_path.parent / _file_name("retry", batch_id, suffix=".jsonl"), out_dir)
    if any(row["path"] == str(target) for row in ledger.inputs(submitted=True)):
        return 0  # already re-queued and sent by an earlier collect
    count = 0
    tmp = target.with_name(target.name + ".tmp")
    with input_path.open("rb") as source, tmp.open("wb") as sink:
        for raw in source:
            if not raw.strip():
                continue
            cid = str(json.loads(raw)["custom_id"])
            entry = ledger.get(cid)
            retry = entry is not None and (
                entry.status == "pending" or (entry.status == "failed" and entry.attempts < max_attempts)
            )
            if retry:
                sink.write(raw if raw.endswith(b"\n") else raw + b"\n")
                ledger.set_status(cid, "pending")
                count += 1
    ledger.commit()
    if count:
        tmp.replace(target)
        ledger.add_input(str(target), model, count)
    else:
        tmp.unlink()
    return count

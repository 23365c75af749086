"""The loopback OpenAI-compatible server, driven by the real ``openai`` SDK."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from agent.testing.loopback import (
    BatchConfig,
    Fault,
    FaultPlan,
    Limits,
    LoopbackServer,
    Reply,
    ScriptedResponder,
)

MSGS: list[Any] = [{"role": "user", "content": "recommend something"}]


@contextmanager
def serve(
    timeout: float = 5, max_retries: int = 0, **kw: Any
) -> Iterator[tuple[LoopbackServer, openai.OpenAI]]:
    with (
        LoopbackServer(**kw) as srv,
        openai.OpenAI(
            base_url=srv.base_url, api_key="test-key", max_retries=max_retries, timeout=timeout
        ) as client,
    ):
        yield srv, client


def _chain(exc: BaseException | None) -> list[BaseException]:
    out = []
    while exc is not None:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


# -- chat completions ----------------------------------------------------------------------


def test_completion_parses_with_usage_and_records_request() -> None:
    responder = ScriptedResponder(
        [Reply('{"items": [1]}', prompt_tokens=120, completion_tokens=7, cached_tokens=64)]
    )
    with serve(responder=responder) as (srv, client):
        assert srv.base_url.startswith("http://127.0.0.1:") and srv.base_url.endswith("/v1")
        resp = client.chat.completions.create(model="gpt-test", messages=MSGS, temperature=0)
    assert isinstance(resp, ChatCompletion)
    assert resp.model == "gpt-test" and resp.object == "chat.completion"
    choice = resp.choices[0]
    assert choice.message.content == '{"items": [1]}' and choice.message.role == "assistant"
    assert choice.finish_reason == "stop" and choice.message.refusal is None
    assert resp.usage is not None and resp.usage.prompt_tokens_details is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (120, 7, 127)
    assert resp.usage.prompt_tokens_details.cached_tokens == 64
    assert responder.calls == [{"model": "gpt-test", "messages": MSGS, "temperature": 0}]
    (rec,) = srv.requests
    assert (rec.method, rec.path, rec.body["model"]) == ("POST", "/v1/chat/completions", "gpt-test")
    assert srv.stats.chat_completions == 1 and srv.stats.tokens_served == 127


def test_default_responder_str_dict_and_tool_call_replies() -> None:
    verbatim = {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}
    tool = Reply(None, finish_reason="tool_calls", tool_calls=[{"name": "lookup", "arguments": {"id": 7}}])
    with serve(responder=ScriptedResponder(["plain text", verbatim, tool])) as (_, client):
        assert (
            client.chat.completions.create(model="m", messages=MSGS).choices[0].message.content
            == "plain text"
        )
        raw = client.chat.completions.with_raw_response.create(model="m", messages=MSGS)
        assert raw.http_response.json() == verbatim
        msg = client.chat.completions.create(model="m", messages=MSGS).choices[0].message
        assert msg.tool_calls is not None
        call = msg.tool_calls[0]
        assert call.type == "function" and call.function.name == "lookup"
        assert json.loads(call.function.arguments) == {"id": 7}
        # past the script: a 500 that names the problem
        with pytest.raises(openai.InternalServerError, match="ScriptedResponder"):
            client.chat.completions.create(model="m", messages=MSGS)
    with serve() as (_, client):
        assert client.chat.completions.create(model="m", messages=MSGS).choices[0].message.content == "{}"


def test_streaming_yields_text_tool_calls_and_usage() -> None:
    text = "A fairly long answer that spans several stream chunks, with unicode: café."
    replies = [
        Reply(text),
        Reply(None, finish_reason="tool_calls", tool_calls=[{"name": "f", "arguments": "{}"}]),
    ]
    with serve(responder=ScriptedResponder(replies)) as (_, client):
        stream = client.chat.completions.create(
            model="m", messages=MSGS, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        assert all(c.object == "chat.completion.chunk" for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert len(chunks) > 4 and chunks[-1].choices == [] and chunks[-1].usage is not None
        with client.chat.completions.create(model="m", messages=MSGS, stream=True) as stream2:
            deltas = [c.choices[0] for c in stream2]
        calls = [tc for d in deltas for tc in d.delta.tool_calls or []]
        assert [(tc.function.name, tc.function.arguments) for tc in calls if tc.function] == [("f", "{}")]
        assert deltas[-1].finish_reason == "tool_calls"


def test_models_list_and_unknown_url() -> None:
    with serve(models=["a", "b"]) as (_, client):
        assert [m.id for m in client.models.list()] == ["a", "b"]
        assert client.models.retrieve("b").id == "b"
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model="a", input="x")


# -- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "exc_type", "status"),
    [
        (Fault.http(400), openai.BadRequestError, 400),
        (Fault.http(401), openai.AuthenticationError, 401),
        (Fault.http(404), openai.NotFoundError, 404),
        (Fault.http(500), openai.InternalServerError, 500),
        (Fault.http(502), openai.InternalServerError, 502),
        (Fault.http(503, "overloaded"), openai.InternalServerError, 503),
        (Fault.insufficient_quota(), openai.RateLimitError, 429),
    ],
)
def test_http_faults_raise_the_sdk_exception(fault: Fault, exc_type: type[Exception], status: int) -> None:
    with serve(faults=[fault]) as (srv, client):
        with pytest.raises(exc_type) as info:
            client.chat.completions.create(model="m", messages=MSGS)
        assert isinstance(info.value, openai.APIStatusError) and info.value.status_code == status
        assert info.value.response.headers["x-request-id"].startswith("req_")
        # the plan covers the first call only: the next one passes through
        assert client.chat.completions.create(model="m", messages=MSGS).choices[0].message.content == "{}"
        assert srv.stats.faults_injected == 1
    if fault.message:
        assert fault.message in str(info.value)
    if status == 429:
        assert info.value.code == "insufficient_quota" and info.value.type == "insufficient_quota"


def test_rate_limit_fault_exposes_retry_after_headers() -> None:
    with (
        serve(faults=[Fault.rate_limit(retry_after=2, retry_after_ms=1500)]) as (srv, client),
        pytest.raises(openai.RateLimitError) as info,
    ):
        client.chat.completions.create(model="m", messages=MSGS)
    err = info.value
    assert err.response.headers["retry-after"] == "2" and err.response.headers["retry-after-ms"] == "1500"
    assert err.code == "rate_limit_exceeded" and err.type == "requests"
    assert srv.stats.rate_limited == 1 and srv.stats.status_counts[429] == 1


def test_sdk_retries_429_using_retry_after_ms() -> None:
    # With its own retries on, the SDK waits retry-after-ms (10 ms here) and retries.
    faults = [Fault.rate_limit(retry_after=None, retry_after_ms=10)] * 2
    with serve(faults=faults, max_retries=2) as (srv, client):
        resp = client.chat.completions.create(model="m", messages=MSGS)
    assert resp.choices[0].message.content == "{}"
    assert [r.headers["x-stainless-retry-count"] for r in srv.requests] == ["0", "1", "2"]


def test_timeout_fault_is_apitimeouterror() -> None:
    with serve(faults=[Fault.timeout(delay_s=60)], timeout=0.5) as (_, client):
        t0 = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="m", messages=MSGS)
        assert time.monotonic() - t0 < 10
    # a hold shorter than the client timeout ends with a dropped connection instead
    with serve(faults=[Fault.timeout(delay_s=0.05)]) as (_, client):
        with pytest.raises(openai.APIConnectionError) as info:
            client.chat.completions.create(model="m", messages=MSGS)
        assert not isinstance(info.value, openai.APITimeoutError)


def test_reset_fault_is_apiconnectionerror_from_a_tcp_rst() -> None:
    with serve(faults=[Fault.reset()]) as (_, client):
        with pytest.raises(openai.APIConnectionError) as info:
            client.chat.completions.create(model="m", messages=MSGS)
        assert not isinstance(info.value, openai.APITimeoutError)
        assert any(isinstance(e, ConnectionResetError) for e in _chain(info.value))
        # the server keeps serving new connections
        assert client.chat.completions.create(model="m", messages=MSGS).choices[0].message.content == "{}"


def test_malformed_json_raises_jsondecodeerror_not_an_openai_error() -> None:
    with serve(faults=[Fault.malformed_json(), Fault.malformed_json()]) as (_, client):
        with pytest.raises(json.JSONDecodeError) as info:
            client.chat.completions.create(model="m", messages=MSGS)
        assert not isinstance(info.value, openai.OpenAIError)
        with (
            pytest.raises(json.JSONDecodeError),
            client.chat.completions.create(model="m", messages=MSGS, stream=True) as stream,
        ):
            list(stream)


def test_content_filter_and_raw_faults() -> None:
    faults = [
        Fault.content_filter(),
        Fault.raw(200, "plain text, not JSON", {"content-type": "text/plain"}),
        Fault.raw(418, {"error": {"message": "teapot", "type": "weird"}}),
    ]
    with serve(faults=faults) as (_, client):
        resp = client.chat.completions.create(model="m", messages=MSGS)
        assert resp.choices[0].finish_reason == "content_filter" and resp.choices[0].message.content is None
        # a non-JSON content type is handed back as the body text, no exception
        assert client.chat.completions.create(model="m", messages=MSGS) == "plain text, not JSON"
        with pytest.raises(openai.APIStatusError, match="teapot") as info:
            client.chat.completions.create(model="m", messages=MSGS)
        assert info.value.status_code == 418


def test_fault_plan_predicate_callable_and_scripted_faults() -> None:
    def when(i: int, body: dict[str, Any]) -> Fault | None:
        return Fault.http(503) if body["messages"][0]["content"] == "bad" else None

    bad: list[Any] = [{"role": "user", "content": "bad"}]
    with serve(faults=FaultPlan([None, Fault.http(500)], when=when)) as (_, client):
        client.chat.completions.create(model="m", messages=bad)  # index 0: None from the list
        with pytest.raises(openai.InternalServerError, match="500"):
            client.chat.completions.create(model="m", messages=MSGS)
        with pytest.raises(openai.InternalServerError, match="503"):
            client.chat.completions.create(model="m", messages=bad)
        client.chat.completions.create(model="m", messages=MSGS)
    with serve(faults=lambda i, body: Fault.http(401) if i % 2 else None) as (_, client):
        client.chat.completions.create(model="m", messages=MSGS)
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="m", messages=MSGS)
    scripted = ScriptedResponder([Fault.rate_limit(), "ok"])
    with serve(responder=scripted) as (_, client):
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="m", messages=MSGS)
        assert client.chat.completions.create(model="m", messages=MSGS).choices[0].message.content == "ok"


def test_credentials_are_redacted_in_recorded_requests() -> None:
    with (
        LoopbackServer() as srv,
        openai.OpenAI(
            base_url=srv.base_url,
            api_key="test-key",
            max_retries=0,
            default_headers={"api-key": "azure-secret"},
        ) as client,
    ):
        client.chat.completions.create(model="m", messages=MSGS)
        client.models.list()
    assert len(srv.requests) == 2
    for rec in srv.requests:
        assert rec.headers["authorization"] == "<redacted>" and rec.headers["api-key"] == "<redacted>"
        assert "test-key" not in repr(rec) and "azure-secret" not in repr(rec)


def test_reject_json_schema_answers_400_naming_response_format() -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}}
    with serve(reject_json_schema=True) as (_, client):
        with pytest.raises(openai.BadRequestError, match="response_format") as info:
            client.chat.completions.create(model="m", messages=MSGS, response_format=schema)  # type: ignore[arg-type]
        assert info.value.param == "response_format"
        ok = client.chat.completions.create(model="m", messages=MSGS, response_format={"type": "json_object"})
        assert ok.choices[0].message.content == "{}"


# -- rate limits ---------------------------------------------------------------------------


def test_rpm_limit_429_with_retry_after_ms_and_headers() -> None:
    with serve(limits=Limits(rpm=2, tpm=100_000, minute_s=60)) as (srv, client):
        for _ in range(2):
            raw = client.chat.completions.with_raw_response.create(model="m", messages=MSGS)
            for kind in ("requests", "tokens"):
                for field in ("limit", "remaining", "reset"):
                    assert f"x-ratelimit-{field}-{kind}" in raw.headers
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError, match=r"requests per min \(RPM\)") as info:
            client.chat.completions.create(model="m", messages=MSGS)
        headers = info.value.response.headers
        assert 0 < int(headers["retry-after-ms"]) <= 60_000 and "x-ratelimit-reset-requests" in headers
        assert srv.stats.rate_limited == 1 and srv.stats.chat_completions == 3


def test_tpm_limit_counts_prompt_and_max_tokens() -> None:
    with serve(limits=Limits(tpm=100, minute_s=60)) as (_, client):
        client.chat.completions.create(model="m", messages=MSGS, max_completion_tokens=80)
        with pytest.raises(openai.RateLimitError, match=r"TPM") as info:
            client.chat.completions.create(model="m", messages=MSGS, max_tokens=80)
        assert int(info.value.response.headers["retry-after-ms"]) > 0
        # larger than the whole bucket: never fits, so no retry hint
        with pytest.raises(openai.RateLimitError, match="Request too large") as info:
            client.chat.completions.create(model="m", messages=MSGS, max_tokens=1000)
        assert "retry-after-ms" not in info.value.response.headers


def test_bucket_refills_on_a_scaled_minute() -> None:
    now = [1000.0]  # a fake clock: no sleeping, no timing dependence
    with serve(limits=Limits(rpm=2, minute_s=1.0, clock=lambda: now[0])) as (_, client):
        for _ in range(2):
            client.chat.completions.create(model="m", messages=MSGS)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="m", messages=MSGS)
        assert info.value.response.headers["retry-after-ms"] == "500"  # 2 per "minute" of 1 s
        now[0] += 0.25
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="m", messages=MSGS)
        assert info.value.response.headers["retry-after-ms"] == "250"
        now[0] += 0.25
        raw = client.chat.completions.with_raw_response.create(model="m", messages=MSGS)
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        assert raw.headers["x-ratelimit-reset-requests"] == "1s"
        now[0] += 10
        raw = client.chat.completions.with_raw_response.create(model="m", messages=MSGS)
        assert raw.headers["x-ratelimit-remaining-requests"] == "1"


# -- files + batches -----------------------------------------------------------------------


def _jsonl(ids: list[str]) -> bytes:
    lines = [
        {
            "custom_id": cid,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": f"question {cid}"}]},
        }
        for cid in ids
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _echo(body: dict[str, Any]) -> Reply:
    return Reply(f"answer to {body['messages'][0]['content']}")


def _run_batch(client: openai.OpenAI, data: bytes) -> tuple[Any, list[str]]:
    upload = client.files.create(file=("in.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    statuses = [batch.status]
    for _ in range(10):
        if batch.status in ("completed", "expired", "failed", "cancelled"):
            break
        batch = client.batches.retrieve(batch.id)
        statuses.append(batch.status)
    return batch, statuses


def test_files_and_batch_round_trip() -> None:
    ids = ["req-1", "req-2", "req-3"]
    data = _jsonl(ids)
    with serve(responder=_echo) as (srv, client):
        upload = client.files.create(file=("in.jsonl", data), purpose="batch")
        assert upload.purpose == "batch" and upload.bytes == len(data) and upload.filename == "in.jsonl"
        assert client.files.retrieve(upload.id).id == upload.id
        assert client.files.content(upload.id).content == data
        batch, statuses = _run_batch(client, data)
        assert statuses == ["validating", "in_progress", "completed"]
        assert batch.request_counts is not None and batch.request_counts.completed == 3
        assert batch.error_file_id is None and batch.output_file_id and batch.usage is not None
        text = client.files.content(batch.output_file_id).text
        assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
        assert srv.requests[0].body["file"] == {"filename": "in.jsonl", "bytes": len(data)}
        assert srv.requests[0].body["purpose"] == "batch"
    lines = [json.loads(line) for line in text.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ids
    for line in lines:
        assert set(line) == {"id", "custom_id", "response", "error"} and line["error"] is None
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"]
        completion = ChatCompletion.model_validate(line["response"]["body"])
        assert completion.choices[0].message.content == f"answer to question {line['custom_id']}"
    assert srv.stats.batch_lines == 3 and srv.stats.chat_completions == 0


def test_batch_failed_and_expired_lines_can_be_requeued() -> None:
    config = BatchConfig(fail_custom_ids={"b"}, expire_custom_ids={"c"})
    with serve(responder=_echo, batch=config) as (_, client):
        batch, _ = _run_batch(client, _jsonl(["a", "b", "c"]))
        assert batch.status == "expired" and batch.output_file_id and batch.error_file_id
        assert batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 2)
        error_text = client.files.content(batch.error_file_id).text
        errors = {e["custom_id"]: e for e in map(json.loads, error_text.splitlines())}
        assert errors["b"]["response"]["status_code"] == 500 and errors["b"]["error"] is None
        assert errors["c"]["response"] is None and errors["c"]["error"]["code"] == "batch_expired"
        retry, _ = _run_batch(client, _jsonl(sorted(errors)))
        assert retry.status == "completed" and retry.error_file_id is None and retry.output_file_id
        answered = [
            json.loads(line)["custom_id"]
            for line in client.files.content(retry.output_file_id).text.splitlines()
        ]
        assert sorted(answered) == ["b", "c"]


def test_batch_validation_failure_cancel_and_immediate_mode() -> None:
    with serve(responder=_echo, batch=BatchConfig(polls_to_complete=0)) as (_, client):
        bad = _jsonl(["x"]) + b"{not json\n" + _jsonl(["x"])
        batch, statuses = _run_batch(client, bad)
        assert statuses == ["failed"] and batch.errors is not None and batch.errors.data
        assert [(e.code, e.line) for e in batch.errors.data] == [
            ("invalid_json_line", 2),
            ("invalid_request", 3),
        ]
        done, statuses = _run_batch(client, _jsonl(["y"]))
        assert statuses == ["completed"] and done.output_file_id
    with serve(responder=_echo) as (_, client):
        upload = client.files.create(file=("in.jsonl", _jsonl(["z"])), purpose="batch")
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert client.batches.cancel(batch.id).status == "cancelling"
        assert client.batches.retrieve(batch.id).status == "cancelled"
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(batch.id)
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_missing")
        with pytest.raises(openai.BadRequestError):
            client.batches.create(
                input_file_id="file_missing", endpoint="/v1/chat/completions", completion_window="24h"
            )


# -- lifecycle -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "example.com", "::"])
def test_non_loopback_bind_is_rejected(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        LoopbackServer(host=host)


@pytest.mark.parametrize("kw", [{"faults": [Fault.timeout(delay_s=120)]}, {"latency_s": 120.0}])
def test_close_interrupts_held_requests_and_leaves_no_threads(kw: dict[str, Any]) -> None:
    before = set(threading.enumerate())
    errors: list[BaseException] = []
    srv = LoopbackServer(**kw)
    client = openai.OpenAI(base_url=srv.base_url, api_key="test-key", max_retries=0, timeout=30)

    def call() -> None:
        try:
            client.chat.completions.create(model="m", messages=MSGS)
        except openai.APIConnectionError as exc:
            errors.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 10
    while srv.stats.chat_completions == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    srv.close()
    srv.close()  # idempotent
    assert time.monotonic() - t0 < 3
    worker.join(timeout=10)
    client.close()
    assert not worker.is_alive() and len(errors) == 1
    assert set(threading.enumerate()) <= before

"""Record/replay at the HTTP seam: same answers without a server, misses are explicit, no secrets."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from agent import errors
from agent.llm.cassette import Cassette, RecordingTransport, ReplayTransport
from agent.llm.client import ChatClient, LLMConfig
from agent.prompting.schemas import BehaviorProfile
from agent.prompting.templates import RenderedPrompt
from agent.testing.loopback import LoopbackServer

PROMPT = RenderedPrompt(
    name="profile",
    version="profile@abc",
    messages=[
        {"role": "system", "content": "s"},
        {"role": "user", "content": '<data name="history">\n</data>'},
    ],
)


def test_record_then_replay_without_the_server(standin_server: LoopbackServer, tmp_path: Path) -> None:
    path = tmp_path / "cassette.json"
    config = LLMConfig(base_url=standin_server.base_url, api_key="sk-super-secret")
    with ChatClient(
        config, http_client=httpx2.Client(transport=RecordingTransport(Cassette(path)))
    ) as recorder:
        recorded = recorder.complete(PROMPT, BehaviorProfile)
    text = path.read_text()
    assert "sk-super-secret" not in text and "authorization" not in text.lower()

    with ChatClient(
        LLMConfig(api_key=None, base_url="http://replay.invalid/v1"),
        http_client=httpx2.Client(transport=ReplayTransport(Cassette(path))),
    ) as replayer:
        replayed = replayer.complete(PROMPT, BehaviorProfile)
    assert replayed.value == recorded.value
    assert replayed.usage.prompt_tokens == recorded.usage.prompt_tokens


def test_edited_prompt_misses_the_cassette_with_a_clear_error(
    standin_server: LoopbackServer, tmp_path: Path
) -> None:
    path = tmp_path / "cassette.json"
    config = LLMConfig(base_url=standin_server.base_url, api_key="k")
    with ChatClient(
        config, http_client=httpx2.Client(transport=RecordingTransport(Cassette(path)))
    ) as recorder:
        recorder.complete(PROMPT, BehaviorProfile)
    edited = RenderedPrompt(name="profile", version="profile@def", messages=PROMPT.messages)
    with (
        ChatClient(
            LLMConfig(), http_client=httpx2.Client(transport=ReplayTransport(Cassette(path)))
        ) as replayer,
        pytest.raises(errors.CassetteMissError, match="profile@def"),
    ):
        replayer.complete(edited, BehaviorProfile)


def _entry(key: str) -> dict[str, object]:
    return {"key": key, "template": "t@1", "path": "/v1/chat/completions", "request": {}, "response": {}}


def test_two_cassettes_on_one_path_keep_each_others_entries(tmp_path: Path) -> None:
    path = tmp_path / "shared.json"
    first, second = Cassette(path), Cassette(path)  # both opened before either saves
    first.put(_entry("a"))
    first.save()
    second.put(_entry("b"))
    second.save()
    assert set(Cassette(path).interactions) == {"a", "b"}


def test_saving_keeps_our_version_of_a_key(tmp_path: Path) -> None:
    path = tmp_path / "shared.json"
    old = Cassette(path)
    old.put({**_entry("a"), "response": {"n": 1}})
    old.save()
    new = Cassette(tmp_path / "elsewhere.json")
    new.path = path
    new.put({**_entry("a"), "response": {"n": 2}})
    new.save()
    assert Cassette(path).interactions["a"]["response"] == {"n": 2}

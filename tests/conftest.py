"""Shared fixtures: sample data paths, an isolated environment, a stand-in model server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.testing.loopback import LoopbackServer, Reply
from agent.testing.standin_model import respond

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "fixtures" / "sample"
DATASETS = ROOT.parent / "shared" / "datasets"
pytest_plugins = ["tests.privacy_guard"]


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees a real key, base URL or the developer's settings."""
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "RECAGENT_MODEL",
        "RECAGENT_TEMPLATES",
        "RECAGENT_PRICES",
        "RECAGENT_PSEUDONYM_KEY",
        "RECAGENT_TIMEOUT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RECAGENT_DB", str(tmp_path / "recagent.sqlite"))


@pytest.fixture
def standin_server() -> Iterator[LoopbackServer]:
    """A loopback OpenAI-compatible server answering with the deterministic stand-in model."""
    with LoopbackServer(responder=lambda body: Reply(content=respond(body))) as server:
        yield server


def chat_bodies(server: LoopbackServer) -> list[dict]:
    return [r.body for r in server.requests if r.path.endswith("/chat/completions")]


def valid_profile_json() -> str:
    return json.dumps(
        {
            "summary": "Likes trail running gear.",
            "interests": [{"name": "trail running", "strength": 0.9, "evidence": []}],
            "dislikes": [],
            "patterns": {
                "price_sensitivity": "medium",
                "typical_price_min": 40.0,
                "typical_price_max": 150.0,
                "recent_focus": None,
                "exploration": "focused",
            },
        }
    )


@pytest.fixture(scope="module")
def sample_frames() -> tuple[Any, Any]:
    """The bundled sample's events and items (frames), loaded and aligned as the CLI does."""
    from agent.data.loading import align_catalog, load_events, load_items

    items = load_items(SAMPLE / "items.csv")
    events = align_catalog(load_events(SAMPLE / "events.csv"), items)
    return events.frame, items.frame

"""The CLI end to end: demo replay, live HTTP against a loopback server, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.testing.loopback import LoopbackServer
from tests.conftest import ROOT, SAMPLE, chat_bodies

DATA = ["--events", str(SAMPLE / "events.csv"), "--items", str(SAMPLE / "items.csv")]


def test_demo_replays_recordings_and_says_so_first(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("Replaying recorded responses")
    for user in ("u001", "u002", "u003"):
        assert f"Profile of {user}" in out
        assert f"Top 10 for {user}" in out


def test_recommend_over_http_sends_candidate_enum_and_returns_only_candidates(
    standin_server: LoopbackServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", standin_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback-secret")
    assert main(["recommend", *DATA, "--user", "u004", "-k", "5"]) == 0
    result = json.loads(capsys.readouterr().out)
    body = chat_bodies(standin_server)[-1]
    schema = body["response_format"]["json_schema"]["schema"]
    enum = set(schema["$defs"]["RankedItem"]["properties"]["item_id"]["enum"])
    returned = [item["item_id"] for item in result["items"]]
    assert len(returned) == 5 and len(set(returned)) == 5
    assert set(returned) <= enum
    assert result["items"][0]["source"] == "llm"
    assert result["usage"]["requests"] == 1
    sent = json.dumps([r.body for r in standin_server.requests])
    assert "u004" not in sent  # no raw user id leaves the machine


def test_recommend_fallback_needs_no_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", *DATA, "--user", "u001", "--backend", "fallback", "-k", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [item["source"] for item in result["items"]] == ["fallback"] * 3
    assert "fallback" in result["fallback_reason"]


def test_profile_pretty_against_loopback(
    standin_server: LoopbackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["profile", *DATA, "--user", "u002", "--base-url", standin_server.base_url, "--pretty"]
    assert main(args) == 0
    assert "Profile of u002" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (
            ["recommend", "--events", "nope.csv", "--items", str(SAMPLE / "items.csv"), "--user", "u1"],
            3,
            "file not found",
        ),
        # recommend serves a user with no events cold-start items (issue 20, item 15); a
        # profile still needs a history
        (["profile", *DATA, "--user", "nobody", "--backend", "replay"], 3, "has no events"),
        (["recommend", *DATA, "--user", "u001"], 2, "OPENAI_API_KEY"),
        (
            ["recommend", *DATA, "--user", "u001", "--backend", "replay", "--cassette", "missing.json"],
            2,
            "cassette not found",
        ),
        (["recommend", *DATA, "--user", "u001", "--backend", "fallback", "-k", "0"], 2, "-k must be"),
    ],
)
def test_errors_are_one_line_with_a_nonzero_exit(
    args: list[str], code: int, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("recagent: error:") and fragment in err


def test_replay_miss_names_the_template_and_how_to_rerecord(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["recommend", *DATA, "--user", "u010", "--backend", "replay", "-k", "7", "--with-profile"]
    assert main(args) == 5
    err = capsys.readouterr().err
    assert "no recorded response for template profile@" in err and "record_fixtures.py" in err


def test_verbose_prints_the_cleaning_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["recommend", "--events", str(SAMPLE / "events_dirty.csv"), "--items", str(SAMPLE / "items.csv")]
    assert main([*args, "--user", "u001", "--backend", "fallback", "--verbose"]) == 0
    err = capsys.readouterr().err
    assert "cleaning: events_dirty.csv: 246 read" in err and "duplicate=12" in err


def test_console_script_is_installed_and_errors_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "events.csv"
    bad.write_text("user_id,item_id\nu1,A\n")
    exe = Path(sys.executable).parent / "recagent"
    proc = subprocess.run(
        [str(exe), "recommend", "--events", str(bad), "--items", str(SAMPLE / "items.csv"), "--user", "u1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"recagent: error: missing required column (found: user_id, item_id) (file {bad}, column 'behavior')"
    ]


def test_results_report_how_much_the_model_copied_the_input_order(
    standin_server: LoopbackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["recommend", *DATA, "--user", "u004", "-k", "5", "--base-url", standin_server.base_url]
    assert main(args) == 0
    rate = json.loads(capsys.readouterr().out)["grounding"]["input_order_copy_rate"]
    assert 0.0 <= rate <= 1.0

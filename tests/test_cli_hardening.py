"""Issue 20: a newcomer's trial of main. Each test names the finding it covers.

Every error here must be one line, ``recagent: error: ...``, with the documented exit code
(``agent.errors``) and no traceback, through ``main`` and (where it matters) the installed
console script.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.testing.loopback import Fault, LoopbackServer
from tests.conftest import ROOT, SAMPLE

DATA = ["--events", str(SAMPLE / "events.csv"), "--items", str(SAMPLE / "items.csv")]
RECAGENT = Path(sys.executable).parent / "recagent"


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``recagent ARGS`` in-process; argparse exits count too."""
    try:
        code = main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, fragment: str) -> None:
    """Exactly one ``recagent: error:`` line, holding ``fragment``; any other line is a
    ``recagent: WARNING:`` (e.g. tiktoken's offline notice), never a traceback."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("recagent: error:")]
    assert len(errors) == 1 and fragment in errors[0], err
    assert all(line.startswith(("recagent: error:", "recagent: WARNING:")) for line in lines), err
    assert "Traceback" not in err


# -- 1. timeouts ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf"])
def test_1_bad_timeout_flag_is_a_config_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["recommend", *DATA, "--user", "u001", "--timeout", value], capsys)
    assert code == 2
    assert_one_line_error(err, "timeout")


@pytest.mark.parametrize("value", ["-1", "abc", "0"])
def test_1_bad_recagent_timeout_is_a_config_error(
    value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECAGENT_TIMEOUT", value)
    code, _, err = run(["recommend", *DATA, "--user", "u001", "--backend", "fallback"], capsys)
    assert code == 2
    assert_one_line_error(err, "RECAGENT_TIMEOUT")


# -- 2. batch --out on an existing file ------------------------------------------------------
def test_2_batch_out_on_an_existing_file_is_one_line(tmp_path: Path) -> None:
    target = tmp_path / "items.csv"
    target.write_text("not a directory\n")
    proc = subprocess.run(
        [str(RECAGENT), "batch", *DATA, "--out", str(target), "--dry-run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "is not a directory")
    assert target.read_text() == "not a directory\n"


@pytest.mark.parametrize("command", [["openai-batch", "status"], ["openai-batch", "collect"]])
def test_2_openai_batch_out_on_an_existing_file_is_one_line(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    code, _, err = run([*command, "--out", str(target)], capsys)
    assert code == 2
    assert_one_line_error(err, "is not a directory")


# -- 3. the Python API without a key ---------------------------------------------------------
def test_3_chat_client_without_key_or_base_url_fails_fast() -> None:
    from agent import ChatClient, ConfigError, LLMConfig
    from agent.llm.async_client import AsyncChatClient

    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        ChatClient(LLMConfig())
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        AsyncChatClient(LLMConfig())
    ChatClient(LLMConfig(base_url="http://127.0.0.1:9/v1")).close()  # a local server needs no key


def test_3_readme_python_example_without_a_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's example line, run as written with no key set: a ConfigError at once."""
    from agent import ChatClient, ConfigError, LLMConfig

    readme = (ROOT / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("client = ChatClient("))
    with pytest.raises(ConfigError, match="no API key"):
        exec(line.split("#")[0], {"ChatClient": ChatClient, "LLMConfig": LLMConfig})
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-readme")
    client = eval(line.split("=", 1)[1].split("#")[0], {"ChatClient": ChatClient, "LLMConfig": LLMConfig})
    assert client.config.api_key == "sk-test-readme"  # the example does read the key it says it reads
    client.close()


# -- 4. malformed base URLs, and a run whose every model call failed ------------------------
@pytest.mark.parametrize("url", ["localhost:8000/v1", "not a url", "ftp://host/v1", "http://"])
def test_4_malformed_base_url_is_a_config_error_before_any_work(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["recommend", *DATA, "--user", "u001", "--base-url", url], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, "is not an http(s) URL")


def test_4_malformed_openai_base_url_env_is_a_config_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "localhost:8000/v1")
    code, _, err = run(["profile", *DATA, "--user", "u001"], capsys)
    assert code == 2
    assert_one_line_error(err, "did you mean http://localhost:8000/v1")


def test_4_recommend_whose_model_calls_all_failed_exits_5_with_the_fallback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with LoopbackServer(faults=[Fault.insufficient_quota()] * 4) as server:
        args = ["recommend", *DATA, "--user", "u001", "-k", "3", "--base-url", server.base_url]
        code, out, err = run(args, capsys)
    assert code == 5
    result = json.loads(out)  # the fallback is still printed: it is usable
    assert [item["source"] for item in result["items"]] == ["fallback"] * 3
    assert result["model_error"] == "QuotaExceededError"
    errors = [line for line in err.splitlines() if line.startswith("recagent: error:")]
    assert len(errors) == 1 and "every model call failed" in errors[0]


def test_4_fallback_backend_is_still_success(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["recommend", *DATA, "--user", "u001", "--backend", "fallback", "-k", "2"], capsys)
    assert code == 0 and json.loads(out)["model_error"] is None


# -- 5. k has a documented maximum -------------------------------------------------------------
@pytest.mark.parametrize("command", ["recommend", "chat", "batch"])
def test_5_k_above_the_maximum_is_a_config_error(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = {"recommend": ["--user", "u001"], "chat": ["--user", "u001"], "batch": ["--out", str(tmp_path)]}
    code, _, err = run([command, *DATA, *extra[command], "-k", "100000", "--backend", "fallback"], capsys)
    assert code == 2
    assert_one_line_error(err, "-k must be at most 100")


def test_5_library_rejects_k_above_max_k() -> None:
    from agent.data.loading import align_catalog, load_events, load_items
    from agent.errors import InvalidArgumentError
    from agent.recommender import MAX_K, RecommenderAgent

    items = load_items(SAMPLE / "items.csv")
    events = align_catalog(load_events(SAMPLE / "events.csv"), items)
    agent = RecommenderAgent(events.frame, items.frame, None)
    assert len(agent.recommend("u001", k=MAX_K).items) <= MAX_K
    with pytest.raises(InvalidArgumentError, match="at most"):
        agent.recommend("u001", k=MAX_K + 1)
    with pytest.raises(ValueError):  # InvalidArgumentError is a ValueError, as k < 1 always was
        agent.recommend("u001", k=0)


# -- 6. argparse errors are one line -----------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["recommend", *DATA, "--user", "u001", "-k", "abc"], "invalid int value: 'abc'"),
        (["recommend", *DATA, "--user", "u001", "--backend", "foo"], "invalid choice: 'foo'"),
        (["recommend", *DATA], "the following arguments are required: --user"),
        (["no-such-command"], "invalid choice"),
        ([], "required: command"),
    ],
)
def test_6_usage_errors_are_one_line_exit_2(
    args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(args, capsys)
    assert code == 2
    assert_one_line_error(err, fragment)
    assert "usage:" not in err


def test_6_help_still_prints_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["recommend", "--help"], capsys)
    assert code == 0 and "usage: recagent recommend" in out


# -- 7. templates directory and empty model ----------------------------------------------------
def test_7_missing_template_dir_is_a_template_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECAGENT_TEMPLATES", "/nonexistent")
    code, _, err = run(["recommend", *DATA, "--user", "u001", "--backend", "fallback"], capsys)
    assert code == 4
    assert_one_line_error(err, "template directory not found: /nonexistent")


@pytest.mark.parametrize("model", ["", "  "])
def test_7_empty_model_is_a_config_error(model: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["recommend", *DATA, "--user", "u001", "--model", model], capsys)
    assert code == 2
    assert_one_line_error(err, "model name is empty")


# -- 15. cold start ------------------------------------------------------------------------------
def test_15_recommend_for_a_new_user_serves_cold_start(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["recommend", *DATA, "--user", "newcomer", "--backend", "fallback", "-k", "4"], capsys)
    assert code == 0
    result = json.loads(out)
    assert [item["source"] for item in result["items"]] == ["cold_start"] * 4
    assert "cold start" in result["fallback_reason"] and "popular" in result["fallback_reason"]


def test_15_cold_start_with_a_model_makes_no_call_and_follows_the_query(
    standin_server: LoopbackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["recommend", *DATA, "--user", "newcomer", "-k", "3", "--query", "ultralight tent"]
    code, out, _ = run([*args, "--base-url", standin_server.base_url], capsys)
    assert code == 0
    result = json.loads(out)
    assert all(item["source"] == "cold_start" for item in result["items"])
    assert all("Tent" in item["title"] for item in result["items"])
    assert not standin_server.requests


def test_15_chat_for_a_new_user_answers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("a board game\n"))
    code, out, _ = run(
        ["chat", "--user", "newcomer", "--backend", "fallback", "--json", "--db", ":memory:"], capsys
    )
    assert code == 0
    reply = json.loads(out.splitlines()[0])
    assert reply["recommendations"] and all(r["source"] == "cold_start" for r in reply["recommendations"])
    assert all("Board Game" in r["title"] for r in reply["recommendations"])


def test_15_library_cold_start_is_documented_and_can_be_switched_off() -> None:
    from agent.data.loading import align_catalog, load_events, load_items
    from agent.errors import UnknownUserError
    from agent.recommender import AgentConfig, RecommenderAgent

    items = load_items(SAMPLE / "items.csv")
    events = align_catalog(load_events(SAMPLE / "events.csv"), items)
    agent = RecommenderAgent(events.frame, items.frame, None)
    result = agent.recommend("never-seen", k=5)
    assert [r.source for r in result.items] == ["cold_start"] * 5
    assert result.model_error is None and result.fallback_reason
    strict = RecommenderAgent(events.frame, items.frame, None, AgentConfig(cold_start=False))
    with pytest.raises(UnknownUserError):
        strict.recommend("never-seen", k=5)
    with pytest.raises(UnknownUserError):  # nothing to profile
        agent.prepare_profile("never-seen")


# -- 20. --version ---------------------------------------------------------------------------------
def test_20_version() -> None:
    proc = subprocess.run([str(RECAGENT), "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert proc.stdout.startswith("recagent 0.")


# -- 10. encoding errors: the true offset and row, and --encoding ------------------------------
def _latin1_events(tmp_path: Path, row: int) -> tuple[Path, int]:
    """The sample events with a Latin-1 byte (0xe9) at the end of data row ``row``; (path, offset)."""
    lines = (SAMPLE / "events.csv").read_bytes().splitlines(keepends=True)
    before = b"".join(lines[:row])  # the header and the rows before
    target = lines[row].rstrip(b"\n")
    path = tmp_path / "events_latin1.csv"
    path.write_bytes(before + target[:-1] + b"\xe9\n" + b"".join(lines[row + 1 :]))
    return path, len(before) + len(target) - 1


def test_10_encoding_error_names_the_true_offset_and_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, offset = _latin1_events(tmp_path, 2000)
    assert offset > 60_000  # far past the parser's first chunk, where "byte 3" came from
    args = ["recommend", "--events", str(path), "--items", str(SAMPLE / "items.csv"), "--user", "u001"]
    code, _, err = run([*args, "--backend", "fallback"], capsys)
    assert code == 3
    assert_one_line_error(err, f"at offset {offset} (line 2001)")
    assert "row 2000" in err and "--encoding" in err


def test_10_encoding_error_in_jsonl_names_the_line(tmp_path: Path) -> None:
    from agent.data.loading import load_events
    from agent.errors import DataError

    path = tmp_path / "events.jsonl"
    good = '{"user_id": "u1", "item_id": "A", "behavior": "view", "timestamp": 1}\n'
    path.write_bytes(good.encode() * 3 + b'{"user_id": "u\xe9", "item_id": "A"}\n')
    with pytest.raises(DataError, match=rf"offset {len(good) * 3 + 14} \(line 4\)") as info:
        load_events(path)
    assert info.value.row == 4


def test_10_encoding_option_reads_a_latin1_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = _latin1_events(tmp_path, 2000)
    args = ["recommend", "--events", str(path), "--items", str(SAMPLE / "items.csv"), "--user", "u001"]
    code, out, _ = run([*args, "--backend", "fallback", "--encoding", "latin-1", "-k", "2"], capsys)
    assert code == 0 and len(json.loads(out)["items"]) == 2
    code, _, err = run([*args, "--backend", "fallback", "--encoding", "no-such-codec"], capsys)
    assert code == 3
    assert_one_line_error(err, "unknown encoding 'no-such-codec'")


# -- 11. directories and other delimiters -------------------------------------------------------
def test_11_a_directory_is_not_reported_as_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["recommend", "--events", str(tmp_path), "--items", str(SAMPLE / "items.csv"), "--user", "u001"]
    code, _, err = run([*args, "--backend", "fallback"], capsys)
    assert code == 3
    assert_one_line_error(err, "is a directory, not a data file")
    assert "not found" not in err


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_11_csv_with_another_delimiter_is_sniffed(
    sep: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        sep.join(["user_id", "item_id", "behavior", "timestamp"])
        + "\n"
        + "".join(
            sep.join(["u1", item, "purchase", str(1_700_000_000 + n)]) + "\n"
            for n, item in enumerate(["SKU-10014", "SKU-10080"])
        )
    )
    args = ["recommend", "--events", str(path), "--items", str(SAMPLE / "items.csv"), "--user", "u1"]
    code, out, err = run([*args, "--backend", "fallback", "-k", "2"], capsys)
    assert code == 0, err
    assert all(item["source"] == "fallback" for item in json.loads(out)["items"])


def test_11_unreadable_header_names_the_delimiter(tmp_path: Path) -> None:
    import pandas as pd

    from agent.data.loading import clean_events
    from agent.errors import DataError

    frame = pd.DataFrame({"user_id;item_id;behavior;timestamp": ["u1;A;view;1"]})
    with pytest.raises(DataError, match="semicolon-separated"):
        clean_events(frame, file="events.txt")


# -- 12. feedback --signal rating without --value ------------------------------------------------
def test_12_rating_without_value_names_the_value_option(capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "feedback",
        *DATA,
        "--user",
        "u001",
        "--item",
        "SKU-10014",
        "--signal",
        "rating",
        "--db",
        ":memory:",
    ]
    code, _, err = run(args, capsys)
    assert code == 3
    assert_one_line_error(err, "--value")
    assert "'event'" not in err and "column 'value'" in err


# -- 8. replay covers what the README shows --------------------------------------------------------
@pytest.mark.parametrize("user", ["u001", "u002", "u003"])
def test_8_recommend_replays_for_the_recorded_users(user: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["recommend", *DATA, "--user", user, "--backend", "replay"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert len(result["items"]) == 10 and result["items"][0]["source"] == "llm"


def test_8_demo_with_users_replays(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["demo", "--users", "u002", "u003"], capsys)
    assert code == 0, err
    assert "Top 10 for u002" in out and "Top 10 for u003" in out


def test_8_readme_chat_replay_example_replays(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from agent.testing.standin_chat import RECORDED_CONVERSATION, RECORDED_USER

    readme = (ROOT / "fixtures" / "README.md").read_text()
    shown = "\\n".join(RECORDED_CONVERSATION) + "\\n"
    assert shown in readme and f"recagent chat --user {RECORDED_USER} --backend replay" in readme
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(RECORDED_CONVERSATION) + "\n"))
    args = ["chat", "--user", RECORDED_USER, "--backend", "replay"]
    code, out, err = run(
        [*args, "--cassette", str(ROOT / "fixtures" / "cassettes" / "chat.json"), "--db", ":memory:"], capsys
    )
    assert code == 0, err
    assert "Here are" in out and "recagent: error" not in err


# -- 9. the miss message names the right script and the kind of difference ------------------------
def test_9_miss_in_the_chat_cassette_names_its_script(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("a kettle please\n"))
    args = ["chat", "--user", "u001", "--backend", "replay", "--db", ":memory:"]
    code, _, err = run([*args, "--cassette", str(ROOT / "fixtures" / "cassettes" / "chat.json")], capsys)
    assert code == 5
    assert_one_line_error(err, "record_chat_fixtures.py")
    assert "inputs differ" in err and "scripts/record_fixtures.py" not in err


@pytest.mark.parametrize(
    ("extra", "kind"),
    [
        (["--user", "u004"], "inputs differ"),
        (["--user", "u001", "--model", "gpt-4o"], "the model differs"),
    ],
)
def test_9_miss_names_the_kind_of_difference(
    extra: list[str], kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["profile", *DATA, *extra, "--backend", "replay"], capsys)
    assert code == 5
    assert_one_line_error(err, kind)
    assert "python scripts/record_fixtures.py" in err


def test_9_miss_names_a_changed_template(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.llm.cassette import Cassette

    cassette = Cassette(ROOT / "fixtures" / "cassettes" / "demo.json")
    body = {"model": "gpt-4.1-mini", "messages": []}
    assert "template changed" in cassette.explain_miss("profile@0000000000", body)
    assert "never recorded" in cassette.explain_miss("describe_item@0000000000", body)
    own = tmp_path / "mine.json"
    own.write_text('{"version": 1, "interactions": []}')
    code, _, err = run(
        ["profile", *DATA, "--user", "u001", "--backend", "replay", "--cassette", str(own)], capsys
    )
    assert code == 5
    assert_one_line_error(err, f"--record {own}")


# -- 19. fusion-fit says why it sampled fewer users than asked -------------------------------------
def test_19_fusion_fit_explains_skipped_users(
    standin_server: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["fusion-fit", *DATA, "--out", str(tmp_path / "fusion.json"), "--users", "50", "--min-lists", "1"]
    code, out, err = run([*args, "--base-url", standin_server.base_url], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["users_requested"] == 50
    assert report["users_sampled"] == report["users_eligible"] < 50
    assert sum(report["users_not_eligible"].values()) == 50 - report["users_eligible"]
    assert f"sampled {report['users_sampled']} of the 50 users requested" in err
    assert "not eligible:" in err


# -- 16, 17, 18. evaluate: --json, progress and wall time, no trivial cut-offs --------------------------
def _evaluate(tmp_path: Path, *extra: str) -> list[str]:
    from tests.test_evaluate import write_generic

    data = write_generic(tmp_path / "data")
    return ["evaluate", "--dataset", "generic", "--path", str(data), "--backend", "fallback", *extra]


def test_16_evaluate_json_prints_one_json_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        [*_evaluate(tmp_path, "--out", str(tmp_path / "run"), "-k", "1,5"), "--json"], capsys
    )
    assert code == 0, err
    payload = json.loads(out)
    assert payload["ks"] == [1, 5] and payload["users"] > 0
    assert set(payload["metrics"]) == {"random", "popularity", "retriever"}
    assert {"mean", "ci95"} <= set(payload["metrics"]["retriever"]["hit@5"])


def test_16_readme_names_the_commands_that_print_text() -> None:
    readme = (ROOT / "README.md").read_text()
    for command in ("`evaluate`", "`chat`", "`demo`"):
        assert command in readme.split("### Input files")[0], command
    assert "--json" in readme.split("### Input files")[0]


def test_17_evaluate_verbose_shows_every_step_and_the_wall_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run([*_evaluate(tmp_path, "--out", str(tmp_path / "run")), "-v"], capsys)
    assert code == 0, err
    for step in ("loading generic", "fitting the retriever", "building the candidate sets", "ranking"):
        assert step in err, step
    assert "scoring and writing" in err and "wall time" in err
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    timings = run_json.get("timings") or run_json.get("run", {}).get("timings")
    wall = float(err.rsplit("wall time", 1)[1].split()[0])
    assert timings is None or wall >= timings["total"]


def test_18_cutoffs_at_or_above_the_candidate_count_are_not_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _evaluate(tmp_path, "--out", str(tmp_path / "run"), "--negatives", "9", "-k", "1,5,10,20")
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert "hit@5" in out and "hit@10" not in out and "hit@20" not in out
    assert "cut-offs 10, 20 not reported" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "hit@10" not in metrics["retriever"] and "hit@5" in metrics["retriever"]
    code, _, err = run(
        _evaluate(tmp_path, "--out", str(tmp_path / "r2"), "--negatives", "4", "-k", "5,10"), capsys
    )
    assert code == 2
    assert_one_line_error(err, "every -k value (5, 10) is >= the 5 candidates per user")


# -- 13. profile price ranges are validated, and no price facts without prices -------------------------
def _profile_reply(low: float | None, high: float | None) -> str:
    from tests.conftest import valid_profile_json

    profile = json.loads(valid_profile_json())
    profile["patterns"].update(typical_price_min=low, typical_price_max=high)
    return json.dumps(profile)


def test_13_a_reversed_price_range_is_re_asked_then_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    from agent.testing.loopback import Reply

    with LoopbackServer(responder=lambda body: Reply(content=_profile_reply(0.658, 0.064))) as server:
        code, out, err = run(["profile", *DATA, "--user", "u001", "--base-url", server.base_url], capsys)
        sent = len(server.requests)
    assert code == 5 and out == ""
    assert_one_line_error(err, "typical_price_min (0.658) is above typical_price_max (0.064)")
    assert sent == 3  # the first reply and two re-asks carrying the validation error


def test_13_a_catalog_without_prices_gives_no_price_facts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pandas as pd

    from agent.testing.loopback import Reply

    items = pd.read_csv(SAMPLE / "items.csv", dtype=str).drop(columns=["price"])
    path = tmp_path / "items.csv"
    items.to_csv(path, index=False)
    args = ["profile", "--events", str(SAMPLE / "events.csv"), "--items", str(path), "--user", "u001"]
    # a model that reads ratings (1-5) as what the user pays
    with LoopbackServer(responder=lambda body: Reply(content=_profile_reply(1.0, 4.5))) as server:
        code, out, err = run([*args, "--base-url", server.base_url, "--db", ":memory:"], capsys)
    assert code == 0, err
    patterns = json.loads(out)["profile"]["patterns"]
    assert patterns["price_sensitivity"] == "unknown"
    assert patterns["typical_price_min"] is None and patterns["typical_price_max"] is None


# -- 14. the default store is per data set, and created only when something is written ---------------
@pytest.fixture
def default_store_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No RECAGENT_DB: the default location, redirected into tmp_path (platformdirs reads XDG)."""
    monkeypatch.delenv("RECAGENT_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


def test_14_profiles_are_stored_per_data_set(
    default_store_home: Path,
    standin_server: LoopbackServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    catalogs = []
    for name in ("shop_a", "shop_b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "items.csv").write_bytes((SAMPLE / "items.csv").read_bytes())
        catalogs.append(folder / "items.csv")
    a = ["--events", str(SAMPLE / "events.csv"), "--items", str(catalogs[0])]
    code, _, err = run(["profile", *a, "--user", "u001", "--base-url", standin_server.base_url], capsys)
    assert code == 0, err
    code, out, _ = run(["profile", "show", "--user", "u001", "--items", str(catalogs[0])], capsys)
    assert code == 0 and json.loads(out)["version"] == 1
    code, _, err = run(["profile", "show", "--user", "u001", "--items", str(catalogs[1])], capsys)
    assert code == 3
    assert_one_line_error(err, "no stored profile for user 'u001'")
    stores = sorted(p.name for p in default_store_home.rglob("*.sqlite"))
    assert len(stores) == 1 and stores[0].startswith("items-")


def test_14_a_failed_command_creates_no_store(
    default_store_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.testing.loopback import Fault

    with LoopbackServer(faults=[Fault.http(401)] * 4) as server:
        code, _, err = run(["recommend", *DATA, "--user", "u001", "--base-url", server.base_url], capsys)
    assert code == 5, err
    code, _, _ = run(["profile", "history", "--user", "u001", "--items", str(SAMPLE / "items.csv")], capsys)
    assert code == 3
    assert not list(default_store_home.rglob("*.sqlite"))


def test_14_explicit_db_is_created_on_first_write_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "mine.sqlite"
    code, _, _ = run(["profile", "show", "--user", "u001", "--db", str(db)], capsys)
    assert code == 3 and not db.exists()
    code, _, err = run(
        ["recommend", *DATA, "--user", "u001", "--backend", "fallback", "--db", str(db)], capsys
    )
    assert code == 0, err
    assert db.exists()  # the served recommendation was written


@pytest.mark.parametrize(
    "command",
    [
        ["chat", "--user", "u001"],
        ["fusion-fit", *DATA, "--out", "unused.json"],
        ["evaluate", "--dataset", "generic", "--path", "/nonexistent-dataset"],
        ["batch", *DATA, "--out", "unused-dir", "--dry-run"],
    ],
)
def test_4_every_model_command_checks_the_base_url_before_any_work(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # the evaluate data set does not exist: the URL is reported first, so it is checked first
    code, out, err = run([*command, "--base-url", "localhost:8000/v1"], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, "is not an http(s) URL")

"""Schema fuzzing: Schemathesis generates requests from the served OpenAPI document (valid and
invalid bodies, parameters and headers) against the running service; none may get a 5xx.

Bounded: a fixed seed, deterministic generation and a capped number of examples per operation,
against 127.0.0.1 only. The model is the fallback ranker, so every request answers quickly.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.service.conftest import make_keys

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def test_generated_requests_never_get_a_server_error(tmp_path: Path, service_factory: Any) -> None:
    store_url = f"sqlite:///{tmp_path / 'fuzz.sqlite'}"
    key = make_keys(store_url, {"admin": ("fuzz", ("read", "write", "admin"))})["admin"]
    service = service_factory(store_url, base_url=None, tenant="fuzz", extra=("--rate-limit", "10000"))
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{service.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "12",
            "--seed",
            "7",
            "--generation-deterministic",
            "--request-timeout",
            "20",
            "--header",
            f"Authorization: Bearer {key}",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    tested = re.search(r"(\d+) passed", output)  # the summary line: operations that passed every check
    assert tested and int(tested.group(1)) >= 12, output[-2000:]
    log = service.log.read_text()
    assert '"status": 500' not in log, [line for line in log.splitlines() if '"status": 500' in line][:3]

"""Start-up benchmark: wall time of `recagent --help` and of a fallback `recommend` on the
bundled sample (median of N runs each), and the heaviest imports of each (`python -X importtime`).

    .venv/bin/python scripts/bench_startup.py [--runs 5]

Targets (issue: layout): --help <= 0.5 s, fallback recommend <= 1.5 s, medians on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECAGENT = Path(sys.executable).with_name("recagent")
SAMPLE = ROOT / "fixtures" / "sample"
COMMANDS = {
    "recagent --help": ["--help"],
    "recagent recommend --backend fallback (sample)": [
        "recommend", "--events", str(SAMPLE / "events.csv"), "--items", str(SAMPLE / "items.csv"),
        "--user", "u001", "--backend", "fallback",
    ],
}  # fmt: skip
TARGETS_S = {"recagent --help": 0.5, "recagent recommend --backend fallback (sample)": 1.5}


def wall_times(args: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([str(RECAGENT), *args], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def heaviest_imports(args: list[str], top: int = 6) -> list[tuple[str, float]]:
    """Packages by the import time of their own modules (ms, self time summed), from ``-X importtime``."""
    code = f"import sys; from agent.cli.main import main; sys.argv = ['recagent', *{args!r}]; main()"
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=False
    ).stderr
    by_root: dict[str, float] = {}
    for line in err.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        self_us, _, name = line.removeprefix("import time:").split("|")
        if not self_us.strip().isdigit():
            continue  # the header line
        root = name.strip().split(".")[0]
        by_root[root] = by_root.get(root, 0.0) + int(self_us) / 1000
    return sorted(by_root.items(), key=lambda kv: -kv[1])[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(
        f"| command | median of {args.runs} (s) | min | max | target | met | heaviest imports (ms, own modules) |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, argv in COMMANDS.items():
        wall_times(argv, 1)  # warm the file cache
        times = wall_times(argv, args.runs)
        median = statistics.median(times)
        imports = ", ".join(f"{name} {ms:.0f}" for name, ms in heaviest_imports(argv))
        target = TARGETS_S[label]
        print(
            f"| `{label}` | {median:.2f} | {min(times):.2f} | {max(times):.2f} | {target} "
            f"| {'yes' if median <= target else 'NO'} | {imports} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

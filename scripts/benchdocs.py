"""Where benchmark scripts write their results: one marked section of docs/BENCHMARKS.md each.

    from benchdocs import write_section
    write_section(text, "<!-- cost:start -->", "<!-- cost:end -->")

``text`` is the whole section, markers included. The section between the markers is replaced;
a document without them gets the section appended. Everything outside the markers is kept.
"""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def write_section(text: str, start: str, end: str, path: Path = BENCHMARKS) -> None:
    current = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    if start in current and end in current:
        before, rest = current.split(start, 1)
        current = before + text + rest.split(end, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(current, encoding="utf-8")

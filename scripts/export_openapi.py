"""Write the service's OpenAPI document to docs/openapi.json (a test checks it is current).

.venv/bin/python scripts/export_openapi.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.service.app import create_app
from agent.service.config import ServiceConfig
from agent.service.storage import ServiceStore

OUT = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"


def main() -> int:
    store = ServiceStore.open("sqlite://:memory:")
    try:
        document = create_app(ServiceConfig(), store, None).openapi()
    finally:
        store.close()
    OUT.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    print(f"wrote {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

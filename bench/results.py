"""``bench/RESULTS.md``: every recorded benchmark figure with its date and machine."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def record_result(name: str, result: dict[str, Any]) -> None:
    """Append one row to the results table."""
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    with RESULTS.open("a") as out:
        out.write(f"| {date} | {name} | {machine()} | `{json.dumps(result)}` |\n")

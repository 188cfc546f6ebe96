"""The attack suite's closing counts (tests marked `trust`): cases tried, 5xx seen, jobs checked, lost and
duplicated, worker kills. Tests add to them with `count`; the session prints them at the end and writes
them to TRUST_COUNTS_FILE (default runs/trust-counts.json), whichever folder the tests live in."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

COUNTS: Counter[str] = Counter()
COUNT_NAMES = ("cases tried", "5xx seen", "jobs checked", "jobs lost", "jobs duplicated", "worker kills")


def count(name: str, n: int = 1) -> None:
    """Add to one of the closing counts (COUNT_NAMES)."""
    if name not in COUNT_NAMES:
        raise ValueError(f"unknown closing count {name!r}: one of {COUNT_NAMES}")
    COUNTS[name] += n


def report(terminalreporter) -> None:
    """Print the counts and write them to TRUST_COUNTS_FILE; nothing when no test counted anything."""
    if not COUNTS:
        return
    line = ", ".join(f"{name}: {COUNTS.get(name, 0)}" for name in COUNT_NAMES)
    terminalreporter.write_sep("=", "trust suite closing counts")
    terminalreporter.write_line(line)
    out = Path(os.environ.get("TRUST_COUNTS_FILE", "runs/trust-counts.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({name: COUNTS.get(name, 0) for name in COUNT_NAMES}, indent=2) + "\n")

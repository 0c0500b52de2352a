"""Access to the recorded Asterisk 22 AMI captures kept in tests/fixtures/ami-traces.

The files there are byte-exact copies of what a real Asterisk 22 sent (CRLF); never edit them.
"""

from __future__ import annotations

from pathlib import Path

TRACES = Path(__file__).resolve().parent / "fixtures" / "ami-traces"
NAMES = ("basic", "vip", "burst", "abandon", "cti")


def trace_path(name: str) -> Path:
    """The raw capture of one folder (``basic``, ``vip``, …)."""
    return TRACES / name / "ami-raw.txt"


def trace_bytes(name: str) -> bytes:
    return trace_path(name).read_bytes()

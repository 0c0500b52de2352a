"""Access to the recorded Asterisk 22 AMI captures in ../shared/ami-traces."""

from __future__ import annotations

import os
from pathlib import Path

TRACES = Path(os.environ.get("CTI_TRACES", Path(__file__).resolve().parents[2] / "shared" / "ami-traces"))
NAMES = ("basic", "vip", "burst", "abandon", "cti")


def trace_bytes(name: str) -> bytes:
    path = TRACES / name / "ami-raw.txt"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: set CTI_TRACES to the ami-traces folder")
    return path.read_bytes()

"""The cyclic garbage collector, set for a server that makes thousands of short-lived containers a call.

Kept apart from :mod:`cti.app` so the benchmarks set up their processes the same way without
importing the whole server.
"""

from __future__ import annotations

import gc

__all__ = ["GC_THRESHOLDS", "settle_heap"]


#: Collect the young generation every 10,000 net allocations, not 700: a call makes thousands of
#: short-lived containers that reference counting frees anyway. Measured with benchmarks/capacity.py
#: at 100 calls/s: ~250 young collections in 10 s became ~10 (longest 4 ms), and CPU per call fell
#: by a fifth.
GC_THRESHOLDS = (10_000, 20, 10)


def settle_heap() -> None:
    """What start-up made (modules, config, the directory import) lives as long as the process: take it
    out of the cyclic collector's sight, so a full collection walks only what traffic made (a full
    collection of the whole heap stalled the loop for 80-200 ms in the capacity benchmark)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)

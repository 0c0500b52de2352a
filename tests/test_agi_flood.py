"""A thousand connections that are no calls (silent, half a header, a trickle, garbage, a huge line, gone at
once), opened while real calls are mid-flow: the calls finish, the server keeps taking new ones, and each
bad connection is closed by the server, which the client sees as its socket closing, never by a clock."""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import Mapping
from datetime import UTC, datetime
from itertools import cycle
from pathlib import Path

from cti.agi import AgiServer, AgiSettings, IvrResult
from cti.sim.agi_caller import CallRecord, Scenario, agi_env, place_call
from ivr_flows import load_flow

HOTLINE = load_flow(Path(__file__).resolve().parents[1] / "config" / "ivr" / "hotline.yaml")
OPEN = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
WAIT = 60.0  # an upper bound only
BAD = 1000
REAL = 20
KINDS = ("silent", "half_header", "trickle", "garbage", "huge_line", "gone")
REASONS = {"silent": "header_timeout", "half_header": "header_timeout", "trickle": "header_timeout",
           "garbage": "not_agi", "huge_line": "line_too_long", "gone": "closed_before_header"}
ROUTES = [("1,1", "billing"), ("2,2", "tech_support"), ("1,3", "complaints"), ("2,7,1", "billing")]


async def nobody(by: str, value: str) -> Mapping[str, object] | None:
    return None


def wave_size() -> int:
    """Each connection costs two descriptors here (client and server side): stay well inside ulimit -n."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(10, min(250, (soft - 200) // 4))


async def bad_connection(port: int, kind: str) -> None:
    """Open one, misbehave, and return once the server has closed it (EOF or reset)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if kind == "gone":
            return
        if kind == "half_header":
            writer.write(b"agi_network: yes\nagi_network_script: hotline\nagi_request: agi://127.0.0.1:4573/hot")
        elif kind == "garbage":
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:4573\r\n\r\n")
        elif kind == "huge_line":
            writer.write(b"agi_calleridname: " + b"x" * 100_000)
        async with asyncio.timeout(WAIT):
            if kind == "trickle":  # a byte at a time, each well inside any per-line timeout
                for byte in b"agi_network: yes\nagi_network_script: hotline\n" * 100:
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.05)
                    if reader.at_eof() or writer.is_closing():
                        break
                    await writer.drain()
            while await reader.read(65536):
                pass
    except ConnectionError:
        pass  # reset by the server: closed too
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_thousand_bad_connections_while_real_calls_run() -> None:
    results: list[IvrResult] = []
    settings = AgiSettings(port=0, header_timeout=0.5, max_connections=4 * BAD, max_line_bytes=8192)
    release = asyncio.Event()
    paused = 0

    async def hold(line: str) -> None:  # the real calls wait at their first menu until the flood is over
        nonlocal paused
        if line.startswith("WAIT FOR DIGIT 4000") and not release.is_set():
            paused += 1
            await release.wait()

    async with AgiServer(flows=lambda: {"hotline": HOTLINE}, directory=nobody, on_end=results.append,
                         settings=settings, clock=lambda: OPEN) as server:
        port = server.port
        async with asyncio.TaskGroup() as calls:
            real = [calls.create_task(place_call("127.0.0.1", port, agi_env("hotline", caller=f"1390000{i:04d}"),
                                                 Scenario(keys=ROUTES[i % len(ROUTES)][0]), before_reply=hold,
                                                 timeout=WAIT)) for i in range(REAL)]
            for _ in range(2000):  # bounded: wait until every real call is mid-flow
                if paused == REAL:
                    break
                await asyncio.sleep(0.01)
            assert paused == REAL and server.active_sessions == REAL

            kinds = cycle(KINDS)
            during: list[CallRecord] = []
            size = wave_size()
            for start in range(0, BAD, size):
                async with asyncio.TaskGroup() as wave:
                    for _ in range(min(size, BAD - start)):
                        wave.create_task(bad_connection(port, next(kinds)))
                    # while the wave is open the server still takes and finishes a new call
                    during.append(await place_call("127.0.0.1", port, agi_env("hotline"), Scenario(keys="1,2"),
                                                   timeout=WAIT))
            release.set()

        for task, (_, entry_point) in zip(real, cycle(ROUTES)):
            assert task.result().variables["CTI_ENTRY"] == entry_point
        assert all(record.variables["CTI_ENTRY"] == "tech_support" for record in during)
        for _ in range(2000):  # on_end runs just after each call's socket closes
            if len(results) == REAL + len(during) and server.open_connections == 0:
                break
            await asyncio.sleep(0.01)

    stats = server.stats
    expected: dict[str, int] = {}
    for _, kind in zip(range(BAD), cycle(KINDS)):
        expected[REASONS[kind]] = expected.get(REASONS[kind], 0) + 1
    assert stats.bad_headers == expected
    assert sorted(r.entry_point or "" for r in results) == sorted(
        [e for _, e in zip(range(REAL), cycle(r for _, r in ROUTES))] + ["tech_support"] * len(during))
    assert all(r.failure is None for r in results)
    assert (stats.sessions, stats.refused, stats.internal_errors) == (REAL + len(during), 0, 0)
    assert stats.connections == BAD + REAL + len(during)

"""IVR over FastAGI: concurrent calls one server process carries, and the latency of each AGI command.

N simulated Asterisk channels (``cti.sim.agi_caller``) run the shipped hotline flow against the FastAGI
server (``cti.agi.AgiServer``, in its own process, on 127.0.0.1) call after call, so N sessions are
always in flight. A prompt or a wait for a key takes ``--think-ms`` at the client (jittered 0.5-1.5x),
standing in for a caller who listens and presses; SET VARIABLE and ANSWER are answered at once. Calls
mix the menu choices, a wrong key and a VIP (the directory is an in-process dict). Latency per AGI
command is measured at the client: reply written -> next command read (so it holds the server's
interpreter step, a lookup where the flow has one, and both loops' scheduling).

Next to it, in the same run and with the same clients: a bare asyncio FastAGI echo server that reads
the environment and answers each reply with the next line of a fixed script (the lines the flow sent for
that caller's scenario, recorded from the real server first). Both servers run on uvloop, as ``cti
serve`` does (``--loop asyncio`` for the stock loop). ``--runs`` alternates them; figures are medians.

    .venv/bin/python benchmarks/ivr.py                          # 500 sessions, 3 x 10 s per server
    .venv/bin/python benchmarks/ivr.py --sessions 100 --seconds 5 --runs 1 --json

The host's load average is printed per run: on a shared machine other processes' CPU shows up as tail
latency (a server process waiting for a core), so compare runs taken at a similar load.

Target (issue 14): 500 concurrent sessions with p99 per command <= 5 ms and <= 3x the echo server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cti.sim.agi_caller import Scenario, agi_env, place_call

ROOT = Path(__file__).resolve().parents[1]

OPEN = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)  # Monday 11:00 in Shanghai: the hotline is open
TARGET_P99_S = 0.005
TARGET_RATIO = 3.0
#: caller number, keys, the entry point the call must reach
SCENARIOS: tuple[tuple[str, str, str], ...] = (
    ("13900000001", "1,1", "billing"),
    ("13900000002", "2,2", "tech_support"),
    ("13900000003", "1,3", "complaints"),
    ("13900000004", "2,7,1", "billing"),       # a wrong key first
    ("13900000005", "1,timeout,2", "tech_support"),
    ("8613900000001", "2", "vip"),              # a VIP: straight to the account manager
)
SLOW = ("STREAM FILE", "WAIT FOR DIGIT", "GET DATA")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def _new_loop(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


# ---------------------------------------------------------------- the two servers (child processes)


def _agi_process(pipe: Connection, loop: str) -> None:
    from cti.agi import AgiServer, AgiSettings, IvrResult
    from cti.app import settle_heap
    from cti.logs import configure_logging
    from ivr_flows import load_flow

    configure_logging("json", "WARNING")
    flows = {"hotline": load_flow(ROOT / "config" / "ivr" / "hotline.yaml")}
    customers: dict[str, Mapping[str, object]] = {
        "8613900000001": {"id": "c-1002", "name": "Li Na", "vip_tier": 3, "account_manager": "chen"}}
    ended: dict[str, int] = {}

    async def directory(by: str, value: str) -> Mapping[str, object] | None:
        return customers.get(value)

    def on_end(result: IvrResult) -> None:
        ended[result.kind] = ended.get(result.kind, 0) + 1

    async def main() -> None:
        settle_heap()  # as cti serve does after start-up: a full collection of the start-up heap stalls the loop
        settings = AgiSettings(port=0, max_sessions=5000, max_connections=10000)
        async with AgiServer(flows=lambda: flows, directory=directory, on_end=on_end,  # type: ignore[arg-type]
                             settings=settings, clock=lambda: OPEN) as server:
            pipe.send(server.port)
            await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
            stats = server.stats
            pipe.send({"sessions": stats.sessions, "failed": stats.failed, "refused": stats.refused,
                       "reply_timeouts": stats.reply_timeouts, "ended": ended})

    with asyncio.Runner(loop_factory=_new_loop(loop)) as runner:
        runner.run(main())


def _echo_process(pipe: Connection, loop: str, scripts: dict[str, list[bytes]]) -> None:
    from cti.app import settle_heap

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            env = await reader.readuntil(b"\n\n")
            start = env.index(b"agi_callerid: ") + len(b"agi_callerid: ")
            for line in scripts[env[start : env.index(b"\n", start)].decode()]:
                writer.write(line)
                await writer.drain()
                if not await reader.readline():
                    break
        finally:
            writer.close()

    async def main() -> None:
        settle_heap()
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        pipe.send(server.sockets[0].getsockname()[1])
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        server.close()
        pipe.send({})

    with asyncio.Runner(loop_factory=_new_loop(loop)) as runner:
        runner.run(main())


# ---------------------------------------------------------------- the clients (this process)


@dataclass
class Run:
    server: str
    latencies: list[float] = field(default_factory=list)
    calls: int = 0
    failures: int = 0
    in_flight: int = 0
    in_flight_samples: list[int] = field(default_factory=list)
    cpu_percent: float = 0.0
    load: float = 0.0  # the host's 1-minute load average at the end of the window (this benchmark included)
    server_stats: dict[str, Any] = field(default_factory=dict)


async def _drive(port: int, run: Run, *, sessions: int, seconds: float, think_s: float, check: bool,
                 pid: int) -> None:
    rng = random.Random(14)
    warmup = max(1.0, 8 * think_s)  # one call's length: every worker is mid-call before measuring
    t0 = time.perf_counter()
    measure_from, measure_to = t0 + warmup, t0 + warmup + seconds

    async def think(line: str) -> None:
        if line.startswith(SLOW):
            await asyncio.sleep(think_s * rng.uniform(0.5, 1.5))

    async def worker(i: int) -> None:
        await asyncio.sleep(rng.uniform(0, warmup / 2))  # no thundering herd at the start
        n = i
        while (started := time.perf_counter()) < measure_to:
            caller, keys, entry = SCENARIOS[n % len(SCENARIOS)]
            n += 1
            run.in_flight += 1
            try:
                record = await place_call("127.0.0.1", port, agi_env("hotline", caller=caller), Scenario(keys=keys),
                                          before_reply=think, timeout=60 + 20 * think_s)
                ok = record.closed_by_server and (not check or record.variables.get("CTI_ENTRY") == entry)
            except (OSError, TimeoutError):
                ok, record = False, None
            finally:
                run.in_flight -= 1
            if started >= measure_from:
                run.calls += 1
                run.failures += 0 if ok else 1
                if record is not None:
                    run.latencies.extend(record.latencies)

    async def sample() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        cpu0, w0 = _cpu_seconds(pid), time.perf_counter()
        while time.perf_counter() < measure_to:
            run.in_flight_samples.append(run.in_flight)
            await asyncio.sleep(0.05)
        run.cpu_percent = 100 * (_cpu_seconds(pid) - cpu0) / (time.perf_counter() - w0)
        run.load = os.getloadavg()[0]

    async with asyncio.TaskGroup() as tg:
        tg.create_task(sample(), name="bench.sample")
        for i in range(sessions):
            tg.create_task(worker(i), name=f"bench.caller[{i}]")


def _phase(server: str, *, sessions: int, seconds: float, think_s: float, loop: str,
           scripts: dict[str, list[bytes]]) -> Run:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    target: Any = _agi_process if server == "agi" else _echo_process
    args = (child, loop) if server == "agi" else (child, loop, scripts)
    proc = ctx.Process(target=target, args=args, name=f"bench-{server}")
    proc.start()
    try:
        port = parent.recv()
        run = Run(server)
        with asyncio.Runner(loop_factory=_new_loop(loop)) as runner:
            runner.run(_drive(port, run, sessions=sessions, seconds=seconds, think_s=think_s, check=server == "agi",
                              pid=proc.pid or 0))
        parent.send("stop")
        run.server_stats = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return run


def _record_scripts(loop: str) -> dict[str, list[bytes]]:
    """The command lines the real server sends for each scenario: the echo server's fixed scripts."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_agi_process, args=(child, loop), name="bench-agi-record")
    proc.start()
    try:
        port = parent.recv()

        async def record() -> dict[str, list[bytes]]:
            scripts = {}
            for caller, keys, _ in SCENARIOS:
                rec = await place_call("127.0.0.1", port, agi_env("hotline", caller=caller), Scenario(keys=keys))
                scripts[caller] = [f"{line}\n".encode() for line in rec.commands]
            return scripts

        scripts = asyncio.run(record())
        parent.send("stop")
        parent.recv()
    finally:
        proc.join(10)
    return scripts


def _summary(runs: list[Run], sessions: int) -> dict[str, Any]:
    def med(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    per_run = []
    for r in runs:
        per_run.append({
            "calls": r.calls, "failures": r.failures, "commands": len(r.latencies),
            "sessions_min": min(r.in_flight_samples, default=0),
            "sessions_mean": round(statistics.fmean(r.in_flight_samples), 1) if r.in_flight_samples else 0,
            "p50_ms": _ms(_pct(r.latencies, 50)), "p99_ms": _ms(_pct(r.latencies, 99)),
            "p999_ms": _ms(_pct(r.latencies, 99.9)), "max_ms": _ms(max(r.latencies, default=None)),
            "server_cpu_percent": round(r.cpu_percent, 1), "load": round(r.load, 2), "server": r.server_stats,
        })
    keys = ("p50_ms", "p99_ms", "p999_ms", "max_ms", "server_cpu_percent", "sessions_min", "sessions_mean", "load")
    out: dict[str, Any] = {k: med([p[k] for p in per_run]) for k in keys}
    out |= {"sessions_target": sessions, "calls": sum(p["calls"] for p in per_run),
            "failures": sum(p["failures"] for p in per_run), "commands": sum(p["commands"] for p in per_run),
            "runs": per_run}
    return out


def _row(label: str, s: Mapping[str, Any]) -> str:
    def f(v: Any, width: int) -> str:
        return f"{v:>{width}.2f}" if isinstance(v, float) else f"{v!s:>{width}}"

    calls, failures = s.get("calls", ""), s.get("failures", "")
    return (f"{label:<11} {f(s['sessions_min'], 8)}/{f(s['sessions_mean'], 8)} {calls!s:>6} {failures!s:>4} "
            f"{s.get('commands', '')!s:>8} {f(s['p50_ms'], 7)} {f(s['p99_ms'], 7)} {f(s['p999_ms'], 8)} "
            f"{f(s['max_ms'], 7)} {f(s['server_cpu_percent'], 6)}% {f(s['load'], 5)}")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=500, help="concurrent simulated calls (default 500)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per server and run")
    parser.add_argument("--think-ms", type=float, default=500.0,
                        help="a prompt or a wait for a key at the client (default 500 ms, jittered 0.5-1.5x)")
    parser.add_argument("--runs", type=int, default=3, help="alternating runs per server (median reported)")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            args.loop = "asyncio"
    think_s = args.think_ms / 1000
    scripts = _record_scripts(args.loop)
    runs: dict[str, list[Run]] = {"agi": [], "echo": []}
    for i in range(args.runs):
        for server in (("agi", "echo") if i % 2 == 0 else ("echo", "agi")):
            if not args.json:
                print(f"run {i + 1}/{args.runs}: {server} ...", file=sys.stderr, flush=True)
            runs[server].append(_phase(server, sessions=args.sessions, seconds=args.seconds, think_s=think_s,
                                       loop=args.loop, scripts=scripts))
    agi, echo = _summary(runs["agi"], args.sessions), _summary(runs["echo"], args.sessions)
    ratio = (agi["p99_ms"] / echo["p99_ms"]) if agi["p99_ms"] and echo["p99_ms"] else None
    result = {
        "sessions": args.sessions, "think_ms": args.think_ms, "seconds": args.seconds, "runs": args.runs,
        "loop": args.loop, "cpus": os.cpu_count(), "agi": agi, "echo": echo,
        "p99_ratio": round(ratio, 2) if ratio is not None else None,
        "target": {"p99_ms": TARGET_P99_S * 1000, "ratio": TARGET_RATIO,
                   "met": bool(agi["p99_ms"] is not None and agi["p99_ms"] <= TARGET_P99_S * 1000
                               and ratio is not None and ratio <= TARGET_RATIO and agi["failures"] == 0
                               and (agi["sessions_min"] or 0) >= args.sessions)},
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"\n{args.sessions} concurrent calls, think {args.think_ms:g} ms, {args.seconds:g} s x {args.runs} run(s), "
          f"{args.loop}, {os.cpu_count()} CPUs")
    header = (f"{'':<11} {'sessions min/mean':>17} {'calls':>6} {'fail':>4} {'commands':>8} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'p99.9 ms':>8} {'max ms':>7} {'srv CPU':>7} {'load':>5}")
    print(header)
    for name, s in (("agi", agi), ("echo", echo)):
        for i, r in enumerate(s["runs"], 1):
            print(_row(f"{name} run {i}", r))
        print(_row(f"{name} median", s))
    print()
    verdict = "met" if result["target"]["met"] else "NOT met"
    print(f"p99 ratio agi/echo: {result['p99_ratio']}  (target: p99 <= {TARGET_P99_S * 1000:g} ms and <= "
          f"{TARGET_RATIO:g}x echo, no failures, all sessions in flight: {verdict})")


if __name__ == "__main__":
    main()

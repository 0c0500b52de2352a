"""AMI ingest throughput and screen-pop latency, each next to baselines run on the same bytes.

Throughput: a loopback TCP server sends a stream built from the recorded Asterisk 22
captures (call ids rewritten per repetition so every call is new) and each reader
consumes it to EOF:

  raw            socket reads only (the ceiling)
  minimal        readuntil(b"\\r\\n\\r\\n") + split into a dict (the simplest correct parser)
  panoramisk     panoramisk 1.4's AMIProtocol parse with a catch-all dispatch
  cti            our AMI client (socket + sans-IO codec + ordered consumer) + the call model reducer

Live shape: the same readers on a stream a separate process writes one event per write at a
steady rate (as Asterisk does), so a reader that keeps up gets one or two events per read and pays
its per-read overhead on each; the figure is the reader's own CPU time per event.

Latency: the PBX simulator offers calls at a fixed rate to many agents; a subscriber
measures AgentCalled (the simulator's event Timestamp) to the MQTT message received.

Run: ./run bench  [--events N] [--rate CALLS_PER_S] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import re
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cti.ami.codec import Message  # noqa: E402
from cti.model.reducer import CallModel  # noqa: E402

TRACES = ROOT / "tests" / "fixtures" / "ami-traces"
GREETING = b"Asterisk Call Manager/11.0.0\r\n"
ID_RE = re.compile(rb": 1795(\d{6})\.")


def build_stream(target_events: int) -> tuple[bytes, int]:
    """Events only (no responses), repeated with fresh call ids until ``target_events``."""
    events: list[bytes] = []
    for name in ("basic", "vip", "burst", "abandon", "cti"):
        raw = (TRACES / name / "ami-raw.txt").read_bytes()
        blocks = raw.split(b"\r\n\r\n")
        blocks[0] = blocks[0].split(b"\r\n", 1)[1]  # drop the greeting line
        events += [b + b"\r\n\r\n" for b in blocks if b.startswith(b"Event: ")]
    one = b"".join(events)
    reps = max(1, target_events // len(events))
    parts = [GREETING]
    for k in range(reps):
        parts.append(ID_RE.sub(lambda m, k=k: b": %d." % (1795000000 + int(m.group(1)) + k * 1000), one))
    return b"".join(parts), reps * len(events)


async def serve_once(payload: bytes) -> tuple[asyncio.Server, int]:
    """Greeting; if the client logs in, a Success reply; then the whole stream and EOF."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload[: len(GREETING)])
        try:
            action = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.2)
        except TimeoutError:
            action = b""  # a reader that does not log in
        if b"Action: Login" in action:
            action_id = action.split(b"ActionID: ", 1)[1].split(b"\r\n", 1)[0]
            writer.write(b"Response: Success\r\nActionID: " + action_id
                         + b"\r\nMessage: Authentication accepted\r\n\r\n")
        writer.write(memoryview(payload)[len(GREETING) :])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _serve_paced(rate: float, events: int) -> None:
    """Child process: one connection, greeting and login reply, then ``events`` events, one per write,
    ``rate`` a second (on a schedule), then close. Prints the port first."""
    import socket

    blocks = _event_blocks()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        print(listener.getsockname()[1], flush=True)
        conn, _ = listener.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(GREETING)
            conn.settimeout(0.2)
            try:
                action = conn.recv(4096)
            except TimeoutError:
                action = b""
            conn.settimeout(None)
            if b"Action: Login" in action:
                action_id = action.split(b"ActionID: ", 1)[1].split(b"\r\n", 1)[0]
                conn.sendall(b"Response: Success\r\nActionID: " + action_id
                             + b"\r\nMessage: Authentication accepted\r\n\r\n")
            start = time.perf_counter()
            for i in range(events):
                delay = start + i / rate - time.perf_counter()
                if delay > 0.0002:
                    time.sleep(delay)
                conn.sendall(blocks[i % len(blocks)])


def _event_blocks() -> list[bytes]:
    stream, _ = build_stream(1)
    return [b + b"\r\n\r\n" for b in stream[len(GREETING):].split(b"\r\n\r\n") if b]


async def live_shape(rate: float, events: int) -> dict[str, float]:
    """CPU microseconds per event of each reader, on the one-event-per-write stream."""
    readers: dict[str, Callable[[int], Awaitable[int]]] = {
        "raw": read_raw, "minimal": read_minimal, "panoramisk": read_panoramisk,
        "cti": functools.partial(read_cti, expected=events),
    }
    out = {}
    for name, reader in readers.items():
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve-paced", str(rate), str(events), stdout=asyncio.subprocess.PIPE)
        assert child.stdout is not None
        port = int(await child.stdout.readline())
        gc.collect()
        cpu = time.process_time()
        got = await reader(port)
        out[name] = 1e6 * (time.process_time() - cpu) / events
        await child.wait()
        if abs(got - events) > 1:
            raise SystemExit(f"{name}: counted {got} events, expected {events}")
    return out


async def read_raw(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    n, tail = 0, b""
    while chunk := await reader.read(1 << 16):
        n += (tail + chunk[:3]).count(b"\r\n\r\n") + chunk.count(b"\r\n\r\n")
        tail = chunk[-3:]
    writer.close()
    return n


async def read_minimal(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    await reader.readuntil(b"\r\n")
    n = 0
    try:
        while True:
            block = await reader.readuntil(b"\r\n\r\n")
            fields = dict(line.split(": ", 1) for line in block[:-4].decode().split("\r\n") if ": " in line)
            n += "Event" in fields
    except asyncio.IncompleteReadError:
        pass
    writer.close()
    return n


async def read_panoramisk(port: int) -> int:
    from panoramisk.ami_protocol import AMIProtocol

    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    class CatchAll:
        forgetable_actions: tuple[str, ...] = ()
        count = 0

        def __init__(self) -> None:
            self.awaiting_actions: list[object] = []

        def dispatch(self, message: object) -> None:
            self.count += 1

        def connection_lost(self, exc: object) -> None:
            if not done.done():
                done.set_result(None)

    factory = CatchAll()
    protocol = AMIProtocol()
    await loop.create_connection(lambda: protocol, "127.0.0.1", port)
    protocol.factory = factory
    await done
    return factory.count


async def read_cti(port: int, expected: int) -> int:
    """The production path: AmiClient (reader, codec, ordered consumer) feeding the reducer."""
    from cti.ami.client import AmiClient
    from cti.config import AgentConfig, AmiConfig

    agents = [AgentConfig(id=n.lower(), name=n, interface=f"Local/100{i}@sim-agents")
              for i, n in enumerate(("Alice", "Bob", "Chen"), start=1)]
    model = CallModel(agents=agents)
    count = 0
    done = asyncio.Event()

    def on_event(msg: Message) -> None:  # plain, as the server's: called from the read path
        nonlocal count
        count += 1
        model.apply(msg)
        if count == expected:
            done.set()

    client = AmiClient(config=AmiConfig(host="127.0.0.1", port=port, ping_interval=60), on_event=on_event)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(client.run(), name="bench.ami")
        await done.wait()
        await client.close()
    return count


async def measure(name: str, reader: Callable[[int], Awaitable[int]], payload: bytes, events: int,
                  rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        server, port = await serve_once(payload)
        gc.collect()
        start = time.perf_counter()
        got = await reader(port)
        elapsed = time.perf_counter() - start
        server.close()
        await server.wait_closed()
        if abs(got - events) > 1:
            raise SystemExit(f"{name}: counted {got} events, expected {events}")
        best = max(best, events / elapsed)
    return best


async def throughput(target: int, rounds: int) -> dict[str, float]:
    payload, events = build_stream(target)
    print(f"stream: {events} events, {len(payload) / 1e6:.1f} MB, best of {rounds} rounds")
    readers: dict[str, Callable[[int], Awaitable[int]]] = {
        "raw": read_raw, "minimal": read_minimal, "panoramisk": read_panoramisk,
        "cti": functools.partial(read_cti, expected=events),  # stops once it has seen them all
    }
    return {name: await measure(name, fn, payload, events, rounds) for name, fn in readers.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events in the throughput stream")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0, help="calls per second for the latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--live-rate", type=float, default=10_000, help="events/s of the one-event-per-write stream")
    parser.add_argument("--live-events", type=int, default=50_000)
    parser.add_argument("--serve-paced", nargs=2, type=float, help=argparse.SUPPRESS)  # the paced child
    args = parser.parse_args()
    if args.serve_paced:
        _serve_paced(args.serve_paced[0], int(args.serve_paced[1]))
        return

    from cti.logs import configure_logging

    configure_logging("json", "WARNING")
    rates = asyncio.run(throughput(args.events, args.rounds))
    print(f"\n{'reader':<12}{'events/s':>12}{'vs panoramisk':>16}{'vs minimal':>12}")
    for name, rate in rates.items():
        print(f"{name:<12}{rate:>12,.0f}{rate / rates['panoramisk']:>15.2f}x{rate / rates['minimal']:>11.2f}x")
    live = asyncio.run(live_shape(args.live_rate, args.live_events))
    print(f"\nlive shape: {args.live_events} events written one per write at {args.live_rate:,.0f}/s "
          f"by another process; reader CPU per event")
    print(f"{'reader':<12}{'us/event':>12}{'vs panoramisk':>16}{'vs minimal':>12}")
    for name, us in live.items():
        print(f"{name:<12}{us:>12.1f}{live['panoramisk'] / us:>15.2f}x{live['minimal'] / us:>11.2f}x")
    if not args.skip_latency:
        from benchmarks.capacity import one_run

        lat = asyncio.run(one_run(rate=args.rate, seconds=args.seconds, agents=250))
        print(f"\nAgentCalled -> call.offered, {args.rate:.0f} calls/s for {args.seconds:.0f}s, 250 agents "
              f"({lat['calls']} offers, {lat['unmeasured']} unmeasured); benchmarks/capacity.py has the full sweep:")
        print(f"{'':<22}{'p50 ms':>10}{'p99 ms':>10}")
        for name, p50, p99 in (("cti over MQTT", lat["p50_ms"], lat["p99_ms"]),
                               ("bare MQTT QoS 1", lat["bare_mqtt_p50_ms"], lat["bare_mqtt_p99_ms"]),
                               ("cti over WebSocket", lat["ws_p50_ms"], lat["ws_p99_ms"]),
                               ("bare aiohttp WebSocket", lat["bare_ws_p50_ms"], lat["bare_ws_p99_ms"])):
            print(f"{name:<22}{p50:>10}{p99:>10}")
        print(f"\nserver CPU per call: {lat['cpu_ms_per_call']:.2f} ms (process CPU seconds / calls offered); "
              f"{lat['cpu_ms_per_call_net']:.2f} ms net of the idle server")


if __name__ == "__main__":
    main()

"""Throw-away redis-server and mosquitto on free loopback ports.

``cti demo`` and the test suite both need a real broker and a real Redis without
touching whatever the machine already runs, so each gets private ones here.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DevServices", "ServiceError", "dev_services", "free_port", "mosquitto", "mosquitto_secured",
           "redis_server"]

_SEARCH = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")


#: The demo's broker listens here when the port is free, so a client configured once keeps working
#: across demo restarts (``GET /api/client-config`` says where it is either way).
DEMO_MQTT_PORT = 18830


class ServiceError(RuntimeError):
    """A helper service is not installed or did not start."""


def free_port(preferred: int = 0) -> int:
    """``preferred`` if it is free on 127.0.0.1 (the demo's stable ports), else a free port below the
    kernel's ephemeral range: a port that only becomes a listener later (an address a simulator must be
    told first) is then never taken meanwhile by one of the many outgoing connections the kernel gives
    ephemeral ports to."""
    if preferred and _bindable(preferred):
        return preferred
    low = _ephemeral_low()
    for _ in range(200):
        port = _ports.randrange(max(1024, low - 20_000), low)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    with socket.socket() as s:  # a crowded range: any free port, as before
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_ports = random.Random()
_handed_out: set[int] = set()  # this process's picks: none is handed out twice


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _binary(name: str, package: str) -> str:
    path = shutil.which(name) or next((f"{d}/{name}" for d in _SEARCH if Path(d, name).exists()), None)
    if path is None:
        raise ServiceError(f"{name} is not installed: apt-get install {package}")
    return path


def _wait_port(port: int, proc: subprocess.Popen[bytes], name: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{name} exited with {proc.returncode} before listening on 127.0.0.1:{port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ServiceError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


@contextmanager
def _process(argv: list[str], port: int, name: str, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (workdir / f"{name}.log").open("wb")
    proc = subprocess.Popen(argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, proc, name)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextmanager
def redis_server(workdir: Path, port: int | None = None, *, persist: bool = False) -> Iterator[str]:
    """A redis-server on 127.0.0.1 (a free port unless given: a restart on the same one); yields its
    URL. No persistence unless ``persist``: then every write goes to an append-only file in
    ``workdir``, and a restart there has the data back."""
    port = port or free_port()
    argv = [_binary("redis-server", "redis-server"), "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--dir", str(workdir),
            *(["--appendonly", "yes", "--appendfsync", "always"] if persist else ["--appendonly", "no"])]
    with _process(argv, port, "redis-server", workdir):
        yield f"redis://127.0.0.1:{port}/0"


@contextmanager
def mosquitto(workdir: Path, preferred_port: int = 0) -> Iterator[int]:
    """A mosquitto broker on a free 127.0.0.1 port, anonymous, no persistence; yields its port."""
    port = free_port(preferred_port)
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    with _process([_binary("mosquitto", "mosquitto"), "-c", str(conf)], port, "mosquitto", workdir):
        yield port


@contextmanager
def mosquitto_secured(workdir: Path, passwd: Path, acl: Path) -> Iterator[int]:
    """As :func:`mosquitto`, but only the users in ``passwd`` (no anonymous), limited by ``acl``; yields its port.

    It runs as the user who starts it (not ``mosquitto``, when that is root), so it can read files that user
    wrote with mode 0600. Its pid is in ``workdir/mosquitto.pid``: SIGHUP it to reread both files."""
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\npersistence false\n"
                    f"password_file {passwd.resolve()}\nacl_file {acl.resolve()}\n"
                    f"pid_file {(workdir / 'mosquitto.pid').resolve()}\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n")
    with _process([_binary("mosquitto", "mosquitto"), "-c", str(conf)], port, "mosquitto", workdir):
        yield port


@dataclass(frozen=True, slots=True)
class DevServices:
    redis_url: str
    mqtt_port: int
    workdir: Path


@contextmanager
def dev_services(mqtt_port: int = 0) -> Iterator[DevServices]:
    """A private Redis and broker; the broker on ``mqtt_port`` when it is free (the demo's stable port)."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cti-dev-")))
        url = stack.enter_context(redis_server(workdir))
        port = stack.enter_context(mosquitto(workdir, mqtt_port))
        yield DevServices(redis_url=url, mqtt_port=port, workdir=workdir)

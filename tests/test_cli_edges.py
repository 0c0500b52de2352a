"""Issue 10 item 7: everyday edges a user hit on the command line.

``cti directory import`` against a Redis that is not there, with a spreadsheet
saved by a Chinese Excel, and with a number two customers share; ``cti replay``
given something that is not a capture; a bad ``CTI_*`` variable; ``cti demo``
stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner, Result

from cti.cli import main
from cti.config import ConfigError, load_config
from cti.devservices import free_port
from cti.directory.models import Customer
from cti.directory.store import RedisDirectory
from tests.traces import TRACES

ROOT = Path(__file__).resolve().parents[1]

HEADER = "id,numbers,name,company,notes"
ROWS = ["c1,+86 138 0000 0001,王磊,华信物流,常来电询问延误的货物",
        "c2,13900000002,李娜,东方银行,VIP 客户"]


def _config(tmp_path: Path, redis_url: str, prefix: str = "edges:") -> Path:
    path = tmp_path / "cti.yaml"
    path.write_text(f"redis:\n  url: {redis_url}\n  key_prefix: '{prefix}'\n")
    return path


def _import(*args: str) -> Result:
    return CliRunner().invoke(main, ["directory", "import", *args])


def _directory(redis_url: str, prefix: str, check: Callable[[RedisDirectory], Awaitable[object]]) -> object:
    async def run() -> object:
        client = aioredis.from_url(redis_url)
        try:
            return await check(RedisDirectory(client, key_prefix=prefix))
        finally:
            await client.aclose()

    return asyncio.run(run())


def _lookup(redis_url: str, number: str, prefix: str = "edges:") -> Customer | None:
    result = _directory(redis_url, prefix, lambda d: d.lookup(number))
    assert result is None or isinstance(result, Customer)
    return result


def _one_error_line(result: Result) -> str:
    assert result.exit_code != 0
    assert ("Traceback" not in result.output and result.exception is None) or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- cti directory import -----------------------------------------------------------------------------


def test_import_against_unreachable_redis_is_one_clear_line(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = _import(str(ROOT / "config" / "customers.yaml"), "-c", str(_config(tmp_path, url)))
    line = _one_error_line(result)
    assert result.exit_code == 1
    assert "cannot reach Redis" in line and url in line, "what failed and where"
    assert "CTI_REDIS__URL" in line and "-c" in line, "what to do"


def test_import_never_prints_a_redis_password(tmp_path: Path) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    result = _import(str(ROOT / "config" / "customers.yaml"), "-c", str(_config(tmp_path, url)))
    line = _one_error_line(result)
    assert "hunter2" not in result.output and ":***@127.0.0.1" in line


@pytest.mark.parametrize(("name", "encode", "expected"), [
    ("gbk.csv", lambda text: text.encode("gbk"), "gb18030"),
    ("gb18030.csv", lambda text: text.encode("gb18030"), "gb18030"),
    ("bom.csv", lambda text: codecs.BOM_UTF8 + text.encode("utf-8"), "utf-8-sig"),
    # Excel's "Unicode text": UTF-16 LE with a mark, tab-separated, CRLF
    ("unicode.txt", lambda text: codecs.BOM_UTF16_LE + text.replace(",", "\t").encode("utf-16-le"), "utf-16"),
    ("unicode.csv", lambda text: codecs.BOM_UTF16_LE + text.encode("utf-16-le"), "utf-16"),
    ("utf16be.csv", lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"), "utf-16"),
])
def test_import_detects_the_encoding_excel_saved(tmp_path: Path, redis_url: str, name: str,
                                                 encode: Callable[[str], bytes], expected: str) -> None:
    source = tmp_path / name
    source.write_bytes(encode("\r\n".join([HEADER, *ROWS]) + "\r\n"))
    result = _import(str(source), "-c", str(_config(tmp_path, redis_url)))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("imported 2 customers") and f"({expected})" in result.stdout
    customer = _lookup(redis_url, "13800000001")
    assert customer is not None and (customer.name, customer.company) == ("王磊", "华信物流")
    assert customer.notes == "常来电询问延误的货物"


def test_undetectable_encoding_names_the_option_and_the_option_works(tmp_path: Path, redis_url: str) -> None:
    source = tmp_path / "latin.csv"
    source.write_bytes("id,numbers,name\nc1,13800000001,Ren\xe9e M\xfcller\n".encode("cp1252"))
    result = _import(str(source), "-c", str(_config(tmp_path, redis_url)))
    line = _one_error_line(result)
    assert str(source) in line and "encoding" in line and "--encoding NAME" in line

    result = _import(str(source), "--encoding", "cp1252", "-c", str(_config(tmp_path, redis_url)))
    assert result.exit_code == 0, result.output
    customer = _lookup(redis_url, "13800000001")
    assert customer is not None and customer.name == "Renée Müller"


def test_encoding_option_overrides_detection(tmp_path: Path) -> None:
    from cti.directory.importer import DirectoryEncodingError, load_directory

    data = "id,numbers,name\nc1,13800000001,王磊\n".encode("gb18030")
    source = tmp_path / "gb.csv"
    source.write_bytes(data)
    assert load_directory(source).encoding == "gb18030"
    with pytest.raises(DirectoryEncodingError, match="not valid utf-8"):
        load_directory(source, encoding="utf-8")
    assert load_directory(source, encoding="gbk").customers[0].name == "王磊"
    bad = _import(str(source), "--encoding", "no-such-codec")
    assert bad.exit_code == 2 and "unknown encoding 'no-such-codec'" in bad.output


def test_an_excel_workbook_is_named_as_such(tmp_path: Path) -> None:
    source = tmp_path / "customers.csv"
    source.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    line = _one_error_line(_import(str(source)))
    assert "Excel workbook" in line and "CSV" in line


def test_import_uses_the_config_and_its_env_overrides(tmp_path: Path, redis_url: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path, f"redis://127.0.0.1:{free_port()}/0", prefix="from-file:")
    monkeypatch.setenv("CTI_REDIS__URL", redis_url)
    monkeypatch.setenv("CTI_REDIS__KEY_PREFIX", "from-env:")
    result = _import(str(ROOT / "config" / "customers.yaml"), "--config", str(config))
    assert result.exit_code == 0, result.output
    assert _lookup(redis_url, "13800000001", prefix="from-env:") is not None
    assert _lookup(redis_url, "13800000001", prefix="from-file:") is None


def test_a_shared_number_is_reported_and_matches_nobody(tmp_path: Path, redis_url: str) -> None:
    source = tmp_path / "shared.csv"
    source.write_text("id,numbers,name\n"
                      "c1,+86 138 0000 0001; 13900000001,Wang Lei\n"
                      "c2,0086 138 0000 0001,Li Na\n"
                      "c3,13700000003,Zhang Wei\n", encoding="utf-8")
    result = _import(str(source), "-c", str(_config(tmp_path, redis_url)))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("imported 3 customers")
    [warning] = [line for line in result.stderr.splitlines() if "8613800000001" in line]
    assert "c1, c2" in warning and "pop no customer record" in warning
    # the ambiguous number (and its other formats) pops nobody; everything else is imported and matches
    for form in ("+8613800000001", "13800000001", "013800000001"):
        assert _lookup(redis_url, form) is None
    assert _lookup(redis_url, "13900000001").id == "c1"  # type: ignore[union-attr]
    assert _lookup(redis_url, "13700000003").id == "c3"  # type: ignore[union-attr]
    assert _directory(redis_url, "edges:", lambda d: d.count()) == 3


def test_import_help_states_the_shared_number_policy() -> None:
    result = CliRunner().invoke(main, ["directory", "import", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--encoding" in text and "-c, --config" in text and "GB18030" in text
    assert "several customers" in text and "pop no customer record" in text


# --- cti replay ---------------------------------------------------------------------------------------


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = zlib.compress(b"\x00\xff\x00\x00" * 4)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 4, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


@pytest.mark.parametrize(("name", "content"), [
    ("picture.png", _png()),
    ("customers.csv", (ROOT / "config" / "customers.yaml").read_bytes()),
    ("table.csv", b"id,numbers,name\r\nc1,13800000001,A\r\n\r\nc2,13800000002,B\r\n\r\n"),
    ("empty.txt", b""),
    ("blank.txt", b"\r\n\r\n\n"),
    ("noise.bin", bytes(range(1, 256)) * 8000),
])
def test_replay_refuses_what_is_not_a_capture(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    result = CliRunner().invoke(main, ["replay", str(path)])
    line = _one_error_line(result)
    assert result.exit_code == 1 and result.stdout == ""
    assert str(path) in line and "not an AMI capture" in line


def test_replay_refuses_non_capture_on_stdin() -> None:
    result = CliRunner().invoke(main, ["replay", "-"], input=b"hello\nworld\n")
    assert "not an AMI capture" in _one_error_line(result)


def test_replay_still_takes_captures_with_and_without_greeting() -> None:
    capture = (TRACES / "basic" / "ami-raw.txt").read_bytes()
    whole = CliRunner().invoke(main, ["replay", "-"], input=capture)
    assert whole.exit_code == 0 and whole.stdout.count("\n") >= 1, whole.output
    mid_stream = capture[capture.index(b"Event: "):]
    cut = CliRunner().invoke(main, ["replay", "-"], input=mid_stream)
    assert cut.exit_code == 0 and cut.stdout.count("\n") >= 1, cut.output


# --- CTI_* environment variables ----------------------------------------------------------------------


@pytest.mark.parametrize(("variable", "value", "why"), [
    ("CTI_MQTT__PORT", "abc", "Input should be a valid integer"),
    ("CTI_AMI__PING_INTERVAL", "-1", "Input should be greater than 0"),
    ("CTI_HTTP__PORT", "70000", "Input should be less than or equal to 65535"),
])
def test_a_bad_variable_is_reported_by_its_name(tmp_path: Path, variable: str, value: str, why: str) -> None:
    path = tmp_path / "cti.yaml"
    path.write_text("ami:\n  host: pbx.example\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={variable: value})
    message = str(info.value)
    assert f"{variable}: {why}" in message
    first = message.splitlines()[0]
    assert "environment" in first and str(path) not in first, "not as if it were in the file"
    dotted = variable.removeprefix("CTI_").lower().replace("__", ".")
    assert f"{dotted}:" not in message


def test_file_and_variable_errors_are_told_apart(tmp_path: Path) -> None:
    path = tmp_path / "cti.yaml"
    path.write_text("http:\n  port: -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"CTI_MQTT__PORT": "abc", "CTI_AMII__PORT": "1", "CTI_TRACES": "/x"})
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path} and environment (CTI_* variables): 3 invalid setting(s)"
    assert "  http.port: Input should be greater than or equal to 0" in lines
    assert any(line.startswith("  CTI_MQTT__PORT: Input should be a valid integer") for line in lines)
    assert any(line.startswith("  CTI_AMII__PORT") and "Extra inputs" in line for line in lines)


def test_check_config_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTI_MQTT__PORT", "abc")
    result = CliRunner().invoke(main, ["check-config", str(ROOT / "config" / "cti.yaml")])
    assert result.exit_code == 1
    assert "CTI_MQTT__PORT: Input should be a valid integer" in result.output
    assert "mqtt.port" not in result.output


# --- cti demo and SIGTERM -----------------------------------------------------------------------------


def _children(pid: int) -> dict[int, str]:
    """Direct children of ``pid``: pid -> command name, read from /proc."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found[int(entry.name)] = comm
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2 :].split()[0] != "Z"


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.05)


def _serving(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # 503 while the simulator's AMI link comes up: the server answers all the same
    except (OSError, urllib.error.URLError):
        return False


@pytest.mark.network
def test_demo_stopped_with_sigterm_stops_its_services_and_removes_its_folder(tmp_path: Path) -> None:
    port = free_port()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    env = {k: v for k, v in env.items() if not k.startswith("CTI_")} | {"PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "demo.log").open("wb")
    demo = subprocess.Popen([sys.executable, "-m", "cti.cli", "demo", "--http-port", str(port),
                             "--log-format", "json"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    services: dict[int, str] = {}
    try:
        _wait_for(lambda: _serving(port) or demo.poll() is not None, 30, "the demo serving HTTP")
        assert demo.poll() is None, (tmp_path / "demo.log").read_text()
        services = {pid: name for pid, name in _children(demo.pid).items()
                    if name in ("redis-server", "mosquitto")}
        assert sorted(services.values()) == ["mosquitto", "redis-server"], _children(demo.pid)
        [workdir] = tmp.glob("cti-dev-*")

        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy = Path(sys.executable).with_name("py-spy")
            dump = subprocess.run([str(spy), "dump", "--pid", str(demo.pid)], capture_output=True, text=True,
                                  check=False).stdout if spy.exists() else ""
            raise AssertionError("DEBUG no exit\n" + dump + (tmp_path / "demo.log").read_text()[-6000:]) from None
        assert demo.returncode == 0, (tmp_path / "demo.log").read_text()
        _wait_for(lambda: not any(_alive(pid) for pid in services), 10, f"{services} gone")
        _wait_for(lambda: not workdir.exists(), 10, f"{workdir} removed")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in services:  # left behind only if the test failed
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()

"""The ``agi_*`` header: read within its limits, refused with a reason otherwise (no socket needed)."""

from __future__ import annotations

import asyncio

import pytest

from cti.agi import BadHeader, HeaderLimits, flow_id_for, read_env
from cti.sim.agi_caller import agi_env, encode_env

LIMITS = HeaderLimits(timeout=0.2, max_line_bytes=256, max_lines=40, max_bytes=2048)


def fed(data: bytes, *, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=LIMITS.max_line_bytes)
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


async def test_the_recorded_shape_reads_back() -> None:
    env = agi_env("hotline", caller="13800000001")
    header = await read_env(fed(encode_env(env) + b"ANSWER reply would follow\n"), LIMITS)
    assert header.env == env and header.dropped == 0


async def test_crlf_line_endings_and_values_with_colons() -> None:
    data = b"agi_request: agi://127.0.0.1:4573/hotline\r\nagi_callerid: 1001\r\n\r\n"
    header = await read_env(fed(data), LIMITS)
    assert header.env == {"agi_request": "agi://127.0.0.1:4573/hotline", "agi_callerid": "1001"}


async def test_a_line_feed_inside_a_caller_name_drops_the_broken_line() -> None:
    data = encode_env({"agi_network_script": "hotline", "agi_calleridname": "Evil\nEXEC System x",
                       "agi_callerid": "1\r2"})
    header = await read_env(fed(data), LIMITS)
    assert header.dropped == 1
    assert header.env == {"agi_network_script": "hotline", "agi_calleridname": "Evil", "agi_callerid": "1\r2"}


@pytest.mark.parametrize(("data", "eof", "reason"), [
    (b"", True, "closed_before_header"),
    (b"ag", True, "closed_in_header"),
    (b"agi_network: yes\nagi_request: agi://x/y", True, "closed_in_header"),
    (b"agi_network: yes\n", False, "header_timeout"),
    (b"", False, "header_timeout"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True, "not_agi"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", False, "not_agi"),  # a TLS ClientHello: refused at once
    (b"agi_x: " + b"a" * 300, False, "line_too_long"),
    (b"agi_x: " + b"a" * 300 + b"\n\n", True, "line_too_long"),
    (b"agi_x: 1\n" * 41 + b"\n", True, "too_many_lines"),
    (b"agi_x: " + b"a" * 200 + b"\n" + (b"agi_y: " + b"b" * 200 + b"\n") * 12, True, "header_too_large"),
])
async def test_bad_headers_are_refused_with_a_reason(data: bytes, eof: bool, reason: str) -> None:
    with pytest.raises(BadHeader) as info:
        await read_env(fed(data, eof=eof), LIMITS)
    assert info.value.reason == reason


@pytest.mark.parametrize(("env", "flow_id"), [
    ({"agi_network_script": "hotline", "agi_request": "agi://127.0.0.1:4573/other"}, "hotline"),
    ({"agi_request": "agi://127.0.0.1:4573/hotline"}, "hotline"),
    ({"agi_request": "agi://127.0.0.1/hotline?lang=en"}, "hotline"),
    ({"agi_network_script": "hotline?x=1"}, "hotline"),
    ({"agi_network_script": "/ivr/hotline/"}, "ivr/hotline"),
    ({"agi_request": "agi://[::1"}, ""),
    ({}, ""),
])
def test_flow_id_for(env: dict[str, str], flow_id: str) -> None:
    assert flow_id_for(env) == flow_id

"""Directory import (YAML, CSV, errors) and Redis lookups against a real redis-server."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from cti.directory.cache import CachedDirectory
from cti.directory.importer import DirectoryImportError, load_customers
from cti.directory.models import Customer
from cti.directory.store import RedisDirectory, account_key
from cti.pipeline import _lookup_key

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parent.parent


def test_demo_yaml_imports() -> None:
    customers = load_customers(ROOT / "config" / "customers.yaml")
    by_id = {c.id: c for c in customers}
    assert len(customers) >= 10
    vip = next(c for c in customers if "8613900000001" in c.numbers)
    assert vip.vip_tier == 3 and vip.account_manager in {"alice", "bob", "chen"}
    assert any("13800000001" in c.numbers for c in by_id.values())


def test_csv_with_several_numbers(tmp_path: Path) -> None:
    path = tmp_path / "dir.csv"
    path.write_text("id,numbers,name,company,vip_tier,account_manager,notes\n"
                    'c1,+86 138 0000 0001; 010-6500-0001,Wang Lei,Huaxin,2,chen,"likes, commas"\n'
                    "c2,13800000002,Li Na,,,,\n", encoding="utf-8")
    c1, c2 = load_customers(path)
    assert c1.numbers == ["8613800000001", "01065000001"] and c1.vip_tier == 2 and c1.notes == "likes, commas"
    assert c2.company is None and c2.vip_tier == 0


def test_bad_csv_row_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "dir.csv"
    path.write_text("id,numbers,name,vip_tier\nc1,13800000001,A,1\nc2,13800000002,B,7\n", encoding="utf-8")
    with pytest.raises(DirectoryImportError) as err:
        load_customers(path)
    assert str(path) in str(err.value) and "line 3" in str(err.value) and "vip_tier" in str(err.value)


def test_bad_yaml_item_names_index_and_field(tmp_path: Path) -> None:
    path = tmp_path / "dir.yaml"
    path.write_text("- {id: a, numbers: ['1380000'], name: A}\n- {id: b, numbers: ['not a number'], name: B}\n")
    with pytest.raises(DirectoryImportError, match=r"customers\[1\].*numbers"):
        load_customers(path)


def test_shared_number_is_loaded_and_reported(tmp_path: Path) -> None:
    """Not an error: the store leaves a number several customers list unmatched (tests/test_cli_edges.py)."""
    from cti.directory.store import shared_numbers

    path = tmp_path / "dir.yaml"
    path.write_text("customers:\n- {id: a, numbers: ['+8613800000001'], name: A}\n"
                    "- {id: b, numbers: ['008613800000001'], name: B}\n")
    assert shared_numbers(load_customers(path)) == {"8613800000001": ["a", "b"]}


def _c(id: str, *numbers: str) -> Customer:
    return Customer(id=id, numbers=list(numbers), name=id.upper())


async def test_lookup_exact_suffix_and_unknown(redis_client: aioredis.Redis) -> None:
    directory = RedisDirectory(redis_client, key_prefix="t:")
    await directory.replace_all([_c("a", "8613800000001"), _c("b", "13900000002"), _c("c", "441900000002"),
                                 _c("d", "1001")])
    assert await directory.count() == 4
    assert (await directory.lookup("+86 138-0000-0001")).id == "a"  # type: ignore[union-attr]
    assert (await directory.lookup("013800000001")).id == "a"  # type: ignore[union-attr]  national form
    assert await directory.lookup("0013900000002") is not None  # 00 prefix stripped: exact
    assert await directory.lookup("900000002") is None  # suffix shared by b and c: ambiguous
    assert (await directory.lookup("1001")).id == "d"  # type: ignore[union-attr]
    for junk in ("<unknown>", "", None, "anonymous"):
        assert await directory.lookup(junk) is None


async def test_a_caller_the_ivr_identified_is_looked_up_by_account(redis_client: aioredis.Redis) -> None:
    """The IVR's CTI_CUSTOMER wins over the calling number: the caller said who they are."""
    directory = RedisDirectory(redis_client, key_prefix="t:")
    await directory.replace_all([_c("acct-7", "8613800000001"), _c("b", "13900000002")])
    cache = CachedDirectory(directory)
    assert (await cache.lookup(account_key("acct-7")))["id"] == "acct-7"  # type: ignore[index]
    assert cache.peek(account_key("acct-7"))[0], "cached like a number"
    assert await directory.lookup(account_key("nobody")) is None
    call = {"caller": "13900000002", "ivr": {"customer_id": "acct-7"}}
    assert _lookup_key(call) == account_key("acct-7")
    assert _lookup_key({"caller": "13900000002", "ivr": None}) == "13900000002"
    assert _lookup_key({"caller": "13900000002", "ivr": {"customer_id": None}}) == "13900000002"


async def test_replace_all_swaps_whole_directories(redis_client: aioredis.Redis) -> None:
    directory = RedisDirectory(redis_client, key_prefix="t:")
    await directory.replace_all([_c("old", "13800000001")])
    await directory.replace_all([_c("new", "13900000001")])
    assert await directory.lookup("13800000001") is None
    assert (await directory.lookup("13900000001")).id == "new"  # type: ignore[union-attr]
    assert await directory.count() == 1
    assert not [k async for k in redis_client.scan_iter("t:directory:staging:*")]
    await directory.replace_all([])
    assert await directory.count() == 0


def test_single_line_fields_refuse_control_characters() -> None:
    import pydantic

    from cti.directory.models import Customer

    for field in ("name", "company", "role"):
        with pytest.raises(pydantic.ValidationError, match="control characters"):
            Customer.model_validate({"id": "c9", "numbers": ["13800000009"], "name": "Ok",
                                     field: "Evil\r\nAction: Originate"})
    ok = Customer.model_validate({"id": "c9", "numbers": ["13800000009"], "name": "Ok", "notes": "line 1\nline 2"})
    assert ok.notes == "line 1\nline 2"


async def test_the_first_lookup_after_a_redis_restart_finds_the_record(tmp_path: Path) -> None:
    """The pool's connection is to the Redis that stopped; redis-py does not retry a pipeline on it."""
    from cti.devservices import free_port, redis_server

    port = free_port()
    with redis_server(tmp_path, port, persist=True) as url:
        redis = aioredis.from_url(url, socket_timeout=5)
        directory = RedisDirectory(redis, key_prefix="t:")
        await directory.replace_all([_c("a", "8613800000001")])
        assert (await directory.lookup("8613800000001")).id == "a"  # type: ignore[union-attr]
    try:
        with redis_server(tmp_path, port, persist=True):  # the same data, a new process
            assert (await directory.lookup("8613800000001")).id == "a"  # type: ignore[union-attr]
    finally:
        await redis.aclose()

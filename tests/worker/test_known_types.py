"""The worker's array codecs are given to its connections instead of asked of the server:
asking cost each new connection round trips and a catalog query while a backlog starts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from shoal.worker import known_types


@pytest.fixture
async def asked(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[list[int]]]:
    """The type OIDs asyncpg asks the server about (it still asks: this only listens)."""
    calls: list[list[int]] = []
    real = asyncpg.Connection._introspect_types

    async def listening(self: asyncpg.Connection, typeoids: Any, timeout: Any) -> Any:
        calls.append(sorted(typeoids))
        return await real(self, typeoids, timeout)

    monkeypatch.setattr(asyncpg.Connection, "_introspect_types", listening)
    yield calls


async def roundtrip(url: str, *, given: bool = True) -> None:
    """Send and read the worker's array types on a new connection, given their codecs or not."""
    conn = await asyncpg.connect(url)
    try:
        if given:
            await known_types.share_array_codecs(conn)
        assert await conn.fetchval("SELECT $1::bigint[]", [1, 2**62, None]) == [1, 2**62, None]
        assert await conn.fetchval("SELECT $1::float8[] || 'Infinity'::float8",
                                   [0.5, -2.0]) == [0.5, -2.0, float("inf")]
        assert await conn.fetchval("SELECT array[3, 4]::bigint[]") == [3, 4]
    finally:
        await conn.close()


async def test_a_worker_connection_sends_and_reads_its_arrays_without_asking(db_url: str,
                                                                            asked: list[list[int]]) -> None:
    await roundtrip(db_url)
    assert asked == []
    await roundtrip(db_url, given=False)  # without them, asyncpg asks (what this saves)
    assert asked


async def test_a_description_asyncpg_refuses_is_replaced_by_the_servers_once(
        db_url: str, asked: list[list[int]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(known_types, "_rows", [{"oid": known_types.INT8_ARRAY}])  # as if asyncpg wanted more
    for _ in range(2):
        await roundtrip(db_url)
    assert asked == [[known_types.INT8_ARRAY, known_types.FLOAT8_ARRAY]]


async def test_ids_sent_as_text_reach_the_server_as_the_same_bigint_array(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        for ids in ([], [7], [1, 2**62, 9_000_000_001, 3]):
            assert await conn.fetchval("SELECT $1::text::bigint[]", known_types.id_array(ids)) == ids
        with pytest.raises(asyncpg.InvalidTextRepresentationError):  # not an id: refused, not misread
            await conn.fetchval("SELECT $1::text::bigint[]", known_types.id_array(["1}", 2]))  # type: ignore[list-item]
    finally:
        await conn.close()

"""The worker's array codecs, given to each connection instead of asked of the server, and
the text form of the one array a job's ids travel in.

asyncpg knows text[] and oid[] by itself but asks the server about every other array type a
statement sends or reads, on each connection anew: the worker's bigint[] and double precision[]
cost each new pool connection three round trips (asyncpg turns JIT off and on around the query)
and a catalog query planned from scratch: 9-21 ms while a worker starts draining, and 7 ms of
the first connection's start even when asked once per process. The answer describes built-in
types whose OIDs are fixed in PostgreSQL's catalog, the same for every server, so it is written
here in the form asyncpg's introspection returns.

This reaches into asyncpg (the protocol's settings, `Connection._introspect_types`): if asyncpg
refuses the description, the server is asked once per process; on an asyncpg without those
internals each connection asks for itself, as it would by default.
"""

from __future__ import annotations

import contextlib
from typing import Any

import asyncpg

# pg_type OIDs of the arrays the worker's statements carry, and of their elements.
INT8, FLOAT8, INT8_ARRAY, FLOAT8_ARRAY = 20, 701, 1016, 1022


def _row(oid: int, name: str, elemtype: int, elemtype_name: str) -> dict[str, Any]:
    """One row as asyncpg's type introspection query returns it, for a built-in array type."""
    return {"oid": oid, "ns": "pg_catalog", "name": name, "kind": b"b", "basetype": None, "elemtype": elemtype,
            "elemdelim": b",", "range_subtype": None, "attrtypoids": None, "attrnames": None, "depth": 0,
            "basetype_name": None, "elemtype_name": elemtype_name, "range_subtype_name": None}


BUILT_IN = [_row(INT8_ARRAY, "_int8", INT8, "bigint"), _row(FLOAT8_ARRAY, "_float8", FLOAT8, "double precision")]

_rows: Any = BUILT_IN  # what the next connection is given; the server's own answer if asyncpg refused it


async def share_array_codecs(conn: asyncpg.Connection) -> None:
    """Give `conn` the codecs of the worker's array types without a round trip."""
    global _rows
    with contextlib.suppress(AttributeError):
        settings = conn._protocol.get_settings()  # noqa: SLF001 - see the module's docstring
        try:
            settings.register_data_types(_rows)
        except (KeyError, TypeError, ValueError, IndexError):
            _rows, _statement = await conn._introspect_types([INT8_ARRAY, FLOAT8_ARRAY], None)  # noqa: SLF001
            settings.register_data_types(_rows)


def id_array(ids: list[int]) -> str:
    """`ids` as a PostgreSQL array literal, for a `$n::text::bigint[]` parameter: the one array
    each job's id travels in (a leased job's in `shoal.record`, a held job's in its batch's
    announcement). asyncpg encodes a `bigint[]` in binary but first checks every element against
    `collections.abc.Iterable` (is it a nested array?): 1,500 ids cost the worker ~250 µs of CPU
    that way and ~95 µs as this text, which `repr` writes in C and the server parses as fast as
    the binary form. Only ints from the database reach here: anything else fails the cast loudly."""
    return "{" + repr(ids)[1:-1] + "}"

"""The worker's array codecs, asked of the server once per process instead of once per connection.

asyncpg knows text[] and oid[] by itself but asks the server about every other array type a
statement sends or reads, on each connection anew: the worker's bigint[] and double precision[]
cost each new pool connection three round trips (asyncpg turns JIT off and on around the query)
and a catalog query planned from scratch, 9-21 ms while a worker starts draining, when it opens
four to seven connections at once. The answer describes built-in types, the same for every
connection to any server, so the first connection's answer is given to the next ones.

This reaches into asyncpg (`Connection._introspect_types`, the protocol's settings); on an
asyncpg without them the connection asks for itself, as before.
"""

from __future__ import annotations

import contextlib
from typing import Any

import asyncpg

# pg_type OIDs of the arrays the worker's statements carry (fixed in PostgreSQL's catalog).
INT8_ARRAY, FLOAT8_ARRAY = 1016, 1022

_rows: Any = None  # the server's description of those types, once fetched


async def share_array_codecs(conn: asyncpg.Connection) -> None:
    """Give `conn` the codecs of the worker's array types, fetching their description once."""
    global _rows
    with contextlib.suppress(AttributeError):
        settings = conn._protocol.get_settings()  # noqa: SLF001 - see the module's docstring
        if _rows is None:
            _rows, _statement = await conn._introspect_types([INT8_ARRAY, FLOAT8_ARRAY], None)  # noqa: SLF001
        settings.register_data_types(_rows)

"""Shoal adapter for the benchmark runner — pending.

It will be written against Shoal's client/worker API once the core lands. It runs in the
project venv and speaks the same protocol as the peers (see `_common.py`):

    python bench/peers/shoal_bench.py setup   --url URL   -> {"version", "remaining_sql", "config"}
    python bench/peers/shoal_bench.py enqueue --url URL --jobs N -> {"jobs": N, "seconds": s}
    python bench/peers/shoal_bench.py worker  --url URL [--latency]  (READY / RUN lines; until SIGTERM)
    python bench/peers/shoal_bench.py produce --url URL   (stdin job numbers -> SENT lines)

Until then it raises NotImplementedError and `bench/run.py` reports Shoal as "pending".
"""

raise NotImplementedError("the Shoal benchmark adapter is not written yet (needs the client/worker API)")

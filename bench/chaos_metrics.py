"""What the chaos suite reads from the workers' /metrics while a scenario runs: which claims were
held, how long handlers take, and the workers' memory."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from chaos_lib import Fleet


async def scrape(port: int) -> dict[str, float]:
    """A worker's /metrics, as {'name{labels}': value}; empty when it does not answer."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
        writer.write(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        body = await asyncio.wait_for(reader.read(), 2)
        writer.close()
    except (OSError, TimeoutError):
        return {}
    out = {}
    for line in body.decode(errors="replace").split("\r\n\r\n", 1)[-1].splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[key] = float(value)
    return out


@dataclass
class Sampler:
    """Every `every` seconds: the workers' RSS, and their claim counters from /metrics (the last
    value seen of each process is kept, so a killed worker's claims still count)."""

    fleet: Fleet
    every: float = 0.25
    max_rss_mb: float = 0.0
    claims: dict[int, dict[str, float]] = field(default_factory=dict)  # pid -> mode -> claims
    durations: dict[int, dict[str, float]] = field(default_factory=dict)  # pid -> sum/count -> handler seconds
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def start(self) -> Sampler:
        self._task = asyncio.create_task(self._loop())
        return self

    async def _loop(self) -> None:
        while True:
            self.max_rss_mb = max(self.max_rss_mb, self.fleet.rss_mb())
            for proc in list(self.fleet.procs.values()):
                if proc.poll() is None:
                    for key, value in (await scrape(self.fleet.metrics_port[proc.pid])).items():
                        if key.startswith("shoal_claims_total{"):
                            mode = key.partition('mode="')[2].partition('"')[0]
                            self.claims.setdefault(proc.pid, {})[mode] = value
                        elif key.startswith(("shoal_job_duration_seconds_sum{", "shoal_job_duration_seconds_count{")):
                            self.durations.setdefault(proc.pid, {})[key.partition("{")[0].rsplit("_", 1)[1]] = value
            await asyncio.sleep(self.every)

    async def stop(self) -> None:
        """Cancel until the loop is gone: Python 3.11's `asyncio.wait_for` (in `scrape`) can
        swallow a cancel, and awaiting the task then never returned (a 15-minute hang)."""
        task, self._task = self._task, None
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=1)
        if task is not None and not task.cancelled():
            with contextlib.suppress(Exception):
                task.result()

    def held_claims(self, pid: int | None = None) -> tuple[int, int]:
        """(held, all) claims seen, of one worker or of all."""
        modes = [m for p, m in self.claims.items() if pid is None or p == pid]
        return int(sum(m.get("held", 0) for m in modes)), int(sum(sum(m.values()) for m in modes))

    async def holding_slot(self, prefer: int, timeout: float) -> tuple[int, bool]:
        """A slot whose worker has made a held claim (trying `prefer` first), waiting up to
        `timeout`; else `prefer`. And whether it was found."""
        deadline = time.monotonic() + timeout
        slots = sorted(self.fleet.procs, key=lambda s: (s - prefer) % len(self.fleet.procs))
        while True:
            for slot in slots:
                proc = self.fleet.procs[slot]
                if proc.poll() is None and self.held_claims(proc.pid)[0]:
                    return slot, True
            if time.monotonic() > deadline:
                return prefer, False
            await asyncio.sleep(0.05)

    def handler_ms(self) -> float | None:
        """The workers' mean handler time (what decides held claims), in milliseconds."""
        total = sum(d.get("sum", 0) for d in self.durations.values())
        count = sum(d.get("count", 0) for d in self.durations.values())
        return round(1000 * total / count, 2) if count else None

    def held_share(self) -> str:
        held, every = self.held_claims()
        return f"{held}/{every}"

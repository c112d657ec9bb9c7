"""Local backend: the autoscaler drives `shoal worker` processes on this machine.

Scale-down sends SIGTERM (the worker drains and releases what it cannot finish); a worker
that dies on its own (crash, kill -9) is replaced on the next tick, and the jobs it held
are rescued by the heartbeat mechanism like on Kubernetes. `local_autoscaler` is the loop
`shoal up` runs: the same `Autoscaler` the operator runs, with these processes as target.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import BinaryIO

import asyncpg

from shoal.scaler.decision import Decision, Policy
from shoal.scaler.loop import Autoscaler, EnqueueWakeups

log = logging.getLogger("shoal.scaler.local")


@dataclass
class LocalWorkers:
    database_url: str
    queue: str
    concurrency: int = 10
    tasks: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    log_dir: str | None = None
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    stopping: list[asyncio.subprocess.Process] = field(default_factory=list)
    replaced: int = 0
    _seq: int = 0

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "shoal.cli", "--log-format", "json", "worker", "--queue", self.queue,
               "--concurrency", str(self.concurrency), *self.extra_args]
        if self.tasks:
            cmd += ["--tasks", *self.tasks]
        return cmd

    async def _spawn(self) -> asyncio.subprocess.Process:
        self._seq += 1
        out = self._open_log() if self.log_dir else None
        env = {**os.environ, "SHOAL_DATABASE_URL": self.database_url}
        proc = await asyncio.create_subprocess_exec(
            *self.command(), env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=out or asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us, and we stop workers gracefully
        )
        if out:
            out.close()
        return proc

    def _open_log(self) -> BinaryIO:
        assert self.log_dir is not None
        os.makedirs(self.log_dir, exist_ok=True)
        return open(os.path.join(self.log_dir, f"worker-{self._seq}.log"), "ab")  # noqa: SIM115

    def _reap(self) -> None:
        """Forget processes that exited; unexpected exits are replaced by `current_replicas`."""
        died = [p for p in self.procs if p.returncode is not None]
        for p in died:
            self.procs.remove(p)
            self.replaced += 1
            log.warning("worker process exited unexpectedly; replacing it",
                        extra={"pid": p.pid, "returncode": p.returncode})
        self.stopping = [p for p in self.stopping if p.returncode is None]

    async def current_replicas(self) -> int:
        """Processes wanted and still alive; a dead one is restarted here, before deciding."""
        wanted = len(self.procs)
        self._reap()
        while len(self.procs) < wanted:
            self.procs.append(await self._spawn())
        return len(self.procs)

    async def set_replicas(self, desired: int, decision: Decision) -> None:
        while len(self.procs) < desired:
            self.procs.append(await self._spawn())
        while len(self.procs) > desired:
            proc = self.procs.pop()  # newest first: the oldest have warm caches
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            self.stopping.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def shutdown(self, timeout: float = 30.0) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        everyone = self.procs + self.stopping
        self.procs, self.stopping = [], []
        if everyone:
            await asyncio.wait([asyncio.ensure_future(p.wait()) for p in everyone], timeout=timeout)
            for p in everyone:
                if p.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()


def local_autoscaler(workers: LocalWorkers, pool: asyncpg.Pool, policy: Policy, *, interval: float = 1.0,
                     wakeups: EnqueueWakeups | None = None) -> Autoscaler:
    """The control loop of `shoal up`: `workers` scaled within `policy`'s bounds.

    A fixed count (min == max) is applied, not left alone: nobody else owns these processes.
    Pause and flow control come from the queue's row, like for the operator's loop.
    """
    return Autoscaler(target=workers, queue=workers.queue, pool=pool, policy=lambda: policy, interval=interval,
                      wakeups=wakeups, hands_off_when_fixed=False, name=f"local queue {workers.queue!r}")

"""The worker: claim in batches, run handlers, record outcomes in batches.

`Worker` is the supervisor: it opens the pools (the roles', and the held batches' own), starts
the roles, and on a stop drains them. The roles meet at two seams (state.py): the job buffer
(claimed, not started) and the outcome sink (finished, not yet written).

- claimer.py: two claimers ask for as many jobs as there are free slots and fill the buffer;
  they sleep on LISTEN/NOTIFY (with a polling fallback) when there is nothing to do;
- executor.py: `concurrency` runners take jobs from the buffer, run them, put the outcomes in
  the sink; idle runners are parked and woken a few at a time as work arrives;
- completer.py: records every leased outcome finished since its last write in one
  `shoal.record()` call, and does the final flush at exit;
- holder.py: short jobs on queues without limits are claimed *held* (held.py,
  sql/004_held_claims.sql): locked by a transaction kept open while they run, their outcomes
  recorded by that transaction's commit instead of by the completer;
- keeper.py: beats, rescues jobs of dead workers, prunes expired jobs, LISTENs, and after a
  silence lets no job start until a heartbeat says which are still ours.
Database errors never kill the loop: each role backs off and retries, and outcomes stay in
memory until written, so a database restart loses nothing.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass

import asyncpg

from shoal import builtin_tasks, queries
from shoal.backoff import LoopBackoff
from shoal.errors import ConfigError
from shoal.worker import metrics
from shoal.worker.claimer import Claimer
from shoal.worker.completer import Completer
from shoal.worker.config import WorkerConfig, default_worker_id
from shoal.worker.executor import Executor, TaskTable
from shoal.worker.held import MAX_HELD, HeldBatch
from shoal.worker.holder import Holder, prepare_statements
from shoal.worker.keeper import Keeper
from shoal.worker.known_types import share_array_codecs
from shoal.worker.state import Shared

__all__ = ["Worker", "WorkerConfig", "default_worker_id", "run_worker", "session_settings", "tune_gc"]

log = logging.getLogger("shoal.worker")
assert builtin_tasks  # registered on import

# Errors that retrying cannot mend: say so and stop, instead of retrying forever at warning level.
_REFUSED = (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)
# Allocations (net of frees) between two young-generation collections of the cyclic GC; see tune_gc.
GC_YOUNG_THRESHOLD = 10_000


@dataclass(frozen=True)
class _Roles:
    completer: Completer
    holder: Holder
    keeper: Keeper
    executor: Executor
    claimer: Claimer

    @classmethod
    def build(cls, shared: Shared, pool: asyncpg.Pool, held_pool: asyncpg.Pool) -> _Roles:
        tasks = TaskTable(shared.config)
        completer = Completer(shared, pool)
        holder = Holder(shared, pool, held_pool, completer)
        keeper = Keeper(shared, pool, holder)
        executor = Executor(shared, pool, keeper, tasks)
        return cls(completer, holder, keeper, executor, Claimer(shared, pool, holder, keeper, executor, tasks))


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config.validate()
        self.shared = Shared(self.config)
        self._roles: _Roles | None = None  # once connected
        self._created = time.monotonic()

    @property
    def db_ok(self) -> bool:
        return self.shared.db_ok

    @property
    def batch_of(self) -> dict[int, HeldBatch]:
        """Job id -> its open held batch: which running jobs are held (tests look)."""
        return self.shared.sink.batch_of

    # -- lifecycle -------------------------------------------------------------------------
    def request_stop(self) -> None:
        shared = self.shared
        if not shared.stopping.is_set():
            log.info("stop requested: no new claims, draining", extra={"in_flight": len(shared.claimed)})
            shared.stopping.set()
            shared.buffer.clear()  # not started: released on exit, attempts unchanged
            for event in (shared.wake, shared.slot_freed):
                event.set()
            shared.buffer.wake_runners(len(shared.buffer.idle))
            if self._roles is not None:
                self._roles.holder.close_soon()  # what never started goes back untouched

    def live(self) -> bool:
        last_tick = self._roles.keeper.last_tick if self._roles is not None else self._created
        return time.monotonic() - last_tick < max(60.0, self.config.heartbeat_interval * 6)

    def ready(self) -> bool:
        return self.shared.db_ok and not self.shared.stopping.is_set()

    async def run(self) -> None:
        """Run until `request_stop()`; then drain, release and return."""
        cfg, shared = self.config, self.shared
        pool, held_pool = await self._connect_pools()
        await self._check_setup(pool)
        roles = self._roles = _Roles.build(shared, pool, held_pool)
        await roles.keeper.beat()
        health = None
        if cfg.metrics_port is not None:
            from shoal.worker.health import HealthServer

            health = HealthServer(metrics.REGISTRY, self.live, self.ready)
            port = await health.start(cfg.metrics_host, cfg.metrics_port)
            log.info("serving /metrics, /healthz, /readyz", extra={"port": port})
        log.info("worker started", extra={"queue": cfg.queue, "worker_id": cfg.worker_id,
                                          "concurrency": cfg.concurrency})
        # Two claimers: while one claim is on the server the other can be too (SKIP LOCKED keeps
        # them apart), so a fast queue keeps both database cores busy. Started before the runners,
        # so that the first claim is on its way while they start.
        loops = [asyncio.create_task(c) for c in (roles.claimer.run(), roles.claimer.run(), roles.keeper.run())]
        if roles.holder.may_hold():
            loops.append(asyncio.create_task(roles.holder.warm()))
        runners = [asyncio.create_task(roles.executor.runner()) for _ in range(cfg.concurrency)]
        completer = asyncio.create_task(roles.completer.run())
        try:
            await shared.stopping.wait()
            await self._drain(runners, roles.executor)
        finally:
            for t in loops + runners:
                t.cancel()
            await asyncio.gather(*loops, *runners, return_exceptions=True)
            await roles.completer.stop(completer)
            await roles.holder.close_all(timeout=30)  # runners are gone: nothing more will start
            await roles.completer.final_flush()
            await roles.keeper.close()
            await held_pool.close()
            await pool.close()
            if health:
                await health.stop()
            log.info("worker stopped", extra={"worker_id": cfg.worker_id})

    async def _connect_pools(self) -> tuple[asyncpg.Pool, asyncpg.Pool]:
        """The roles' pool, and the held batches' own: only their connections pay for preparing
        what a held batch runs (a few ms of a new backend's time, on the way to a first held claim)."""
        backoff = LoopBackoff(base=0.5, cap=10)
        settings = session_settings(self.config.stale_after)
        while True:
            try:
                # Two claimers, the completer, the keeper, and the held batches' announcements
                # (HOLD_BATCH, sent while the claim keeps its batch's connection); then one connection
                # per open held batch. min_size 0: asyncpg would log a traceback per attempt to restore
                # a floor during an outage.
                pool = await asyncpg.create_pool(self.config.database_url, min_size=0, max_size=5,
                                                 reset=_keep_session, init=share_array_codecs,
                                                 server_settings=settings)
                # Statements kept prepared for the connection's life (asyncpg's default lets them
                # expire after 5 min): a held batch's statement must never be parsed again inside
                # its transaction (see prepare_statements).
                held_pool = await asyncpg.create_pool(self.config.database_url, min_size=0, max_size=MAX_HELD,
                                                      reset=_keep_session, init=prepare_statements,
                                                      max_cached_statement_lifetime=0, server_settings=settings)
                return pool, held_pool
            except _REFUSED as exc:
                raise ConfigError(f"the database refused the worker's credentials ({exc}): check the user "
                                  "and password in --database-url / SHOAL_DATABASE_URL (on Kubernetes, the "
                                  "Secret the Queue names)") from None
            except (OSError, asyncpg.PostgresError) as exc:
                if self.shared.stopping.is_set():
                    raise
                wait = backoff.failed()
                self.shared.db_lost("connecting", exc, retry_in=wait)
                await asyncio.sleep(wait)

    async def _check_setup(self, pool: asyncpg.Pool) -> None:
        if not await pool.fetchval(queries.SCHEMA_READY):
            raise ConfigError("the database has no Shoal schema: run `shoal migrate` first")
        row = await pool.fetchrow(queries.QUEUE_GET, self.config.queue)
        if row is None:
            raise ConfigError(f"--queue: unknown queue {self.config.queue!r}; declare it with "
                              f"`shoal queue create {self.config.queue}` or a Queue resource")
        self.shared.rate_limited = row["rate_limit"] is not None
        self.shared.db_ok = True

    async def _drain(self, runners: list[asyncio.Task[None]], executor: Executor) -> None:
        """Let running jobs finish for the drain timeout; interrupt the rest, which are then
        released (not failed) by the completer's final flush."""
        if executor.busy:
            log.info("draining running jobs", extra={"running": executor.busy, "timeout": self.config.drain_timeout})
        self.shared.buffer.wake_runners(len(self.shared.buffer.idle))  # idle runners see `stopping` and return
        await asyncio.wait(runners, timeout=self.config.drain_timeout)


def session_settings(stale_after: float) -> dict[str, str]:
    """Per-session limits that let the *server* take back a hung or cut-off worker's jobs.

    A held batch is a transaction left open while its jobs run (at most `HOLD_BUDGET`, then it
    commits): a worker that stops (SIGSTOP, a frozen VM) or loses the network mid-batch would
    keep those rows locked for as long as its session lives, which without this is until TCP
    gives up (~2 h). Ending idle transactions after --stale-after, and probing the client's
    socket with keepalives on the same scale, bounds that by the server alone.
    """
    ms = str(max(1000, int(stale_after * 1000)))
    probe = str(max(1, int(stale_after / 3)))
    return {"idle_in_transaction_session_timeout": ms, "tcp_keepalives_idle": probe,
            "tcp_keepalives_interval": probe, "tcp_keepalives_count": "3"}


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Give a connection back to the pool as it is. asyncpg's default reset is one more round
    trip per release (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) and the worker's pool has
    no session state to undo: its locks are transaction-scoped, it never LISTENs on a pooled
    connection (the listener has its own) and it never SETs. asyncpg still rolls back a
    transaction left open before this is called."""


async def run_worker(config: WorkerConfig, *, install_signals: bool = True) -> None:
    """Run a worker in the current event loop, stopping on SIGTERM/SIGINT."""
    import signal

    worker = Worker(config)
    if install_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.request_stop)
    await worker.run()


def tune_gc() -> None:
    """Tune the cyclic GC for a process that is only a worker (`shoal worker`), once its task
    modules are loaded. A fast worker holds thousands of claimed jobs, each a few tracked
    objects, and a claim adds them in bursts: at the default threshold (700) the collector ran
    several times per claim, walking and promoting jobs that were about to be freed by
    reference counting anyway, and a full collection walked every object the imports made:
    0.4 to 0.7 us of CPU per no-op job. Frozen, those objects are never walked again; the
    worker's own garbage is acyclic, and what cycles there are (exceptions with tracebacks)
    are collected all the same, a little later. Not done by `Worker`: an application that runs
    one in its own process keeps its GC settings."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    if young:  # 0: the application disabled automatic collection
        gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)

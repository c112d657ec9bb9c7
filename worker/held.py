"""Held batches: jobs claimed under the row locks of an open transaction.

A held batch costs the database one write per job (the outcome) instead of two (lease, then
outcome): see sql/004_held_claims.sql for why delivery stays at-least-once. The worker uses
it only for short jobs on queues without flow limits, and keeps each transaction open for at
most `HOLD_BUDGET` seconds: whatever is still running then is converted to an ordinary lease.

This module holds the batch's bookkeeping and the pure decision of what closing a batch
writes; holder.py does the I/O (opening, committing, losing a batch).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shoal.worker.outcome import Finished, all_succeeded, has_followups

# How long a held transaction may stay open before its unfinished jobs become leases.
HOLD_BUDGET = 1.0
# Open held batches per worker, each on its own connection: one running while the next is
# claimed. More overlap made each claim skip more locked rows (see Claimer.run).
MAX_HELD = 2


@dataclass
class HeldBatch:
    no: int
    conn: Any  # asyncpg connection with the open transaction
    transaction: Any
    started_at: datetime
    ids: list[int]
    outcomes: dict[int, Finished] = field(default_factory=dict)  # job id -> the job finished
    late: list[Finished] = field(default_factory=list)  # finished while the batch was being closed
    closing: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    size: int = field(init=False)  # len(ids)

    def __post_init__(self) -> None:
        self.size = len(self.ids)

    def add(self, finished: Finished) -> None:
        if self.closing:
            self.late.append(finished)
            return
        self.outcomes[finished.id] = finished
        if len(self.outcomes) == self.size:
            self.done.set()


@dataclass(frozen=True)
class ClosePlan:
    """What one commit of a held batch writes."""

    lease_ids: list[int]  # still running (or about to run): become leases of this worker
    record: list[Finished]  # written with the held rule (attempt counted now)
    relay: list[Finished]  # finished, but written afterwards through the leased path
    released: list[int]  # never started and never will be: the commit simply unlocks them
    all_ok: bool  # every job of the batch succeeded, none relayed: `record` is the batch's ids, all ok


def close_plan(batch: HeldBatch, *, stopping: bool, started: set[int]) -> ClosePlan:
    """Decide what closing `batch` writes.

    A success with follow-up jobs is relayed as a lease, so the leased path's rule (a refused
    follow-up fails only that job) applies to it unchanged. Jobs without an outcome stay ours
    as leases, except, when stopping, those that never started: those go back untouched,
    their attempt not counted, like the leased jobs a stopping worker releases.
    """
    record: list[Finished] = []
    relay: list[Finished] = []
    if has_followups(batch.outcomes.values()):
        for finished in batch.outcomes.values():
            (relay if finished.followups else record).append(finished)
    else:  # the common case: no pass in Python
        record = list(batch.outcomes.values())
    lease_ids: list[int] = [f.id for f in relay]
    released: list[int] = []
    if len(batch.outcomes) < len(batch.ids):  # else every job has its outcome (the common case)
        for job_id in batch.ids:
            if job_id in batch.outcomes:
                continue
            if stopping and job_id not in started:
                released.append(job_id)
            else:
                lease_ids.append(job_id)
    all_ok = not lease_ids and not released and len(record) == batch.size and all_succeeded(record)
    return ClosePlan(lease_ids, record, relay, released, all_ok)

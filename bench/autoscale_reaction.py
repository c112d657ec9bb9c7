"""Burst-to-scale-up reaction time of the Kubernetes autoscaler, against the test emulator.

    .venv/bin/python bench/autoscale_reaction.py [--bursts 5]

Starts an embedded PostgreSQL (or uses SHOAL_DATABASE_URL), the kmock-based Kubernetes
emulator from tests/k8s in this process, and the real `shoal operator` as a subprocess. A
Queue (min 1, max 4, concurrency 5, poll every 1 s, scale-down delay 1 s) gets bursts of 50
jobs. Reaction = from the enqueue transaction's commit to the scale subresource PATCH
landing in the emulator (timestamped inside the emulator, same monotonic clock).

Two producers: ``enqueue_many`` (its NOTIFY wakes the loop: the normal path), and a plain
``INSERT`` into shoal.jobs that sends no NOTIFY, so the loop only sees the burst at its next
poll: the same as running with wake-ups disabled. Each burst starts at a random phase of
the poll interval.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg

from shoal.client import NewJob, enqueue_many
from shoal.testing.k8s.cluster import EmulatorThread, Kubectl, start_operator, write_kubeconfig

REPO = Path(__file__).resolve().parents[1]
CRDS_DIR = REPO / "crds"

NS, QUEUE = "bench", "burst"
PG_QUEUE = f"{NS}.{QUEUE}"
scales: list[tuple[float, str, int]] = []
scales_lock = threading.Lock()


def record_scales(emulated: EmulatorThread) -> None:
    """Wrap the emulator's update so every scale-subresource write is timestamped."""
    cls = type(emulated.emulator)  # a slotted attrs class: patch the class, in this process only
    original = cls._update

    def update(self: Any, res: Any, info: Any, namespace: str | None, request: Any) -> Any:
        new = original(self, res, info, namespace, request)
        if request.subresource == "scale":
            with scales_lock:
                scales.append((time.monotonic(), request.name, int(new["spec"]["replicas"])))
        return new

    cls._update = update  # type: ignore[method-assign]


async def wait_scale(after: float, replicas: int, timeout: float = 30) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with scales_lock:
            hit = next((t for t, name, r in scales if t >= after and r == replicas), None)
        if hit is not None:
            return hit
        await asyncio.sleep(0.005)
    raise TimeoutError(f"no scale to {replicas} within {timeout}s")


async def burst(url: str, notify: bool) -> float:
    conn = await asyncpg.connect(url)
    try:
        await asyncio.sleep(1 + random.random())  # connected; now a random phase of the 1 s poll
        if notify:
            await enqueue_many(conn, [NewJob(PG_QUEUE, "t", {"i": i}) for i in range(50)])
        else:
            await conn.execute("INSERT INTO shoal.jobs (queue, task, max_attempts) "
                               "SELECT $1, 't', 5 FROM generate_series(1, 50)", PG_QUEUE)
        committed = time.monotonic()
        up = await wait_scale(committed, 4)
        await conn.execute("DELETE FROM shoal.jobs WHERE queue = $1", PG_QUEUE)
        await wait_scale(up, 1)
        return up - committed
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bursts", type=int, default=5)
    args = parser.parse_args()
    import os

    from shoal.migrate import migrate

    tmp = Path(tempfile.mkdtemp(prefix="shoal-react-"))
    url = os.environ.get("SHOAL_DATABASE_URL")
    pg = None
    if not url:
        from shoal.embedded import start_embedded

        pg = start_embedded(tmp / "pg", fast_unsafe=True)
        url = pg.url
    await migrate(url)
    emulated = EmulatorThread()
    server = emulated.start()
    record_scales(emulated)
    kubeconfig = write_kubeconfig(tmp / "kubeconfig", server)
    kubectl = Kubectl(Path(sys.executable).parent / "kubectl", kubeconfig)
    kubectl.apply(CRDS_DIR)
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"url": url}},
                  f"--namespace={NS}")
    kubectl.apply({"apiVersion": "shoal.dev/v1alpha1", "kind": "Queue", "metadata": {"name": QUEUE},
                   "spec": {"databaseSecretRef": {"name": "db"}, "worker": {"image": "x:1"}, "concurrency": 5,
                            "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "scaleDownDelaySeconds": 1,
                                            "pollIntervalSeconds": 1}}}, f"--namespace={NS}")
    # Resync every 30 s (the tests use 1 s): a resync re-declares the queue, which NOTIFYs too.
    op = start_operator(kubeconfig, tmp, ["--standalone", "--namespace", NS, "--resync-interval", "30"],
                        label="bench", cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while True:  # the loop is running once it has reported the Deployment's replicas
            status = kubectl.json("get", "queue", QUEUE, f"--namespace={NS}").get("status") or {}
            if status.get("replicas") == 1:
                break
            if time.monotonic() > deadline or op.proc.poll() is not None:
                raise SystemExit(f"operator did not start:\n{op.log[-3000:]}")
            await asyncio.sleep(0.2)
        results: dict[str, list[float]] = {}
        for label, notify in (("NOTIFY wake-up (enqueue_many)", True), ("no wake-up (poll every 1 s)", False)):
            runs = []
            for _ in range(args.bursts):
                runs.append(await burst(url, notify))
            results[label] = runs
        print(f"burst of 50 jobs → Deployment scaled 1→4 (scale PATCH landed), {args.bursts} bursts each:")
        for label, runs in results.items():
            ms = sorted(r * 1000 for r in runs)
            print(f"  {label:32s} median {statistics.median(ms):7.1f} ms   min {ms[0]:7.1f}   max {ms[-1]:7.1f}"
                  f"   all {[round(x) for x in ms]}")
    finally:
        op.stop()
        emulated.stop()
        if pg is not None:
            pg.destroy()


if __name__ == "__main__":
    asyncio.run(main())

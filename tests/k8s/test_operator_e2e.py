"""The real `shoal operator` (subprocesses) against the Kubernetes emulator and a real Postgres.

Every wait is `eventually(...)` on an observable outcome; the timeouts are hang guards, not
assertions. Covered: Queue create/update/drift/delete, status and Events, bad specs beside
a good resource, CronJob exactly-once with two operators and across a restart, peering.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from helpers import eventually
from shoal.client import enqueue as _enqueue

from .conftest import REPO, Cluster, Kubectl, OperatorProcess
from .operator_runner import alive, condition, logs, operators  # noqa: F401

pytestmark = pytest.mark.slow


def secret(url: str, name: str = "db") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"url": url}}


def queue(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"databaseSecretRef": {"name": "db", "key": "url"}, "worker": {"image": "shoal-test:1"}}
    body.update(spec)
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "Queue", "metadata": {"name": name}, "spec": body}


def cronjob(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"schedule": "* * * * * *", "queueRef": {"name": "q"}, "task": "noop"}
    body.update(spec)
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "CronJob", "metadata": {"name": name}, "spec": body}


def get(kubectl: Kubectl, kind: str, name: str, ns: str) -> dict[str, Any] | None:
    out = kubectl("get", kind, name, f"--namespace={ns}", "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def event_reasons(kubectl: Kubectl, ns: str, involved: str) -> dict[str, list[dict[str, Any]]]:
    items = kubectl.json("get", "events", f"--namespace={ns}")["items"]
    out: dict[str, list[dict[str, Any]]] = {}
    for e in items:
        if e.get("involvedObject", {}).get("name") == involved:
            out.setdefault(e["reason"], []).append(e)
    return out


async def db_queue(url: str, name: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchrow("SELECT * FROM shoal.queues WHERE name = $1", name)
    finally:
        await conn.close()


async def enqueue(url: str, queue_name: str, task: str, payload: Any) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await _enqueue(conn, queue_name, task, payload)
    finally:
        await conn.close()


async def db_fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def container(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


async def test_queue_lifecycle(kubectl: Kubectl, crds_installed: list[str], namespace: str, db_url: str,
                               operators: Callable[..., OperatorProcess],  # noqa: F811
                               k8s_cluster: Cluster) -> None:
    ns = f"--namespace={namespace}"
    kubectl.apply(secret(db_url), ns)
    kubectl.apply(queue("mail", concurrency=7, rateLimit="20/s", concurrencyLimit=30, retry={"maxAttempts": 3},
                        worker={"image": "shoal-test:1", "tasks": ["app.tasks"],
                                "env": [{"name": "A", "value": "1"}], "nodeSelector": {"disk": "ssd"}},
                        autoscaling={"minReplicas": 2, "maxReplicas": 5}), ns)
    op = operators("--standalone", "--namespace", namespace)
    pg_name = f"{namespace}.mail"

    async def declared() -> Any:
        alive(op)
        return await db_queue(db_url, pg_name)

    row = await eventually(declared, timeout=30)
    assert (row["rate_limit"], row["concurrency_limit"], row["max_attempts"]) == (20, 30, 3)

    async def deployment() -> Any:
        return get(kubectl, "deployment", "mail-workers", namespace)

    dep = await eventually(deployment)
    q = kubectl.json("get", "queue", "mail", ns)
    assert dep["spec"]["replicas"] == 2
    assert dep["metadata"]["ownerReferences"][0]["uid"] == q["metadata"]["uid"]
    c = container(dep)
    assert c["image"] == "shoal-test:1"
    assert c["args"][:3] == ["worker", "--queue", pg_name] and c["args"][-2:] == ["--tasks", "app.tasks"]
    assert c["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "db", "key": "url"}
    assert dep["spec"]["template"]["spec"]["nodeSelector"] == {"disk": "ssd"}

    # Status: conditions and counts (the kubectl columns), refreshed by the resync timer.
    await enqueue(db_url, pg_name, "t", {})
    await enqueue(db_url, pg_name, "t", {})

    async def counted() -> Any:
        obj = kubectl.json("get", "queue", "mail", ns)
        return obj if obj.get("status", {}).get("pending") == 2 else None

    q = await eventually(counted, timeout=30)
    assert q["status"]["queueName"] == pg_name and q["status"]["replicas"] == 2
    assert condition(q, "DatabaseReachable")["status"] == "True"
    assert condition(q, "QueueDeclared")["status"] == "True"
    assert condition(q, "DeploymentAvailable")["status"] == "Unknown"  # no controller in the emulator
    row = kubectl("get", "queues", ns, "--no-headers").stdout.split()
    assert row[:4] == ["mail", "2", "0", "2"]

    # The emulator has no Deployment controller: report availability as one would.
    if k8s_cluster.emulator is not None:
        kubectl("patch", "deployment", "mail-workers", ns, "--type=merge", "--subresource=status", "-p",
                json.dumps({"status": {"availableReplicas": 2, "conditions": [{"type": "Available", "status": "True"}]}}))

        async def ready() -> Any:
            return condition(kubectl.json("get", "queue", "mail", ns), "Ready").get("status") == "True"

        await eventually(ready, timeout=30)

    # Update: Postgres and the Deployment both converge.
    kubectl("patch", "queue", "mail", ns, "--type=merge", "-p", json.dumps({"spec": {
        "rateLimit": "5/m", "concurrencyLimit": None, "worker": {"image": "shoal-test:2", "nodeSelector": None},
        "autoscaling": {"minReplicas": 3}}}))

    async def updated() -> Any:
        r = await db_queue(db_url, pg_name)
        d = get(kubectl, "deployment", "mail-workers", namespace) or {}
        ok = (r is not None and r["rate_limit"] == 5 and r["concurrency_limit"] is None
              and d.get("spec", {}).get("replicas") == 3 and container(d)["image"] == "shoal-test:2")
        return d if ok else None

    dep = await eventually(updated, timeout=30)
    assert "nodeSelector" not in dep["spec"]["template"]["spec"]

    # The autoscaler's replica count within bounds survives; drift in the template is corrected.
    # (2 more jobs make 4 ready; with targetPerReplica 1 and no rate limit to cap it, the
    # autoscaler asks for 4 replicas.)
    kubectl("patch", "queue", "mail", ns, "--type=merge", "-p",
            json.dumps({"spec": {"rateLimit": None, "autoscaling": {"targetPerReplica": 1}}}))
    await enqueue(db_url, pg_name, "t", {})
    await enqueue(db_url, pg_name, "t", {})

    async def autoscaled() -> Any:
        return (get(kubectl, "deployment", "mail-workers", namespace) or {}).get("spec", {}).get("replicas") == 4

    await eventually(autoscaled, timeout=30)
    kubectl("patch", "deployment", "mail-workers", ns, "--type=json", "-p", json.dumps([
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "evil:1"}]))

    async def restored() -> Any:
        d = get(kubectl, "deployment", "mail-workers", namespace) or {}
        return d if container(d)["image"] == "shoal-test:2" else None

    dep = await eventually(restored, timeout=30)
    assert dep["spec"]["replicas"] == 4
    reasons = event_reasons(kubectl, namespace, "mail")
    assert {"DeploymentCreated", "QueueConfigured", "DeploymentUpdated", "DriftCorrected"} <= reasons.keys(), reasons

    # Delete: the Deployment goes, the jobs stay (deletionPolicy defaults to Retain).
    kubectl("delete", "queue", "mail", ns, "--wait=true", "--timeout=30s")
    assert get(kubectl, "deployment", "mail-workers", namespace) is None
    assert await db_queue(db_url, pg_name) is not None
    assert len(await db_fetch(db_url, "SELECT id FROM shoal.jobs WHERE queue = $1", pg_name)) == 4
    alive(op)


async def test_bad_specs_are_reported_while_good_ones_reconcile(
        kubectl: Kubectl, crds_installed: list[str], namespace: str, db_url: str,
        operators: Callable[..., OperatorProcess]) -> None:  # noqa: F811
    ns = f"--namespace={namespace}"
    kubectl.apply([secret(db_url), queue("q", deletionPolicy="Delete"),
                   {**queue("nosecret"), "spec": {**queue("nosecret")["spec"],
                                                  "databaseSecretRef": {"name": "later"}}},
                   cronjob("badcron", schedule="61 * * * *"),
                   cronjob("badtz", timeZone="Mars/Olympus_Mons"),
                   cronjob("noqueue", queueRef={"name": "absent"})], ns)
    op = operators("--standalone", "--namespace", namespace)

    def false_condition(kind: str, name: str, type_: str, reason: str) -> Callable[[], Any]:
        async def check() -> Any:
            alive(op)
            cond = condition(get(kubectl, kind, name, namespace) or {}, type_)
            return cond if (cond.get("status"), cond.get("reason")) == ("False", reason) else None
        return check

    cases = [("queue", "nosecret", "DatabaseReachable", "SecretNotFound", "spec.databaseSecretRef.name"),
             ("cronjob.shoal.dev", "badcron", "ScheduleValid", "InvalidSchedule", "spec.schedule"),
             ("cronjob.shoal.dev", "badtz", "ScheduleValid", "UnknownTimeZone", "spec.timeZone"),
             ("cronjob.shoal.dev", "noqueue", "QueueFound", "QueueNotFound", "spec.queueRef.name")]
    for kind, name, type_, reason, field in cases:
        cond = await eventually(false_condition(kind, name, type_, reason), timeout=30)
        assert field in cond["message"], cond
        ready = condition(get(kubectl, kind, name, namespace) or {}, "Ready")
        assert ready["status"] == "False" and field in ready["message"]

        async def warned(name: str = name, reason: str = reason) -> Any:
            return [e for e in event_reasons(kubectl, namespace, name).get(reason, []) if e["type"] == "Warning"]

        (event, *_) = await eventually(warned)
        assert field in event["message"]

    # Meanwhile the good Queue was served by the same operator.
    assert get(kubectl, "deployment", "q-workers", namespace) is not None
    assert await db_queue(db_url, f"{namespace}.q") is not None

    # A transient problem heals itself once fixed (backoff retries, no spec change needed).
    kubectl.apply(secret(db_url, "later"), ns)

    async def healed() -> Any:
        return condition(get(kubectl, "queue", "nosecret", namespace) or {}, "DatabaseReachable").get("status") == "True"

    await eventually(healed, timeout=60)

    # deletionPolicy: Delete removes the queue and its jobs.
    await enqueue(db_url, f"{namespace}.q", "t", {})
    kubectl("delete", "queue", "q", ns, "--wait=true", "--timeout=30s")
    assert await db_queue(db_url, f"{namespace}.q") is None
    assert not await db_fetch(db_url, "SELECT id FROM shoal.jobs WHERE queue = $1", f"{namespace}.q")
    alive(op)


async def cron_jobs(db_url: str, cron: str) -> tuple[list[Any], list[Any]]:
    """The ticks and their jobs from one snapshot: a restarted operator catches missed ticks up
    in a burst, and two separate reads could fall on either side of it."""
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            ticks = await conn.fetch("SELECT tick, job_id FROM shoal.cron_ticks WHERE cron_name = $1 ORDER BY tick",
                                     cron)
            jobs = await conn.fetch("SELECT id, unique_key FROM shoal.jobs WHERE unique_key LIKE $1", f"cron:{cron}:%")
    finally:
        await conn.close()
    return list(ticks), list(jobs)


def assert_exactly_once(ticks: list[Any], jobs: list[Any]) -> None:
    """One job per tick, no duplicate keys, and no gap between consecutive per-second ticks."""
    keys = [j["unique_key"] for j in jobs]
    assert len(keys) == len(set(keys)) == len(ticks), (len(keys), len(set(keys)), len(ticks))
    assert sorted(j["id"] for j in jobs) == sorted(t["job_id"] for t in ticks)
    seconds = [int(t["tick"].timestamp()) for t in ticks]
    assert seconds == list(range(seconds[0], seconds[0] + len(seconds))), seconds


async def test_cron_ticks_fire_exactly_once_with_two_operators_and_a_restart(
        kubectl: Kubectl, crds_installed: list[str], namespace: str, db_url: str,
        operators: Callable[..., OperatorProcess]) -> None:  # noqa: F811
    ns = f"--namespace={namespace}"
    kubectl.apply([secret(db_url), queue("q"), cronjob("every-second", startingDeadlineSeconds=60,
                                                       payload={"from": "cron"}, priority=5)], ns)
    args = ("--standalone", "--namespace", namespace)
    first, second = operators(*args, label="a"), operators(*args, label="b")
    cron = f"{namespace}/every-second"

    async def ticks_at_least(n: int) -> Callable[[], Any]:
        async def check() -> Any:
            ticks, jobs = await cron_jobs(db_url, cron)
            return (ticks, jobs) if len(ticks) >= n else None
        return check

    try:
        await eventually(await ticks_at_least(4), timeout=40)
        alive(first, second)
        first.stop()
        ticks, _ = await cron_jobs(db_url, cron)
        await eventually(await ticks_at_least(len(ticks) + 2), timeout=20)
        second.stop()
        stopped_at = len((await cron_jobs(db_url, cron))[0])
        restarted = operators(*args, label="a2")
        ticks, jobs = await eventually(await ticks_at_least(stopped_at + 3), timeout=40)
        alive(restarted)
    except AssertionError:
        raise AssertionError(logs(first, second)) from None
    assert_exactly_once(ticks, jobs)
    job = (await db_fetch(db_url, "SELECT queue, task, payload, priority FROM shoal.jobs WHERE id = $1",
                          jobs[0]["id"]))[0]
    assert (job["queue"], job["task"], json.loads(job["payload"]), job["priority"]) == \
        (f"{namespace}.q", "noop", {"from": "cron"}, 5)

    async def status() -> Any:
        s = (get(kubectl, "cronjob.shoal.dev", "every-second", namespace) or {}).get("status", {})
        return s if s.get("lastJobId") and s.get("nextScheduleTime") and s.get("lastScheduleTime") else None

    s = await eventually(status)
    assert condition({"status": s}, "Ready")["status"] == "True"


async def test_peering_one_replica_active_and_failover(
        kubectl: Kubectl, k8s_cluster: Cluster, crds_installed: list[str], namespace: str, db_url: str,
        operators: Callable[..., OperatorProcess]) -> None:  # noqa: F811
    ns = f"--namespace={namespace}"
    kubectl.apply(REPO / "charts" / "shoal" / "crds" / "kopf-peering.yaml")
    peering = f"e2e-{uuid.uuid4().hex[:8]}"
    kubectl.apply({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}})
    kubectl.apply(secret(db_url), ns)
    low = operators("--peering", peering, env={"SHOAL_OPERATOR_PRIORITY": "100"}, label="low")

    def registered(*priorities: int) -> Callable[[], Any]:
        async def check() -> Any:
            status = kubectl.json("get", "clusterkopfpeering", peering).get("status") or {}
            return sorted(p.get("priority") for p in status.values()) == list(priorities)
        return check

    # The lower-priority replica starts first and is active alone; a higher one joining takes over.
    await eventually(registered(100), timeout=40)
    high = operators("--peering", peering, env={"SHOAL_OPERATOR_PRIORITY": "200"}, label="high")

    async def both_registered() -> Any:
        alive(high, low)
        return await registered(100, 200)()

    async def low_paused() -> Any:
        return "Pausing operations in favour of" in low.log

    try:
        await eventually(both_registered, timeout=40)
        await eventually(low_paused, timeout=30)
    except AssertionError:
        raise AssertionError(logs(high, low)) from None
    kubectl.apply(queue("first"), ns)

    async def deployed(name: str) -> Callable[[], Any]:
        async def check() -> Any:
            return get(kubectl, "deployment", f"{name}-workers", namespace)
        return check

    try:
        await eventually(await deployed("first"), timeout=60)
    except AssertionError:
        raise AssertionError(logs(high, low)) from None
    # Only the active replica handled it: the standby stayed paused and handled nothing since.
    since_paused = low.log.split("Pausing operations in favour of", 1)[1]
    assert "Resuming operations" not in since_paused
    assert f"reconciled Queue {namespace}/first" not in low.log
    assert f"reconciled Queue {namespace}/first" in high.log and "Pausing operations" not in high.log

    # Failover: the active replica leaves (SIGTERM removes it from the peering); the other resumes.
    high.stop()

    async def resumed() -> Any:
        return "Resuming operations" in low.log

    try:
        await eventually(resumed, timeout=40)
    except AssertionError:
        raise AssertionError(logs(high, low)) from None
    kubectl.apply(queue("second"), ns)
    try:
        await eventually(await deployed("second"), timeout=60)
    except AssertionError:
        raise AssertionError(logs(low)) from None

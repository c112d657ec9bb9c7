"""The real kubectl against the emulator (or a real cluster): CRDs, examples, printer columns."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from .conftest import REPO, Cluster, Kubectl

EXAMPLES = REPO / "examples"


def _header(output: str) -> list[str]:
    """Split kubectl's table header on runs of 2+ spaces (column names may contain one space)."""
    first = output.strip().splitlines()[0]
    return re.split(r"\s{2,}", first.strip())


def test_crds_register_their_resources(kubectl: Kubectl, crds_installed: list[str]) -> None:
    assert sorted(crds_installed) == ["cronjobs.shoal.dev", "queues.shoal.dev"]
    out = kubectl("api-resources", "--api-group=shoal.dev", "--no-headers").stdout
    rows = {line.split()[0]: line.split() for line in out.strip().splitlines()}
    assert rows["queues"][1:] == ["shq", "shoal.dev/v1alpha1", "true", "Queue"]
    assert rows["cronjobs"][1:] == ["shcj", "shoal.dev/v1alpha1", "true", "CronJob"]
    crd = kubectl.json("get", "crd", "queues.shoal.dev")
    assert crd["spec"]["names"]["categories"] == ["shoal"]


def test_examples_apply_and_print_columns(kubectl: Kubectl, crds_installed: list[str], namespace: str) -> None:
    ns = f"--namespace={namespace}"
    out = kubectl.apply(EXAMPLES / "queue.yaml", ns).stdout
    assert "secret/shoal-db created" in out
    assert "queue.shoal.dev/emails created" in out
    out = kubectl.apply(EXAMPLES / "cronjob.yaml", ns).stdout
    assert "cronjob.shoal.dev/daily-digest created" in out

    queues = kubectl("get", "queues", ns).stdout
    assert _header(queues) == ["NAME", "PENDING", "RUNNING", "REPLICAS", "READY", "MIN", "MAX", "PAUSED", "AGE"]
    assert queues.strip().splitlines()[1].split()[0] == "emails"
    wide = kubectl("get", "queues", ns, "-o", "wide").stdout
    assert _header(wide) == ["NAME", "PENDING", "RUNNING", "REPLICAS", "READY", "QUEUE", "MIN", "MAX", "PAUSED", "DESIRED",
                            "LAST SCALE", "AGE"]

    cronjobs = kubectl("get", "shcj", ns).stdout
    assert _header(cronjobs) == ["NAME", "SCHEDULE", "SUSPEND", "LAST SCHEDULE", "NEXT SCHEDULE", "AGE"]
    row = re.split(r"\s{2,}", cronjobs.strip().splitlines()[1].strip())
    assert row[:2] == ["daily-digest", "30 7 * * *"]

    # The category lists both kinds, each with its own columns.
    both = kubectl("get", "shoal", ns).stdout
    assert "queue.shoal.dev/emails" in both
    assert "cronjob.shoal.dev/daily-digest" in both
    assert "PENDING" in both and "SCHEDULE" in both

    queue = kubectl.json("get", "queue", "emails", ns)
    manifest = next(d for d in yaml.safe_load_all((EXAMPLES / "queue.yaml").read_text()) if d["kind"] == "Queue")
    assert queue["kind"] == "Queue" and queue["apiVersion"] == "shoal.dev/v1alpha1"
    assert queue["metadata"]["name"] == "emails" and queue["metadata"]["namespace"] == namespace
    assert queue["metadata"]["uid"] and queue["metadata"]["resourceVersion"]
    for key, value in manifest["spec"].items():  # a real cluster adds defaults; nothing is lost
        assert queue["spec"][key] == value

    secret = kubectl.json("get", "secret", "shoal-db", ns)
    assert secret["data"]["url"]  # stringData became base64 data


def test_reapply_patches_and_status_is_separate(kubectl: Kubectl, k8s_cluster: Cluster,
                                                crds_installed: list[str], namespace: str,
                                                tmp_path: Path) -> None:
    ns = f"--namespace={namespace}"
    kubectl.apply(EXAMPLES / "cronjob.yaml", ns)
    before = kubectl.json("get", "cronjob.shoal.dev", "daily-digest", ns)

    # Re-applying the same file changes nothing; a changed field is patched in place.
    assert "unchanged" in kubectl.apply(EXAMPLES / "cronjob.yaml", ns).stdout
    changed = yaml.safe_load((EXAMPLES / "cronjob.yaml").read_text())
    changed["spec"]["suspend"] = True
    assert "configured" in kubectl.apply(changed, ns).stdout
    after = kubectl.json("get", "cronjob.shoal.dev", "daily-digest", ns)
    assert after["spec"]["suspend"] is True
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1

    # Only the status subresource writes status.
    kubectl("patch", "cronjob.shoal.dev", "daily-digest", ns, "--type=merge", "--subresource=status",
            "-p", '{"status": {"lastScheduleTime": "2030-01-01T07:30:00Z"}}')
    kubectl("patch", "cronjob.shoal.dev", "daily-digest", ns, "--type=merge",
            "-p", '{"status": {"lastScheduleTime": "1999-01-01T00:00:00Z"}}')
    status = kubectl.json("get", "cronjob.shoal.dev", "daily-digest", ns)["status"]
    assert status["lastScheduleTime"] == "2030-01-01T07:30:00Z"

    kubectl("delete", "cronjob.shoal.dev", "daily-digest", ns)
    out = kubectl("get", "cronjob.shoal.dev", "daily-digest", ns, check=False)
    assert out.returncode != 0 and "NotFound" in out.stderr


async def test_operator_fills_the_queue_columns(kubectl: Kubectl, crds_installed: list[str], namespace: str,
                                                db_url: str, kubeconfig: Path, tmp_path: Path) -> None:
    """The examples applied with kubectl; the operator's status fills PENDING/RUNNING/REPLICAS."""
    import asyncpg

    from helpers import eventually
    from shoal.client import enqueue

    from .operator_runner import start_operator

    ns = f"--namespace={namespace}"
    kubectl.apply(EXAMPLES / "queue.yaml", ns)
    # Point the example's Secret at the test database (the example's URL is a placeholder).
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shoal-db"},
                   "stringData": {"url": db_url}}, ns)
    op = start_operator(kubeconfig, tmp_path, ["--standalone", "--namespace", namespace])
    try:
        conn = await asyncpg.connect(db_url)
        try:
            async def declared() -> bool:
                assert op.proc.poll() is None, op.log[-3000:]
                return bool(await conn.fetchval("SELECT 1 FROM shoal.queues WHERE name = $1", f"{namespace}.emails"))

            await eventually(declared, timeout=30)
            for _ in range(3):
                await enqueue(conn, f"{namespace}.emails", "send", {})
        finally:
            await conn.close()

        async def columns() -> list[str] | None:
            row = kubectl("get", "queues", ns, "--no-headers").stdout.split()
            return row if row[:4] == ["emails", "3", "0", "1"] else None

        await eventually(columns, timeout=30)
        wide = kubectl("get", "queues", ns, "-o", "wide", "--no-headers").stdout.split()
        assert wide[5] == f"{namespace}.emails"  # the QUEUE column
    finally:
        op.stop()

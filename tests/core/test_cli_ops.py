"""The CLI in operation: errors users meet are one actionable line, big enqueues stream in
committed chunks, stats stay cheap and say how exact they are, and `shoal up` outlives a
database that refuses its queries for a while."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from helpers import eventually
from shoal import client, queues
from shoal.client import NewJob
from shoal.embedded import EmbeddedPostgres, free_port, start_embedded

EXPECTED = "postgresql://user:pass@host:5432/db"


def cli_env(db_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SHOAL_DATABASE_URL", "DATABASE_URL")}
    env["PYTHONSAFEPATH"] = "1"
    if db_url:
        env["SHOAL_DATABASE_URL"] = db_url
    return env


def shoal(db_url: str | None, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], env=cli_env(db_url), input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def server_of(db_url: str) -> str:
    return db_url.rpartition("/")[0]


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["mysql://root:secret@db:3306/app", "garbage", "postgresql://h:notaport/db"])
def test_malformed_url_names_its_source_and_the_expected_form(url: str) -> None:
    res = shoal(url, "stats")
    assert res.returncode == 2
    line = one_line_error(res)
    assert "SHOAL_DATABASE_URL" in line and EXPECTED in line and "secret" not in line
    res = shoal(None, "--database-url", url, "stats")
    assert res.returncode == 2 and "--database-url" in one_line_error(res)


def test_unreachable_server_is_one_line() -> None:
    res = shoal(f"postgresql://u:p@127.0.0.1:{free_port()}/db", "stats")
    assert res.returncode == 1
    line = one_line_error(res)
    assert "cannot connect to 127.0.0.1:" in line and "SHOAL_DATABASE_URL" in line


async def test_unmigrated_database_says_run_migrate(db_url: str, conn: asyncpg.Connection) -> None:
    await conn.execute('CREATE DATABASE "empty_ops"')
    try:
        for args in (["stats"], ["queue", "list"], ["jobs", "cancel", "1"]):
            res = shoal(f"{server_of(db_url)}/empty_ops", *args)
            assert res.returncode == 2 and "run `shoal migrate` first" in one_line_error(res), args
    finally:
        await conn.execute('DROP DATABASE "empty_ops" WITH (FORCE)')


async def test_wrong_password_is_one_line(db_url: str, conn: asyncpg.Connection,
                                          pg_server: EmbeddedPostgres | None) -> None:
    if pg_server is None:
        pytest.skip("needs the embedded server, whose pg_hba.conf this test changes")
    hba = pg_server.data_dir / "pg_hba.conf"
    original = hba.read_text()
    await conn.execute("CREATE ROLE ops_pw LOGIN PASSWORD 'right'")
    hba.write_text("host all ops_pw 127.0.0.1/32 scram-sha-256\n" + original)
    try:
        await conn.execute("SELECT pg_reload_conf()")
        url = db_url.replace("postgres@", "ops_pw:wrong@")
        res = shoal(url, "stats")
        assert res.returncode == 2
        line = one_line_error(res)
        assert 'password authentication failed for user "ops_pw"' in line
        assert "check the password in SHOAL_DATABASE_URL" in line and "Secret" in line
        debug = shoal(url, "--log-level", "debug", "stats")
        assert "Traceback" in debug.stderr, "--log-level debug keeps the traceback"
    finally:
        hba.write_text(original)
        await conn.execute("SELECT pg_reload_conf()")
        await conn.execute("DROP ROLE ops_pw")


async def test_cancel_fails_when_an_id_was_not_cancelled(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "c", keep_failed_seconds=None)
    a, b = await client.enqueue_many(conn, [NewJob("c", "t"), NewJob("c", "t")])
    res = shoal(db_url, "jobs", "cancel", str(a))
    assert res.returncode == 0 and f"{a}\tcancelled" in res.stdout
    res = shoal(db_url, "jobs", "cancel", str(b), str(a), "999999999")
    assert res.returncode == 1
    assert f"{b}\tcancelled" in res.stdout, "the cancellable ones are still cancelled"
    line = one_line_error(res)
    assert f"{a} (already cancelled)" in line and "999999999 (unknown job id)" in line


async def test_retention_flags_refuse_negatives(db_url: str, conn: asyncpg.Connection) -> None:
    for flag in ("--keep-failed", "--keep-succeeded"):
        res = shoal(db_url, "queue", "create", "r", flag, "-7")
        assert res.returncode == 2 and f"argument {flag}: must be" in res.stderr, res.stderr
    assert await queues.get_queue(conn, "r") is None, "nothing was declared"
    assert shoal(db_url, "queue", "create", "r", "--keep-failed", "60").returncode == 0
    assert (await queues.get_queue(conn, "r")).keep_failed_seconds == 60  # type: ignore[union-attr]
    assert shoal(db_url, "queue", "create", "r", "--keep-failed", "forever").returncode == 0
    assert (await queues.get_queue(conn, "r")).keep_failed_seconds is None  # type: ignore[union-attr]


# -- enqueue -------------------------------------------------------------------------------------
async def test_enqueue_count_is_bounded(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "big")
    res = shoal(db_url, "enqueue", "--queue", "big", "--task", "t", "--count", "99999999999")
    assert res.returncode == 2 and "argument --count: at most 10,000,000" in res.stderr
    assert await conn.fetchval("SELECT count(*) FROM shoal.jobs") == 0


async def test_big_payloads_from_a_file_and_stdin(db_url: str, conn: asyncpg.Connection, tmp_path: Path) -> None:
    await queues.declare_queue(conn, "blobs")
    payload = {"blob": "x" * 5_000_000, "n": 1}
    path = tmp_path / "payload.json"
    path.write_text(json.dumps(payload))
    res = shoal(db_url, "enqueue", "--queue", "blobs", "--task", "t", "--payload-file", str(path), "--count", "4")
    assert res.returncode == 0, res.stderr
    res = shoal(db_url, "enqueue", "--queue", "blobs", "--task", "t", "--payload", "-", stdin=json.dumps(payload))
    assert res.returncode == 0, res.stderr
    rows = await conn.fetch("SELECT payload FROM shoal.jobs ORDER BY id")
    assert len(rows) == 5 and all(json.loads(r["payload"]) == payload for r in rows)
    res = shoal(db_url, "enqueue", "--queue", "blobs", "--task", "t", "--payload-file", str(tmp_path / "nope"))
    assert res.returncode == 2 and "--payload-file: cannot read" in one_line_error(res)


async def test_big_enqueue_commits_chunk_by_chunk(db_url: str, conn: asyncpg.Connection) -> None:
    """While a later chunk is held up, the earlier ones are already visible to workers; an
    interrupted run keeps them and says so."""
    await queues.declare_queue(conn, "stream")
    # A COPY into a table of `hold_from` jobs or more waits for an advisory lock this test holds.
    await conn.execute("""
        CREATE TABLE public.hold(hold_from bigint);
        INSERT INTO public.hold VALUES (10000);
        CREATE FUNCTION public.hold_second_chunk() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF (SELECT count(*) FROM shoal.jobs) >= (SELECT hold_from FROM public.hold) THEN
                PERFORM pg_advisory_xact_lock_shared(4242);
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER hold_second_chunk BEFORE INSERT ON shoal.jobs
            FOR EACH STATEMENT EXECUTE FUNCTION public.hold_second_chunk();
    """)
    await conn.execute("SELECT pg_advisory_lock(4242)")
    cmd = [sys.executable, "-m", "shoal.cli", "enqueue", "--queue", "stream", "--task", "t", "--count", "25000"]
    proc = await spawn(cmd, db_url)
    try:
        visible = lambda: conn.fetchval("SELECT count(*) FROM shoal.jobs")  # noqa: E731
        await eventually(lambda: _equals(visible, 10_000), timeout=60)
        assert proc.returncode is None, "the first chunk is committed while the command still runs"
        await conn.execute("SELECT pg_advisory_unlock(4242)")
        out, err = await communicate(proc)
        assert proc.returncode == 0, err
        assert "enqueued 25000 jobs into stream" in out and "enqueued 25,000/25,000 (100%)" in err
        assert await visible() == 25_000
        analysed = "SELECT analyze_count FROM pg_stat_user_tables WHERE relid = 'shoal.jobs'::regclass"
        await eventually(lambda: conn.fetchval(analysed), timeout=30)  # workers get plans for the new size

        await conn.execute("UPDATE public.hold SET hold_from = 35000; SELECT pg_advisory_lock(4242)")
        proc = await spawn(cmd, db_url)
        await eventually(lambda: _equals(visible, 35_000), timeout=60)
        # Interrupt it while its next chunk waits on the lock.
        await eventually(lambda: conn.fetchval("SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = "
                                               "current_database() AND wait_event_type = 'Lock' AND "
                                               "wait_event = 'advisory'"), timeout=60)
        proc.send_signal(signal.SIGINT)
        _, err = await communicate(proc)
        assert proc.returncode == 130 and "stopped after 10,000 of 25,000 jobs" in err, err
        assert await visible() == 35_000
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await conn.execute("SELECT pg_advisory_unlock_all()")


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and children inherit that: under
    # `.ci/run &` the command would rightly ignore the Ctrl-C this test sends it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def spawn(cmd: list[str], db_url: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*cmd, env=cli_env(db_url), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, preexec_fn=_default_sigint)


async def communicate(proc: asyncio.subprocess.Process) -> tuple[str, str]:
    talk = asyncio.ensure_future(proc.communicate())
    done, _ = await asyncio.wait([talk], timeout=60)
    if not done:  # kill it, and show what it said
        proc.kill()
        _, err = await talk
        raise AssertionError(f"the command did not exit within 60 s; its stderr:\n{err.decode()[-2000:]}")
    out, err = talk.result()
    return out.decode(), err.decode()


async def _equals(fn, value: int) -> bool:  # type: ignore[no-untyped-def]
    return bool(await fn() == value)


# -- stats ---------------------------------------------------------------------------------------
async def test_capped_counts_match_a_full_count_and_say_when_they_estimate(conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "s1")
    await queues.declare_queue(conn, "s2")
    # 70 priorities (past the per-priority walk's 64), ready and scheduled in each, and the other states.
    await conn.execute("""
        INSERT INTO shoal.jobs (queue, task, max_attempts, priority, run_at, state, finished_at)
        SELECT 's1', 't', 5, (i % 70) - 35, now() + CASE WHEN i % 3 = 0 THEN interval '1 hour' ELSE '-1 minute' END,
               (ARRAY['pending', 'pending', 'running', 'succeeded', 'failed', 'cancelled'])[1 + i % 6]::shoal.job_state,
               CASE WHEN i % 6 >= 3 THEN now() END
          FROM generate_series(1, 3000) i""")
    full = await queues.state_counts(conn, exact=True)
    capped = await queues.state_counts(conn)
    assert capped == full and all(r.exact for r in capped)
    assert [r.queue for r in capped] == ["s1", "s2"] and capped[1].pending == 0

    await conn.execute("ANALYZE shoal.jobs")
    small = (await queues.state_counts(conn, "s1", cap=50))[0]
    for state in queues.STATES:
        true = getattr(full[0], state)
        assert small.kind(state) in ("estimated", "more_than"), state
        assert getattr(small, state) >= 50 if small.kind(state) == "estimated" else getattr(small, state) in (50, 1000)
        assert true > 50
    assert small.shown("succeeded")[0] in "~>"


async def test_stats_cli_labels_each_number(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "lab")
    await client.enqueue_many(conn, [NewJob("lab", "t") for _ in range(3)])
    res = shoal(db_url, "stats", "--json")
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(res.stdout)
    assert row["ready"] == 3 and row["precision"] == {s: "exact" for s in queues.STATES}
    assert row["exact_up_to"] == queues.STATS_CAP
    exact = json.loads(shoal(db_url, "stats", "--exact", "--json").stdout)[0]
    assert exact["ready"] == 3 and exact["exact_up_to"] is None
    res = shoal(db_url, "stats", "--queue", "ghost")
    assert res.returncode == 2 and "unknown queue 'ghost'" in one_line_error(res)


# -- shoal up ------------------------------------------------------------------------------------
def test_only_the_process_that_started_the_server_stops_it(pg_server: EmbeddedPostgres | None) -> None:
    if pg_server is None:
        pytest.skip("needs the embedded server")
    assert pg_server.started
    again = start_embedded(pg_server.data_dir, pg_server.port)
    assert again.is_running() and not again.started


@pytest.mark.slow
async def test_up_survives_its_queries_failing(db_url: str, conn: asyncpg.Connection, tmp_path: Path) -> None:
    """A table locked past the status query's statement_timeout (as a long bulk write can do)
    is reported and retried; `shoal up` keeps running until asked to stop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shoal.cli", "--log-format", "text", "up", "--queue", "up", "--max-workers", "1",
        "--data-dir", str(tmp_path / "pg"), env=cli_env(db_url),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    lines: list[str] = []

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            lines.append(raw.decode())

    reader = asyncio.create_task(read())
    try:
        await eventually(lambda: _seen(lines, "pending "), timeout=60)
        async with conn.transaction():
            await conn.execute("LOCK TABLE shoal.jobs IN ACCESS EXCLUSIVE MODE")
            await eventually(lambda: _seen(lines, "status query failed, retrying"), timeout=30)
        failed_at = len(lines)
        await eventually(lambda: _seen(lines[failed_at:], "pending "), timeout=30)
        assert proc.returncode is None, "".join(lines)
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 60) == 0, "".join(lines)
        assert not any("Traceback" in line for line in lines), "".join(lines)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await reader


async def _seen(lines: list[str], text: str) -> bool:
    return any(text in line for line in lines)

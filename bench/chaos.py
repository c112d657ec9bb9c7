"""The chaos suite: real `shoal worker` processes and a real PostgreSQL, broken on purpose.

    PYTHONSAFEPATH=1 .venv/bin/python bench/chaos.py             # every scenario (~5 min on 2 cores)
    PYTHONSAFEPATH=1 .venv/bin/python bench/chaos.py --quick     # smaller sizes (~3 min)
    PYTHONSAFEPATH=1 .venv/bin/python bench/chaos.py --only a,d  # some scenarios (letters or names)

Each scenario runs in a fresh database of an embedded PostgreSQL the suite starts itself (a
durable one for the database restarts), judges Shoal on the runs its tasks recorded
(bench/chaos_tasks.py) and prints one row of the table; then the notes: measurements and every
broken promise. Results go to bench/results/chaos.json; the exit status is 1 when a scenario
broke a promise, 2 when the harness itself failed. docs/chaos.md explains the scenarios and
how to read the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:  # PYTHONSAFEPATH=1 leaves the script's folder out
    sys.path.insert(0, str(BENCH))

from chaos_lib import Server, say  # noqa: E402
from chaos_scenarios import Ctx, db_restart, kill9, outage, sigterm  # noqa: E402
from chaos_scenarios_flow import backlog, limits, poison, sigstop  # noqa: E402
from chaos_truth import Result  # noqa: E402

RESULTS = BENCH / "results" / "chaos.json"
SCENARIOS: dict[str, Callable[[Ctx], Awaitable[Result]]] = {
    "a-leased": lambda c: kill9(c, held=False),
    "a-held": lambda c: kill9(c, held=True),
    "b-leased": lambda c: db_restart(c, held=False),
    "b-held": lambda c: db_restart(c, held=True),
    "c-outage": outage,
    "d-sigterm": sigterm,
    "e-leased": lambda c: poison(c, held=False),
    "e-held": lambda c: poison(c, held=True),
    "f-sigstop": sigstop,
    "g-limits": limits,
    "h-backlog": backlog,
}
HARNESS_ERROR = "harness error"


def selected(only: str | None) -> list[str]:
    if not only:
        return list(SCENARIOS)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    names = [n for n in SCENARIOS if any(n == w or n.split("-")[0] == w for w in wanted)]
    unknown = [w for w in wanted if not any(n == w or n.split("-")[0] == w for n in SCENARIOS)]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose among {', '.join(SCENARIOS)} (or their letters)")
    return names


def _seconds(v: float | None) -> str:
    return "-" if v is None else "never" if math.isinf(v) else f"{v:.1f}s"


def row(r: Result) -> list[str]:
    st = r.states
    judged = (str(r.lost), str(r.stuck), str(r.innocent_failed), str(r.charged_jobs),
              f"{r.duplicates} ({r.dup_at_fault})") if r.judged else ("-",) * 5
    verdict = "ERROR" if any(b.startswith(HARNESS_ERROR) for b in r.broken) else "BROKEN" if r.broken else "ok"
    return [r.name, f"{r.enqueued:,}", *(f"{st.get(k, 0):,}" for k in ("succeeded", "failed", "pending", "running")),
            *judged, str(r.faults), _seconds(r.recovery_s), f"{r.seconds:.0f}s", verdict]


HEADER = ["scenario", "jobs", "succ", "failed", "pending", "running", "lost", "stuck", "innocent", "charged",
          "dup (at fault)", "faults", "recovery", "took", "verdict"]


def table(results: list[Result]) -> str:
    rows = [HEADER, *(row(r) for r in results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(c.rjust(w) if i and i < len(HEADER) - 1 else c.ljust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def notes(results: list[Result]) -> str:
    out = []
    for r in results:
        out.append(f"{r.name}: " + ", ".join(f"{k}={v}" for k, v in r.metrics.items()))
        out += [f"    BROKEN: {b}" for b in r.broken] + [f"    note: {n}" for n in r.notes]
        bad = [d for d in r.duplicate_jobs if not d["in_flight_at_fault"]][:2]
        out += [f"    e.g. job {d['job_id']} ({d['final_state']}): "
                + "; ".join(f"pid {x['pid']} attempt {x['attempt']} {x['outcome'] or 'never ended'}"
                           + ("" if x.get("after_sigcont") is None else f" (started {x['after_sigcont']} s after SIGCONT)")
                           for x in d["runs"])
                for d in bad]
    return "\n".join(out)


def _plain(value: Any) -> Any:
    """JSON without Infinity: `never` for a recovery that did not happen."""
    if isinstance(value, float) and math.isinf(value):
        return "never"
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


async def run(names: list[str], args: argparse.Namespace) -> list[Result]:
    root = Path(tempfile.mkdtemp(prefix="shoal-chaos-"))
    ctx = Ctx(quick=args.quick, root=root, backlog=args.backlog, fast=Server(root, durable=False),
              durable=Server(root, durable=True))
    say(f"chaos suite: {', '.join(names)}{' (quick)' if args.quick else ''}; worker logs in {ctx.logs}")
    results = []
    try:
        for name in names:
            try:
                results.append(await SCENARIOS[name](ctx))
            except Exception as exc:  # report it as the scenario's row, and go on with the next
                traceback.print_exc()
                res = Result(name, judged=False)
                res.broken.append(f"{HARNESS_ERROR}: {exc!r}")
                results.append(res)
    finally:
        for server in (ctx.fast, ctx.durable):
            if args.keep and server.pg is not None:
                say(f"kept PostgreSQL {server.pg.url} (data in {server.pg.data_dir})")
            else:
                await asyncio.to_thread(server.destroy)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated scenarios: letters (a,b) or names (a-held)")
    p.add_argument("--quick", action="store_true", help="smaller sizes: about 3 minutes in all")
    p.add_argument("--backlog", type=int, help="jobs in scenario h (default 1,000,000; 500,000 with --quick)")
    p.add_argument("--keep", action="store_true", help="leave the PostgreSQL servers running (to look around)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    args = p.parse_args()
    args.backlog = args.backlog or (500_000 if args.quick else 1_000_000)
    names = selected(args.only)
    started = time.monotonic()
    results = asyncio.run(run(names, args))
    took = time.monotonic() - started
    print()
    print(table(results))
    print()
    print(notes(results))
    print(f"\n{sum(bool(r.broken) for r in results)} of {len(results)} scenarios broke a promise; "
          f"{took / 60:.1f} min. Columns: docs/chaos.md")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_plain({
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "quick": args.quick, "seconds": round(took),
        "scenarios": [asdict(r) for r in results]}), indent=1) + "\n")
    if any(b.startswith(HARNESS_ERROR) for r in results for b in r.broken):
        return 2
    return 1 if any(r.broken for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

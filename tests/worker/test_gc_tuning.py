"""`shoal worker` tunes the cyclic GC for a worker-only process (runner.tune_gc); `Worker` does not."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
from shoal.worker.runner import GC_YOUNG_THRESHOLD, tune_gc
gc.set_threshold({young}, 10, 10)
tune_gc()
print(gc.get_threshold()[0], gc.get_freeze_count() > 0, GC_YOUNG_THRESHOLD)
"""


def probe(young: int) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(young=young)], capture_output=True, text=True,
                         check=True, timeout=60)
    return out.stdout.split()


def test_tune_gc_raises_the_young_threshold_and_freezes_startup_objects() -> None:
    threshold, frozen, wanted = probe(700)
    assert threshold == wanted and frozen == "True"


def test_tune_gc_keeps_a_higher_threshold_and_a_disabled_collector() -> None:
    assert probe(50_000)[0] == "50000"
    assert probe(0)[0] == "0"  # the application turned automatic collection off: it stays off

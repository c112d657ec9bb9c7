"""The scaling decision (shoal.scaler.decision): table-driven cases, then properties."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.errors import ValidationError
from shoal.scaler.decision import (
    Decision,
    Observation,
    Policy,
    ScalerState,
    decide,
    translate_error,
    useful_replicas,
)

FRESH = ScalerState()
# The knobs these cases take unless they say otherwise (test values: Policy has no defaults for them).
KNOBS: dict[str, object] = {"min_replicas": 1, "max_replicas": 10, "concurrency": 1, "scale_down_delay": 60.0}


def knobs(**kw: object) -> Policy:
    return Policy(**{**KNOBS, **kw})  # type: ignore[arg-type]


def obs(ready: int = 0, running: int = 0, current: int = 1, now: float = 100.0, **kw: object) -> Observation:
    return Observation(ready=ready, running=running, current_replicas=current, now=now, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Case:
    policy: Policy
    obs: Observation
    state: ScalerState
    desired: int
    direction: str
    reason_has: tuple[str, ...] = ()


P100 = knobs(min_replicas=1, max_replicas=10, concurrency=100)
ZERO = knobs(min_replicas=0, max_replicas=10, concurrency=100, scale_to_zero=True)

CASES = {
    # --- scale up: at once, to this tick's recommendation --------------------------------
    "up-at-once-counts-running": Case(
        P100,
        obs(ready=420, running=30, current=2),
        FRESH,
        5,
        "up",
        ("scale up 2→5", "420 ready", "30 running", "5 replicas", "100/replica"),
    ),
    "up-follows-this-tick-not-an-older-peak": Case(
        P100, obs(ready=500, current=2), ScalerState(recommendations=((90.0, 8),)), 5, "up", ("2→5",)
    ),
    "saturated-workers-no-pending-still-need-pods": Case(
        P100, obs(ready=0, running=500, current=5), FRESH, 5, "none", ("steady at 5", "500 running")
    ),
    # --- scale down: only after the delay, to the window's maximum ------------------------
    "down-held-within-delay": Case(
        P100,
        obs(running=250, current=8),
        ScalerState(recommendations=((50.0, 8),)),
        8,
        "none",
        ("hold 8", "3 replicas", "8 recommended 50 s ago", "60 s"),
    ),
    "down-to-highest-in-window": Case(
        P100,
        obs(running=250, current=8),
        ScalerState(recommendations=((30.0, 8), (50.0, 6))),
        6,
        "down",
        ("scale down 8→6", "highest recommendation in the last 60 s is 6"),
    ),
    "down-exactly-at-delay": Case(
        P100, obs(running=250, current=8), ScalerState(recommendations=((40.0, 8),)), 3, "down", ("8→3",)
    ),
    "down-held-between-rec-and-peak": Case(
        P100, obs(running=250, current=5), ScalerState(recommendations=((60.0, 8),)), 5, "none", ("hold 5",)
    ),
    "fresh-state-treats-current-as-recent": Case(
        P100, obs(running=250, current=8), FRESH, 8, "none", ("hold 8",)
    ),
    "zero-delay-follows-at-once": Case(
        knobs(concurrency=100, scale_down_delay=0),
        obs(running=250, current=8),
        ScalerState(recommendations=((99.9, 8),)),
        3,
        "down",
        ("8→3",),
    ),
    # --- scale to zero -----------------------------------------------------------------------
    "zero-after-idle-delay": Case(
        ZERO,
        obs(current=1),
        ScalerState(recommendations=((30.0, 1), (40.0, 0)), idle_since=40.0),
        0,
        "down",
        ("scale to zero 1→0", "idle for 60 s"),
    ),
    "no-zero-before-idle-delay-even-if-window-empty": Case(
        ZERO,
        obs(current=3),
        ScalerState(recommendations=((50.0, 0),), idle_since=50.0),
        1,
        "down",
        ("3→1", "idle for 50 s", "scale to zero after 60 s"),
    ),
    "no-zero-when-not-allowed": Case(
        knobs(min_replicas=0, concurrency=100, scale_to_zero=False),
        obs(current=1),
        ScalerState(recommendations=((0.0, 1),), idle_since=0.0),
        1,
        "none",
        ("steady at 1",),
    ),
    "no-zero-while-jobs-run": Case(
        ZERO,
        obs(running=1, current=1),
        ScalerState(recommendations=((0.0, 1),), idle_since=0.0),
        1,
        "none",
        ("1 running",),
    ),
    "zero-respects-min-when-awake": Case(
        knobs(min_replicas=2, concurrency=100, scale_to_zero=True),
        obs(ready=1, current=0),
        ScalerState(recommendations=((0.0, 0),), idle_since=0.0),
        2,
        "up",
        ("wake from zero 0→2", "minimum is 2"),
    ),
    "asleep-stays-asleep": Case(
        ZERO,
        obs(current=0),
        ScalerState(recommendations=((90.0, 0),), idle_since=10.0),
        0,
        "none",
        ("asleep at 0",),
    ),
    "fresh-idle-at-zero-stays-at-zero": Case(ZERO, obs(current=0), FRESH, 0, "none", ()),
    # --- wake from zero ----------------------------------------------------------------------
    "wake-on-first-ready-job": Case(
        ZERO,
        obs(ready=1, current=0),
        ScalerState(recommendations=((99.0, 0),), idle_since=0.0),
        1,
        "up",
        ("wake from zero 0→1", "1 ready", "1 replica at 100/replica"),
    ),
    "wake-straight-to-need": Case(ZERO, obs(ready=250, current=0), FRESH, 3, "up", ("0→3",)),
    # --- clamps --------------------------------------------------------------------------------
    "clamp-to-max": Case(
        knobs(concurrency=10, max_replicas=10),
        obs(ready=10_000, current=4),
        FRESH,
        10,
        "up",
        ("4→10", "1000 replicas", "maximum is 10"),
    ),
    "clamp-to-min": Case(
        knobs(min_replicas=3, concurrency=10), obs(current=1), FRESH, 3, "up", ("1→3", "minimum is 3")
    ),
    "current-above-max-comes-down-at-once": Case(
        knobs(concurrency=10, max_replicas=4), obs(ready=1000, current=9), FRESH, 4, "down", ("9→4",)
    ),
    # --- the queue's global limits ------------------------------------------------------------
    "concurrency-cap": Case(
        knobs(concurrency=10, max_replicas=20, concurrency_limit=35),
        obs(ready=1000, current=1),
        FRESH,
        4,
        "up",
        ("1→4", "100 replicas", "concurrency limit 35 fills 4 replicas"),
    ),
    "rate-limit-duration-unknown": Case(
        knobs(concurrency=10, max_replicas=20, rate_limit=50.0),
        obs(ready=1000, current=1),
        FRESH,
        5,
        "up",
        ("1→5", "rate limit 50/s", "not yet measured"),
    ),
    "rate-limit-long-jobs-measured": Case(
        # 50 running at 5/s completed: jobs take 10 s, a busy pod does 1 job/s, 50 pods fill 50/s.
        knobs(concurrency=10, max_replicas=100, rate_limit=50.0),
        obs(ready=1000, running=50, current=5, throughput=5.0),
        FRESH,
        50,
        "up",
        ("5→50", "rate limit 50/s", "1/s per busy replica", "50 replicas"),
    ),
    "rate-limit-saturated-adds-nothing": Case(
        # 20 running at 10/s = the limit: 2 s jobs, 20 single-slot pods already fill it.
        knobs(concurrency=1, max_replicas=100, rate_limit=10.0),
        obs(ready=1000, running=20, current=20, throughput=10.0),
        FRESH,
        20,
        "none",
        ("steady at 20", "rate limit 10/s"),
    ),
    "min-wins-over-caps": Case(
        knobs(min_replicas=6, concurrency=10, max_replicas=20, concurrency_limit=35),
        obs(ready=1000, current=6),
        FRESH,
        6,
        "none",
        ("minimum is 6",),
    ),
    # --- a capped ready count is a lower bound -----------------------------------------------
    "uncapped-count-allows-down": Case(
        P100, obs(ready=100, current=8), ScalerState(recommendations=((0.0, 8),)), 1, "down", ("8→1",)
    ),
    "capped-count-never-scales-down": Case(
        P100,
        obs(ready=100, current=8, ready_capped=True),
        ScalerState(recommendations=((0.0, 8),)),
        8,
        "none",
        ("≥100 ready", "lower bound"),
    ),
    "capped-count-still-scales-up": Case(
        P100, obs(ready=1000, current=2, ready_capped=True), FRESH, 10, "up", ("2→10", "≥1000 ready")
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_decision_table(case: Case) -> None:
    decision, state = decide(case.obs, case.policy, case.state)
    assert (decision.desired, decision.direction) == (case.desired, case.direction), decision.reason
    for fragment in case.reason_has:
        assert fragment in decision.reason, (fragment, decision.reason)
    assert state.recommendations[-1] == (case.obs.now, decision.recommendation)
    if case.direction == "none":
        assert state.last_scale_time == case.state.last_scale_time
    else:
        assert state.last_scale_time == case.obs.now


def test_burst_then_quiet_timeline() -> None:
    """One queue through a burst, a drain, idleness, sleep and a wake-up, tick by tick."""
    policy = knobs(min_replicas=0, max_replicas=20, concurrency=100, scale_to_zero=True, scale_down_delay=60)
    load = [(420, 30), (420, 30), (0, 250), (0, 250), (0, 0), (0, 0), (0, 0), (0, 0), (5, 0), (0, 0)]
    state, current, seen = FRESH, 2, []
    for tick, (ready, running) in enumerate(load):
        decision, state = decide(obs(ready, running, current, now=tick * 20.0), policy, state)
        current = decision.desired
        seen.append(current)
    #          t=0  20  40  60  80 100 120 140 160 180
    assert seen == [5, 5, 5, 5, 3, 3, 1, 0, 1, 1]


def test_idle_tracking_and_restart() -> None:
    policy = knobs(min_replicas=0, concurrency=10, scale_to_zero=True, scale_down_delay=30)
    _, s1 = decide(obs(current=2, now=0.0), policy, FRESH)
    assert s1.idle_since == 0.0
    _, s2 = decide(obs(current=2, now=10.0), policy, s1)
    assert s2.idle_since == 0.0
    _, s3 = decide(obs(ready=1, current=2, now=11.0), policy, s2)
    assert s3.idle_since is None
    # A restarted loop (fresh state) holds what is running for a whole window before going down.
    d, _ = decide(obs(current=7, now=500.0), knobs(concurrency=10), FRESH)
    assert d.desired == 7


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_replicas": -1},
        {"max_replicas": 0},
        {"min_replicas": 5, "max_replicas": 4},
        {"concurrency": 0},
        {"target_per_replica": 0},
        {"scale_down_delay": -1.0},
        {"rate_limit": 0.0},
        {"concurrency_limit": 0},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_policy_rejects_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        knobs(**kwargs)


def test_observation_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="ready"):
        obs(ready=-1)
    with pytest.raises(ValueError, match="throughput"):
        obs(throughput=-1.0)


def test_policy_bounds_have_no_defaults() -> None:
    """The bounds' defaults belong to each backend (the Queue CRD's live in shoal.operator.queue_spec)."""
    with pytest.raises(TypeError):
        Policy(concurrency=1, scale_down_delay=0.0)  # type: ignore[call-arg]


def test_errors_speak_the_decisions_names_and_translate_to_the_callers() -> None:
    with pytest.raises(ValidationError) as err:
        knobs(min_replicas=5, max_replicas=4)
    assert err.value.field == "min_replicas"
    assert str(err.value) == "min_replicas: must be <= max_replicas (4); lower it or raise max_replicas"
    flags = translate_error(err.value, {"min_replicas": "--min-workers", "max_replicas": "--max-workers"})
    assert flags.field == "--min-workers"
    assert str(flags) == "--min-workers: must be <= --max-workers (4); lower it or raise --max-workers"
    unmapped = translate_error(err.value, {"concurrency": "spec.concurrency"})
    assert str(unmapped) == str(err.value)


def test_useful_replicas_unlimited() -> None:
    assert useful_replicas(obs(ready=10**9), knobs()) == (None, "")


# ------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------

FAST = settings(max_examples=150, deadline=None)


@st.composite
def policies(draw: st.DrawFn, *, limits: bool = True) -> Policy:
    lo = draw(st.integers(0, 5))
    return Policy(
        min_replicas=lo,
        max_replicas=draw(st.integers(max(lo, 1), 30)),
        concurrency=draw(st.integers(1, 20)),
        target_per_replica=draw(st.none() | st.integers(1, 200)),
        scale_down_delay=draw(st.sampled_from([0.0, 1.0, 5.0, 30.0, 60.0])),
        scale_to_zero=draw(st.booleans()),
        rate_limit=draw(st.none() | st.floats(0.1, 1000.0)) if limits else None,
        concurrency_limit=draw(st.none() | st.integers(1, 500)) if limits else None,
    )


loads = st.tuples(st.integers(0, 3000), st.integers(0, 3000))  # (ready, running)
steps = st.lists(st.tuples(st.floats(0.1, 40.0), loads), max_size=25)  # (seconds since last tick, load)


def run(
    policy: Policy, start: int, history: list[tuple[float, tuple[int, int]]]
) -> tuple[ScalerState, int, float]:
    """Feed a history of ticks through decide(), applying each decision; return state, replicas, time."""
    state, current, now = FRESH, start, 0.0
    for dt, (ready, running) in history:
        now += dt
        decision, state = decide(obs(ready, running, current, now=now), policy, state)
        current = decision.desired
    return state, current, now


def within_bounds(decision: Decision, policy: Policy) -> bool:
    if decision.desired == 0:
        return policy.scale_to_zero
    return max(policy.min_replicas, 1) <= decision.desired <= policy.max_replicas


@pytest.mark.parametrize(
    ("min_replicas", "scale_to_zero", "expected"),
    [(0, False, 1), (0, True, 0), (3, False, 3), (3, True, 3)],
    ids=["min0-no-zero", "min0-zero", "min3-no-zero", "min3-zero"],
)
def test_effective_min(min_replicas: int, scale_to_zero: bool, expected: int) -> None:
    assert knobs(min_replicas=min_replicas, scale_to_zero=scale_to_zero).effective_min == expected


@FAST
@given(
    policies(),
    st.integers(0, 50),
    steps,
    loads,
    st.booleans(),
    st.none() | st.floats(0.0, 500.0) | st.sampled_from([5e-324, 1e-300]),
)
def test_desired_always_within_bounds(
    policy: Policy,
    start: int,
    history: list[tuple[float, tuple[int, int]]],
    load: tuple[int, int],
    capped: bool,
    throughput: float | None,
) -> None:
    state, current, now = run(policy, start, history)
    o = obs(load[0], load[1], current, now=now + 1.0, ready_capped=capped, throughput=throughput)
    decision, _ = decide(o, policy, state)
    assert within_bounds(decision, policy), (decision, policy)
    if load[0] > 0:
        assert decision.desired >= 1, "a ready job must always have a worker"


@FAST
@given(
    policies(),
    st.integers(0, 50),
    steps,
    st.integers(0, 3000),
    st.integers(0, 3000),
    st.integers(0, 3000),
    st.booleans(),
    st.none() | st.floats(0.0, 500.0),
)
def test_monotonic_in_backlog(
    policy: Policy,
    start: int,
    history: list[tuple[float, tuple[int, int]]],
    ready_a: int,
    ready_b: int,
    running: int,
    capped: bool,
    throughput: float | None,
) -> None:
    state, current, now = run(policy, start, history)
    low, high = sorted((ready_a, ready_b))

    def desired(ready: int) -> int:
        o = obs(ready, running, current, now=now + 1.0, ready_capped=capped, throughput=throughput)
        return decide(o, policy, state)[0].desired

    assert desired(low) <= desired(high)


@FAST
@given(
    policies(),
    st.integers(0, 50),
    loads,
    st.booleans(),
    st.none() | st.floats(0.01, 500.0),
    st.floats(0.2, 10.0),
)
def test_steady_load_gives_steady_replicas(
    policy: Policy, start: int, load: tuple[int, int], capped: bool, throughput: float | None, tick: float
) -> None:
    """Same load every tick: at most one change (up at once, or down after the delay), never back."""
    start = min(start, policy.max_replicas)  # above max is clamped at once, a separate rule
    ticks = int(policy.scale_down_delay / tick) + 5
    state, current, seen = FRESH, start, []
    for i in range(ticks):
        o = obs(load[0], load[1], current, now=i * tick, ready_capped=capped, throughput=throughput)
        decision, state = decide(o, policy, state)
        current = decision.desired
        seen.append(current)
    changes = [i for i in range(1, len(seen)) if seen[i] != seen[i - 1]]
    first_change_from_start = seen[0] != start
    assert len(changes) + first_change_from_start <= 1, (start, seen)
    assert seen[-1] == seen[-2] == decision.recommendation, (seen, decision)
    if seen[-1] < start:
        # Came down: not before the delay (a fresh state counts the start as recommended at t=0).
        went_down_at = (changes[0] if changes else 0) * tick
        assert went_down_at >= policy.scale_down_delay - 1e-9


def reference_recommendation(policy: Policy, ready: int, running: int) -> int:
    """The recommendation without global limits, written out independently of the module."""
    work = ready + running
    if work == 0 and policy.scale_to_zero:
        return 0
    need = math.ceil(work / policy.target)
    return min(max(need, policy.min_replicas, 1), policy.max_replicas)


@FAST
@given(policies(limits=False), st.integers(0, 50), steps)
def test_never_below_a_recommendation_younger_than_the_delay(
    policy: Policy, start: int, history: list[tuple[float, tuple[int, int]]]
) -> None:
    state, current, now = FRESH, start, 0.0
    seen: list[tuple[float, int]] = []
    idle_from: float | None = None
    for dt, (ready, running) in history:
        now += dt
        decision, state = decide(obs(ready, running, current, now=now), policy, state)
        rec = reference_recommendation(policy, ready, running)
        assert decision.recommendation == rec
        seen.append((now, rec))
        younger = [r for t, r in seen if now - t < policy.scale_down_delay] or [rec]
        assert decision.desired >= max(younger), (seen, decision)
        if decision.desired > current:
            # Up goes to this tick's recommendation (or the floor while not yet asleep).
            assert decision.desired == (rec or max(policy.min_replicas, 1)), (seen, decision)
        idle_from = (idle_from if idle_from is not None else now) if ready == running == 0 else None
        if decision.desired == 0 and current > 0:
            assert idle_from is not None and now - idle_from >= policy.scale_down_delay
        current = decision.desired

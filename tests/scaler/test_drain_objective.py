"""The drain-time objective (shoal.scaler.drain through shoal.scaler.decision.decide), tick by tick."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.errors import ValidationError
from shoal.scaler import drain
from shoal.scaler.decision import Observation, Policy, ScalerState, decide, translate_error, useful_replicas

FRESH = ScalerState()


def policy(**kw: object) -> Policy:
    base: dict[str, object] = {"min_replicas": 1, "max_replicas": 16, "concurrency": 10, "scale_down_delay": 5.0,
                               "drain_within": 30.0}
    return Policy(**{**base, **kw})  # type: ignore[arg-type]


def obs(ready: int = 0, running: int = 0, current: int = 1, now: float = 0.0, **kw: object) -> Observation:
    return Observation(ready=ready, running=running, current_replicas=current, now=now, **kw)  # type: ignore[arg-type]


def knowing(seconds_per_run: float, replica_rate: float | None = None) -> ScalerState:
    """A state that has measured a replica's speed (a queue that has run jobs before)."""
    return ScalerState(speed=drain.Speed(seconds_per_run=seconds_per_run, replica_rate=replica_rate, updated_at=-1.0))


# --------------------------------------------------------------------------------------- the rule


def test_unknown_speed_falls_back_to_todays_rule() -> None:
    d, state = decide(obs(ready=2000, current=1), policy(), FRESH)
    assert (d.desired, d.direction) == (16, "up")
    assert "2000 ready + 0 running need 200 replicas at 10/replica; maximum is 16" in d.reason
    assert state.speed.seconds_per_run is None


def test_known_speed_sizes_for_the_objective() -> None:
    # 10 at once, 0.5 s a job: 20 jobs/s a replica; 2,000 jobs in 30 s need 100/s = 5 replicas... at
    # 20/s each, 2000 / (20 × 30) = 3.33 → 4 replicas, done in 25 s.
    d, _ = decide(obs(ready=2000, current=1), policy(), knowing(0.5))
    assert (d.desired, d.direction) == (4, "up")
    assert d.reason == ("scale up 1→4: 2,000 jobs at 20/s per replica (10 at once, 0.5 s per job) "
                        "drain within 30 s with 4 replicas (~25 s)")


def test_the_issue_example_reason() -> None:
    d, _ = decide(obs(ready=2390, running=10, current=1), policy(), knowing(10 / 48))
    assert "2,400 jobs at 48/s per replica" in d.reason and "drain within 30 s with 2 replicas" in d.reason
    assert d.desired == 2


def test_the_first_measurement_is_used_at_once() -> None:
    d, state = decide(obs(ready=2000, current=1, seconds_per_run=0.5, throughput=5.0, reporting=1), policy(), FRESH)
    assert d.desired == 4 and state.speed.seconds_per_run == 0.5
    # Workers that were starved (one at a fifth of its capacity) do not make a replica look slow:
    # their 5 jobs/s is not taken as a replica's rate, the duration is.
    assert state.speed.replica_rate is None


def test_the_deadline_is_the_oldest_ready_jobs() -> None:
    """The objective counts from when the oldest job became ready, not from now: a scale-down
    that re-granted the whole objective would finish bursts late."""
    state = knowing(0.5)
    fresh, _ = decide(obs(ready=1000, current=2, oldest_ready_age=0.0), policy(), state)
    later, _ = decide(obs(ready=1000, current=2, oldest_ready_age=20.0), policy(), state)
    late, _ = decide(obs(ready=1000, current=2, oldest_ready_age=90.0), policy(), state)
    assert fresh.desired == 2  # 1000 / (20 × 30)
    assert later.desired == 5  # 10 s left: 1000 / (20 × 10)
    assert "objective 30 s, oldest ready job waited 20 s" in later.reason
    assert late.desired == 7  # already late: a quarter of the objective, 1000 / (20 × 7.5)


def test_more_replicas_than_jobs_in_flight_cannot_help() -> None:
    # 60 s jobs and a 30 s objective: the best possible is every job running at once.
    d, _ = decide(obs(ready=25, current=1), policy(), knowing(60.0))
    assert d.desired == 3 and "3 replicas running every job at once" in d.reason


@pytest.mark.parametrize(("kw", "ready", "desired", "says"), [
    ({"max_replicas": 3}, 30_000, 3, "maximum is 3"),
    ({"min_replicas": 4}, 100, 4, "minimum is 4"),
    ({"concurrency_limit": 20}, 30_000, 2, "concurrency limit 20 fills 2 replicas"),
])
def test_bounds_and_the_useful_ceiling_still_apply(kw: dict[str, object], ready: int, desired: int,
                                                   says: str) -> None:
    d, _ = decide(obs(ready=ready, current=1), policy(**kw), knowing(0.5))
    assert d.desired == desired and says in d.reason, d.reason


def test_a_capped_count_never_scales_down() -> None:
    d, _ = decide(obs(ready=5000, current=8, ready_capped=True), policy(),
                  ScalerState(recommendations=((0.0, 8),), speed=drain.Speed(seconds_per_run=0.02)))
    assert d.desired == 8 and "≥5,000 jobs" in d.reason and "lower bound" in d.reason


def test_scale_down_keeps_the_window() -> None:
    state = knowing(0.5)
    d, state = decide(obs(ready=2000, current=1, now=0.0), policy(), state)
    assert d.desired == 4
    d, state = decide(obs(ready=100, current=4, now=1.0), policy(), state)
    assert (d.desired, d.direction) == (4, "none") and "scale-down waits" in d.reason
    d, state = decide(obs(ready=100, current=4, now=5.5), policy(), state)
    assert (d.desired, d.direction) == (1, "down")


def test_rate_limit_ceiling_uses_the_measured_duration() -> None:
    # 50 jobs/s of 2 s jobs keep 100 running: 10 replicas of 10, not ceil(50 / 10) = 5.
    p = policy(drain_within=None, rate_limit=50.0, max_replicas=100)
    assert useful_replicas(obs(), p, 2.0)[0] == 10
    d, _ = decide(obs(ready=10_000, current=1, seconds_per_run=2.0), p, FRESH)
    assert d.desired == 10 and "rate limit 50/s of 2 s jobs fills 10 replicas" in d.reason
    # Unknown duration: today's cautious cap.
    assert useful_replicas(obs(), p)[0] == 5


def test_without_an_objective_nothing_changes() -> None:
    d, state = decide(obs(ready=2000, current=1, seconds_per_run=0.5), policy(drain_within=None), FRESH)
    assert d.desired == 16 and "need 200 replicas" in d.reason
    assert state.speed.seconds_per_run == 0.5  # measured all the same (the rate-limit ceiling uses it)


# --------------------------------------------------------------------------------------- measuring


def test_one_slow_heartbeat_does_not_swing_the_estimate() -> None:
    state = knowing(0.5)
    # Ticks every second for one 5 s beat whose mean is dominated by one 60 s job.
    for t in range(5):
        _, state = decide(obs(ready=0, running=5, current=1, now=float(t), seconds_per_run=30.0), policy(), state)
    assert state.speed.seconds_per_run is not None and 0.5 < state.speed.seconds_per_run <= 0.5 * 1.5
    # A lasting change (jobs now take 2 s) is followed within a minute.
    for t in range(5, 65):
        _, state = decide(obs(ready=0, running=5, current=1, now=float(t), seconds_per_run=2.0), policy(), state)
    assert state.speed.seconds_per_run == pytest.approx(2.0, rel=0.05)


def test_smoothing_is_by_time_not_by_ticks() -> None:
    fast, slow = knowing(1.0), knowing(1.0)
    for i in range(1, 101):
        _, fast = decide(obs(now=i * 0.1, seconds_per_run=2.0), policy(), fast)
    for i in range(1, 11):
        _, slow = decide(obs(now=float(i), seconds_per_run=2.0), policy(), slow)
    assert fast.speed.seconds_per_run == pytest.approx(slow.speed.seconds_per_run, rel=0.01)


def test_an_idle_queue_keeps_what_it_learned() -> None:
    state = knowing(0.5)
    for t in range(300):
        _, state = decide(obs(now=float(t)), policy(), state)
    assert state.speed.seconds_per_run == 0.5
    d, _ = decide(obs(ready=2000, current=1, now=300.0), policy(), state)
    assert d.desired == 4


def test_the_observed_rate_counts_only_when_replicas_were_saturated() -> None:
    """Handler time says 500 jobs/s a replica (10 at once, 20 ms); claiming and completing cost
    more, and busy replicas complete 250/s. That is learned once the queue has had ready jobs for
    SATURATION_SECONDS, and then sizes the drain; a starved replica's low rate never is."""
    p = policy(drain_within=30.0)
    state = knowing(0.02)
    # Starved: nothing ready, 2 replicas complete 20 jobs/s between them.
    for t in range(20):
        _, state = decide(obs(ready=0, running=2, current=2, now=float(t), seconds_per_run=0.02, throughput=20.0,
                              reporting=2), p, state)
    assert state.speed.replica_rate is None
    # A trickle: one job ready on every tick (the enqueue wakes the loop), workers mostly idle.
    for t in range(20, 40):
        _, state = decide(obs(ready=1, running=2, current=2, now=float(t), seconds_per_run=0.02, throughput=20.0,
                              reporting=2), p, state)
    assert state.speed.replica_rate is None and state.speed.saturated_since is None
    # A burst: saturated replicas complete 250/s each; the rate is trusted after 10 s of backlog.
    seen = []
    for t in range(40, 65):
        d, state = decide(obs(ready=29_000, running=20, current=2, now=float(t), seconds_per_run=0.02,
                              throughput=500.0, reporting=2, oldest_ready_age=0.0), p, state)
        seen.append((t, state.speed.replica_rate))
    assert all(rate is None for t, rate in seen if t < 40 + drain.SATURATION_SECONDS)
    assert state.speed.replica_rate == pytest.approx(250.0)
    # 29,020 jobs at ~250-300/s a replica within 30 s: 4 replicas, not the 2 that 500/s would give.
    assert d.desired == 4 and "measured on busy replicas" in d.reason


def test_count_cap_reaches_what_the_objective_can_use() -> None:
    p = policy(drain_within=120.0, max_replicas=16)
    assert drain.count_cap(p, drain.Speed(), 161) == 161  # speed unknown: today's count
    assert drain.count_cap(policy(drain_within=None), drain.Speed(seconds_per_run=0.5), 161) == 161
    # 16 replicas × 20 jobs/s × 120 s = 38,400 jobs: counting further changes nothing.
    assert drain.count_cap(p, drain.Speed(seconds_per_run=0.5), 161) == 38_401
    assert drain.count_cap(p, drain.Speed(seconds_per_run=1e-6), 161) == drain.COUNT_LIMIT


# --------------------------------------------------------------------------------------- a burst


def simulate(p: Policy, state: ScalerState, jobs: int, per_replica: float, start_delay: float = 1.0,
             tick: float = 1.0) -> tuple[float, float, int, int]:
    """A burst drained by replicas that each complete `per_replica` jobs/s once started (after
    `start_delay`), decided every `tick`: (drain time, replica-seconds, peak, scale events)."""
    now, left, current, started = 0.0, float(jobs), 1, [-100.0]
    replica_s, peak, events = 0.0, 1, 0
    while left > 0 and now < 3600:
        running = min(int(math.ceil(left)), len(started) * p.concurrency)
        ready = max(int(math.ceil(left)) - running, 0)
        d, state = decide(obs(ready=ready, running=running, current=current, now=now,
                              oldest_ready_age=now if ready else None), p, state)
        if d.desired != current:
            events += 1
            started = started[:d.desired] + [now] * max(d.desired - len(started), 0)
            current = d.desired
        peak = max(peak, current)
        busy = sum(1 for s in started if now - s >= start_delay)
        left -= busy * per_replica * tick
        replica_s += current * tick
        now += tick
    return now, replica_s, peak, events


@pytest.mark.parametrize(("jobs", "seconds", "objective"), [
    (30_000, 0.02, 30.0), (30_000, 0.02, 120.0), (2_000, 0.5, 30.0), (2_000, 0.5, 120.0)])
def test_a_burst_meets_its_objective_with_fewer_replicas(jobs: int, seconds: float, objective: float) -> None:
    p = policy(drain_within=objective)
    capacity = 10 / seconds
    today = simulate(policy(drain_within=None), FRESH, jobs, capacity)
    simulated_drain_s, replica_s, peak, events = simulate(p, knowing(seconds), jobs, capacity)
    assert simulated_drain_s <= objective * 1.2, (simulated_drain_s, objective)
    assert replica_s < today[1], (replica_s, today)
    assert peak < 16 and events <= 4


def test_a_cold_burst_uses_todays_rule() -> None:
    cold = simulate(policy(drain_within=120.0), FRESH, 2_000, 20.0)
    today = simulate(policy(drain_within=None), FRESH, 2_000, 20.0)
    assert cold == today


# --------------------------------------------------------------------------------------- knobs


@pytest.mark.parametrize("bad", [0.0, 0.5, -1.0, math.inf, math.nan])
def test_the_objective_must_be_at_least_a_second(bad: float) -> None:
    with pytest.raises(ValidationError) as err:
        policy(drain_within=bad)
    assert err.value.field == "drain_within"
    assert str(translate_error(err.value, {"drain_within": "--drain-within"})).startswith("--drain-within: ")


@pytest.mark.parametrize("field", ["seconds_per_run", "oldest_ready_age"])
@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan])
def test_observation_rejects_bad_durations(field: str, bad: float) -> None:
    with pytest.raises(ValidationError, match=field):
        obs(**{field: bad})  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- properties

speeds = st.builds(drain.Speed, seconds_per_run=st.none() | st.floats(1e-6, 120.0),
                   replica_rate=st.none() | st.floats(1e-3, 1e4), updated_at=st.none() | st.floats(-50, 0),
                   saturated_since=st.none() | st.floats(-50, 0))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10), st.integers(1, 40), st.integers(1, 20), st.floats(1.0, 600.0), speeds,
       st.integers(0, 50_000), st.integers(0, 50_000), st.integers(0, 500), st.integers(0, 40),
       st.none() | st.floats(0.0, 900.0), st.none() | st.floats(0.0, 60.0), st.booleans())
def test_monotonic_in_backlog_and_within_bounds(lo: int, span: int, concurrency: int, objective: float,
                                                speed: drain.Speed, ready_a: int, ready_b: int, running: int,
                                                current: int, age: float | None, measured: float | None,
                                                capped: bool) -> None:
    p = Policy(min_replicas=lo, max_replicas=lo + span, concurrency=concurrency, scale_down_delay=5.0,
               drain_within=objective)
    state = ScalerState(speed=speed)

    def desired(ready: int) -> int:
        o = obs(ready=ready, running=running, current=current, now=1.0, oldest_ready_age=age,
                seconds_per_run=measured, ready_capped=capped)
        d, _ = decide(o, p, state)
        assert lo <= d.desired <= lo + span
        return d.desired

    low, high = sorted((ready_a, ready_b))
    assert desired(low) <= desired(high)

"""The one place that decides what ``spec.replicas`` the operator writes to a worker Deployment.

Until the autoscaler runs, a Deployment runs at the Queue's minimum. Once it runs, it owns
``spec.replicas`` (through the scale subresource), so the operator must not undo its work:
this function leaves any replica count inside the Queue's bounds alone and only pulls a
count that is outside them (a new Deployment, or a Queue whose bounds changed) back in.

With autoscaling off (``minReplicas == maxReplicas`` and no ``scaleToZero``) a new
Deployment still starts at that count, but afterwards nobody in Shoal touches it: that is
how a user hands the count to KEDA, an HPA or ``kubectl scale`` (docs/autoscaling.md).
Clamping there would fight whoever owns it on every resync.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def replica_bounds(autoscaling: Mapping[str, Any]) -> tuple[int, int]:
    """(lowest, highest) replicas a Queue allows, with the CRD's defaults.

    Mirrors ``shoal.scaler.decision.Policy.effective_min`` (the operator may not import the
    scaler): without scaleToZero the floor is ``max(minReplicas, 1)``; with it, 0.
    """
    min_replicas = int(autoscaling.get("minReplicas", 1))
    max_replicas = int(autoscaling.get("maxReplicas", 10))
    low = min_replicas if autoscaling.get("scaleToZero", False) else max(min_replicas, 1)
    return low, max(max_replicas, low)


def autoscaling_enabled(autoscaling: Mapping[str, Any]) -> bool:
    """Mirrors ``shoal.scaler.decision.Policy.autoscaling_enabled`` (checked by a test)."""
    return bool(autoscaling.get("scaleToZero", False)) or \
        int(autoscaling.get("minReplicas", 1)) != int(autoscaling.get("maxReplicas", 10))


def replicas_to_set(autoscaling: Mapping[str, Any], current: int | None) -> int | None:
    """The replica count to write, or None to leave the Deployment's count alone.

    ``current`` is the Deployment's ``spec.replicas`` (None when it does not exist yet).
    A new Deployment starts at the floor; an existing count within bounds is kept (the
    autoscaler or a user set it); one outside is clamped to the nearest bound, unless
    autoscaling is off, in which case any existing count is kept.
    """
    low, high = replica_bounds(autoscaling)
    if current is None:
        return low
    if not autoscaling_enabled(autoscaling):
        return None
    clamped = min(max(current, low), high)
    return None if clamped == current else clamped

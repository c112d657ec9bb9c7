"""Kopf peering priority for this operator replica.

Kopf peering lets only the highest-priority live replica handle resources; replicas of
EQUAL priority all pause ("possibly conflicting operators"), so two replicas started with
kopf's default priority (0) would both freeze. Each replica therefore derives its own
priority from its identity, the pod name (``POD_NAME``, set by the chart from the downward
API; else the hostname, which is the pod name in Kubernetes), hashed into 1..2**31-1.
Replicas of one Deployment have distinct names, so they get distinct priorities (a clash
has odds of about 1 in 2**31 per pair); the highest is active and the others stand by, and
when it stops renewing its peering record a standby takes over.

``SHOAL_OPERATOR_PRIORITY`` overrides the derived value, e.g. to pin the active replica.
The CronJob exactly-once guarantee does not depend on any of this: it holds in Postgres
even if two replicas act at once.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Mapping

from shoal.errors import ConfigError

ENV_PRIORITY = "SHOAL_OPERATOR_PRIORITY"
_MAX = 2**31 - 1


def derive_priority(identity: str) -> int:
    """A stable priority in 1..2**31-1 from a replica's identity."""
    digest = hashlib.sha256(identity.encode()).digest()
    return int.from_bytes(digest[:8], "big") % (_MAX - 1) + 1


def replica_identity(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("POD_NAME") or env.get("HOSTNAME") or socket.gethostname()


def peering_priority(env: Mapping[str, str] | None = None) -> int:
    """The override if set, else the priority derived from this replica's identity."""
    env = os.environ if env is None else env
    explicit = env.get(ENV_PRIORITY)
    if explicit:
        try:
            return int(explicit)
        except ValueError:
            raise ConfigError(f"{ENV_PRIORITY}={explicit!r}: must be an integer") from None
    return derive_priority(replica_identity(env))

"""The process kubelet's pure decisions: the command line from a Dockerfile and a container,
paths and ports, which pod a ReplicaSet deletes, rollouts, status counts, env, probes."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from .image_venv import DOCKERFILE
from .kubelet_image import (
    SHOAL_PORT_FLAGS,
    command_line,
    expand_docker,
    expand_k8s,
    map_paths,
    parse_dockerfile,
    rewrite_ports,
)
from .kubelet_pods import (
    MissingReference,
    PodView,
    Probe,
    container_env,
    crash_backoff,
    decode_secret,
    deletion_cost,
    deletion_order,
    deployment_status,
    plan,
    pod_name,
    scaled,
    template_hash,
)

# -- the Dockerfile and the command line ------------------------------------------------------


def test_the_projects_dockerfile_runs_shoal_with_its_runtime_env() -> None:
    config = parse_dockerfile(DOCKERFILE.read_text())
    assert config.entrypoint == ("shoal",) and config.cmd == ("--help",)
    env = dict(config.env)
    assert env["PATH"].startswith("/opt/shoal/bin:") and env["HOME"] == env["TMPDIR"] == "/tmp"
    assert env["PYTHONPATH"] == "/app" and config.workdir == "/app" and config.user == "10001:10001"
    # The default target is the operator image; the worker image is the same runtime with the lean venv.
    assert ("builder-operator", ("/opt/shoal",), "/opt/shoal") in config.copies
    worker = parse_dockerfile(DOCKERFILE.read_text(), stage="worker")
    assert ("builder", ("/opt/shoal",), "/opt/shoal") in worker.copies
    assert (worker.entrypoint, worker.user, dict(worker.env)) == (config.entrypoint, config.user, dict(config.env))
    assert "PYTHONSAFEPATH" not in env  # a builder-stage variable does not leak into the runtime
    assert dict(parse_dockerfile(DOCKERFILE.read_text(), stage="builder").env)["PYTHONSAFEPATH"] == "1"


def test_dockerfile_parsing_rules() -> None:
    text = """# syntax=docker/dockerfile:1
ARG BASE=python:3.12
FROM ${BASE} AS base
ENV A=1 \\
    # a comment inside a continuation
    B="two words" C=$A D=${MISSING:-fallback}
CMD ["python"]
WORKDIR /srv
WORKDIR app
FROM base
ENV A=2
ENTRYPOINT /run.sh --flag
"""
    base = parse_dockerfile(text, stage="base", base_env={})
    assert dict(base.env) == {"A": "1", "B": "two words", "C": "", "D": "fallback"}  # C: A before this ENV
    assert base.cmd == ("python",) and base.workdir == "/srv/app"
    last = parse_dockerfile(text, base_env={})
    assert dict(last.env)["A"] == "2" and last.workdir == "/srv/app"  # inherited from the stage
    assert last.entrypoint == ("/bin/sh", "-c", "/run.sh --flag") and last.cmd == ()  # ENTRYPOINT resets CMD
    assert expand_docker("$A-${B}", {"A": "x", "B": "y"}) == "x-y"
    with pytest.raises(ValueError):
        parse_dockerfile(text, stage="nope")


@pytest.mark.parametrize(("container", "expected"), [
    ({}, ["shoal", "--help"]),
    ({"args": ["worker", "--queue", "q"]}, ["shoal", "worker", "--queue", "q"]),
    ({"command": ["python", "-m", "x"]}, ["python", "-m", "x"]),  # CMD dropped too
    ({"command": ["sh"], "args": ["-c", "echo $(NAME) $$(NAME) $(UNSET)"]}, ["sh", "-c", "echo v $(NAME) $(UNSET)"]),
])
def test_command_line_follows_the_kubernetes_rules(container: dict[str, list[str]], expected: list[str]) -> None:
    config = parse_dockerfile(DOCKERFILE.read_text())
    assert command_line(config, container, {"NAME": "v"}) == expected


def test_k8s_expansion_and_path_mapping() -> None:
    assert expand_k8s("$(A)-$(B)-$$(A)", {"A": "1"}) == "1-$(B)-$(A)"
    mounts = {"/tmp": Path("/h/pod/tmp"), "/opt/shoal": Path("/h/venv"), "/opt": Path("/h/opt")}
    assert map_paths("/opt/shoal/bin:/usr/bin:/tmp", mounts) == "/h/venv/bin:/usr/bin:/h/pod/tmp"
    assert map_paths("--dir=/tmp/x", mounts) == "--dir=/h/pod/tmp/x"
    assert map_paths("/opt/other", mounts) == "/h/opt/other"
    assert map_paths("postgresql://db/tmp /tmpfoo", mounts) == "postgresql://db/tmp /tmpfoo"
    # One pass: a host directory that itself lies under a mapped prefix (/tmp) stays put.
    nested = {"/opt/shoal": Path("/tmp/pytest/venv"), "/tmp": Path("/tmp/pytest/pod/tmp")}
    assert map_paths("/opt/shoal/bin:/tmp", nested) == "/tmp/pytest/venv/bin:/tmp/pytest/pod/tmp"


def test_ports_are_rewritten_or_added_through_the_port_flags() -> None:
    worker = ["shoal", "worker", "--metrics-port", "9090", "--tasks", "a", "b"]
    ports = {"metrics": (9090, 41001)}
    assert rewrite_ports(worker, ports, SHOAL_PORT_FLAGS) == \
        ["shoal", "worker", "--metrics-port", "41001", "--tasks", "a", "b"]
    operator = ["shoal", "operator", "--peering=shoal"]
    both = {"health": (8080, 41002), "metrics": (9090, 41003)}
    assert rewrite_ports(operator, both, SHOAL_PORT_FLAGS) == \
        [*operator, "--health-port=41002", "--metrics-port=41003"]  # the defaults, made explicit
    assert rewrite_ports(["x", "--metrics-port=9090"], ports, SHOAL_PORT_FLAGS) == ["x", "--metrics-port=41001"]
    assert rewrite_ports(["x", "--metrics-port=1234"], ports, SHOAL_PORT_FLAGS) == ["x", "--metrics-port=1234"]
    assert rewrite_ports(["x"], {"http": (80, 41004)}, SHOAL_PORT_FLAGS) == ["x"]  # no flag known for it


# -- ReplicaSet decisions ----------------------------------------------------------------------

def pod(name: str, *, ready: bool = True, cost: int = 0, created: float = 0, h: str = "new",
        running: bool = True, restarts: int = 0, ready_since: float | None = None) -> PodView:
    return PodView(name, h, running, ready, cost, created, ready_since if ready else None, restarts)


def test_deletion_order_not_ready_then_cost_then_newer() -> None:
    pods = [pod("old-cheap", cost=-5, created=1), pod("new", created=9), pod("old", created=1),
            pod("unready-expensive", ready=False, cost=100, created=1), pod("pending", running=False, ready=False),
            pod("precious", cost=50, created=9)]
    assert [p.name for p in deletion_order(pods)] == \
        ["pending", "unready-expensive", "old-cheap", "new", "old", "precious"]
    # Among equal costs and ages: ready for less time first, then more restarts.
    assert [p.name for p in deletion_order([pod("a", ready_since=1), pod("b", ready_since=5)])] == ["b", "a"]
    assert [p.name for p in deletion_order([pod("a"), pod("b", restarts=3)])] == ["b", "a"]


def test_deletion_cost_annotation() -> None:
    key = "controller.kubernetes.io/pod-deletion-cost"
    assert deletion_cost({key: "-7"}) == -7 and deletion_cost({key: " 12 "}) == 12
    assert deletion_cost({key: "x"}) == deletion_cost({key: str(2**31)}) == deletion_cost(None) == 0


def test_plan_scales_and_rolls() -> None:
    assert plan([pod("a")], 3, "new") .create == 2
    down = plan([pod("a", created=1), pod("b", created=2), pod("c", ready=False)], 1, "new")
    assert down == type(down)(0, ("c", "b"))
    # RollingUpdate maxSurge 1, maxUnavailable 0 (the operator's workers): one new pod at a time,
    # an old one goes only once a new one is ready.
    strategy = {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    old = [pod("o1", h="old", created=1), pod("o2", h="old", created=2)]
    assert plan(old, 2, "new", strategy) == type(down)(1, ())
    assert plan([*old, pod("n1", ready=False)], 2, "new", strategy).delete == ()
    assert plan([*old, pod("n1")], 2, "new", strategy) == type(down)(0, ("o2",))
    assert plan([pod("o1", h="old", ready=False), pod("o2", h="old")], 2, "new", strategy).delete == ("o1",)
    assert plan(old, 2, "new", {"type": "Recreate"}) == type(down)(0, ("o2", "o1"))
    assert scaled("25%", 10, round_up=True) == 3 and scaled("25%", 10, round_up=False) == 2 and \
        scaled(None, 4, round_up=True) == 1 and scaled(2, 4, round_up=False) == 2


def test_deployment_status_counts() -> None:
    status = deployment_status([pod("a"), pod("b", ready=False), pod("c", h="old")], 2, "new", 7)
    assert status["observedGeneration"] == 7 and status["replicas"] == 3 and status["updatedReplicas"] == 2
    assert status["readyReplicas"] == status["availableReplicas"] == 2 and "unavailableReplicas" not in status
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Available": "True", "Progressing": "True"}
    empty = deployment_status([], 0, "new", 1)
    assert "readyReplicas" not in empty and "replicas" not in empty  # zeros are omitted, as the API does
    assert deployment_status([pod("a", ready=False)], 1, "new", 1)["conditions"][0]["status"] == "False"


def test_template_hash_and_names() -> None:
    t = {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    assert template_hash(t) == template_hash({"spec": t["spec"], "metadata": t["metadata"]})
    assert template_hash(t) != template_hash({**t, "metadata": {"labels": {"a": "c"}}})
    assert len(template_hash(t)) == 10 and set(template_hash(t)) <= set("bcdfghjklmnpqrstvwxz2456789")
    assert pod_name("q-workers", "abc", "xyz12") == "q-workers-abc-xyz12"


# -- env, probes, backoff ----------------------------------------------------------------------

def test_container_env_sources_and_order() -> None:
    secrets = {"db": decode_secret({"data": {"url": base64.b64encode(b"postgresql://x").decode()}})}
    maps = {"cm": {"A": "1", "B": "2"}}
    pod_obj = {"metadata": {"name": "p", "namespace": "ns", "labels": {"app": "w"}}, "status": {"podIP": "1.2.3.4"}}
    container = {
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}, {"secretRef": {"name": "db"}},
                    {"configMapRef": {"name": "absent", "optional": True}}],
        "env": [{"name": "url", "value": "overridden"},
                {"name": "DB", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
                {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "A"}}},
                {"name": "MSG", "value": "$(A)-$(CM_B)-$(NOPE)"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "db", "key": "none", "optional": True}}}],
    }
    env = container_env(container, pod_obj, secrets, maps)
    assert env == {"CM_A": "1", "CM_B": "2", "url": "overridden", "DB": "postgresql://x", "A": "1",
                   "MSG": "1-2-$(NOPE)", "POD": "p", "APP": "w", "IP": "1.2.3.4"}
    for bad in ({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "db", "key": "nope"}}}]},
                {"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "A"}}}]},
                {"envFrom": [{"secretRef": {"name": "gone"}}]},
                {"env": [{"name": "X", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}]}):
        with pytest.raises(MissingReference):
            container_env(bad, pod_obj, secrets, maps)


def test_probe_thresholds() -> None:
    readiness = Probe.of({"failureThreshold": 2, "successThreshold": 2}, passed=False)
    assert [readiness.observe(r) for r in (True, False, True, True)] == [False, False, False, True]
    assert readiness.passed
    assert [readiness.observe(r) for r in (False, True, False, False)] == [False, False, False, True]
    assert not readiness.passed
    liveness = Probe.of({}, passed=True)  # defaults: 3 failures
    assert [liveness.observe(False) for _ in range(3)] == [False, False, True] and not liveness.passed


def test_crash_backoff_doubles_to_five_minutes() -> None:
    assert [crash_backoff(n) for n in (0, 1, 2, 3, 6, 20)] == [0, 10, 20, 40, 300, 300]

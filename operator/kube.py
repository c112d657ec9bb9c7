"""The few Kubernetes API calls the operator makes itself (kopf makes the others).

The official client is synchronous; each call runs in a worker thread so the event loop
(and every other resource's handler) keeps going. Bodies travel as plain dicts in API
spelling (camelCase), the same shape the pure builders produce. Every call here is backed
by a rule in charts/shoal/templates/rbac.yaml; `API_CALLS` lists them for the RBAC test.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

JSON = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"

# (apiGroup, resource, verb) → the code path, for the RBAC contract test.
API_CALLS: dict[tuple[str, str, str], str] = {
    ("", "secrets", "get"): "read_secret_value: the database URL a Queue names",
    ("shoal.dev", "queues", "get"): "read_queue: a CronJob's queueRef",
    ("apps", "deployments", "get"): "read_deployment: drift check and status",
    ("apps", "deployments", "create"): "create_deployment: a Queue's workers",
    ("apps", "deployments", "patch"): "patch_deployment: drift correction and spec updates",
    ("apps", "deployments", "delete"): "delete_deployment: Queue deletion",
    ("apps", "deployments/scale", "get"): "read_deployment_scale: the autoscaler's current replicas",
    ("apps", "deployments/scale", "patch"): "scale_deployment: the autoscaler sets replicas",
    ("shoal.dev", "queues/status", "patch"): "patch_queue_status: the autoscaler's counts and last scale",
    ("", "pods", "patch"): "annotate_pod: a worker pod's deletion cost, before a scale-down",
}


class NotFound(LookupError):
    """The object does not exist (HTTP 404)."""


class AlreadyExists(RuntimeError):
    """Creating an object that exists (HTTP 409 on create)."""


def load_config() -> None:
    """In a pod: the service account; elsewhere: KUBECONFIG / ~/.kube/config."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


def _json(response: Any) -> JSON:
    return json.loads(response.data) if response.data else {}  # type: ignore[no-any-return]


async def _call(fn: Any, *args: Any, **kwargs: Any) -> JSON:
    def run() -> JSON:
        try:
            return _json(fn(*args, _preload_content=False, **kwargs))
        except ApiException as exc:
            if exc.status == 404:
                raise NotFound(str(exc.reason)) from None
            if exc.status == 409 and getattr(fn, "__name__", "").startswith("create"):
                raise AlreadyExists(str(exc.reason)) from None
            raise

    return await asyncio.to_thread(run)


async def read_secret_value(namespace: str, name: str, key: str) -> str | None:
    """The decoded value of one key of a Secret; None if the key is absent. Raises NotFound."""
    secret = await _call(kubernetes.client.CoreV1Api().read_namespaced_secret, name, namespace)
    raw = (secret.get("data") or {}).get(key)
    if raw is None:
        return (secret.get("stringData") or {}).get(key)
    try:
        return base64.b64decode(raw).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


async def read_queue(namespace: str, name: str) -> JSON:
    """A Queue resource. Raises NotFound."""
    api = kubernetes.client.CustomObjectsApi()
    return await _call(api.get_namespaced_custom_object, "shoal.dev", "v1alpha1", namespace, "queues", name)


async def read_deployment(namespace: str, name: str) -> JSON | None:
    try:
        return await _call(kubernetes.client.AppsV1Api().read_namespaced_deployment, name, namespace)
    except NotFound:
        return None


async def create_deployment(namespace: str, body: Mapping[str, Any]) -> JSON:
    return await _call(kubernetes.client.AppsV1Api().create_namespaced_deployment, namespace, dict(body))


async def patch_deployment(namespace: str, name: str, patch: Mapping[str, Any]) -> JSON:
    """A JSON merge patch (lists are replaced, keys set to None removed)."""
    return await _call(kubernetes.client.AppsV1Api().patch_namespaced_deployment, name, namespace, dict(patch),
                       _content_type=MERGE_PATCH)


async def delete_deployment(namespace: str, name: str) -> bool:
    """Delete with background propagation (its ReplicaSets and pods follow); False if absent."""
    try:
        await _call(kubernetes.client.AppsV1Api().delete_namespaced_deployment, name, namespace,
                    propagation_policy="Background")
        return True
    except NotFound:
        return False


_SHARED: dict[str, Any] = {}
TICK_TIMEOUT = 10.0  # seconds: a hung API call must not stall a Queue's autoscaler forever


def _shared_client() -> Any:
    """One ApiClient (one HTTP connection pool) for the calls made every autoscaler tick, so a
    tick does not open a new connection; urllib3's pool is thread-safe."""
    client = _SHARED.get("client")
    if client is None:
        client = _SHARED["client"] = kubernetes.client.ApiClient()
    return client


async def read_deployment_scale(namespace: str, name: str) -> int:
    """``spec.replicas`` of a Deployment's scale subresource. Raises NotFound."""
    api = kubernetes.client.AppsV1Api(_shared_client())
    scale = await _call(api.read_namespaced_deployment_scale, name, namespace, _request_timeout=TICK_TIMEOUT)
    return int((scale.get("spec") or {}).get("replicas") or 0)


async def scale_deployment(namespace: str, name: str, replicas: int) -> int:
    """Set ``spec.replicas`` through the scale subresource (nothing else of the Deployment is
    touched, so it never conflicts with a template rollout). Returns the new count."""
    api = kubernetes.client.AppsV1Api(_shared_client())
    scale = await _call(api.patch_namespaced_deployment_scale, name, namespace, {"spec": {"replicas": replicas}},
                        _content_type=MERGE_PATCH, _request_timeout=TICK_TIMEOUT)
    return int((scale.get("spec") or {}).get("replicas") or 0)


async def annotate_pod(namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
    """Merge ``annotations`` into a pod's (None deletes one). Raises NotFound."""
    api = kubernetes.client.CoreV1Api(_shared_client())
    await _call(api.patch_namespaced_pod, name, namespace, {"metadata": {"annotations": dict(annotations)}},
                _content_type=MERGE_PATCH, _request_timeout=TICK_TIMEOUT)


async def patch_queue_status(namespace: str, name: str, status: Mapping[str, Any]) -> JSON:
    """Merge ``status`` into a Queue's status subresource (only the keys given change)."""
    api = kubernetes.client.CustomObjectsApi(_shared_client())
    return await _call(api.patch_namespaced_custom_object_status, "shoal.dev", "v1alpha1", namespace, "queues",
                       name, {"status": dict(status)}, _content_type=MERGE_PATCH, _request_timeout=TICK_TIMEOUT)

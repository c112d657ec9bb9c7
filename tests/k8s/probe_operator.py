"""A harness probe, not the product operator: a tiny kopf module that exercises what the real
operator will need from the API server (run by test_harness.py as ``kopf run -A --standalone``).

On a Queue's creation it: reads the referenced Secret, posts two Events, creates an adopted
Deployment (owner reference with the Queue's uid), patches the Deployment's ``scale``
subresource, and reports all of it in the Queue's status. On deletion (kopf's finalizer) it
posts one more Event.
"""

from __future__ import annotations

import base64
from typing import Any

import kopf
import kubernetes


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = 20  # logging.INFO: handler outcomes are posted as Events too
    settings.watching.reconnect_backoff = 0.2
    kubernetes.config.load_kube_config()  # KUBECONFIG from the harness


@kopf.on.create("shoal.dev", "v1alpha1", "queues")
def probe_create(spec: kopf.Spec, name: str, namespace: str | None, body: kopf.Body,
                 patch: kopf.Patch, **_: Any) -> dict[str, Any]:
    assert namespace is not None
    core = kubernetes.client.CoreV1Api()
    apps = kubernetes.client.AppsV1Api()

    ref = spec["databaseSecretRef"]
    secret: Any = core.read_namespaced_secret(ref["name"], namespace)
    url = base64.b64decode(secret.data[ref.get("key", "url")]).decode()

    kopf.info(body, reason="ProbeStarted", message="first event")
    kopf.info(body, reason="ProbeSecret", message=f"secret {ref['name']} read")

    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{name}-workers", "labels": {"shoal.dev/queue": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"shoal.dev/queue": name}},
            "template": {
                "metadata": {"labels": {"shoal.dev/queue": name}},
                "spec": {"containers": [{"name": "worker", "image": spec["worker"]["image"]}]},
            },
        },
    }
    kopf.adopt(deployment)
    created: Any = apps.create_namespaced_deployment(namespace, deployment)  # type: ignore[arg-type]
    apps.patch_namespaced_deployment_scale(f"{name}-workers", namespace, {"spec": {"replicas": 3}})
    scale: Any = apps.read_namespaced_deployment_scale(f"{name}-workers", namespace)

    patch.status["probe"] = {
        "databaseUrl": url,
        "deployment": created.metadata.name,
        "ownerUid": created.metadata.owner_references[0].uid,
        "scaleReplicas": scale.spec.replicas,
    }
    return {"image": spec["worker"]["image"]}


@kopf.on.delete("shoal.dev", "v1alpha1", "queues")
def probe_delete(body: kopf.Body, **_: Any) -> None:
    kopf.info(body, reason="ProbeDeleted", message="finalizer ran")

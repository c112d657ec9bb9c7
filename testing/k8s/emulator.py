"""A Kubernetes API emulator good enough for the real kopf operator and the real kubectl.

It subclasses kmock's ``KubernetesEmulator`` (pinned: kmock==0.8) and fixes what that
version lacks or gets wrong for our purposes:

- Object bookkeeping is done here, not by kmock: ``uid``, ``resourceVersion``,
  ``creationTimestamp`` and ``generation`` are stamped on create; ``resourceVersion`` is
  bumped on every real change (no-op patches change nothing and emit no event, as in a real
  API server); ``generateName`` is honoured; ``metadata.resourceVersion`` in a patch or a
  replace is an optimistic-concurrency precondition (409 on mismatch).
- Patches: merge-patch, strategic-merge-patch (treated as a merge patch: lists are
  replaced, not merged by key) and JSON-patch, whose failed ``test`` ops answer 422 as kopf
  expects. PUT replaces. The ``status`` subresource only changes ``.status``, and the main
  resource ignores ``.status`` for resources that declare that subresource. A ``scale``
  subresource (Deployments) reads/writes ``spec.replicas`` through an autoscaling/v1 Scale.
- Deletion honours finalizers (``deletionTimestamp`` first, removal once they are gone).
- Discovery: core ``v1`` reports groupVersion ``v1`` (kmock says ``/v1``); subresources are
  listed without short names or categories; ``v1/namespaces`` and the usual built-ins are
  registered; applying a CustomResourceDefinition registers its resource (with the verbs
  kopf needs to watch it, its subresources, short names, categories and printer columns).
  ``register_crd()`` does the same without an API call.
- ``/api/v1/namespaces[/NAME]`` are served (kmock 0.8 crashes on the collection path).
- Lists carry ``kind``/``apiVersion`` and a real ``resourceVersion``; watches are served as
  ``application/json`` (client-go rejects kmock's octet-stream), resume from the
  ``resourceVersion`` they are given, and honour ``timeoutSeconds``.
- ``Accept: ...;as=Table`` is answered with a server-side Table built from the CRD's
  ``additionalPrinterColumns`` (that is how kubectl prints custom columns).
- Simple label selectors (``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``) and the
  ``metadata.name``/``metadata.namespace`` field selectors filter lists and watches.
- Secrets' ``stringData`` is folded into base64 ``data``.

Not emulated: schema validation/defaulting/pruning, CEL, admission, garbage collection,
controllers (Deployments get no pods unless the process kubelet, kubelet.py, runs), dryRun, server-side apply, OpenAPI (use
``kubectl --validate=false``), aggregated discovery.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import apps, enums, parsing, rendering

JSON = dict[str, Any]

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SUBRESOURCE_VERBS = ("get", "patch", "update")
CRD_RESOURCE = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NAMESPACES = kmock.resource("", "v1", "namespaces")
SECRETS = kmock.resource("", "v1", "secrets")

# (group/version/plural, kind, namespaced, short names, subresources)
BUILTINS: list[tuple[str, str, bool, tuple[str, ...], tuple[str, ...]]] = [
    ("v1/namespaces", "Namespace", False, ("ns",), ("status",)),
    ("v1/events", "Event", True, ("ev",), ()),
    ("v1/secrets", "Secret", True, (), ()),
    ("v1/configmaps", "ConfigMap", True, ("cm",), ()),
    ("v1/serviceaccounts", "ServiceAccount", True, ("sa",), ()),
    ("v1/services", "Service", True, ("svc",), ("status",)),
    ("v1/pods", "Pod", True, ("po",), ("status",)),
    ("apps/v1/deployments", "Deployment", True, ("deploy",), ("status", "scale")),
    ("apps/v1/replicasets", "ReplicaSet", True, ("rs",), ("status", "scale")),
    ("batch/v1/jobs", "Job", True, (), ("status",)),
    ("policy/v1/poddisruptionbudgets", "PodDisruptionBudget", True, ("pdb",), ("status",)),
    ("rbac.authorization.k8s.io/v1/clusterroles", "ClusterRole", False, (), ()),
    ("rbac.authorization.k8s.io/v1/clusterrolebindings", "ClusterRoleBinding", False, (), ()),
    ("rbac.authorization.k8s.io/v1/roles", "Role", True, (), ()),
    ("rbac.authorization.k8s.io/v1/rolebindings", "RoleBinding", True, (), ()),
    ("events.k8s.io/v1/events", "Event", True, ("ev",), ()),
    ("coordination.k8s.io/v1/leases", "Lease", True, (), ()),
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False,
     ("crd", "crds"), ("status",)),
]

_NAMESPACES_PATH = re.compile(r"/api/v1/namespaces(?:/([^/]+))?(?:/(status))?/?")
_SIMPLE_JSONPATH = re.compile(r"\.([A-Za-z0-9_-]+)|\[\?\(@\.([A-Za-z0-9_-]+)==\"([^\"]*)\"\)\]")


class ApiError(kmock.KubernetesError):
    """A Kubernetes-style error whose ``reason`` is one client-go knows (NotFound, ...)."""


def _error(status: int, reason: str, message: str) -> ApiError:
    return ApiError(status=status, reason=reason, message=message, details={})


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (None removes a key; lists and scalars replace)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _strip_patch_directives(patch: Any) -> Any:
    """Drop strategic-merge-patch directives ($patch, $setElementOrder/..., $retainKeys)."""
    if isinstance(patch, Mapping):
        return {k: _strip_patch_directives(v) for k, v in patch.items() if not str(k).startswith("$")}
    if isinstance(patch, list):
        return [_strip_patch_directives(v) for v in patch if not (isinstance(v, Mapping) and "$patch" in v)]
    return patch


def _parse_label_selector(text: str) -> list[tuple[str, str, set[str]]]:
    """Split a label selector into (key, op, values) terms; commas inside (...) are kept."""
    terms: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    parsed: list[tuple[str, str, set[str]]] = []
    for term in (t.strip() for t in terms):
        if not term:
            continue
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s*\((.*)\)", term):
            parsed.append((m[1], m[2], {v.strip() for v in m[3].split(",") if v.strip()}))
        elif m := re.fullmatch(r"([^!=\s]+)\s*(==|!=|=)\s*(\S*)", term):
            parsed.append((m[1], "!=" if m[2] == "!=" else "=", {m[3]}))
        elif term.startswith("!"):
            parsed.append((term[1:].strip(), "!", set()))
        else:
            parsed.append((term, "exists", set()))
    return parsed


def _labels_match(labels: Mapping[str, str], selector: list[tuple[str, str, set[str]]]) -> bool:
    for key, op, values in selector:
        present = key in labels
        value = labels.get(key)
        ok = {
            "=": present and value in values,
            "!=": not present or value not in values,
            "in": present and value in values,
            "notin": not present or value not in values,
            "exists": present,
            "!": not present,
        }[op]
        if not ok:
            return False
    return True


def _fields_match(obj: JSON, selector: str) -> bool:
    meta = obj.get("metadata", {})
    known = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace")}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        m = re.fullmatch(r"([^!=]+?)\s*(==|!=|=)\s*(.*)", term)
        if not m or m[1] not in known:
            raise _error(400, "BadRequest", f"unsupported field selector: {term!r}")
        equal = (known[m[1]] or "") == m[3]
        if equal != (m[2] != "!="):
            return False
    return True


def _jsonpath(obj: Any, path: str) -> Any:
    """Evaluate the simple JSONPaths printer columns use: .a.b, and [?(@.k=="v")] filters."""
    values = [obj]
    pos = 0
    while pos < len(path):
        m = _SIMPLE_JSONPATH.match(path, pos)
        if m is None:
            return None
        pos = m.end()
        nxt: list[Any] = []
        for v in values:
            if m[1] is not None and isinstance(v, Mapping) and m[1] in v:
                nxt.append(v[m[1]])
            elif m[2] is not None and isinstance(v, list):
                nxt.extend(i for i in v if isinstance(i, Mapping) and str(i.get(m[2])) == m[3])
        values = nxt
    return values[0] if values else None


def _age(timestamp: str | None) -> str | None:
    if not timestamp:
        return None
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    if seconds < 0:
        return "<invalid>"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the bookkeeping that kopf and kubectl rely on."""

    _revision: int = attrs.field(default=0, init=False)
    _log: list[tuple[kmock.resource, JSON]] = attrs.field(factory=list, init=False)
    _log_grew: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _outcomes: dict[int, JSON] = attrs.field(factory=dict, init=False)
    _columns: dict[kmock.resource, list[JSON]] = attrs.field(factory=dict, init=False)
    _kinds: dict[kmock.resource, tuple[str, str]] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, kind, namespaced, shorts, subs in BUILTINS:
            self.declare(kmock.resource(key), kind=kind, namespaced=namespaced, shortnames=shorts,
                         subresources=subs)

    # ----------------------------------------------------------------------------------
    # Resource declarations

    def declare(
            self,
            res: kmock.resource,
            *,
            kind: str,
            namespaced: bool,
            singular: str | None = None,
            shortnames: Iterable[str] = (),
            categories: Iterable[str] = (),
            subresources: Iterable[str] = (),
            columns: list[JSON] | None = None,
    ) -> None:
        """Make a resource discoverable, listable, watchable and patchable."""
        self.resources[res] = kmock.ResourceInfo(
            kind=kind, singular=singular or kind.lower(), namespaced=namespaced, verbs=ALL_VERBS,
            shortnames=shortnames, categories=categories, subresources=subresources)
        self._kinds[res] = (kind, f"{res.group}/{res.version}" if res.group else res.version or "v1")
        if columns is not None:
            self._columns[res] = columns

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        """Register every served version of a CustomResourceDefinition manifest."""
        spec = crd.get("spec", {})
        names = spec.get("names", {})
        for version in spec.get("versions", []):
            res = kmock.resource(spec["group"], version["name"], names["plural"])
            if not version.get("served", True):
                continue
            self.declare(
                res, kind=names["kind"], singular=names.get("singular"),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                shortnames=names.get("shortNames", []), categories=names.get("categories", []),
                subresources=list(version.get("subresources", {})),
                columns=version.get("additionalPrinterColumns", []),
            )

    def _info(self, res: kmock.resource) -> kmock.ResourceInfo | None:
        return self.resources[res] if res in set(self.resources) else None

    def _kind_of(self, res: kmock.resource) -> tuple[str, str]:
        if res in self._kinds:
            return self._kinds[res]
        plural = res.plural or "object"
        return plural.capitalize(), f"{res.group}/{res.version}" if res.group else res.version or "v1"

    # ----------------------------------------------------------------------------------
    # Request entry points

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock 0.8 treats "namespaces" in /api/v1/namespaces as the namespace marker and crashes.
        m = _NAMESPACES_PATH.fullmatch(raw_request.path)
        if m is None:
            return await super().__call__(raw_request)
        body = await raw_request.read()
        try:
            text = body.decode("utf-8", errors="replace")
            try:
                data = json.loads(text) if text.strip() else None
            except ValueError:
                data = None
            method = enums.method(raw_request.method)
            path = parsing.ParsedPath(group="", version="v1", plural="namespaces", name=m[1], subresource=m[2])
            request = rendering.Request(
                id=len(self._requests), raw_request=raw_request, url=raw_request.url, method=raw_request.method,
                params=dict(raw_request.query), headers=dict(raw_request.headers),
                cookies=dict(raw_request.cookies), body=body, text=text, data=data,
                action=parsing.guess_k8s(path, method, dict(raw_request.query)),
                resource=NAMESPACES, namespace=None, name=m[1], subresource=m[2])
            self._requests.append(request)
            return await self._handle(request)
        except rendering.StreamingError as e:
            response: aiohttp.web.StreamResponse = e.args[0]
            await self._stream_error(e, response)
            await response.write_eof()
            return response
        except Exception as e:
            return await self._render_error(e)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is None or res.plural is None or res.version is None:
            return await apps.RawHandler._handle(self, request)  # discovery, /version, etc.
        if "protobuf" in (request.headers.get("Content-Type") or ""):
            # client-go then retries in JSON (it falls back on 415 for protobuf bodies).
            raise _error(415, "UnsupportedMediaType", "the body of the request was in an unknown format; use JSON")
        original = request
        if request.method == enums.method.PUT and request.name is not None:
            request = attrs.evolve(request, action=enums.action.UPDATE)
        mutating = request.action in (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE)
        if mutating and (request.action == enums.action.CREATE or request.name is not None):
            async with self._lock:
                outcome, request = self._mutate(request)
            self._outcomes[request.id] = outcome
        if request is not original:
            # kmock's views find requests by identity in the recorded list: record the amended one.
            for index in range(len(self._requests) - 1, -1, -1):
                if self._requests[index] is original:
                    self._requests[index] = request
                    break
        try:
            return await apps.RawHandler._handle(self, request)
        finally:
            self._outcomes.pop(request.id, None)

    # ----------------------------------------------------------------------------------
    # Mutations (under the lock)

    def _emit(self, res: kmock.resource, event_type: str, obj: JSON) -> None:
        self._log.append((res, {"type": event_type, "object": copy.deepcopy(obj)}))
        grew, self._log_grew = self._log_grew, asyncio.Event()
        grew.set()

    def _bump(self, obj: JSON) -> None:
        self._revision += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._revision)

    def _current(self, res: kmock.resource, namespace: str | None, name: str) -> JSON | None:
        key = (res, namespace, name)
        if key not in self._objects or self._objects[key].deleted:
            return None
        return copy.deepcopy(self._objects[key].raw)

    def _store(self, res: kmock.resource, namespace: str | None, name: str, obj: JSON | None) -> None:
        key = (res, namespace, name)
        if key not in self._objects:
            self._objects[key] = copy.deepcopy(obj)  # type: ignore[arg-type]
        elif obj is None:
            self._objects[key].delete()
        else:
            self._objects[key].history.append(copy.deepcopy(obj))

    def _mutate(self, request: rendering.Request) -> tuple[JSON, rendering.Request]:
        res = request.resource
        assert res is not None
        info = self._info(res)
        if info is None:
            raise _error(404, "NotFound", f"the server could not find the requested resource ({res})")
        namespace = request.namespace if info.namespaced else None
        if request.action == enums.action.CREATE:
            obj = self._create(res, info, namespace, request.data)
            data = dict(request.data or {}, metadata=obj["metadata"])
            return obj, attrs.evolve(request, data=data, name=obj["metadata"]["name"])
        assert request.name is not None
        if request.action == enums.action.DELETE:
            return self._delete(res, namespace, request.name), request
        return self._update(res, info, namespace, request), request

    def _create(self, res: kmock.resource, info: kmock.ResourceInfo, namespace: str | None, data: Any) -> JSON:
        if not isinstance(data, Mapping):
            raise _error(400, "BadRequest", "the request body must be a JSON object")
        obj: JSON = copy.deepcopy(dict(data))
        kind, api_version = self._kind_of(res)
        obj.setdefault("apiVersion", api_version)
        obj.setdefault("kind", kind)
        meta = obj.setdefault("metadata", {})
        if info.namespaced:
            if meta.get("namespace") not in (None, namespace):
                raise _error(400, "BadRequest", "the namespace of the object does not match the URL")
            if not namespace:
                raise _error(400, "BadRequest", "a namespaced object needs a namespace")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise _error(422, "Invalid", "metadata.name or metadata.generateName is required")
            while True:
                name = prefix + "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
                if self._current(res, namespace, name) is None:
                    break
            meta["name"] = name
        if self._current(res, namespace, meta["name"]) is not None:
            raise _error(409, "AlreadyExists", f'{res.plural} "{meta["name"]}" already exists')
        for key in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        if "status" in info.subresources and res != CRD_RESOURCE:
            obj.pop("status", None)
        self._normalize(res, obj)
        self._bump(obj)
        self._store(res, namespace, meta["name"], obj)
        self._emit(res, "ADDED", obj)
        return obj

    def _delete(self, res: kmock.resource, namespace: str | None, name: str) -> JSON:
        obj = self._current(res, namespace, name)
        if obj is None:
            raise _error(404, "NotFound", f'{res.plural} "{name}" not found')
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return obj
        if meta.get("finalizers"):
            meta["deletionTimestamp"] = _now()
            meta["deletionGracePeriodSeconds"] = 0
            self._bump(obj)
            self._store(res, namespace, name, obj)
            self._emit(res, "MODIFIED", obj)
            return obj
        return self._remove(res, namespace, name, obj)

    def _remove(self, res: kmock.resource, namespace: str | None, name: str, obj: JSON) -> JSON:
        self._bump(obj)
        self._store(res, namespace, name, obj)  # the last state, for assertions on history
        self._store(res, namespace, name, None)
        self._emit(res, "DELETED", obj)
        if res == CRD_RESOURCE:
            spec = obj.get("spec", {})
            for version in spec.get("versions", []):
                gone = kmock.resource(spec.get("group"), version.get("name"), spec.get("names", {}).get("plural"))
                if gone in set(self.resources):
                    del self.resources[gone]
        return obj

    def _update(self, res: kmock.resource, info: kmock.ResourceInfo, namespace: str | None,
                request: rendering.Request) -> JSON:
        assert request.name is not None
        old = self._current(res, namespace, request.name)
        if old is None:
            raise _error(404, "NotFound", f'{res.plural} "{request.name}" not found')
        sub = request.subresource
        if sub is not None and sub not in info.subresources:
            raise _error(404, "NotFound", f"{res.plural}/{sub} is not a subresource here")

        view = self._scale_view(old) if sub == "scale" else old
        changed = self._apply(view, request)
        if sub == "scale":
            new = copy.deepcopy(old)
            replicas = (changed.get("spec") or {}).get("replicas", 0)
            if not isinstance(replicas, int) or replicas < 0:
                raise _error(422, "Invalid", "spec.replicas must be a non-negative integer")
            new.setdefault("spec", {})["replicas"] = replicas
            expected_rv = (changed.get("metadata") or {}).get("resourceVersion")
        elif sub == "status":
            new = copy.deepcopy(old)
            if changed.get("status") is None:
                new.pop("status", None)
            else:
                new["status"] = changed["status"]
            expected_rv = (changed.get("metadata") or {}).get("resourceVersion")
        else:
            new = changed
            if "status" in info.subresources:
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
            expected_rv = (new.get("metadata") or {}).get("resourceVersion")

        if expected_rv not in (None, "", old["metadata"]["resourceVersion"]):
            raise _error(409, "Conflict", f'Operation cannot be fulfilled on {res.plural} "{request.name}": '
                                          "the object has been modified; please apply your changes to the latest version")

        # Identity and bookkeeping fields are the server's, not the client's.
        meta = new.setdefault("metadata", {})
        for key in ("name", "namespace", "uid", "creationTimestamp", "generation", "resourceVersion",
                    "deletionTimestamp", "deletionGracePeriodSeconds"):
            if key in old["metadata"]:
                meta[key] = old["metadata"][key]
            else:
                meta.pop(key, None)
        new["apiVersion"], new["kind"] = old.get("apiVersion"), old.get("kind")
        self._normalize(res, new)
        if new == old:
            return old  # a no-op: no new resourceVersion, no event, as in a real API server
        if {k: v for k, v in new.items() if k not in ("metadata", "status")} != \
           {k: v for k, v in old.items() if k not in ("metadata", "status")}:
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(res, namespace, request.name, new)
        self._bump(new)
        self._store(res, namespace, request.name, new)
        self._emit(res, "MODIFIED", new)
        return new

    def _apply(self, target: JSON, request: rendering.Request) -> JSON:
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        data = request.data
        if request.method == enums.method.PUT:
            if not isinstance(data, Mapping):
                raise _error(400, "BadRequest", "the request body must be a JSON object")
            return copy.deepcopy(dict(data))
        if content_type == "application/json-patch+json" or isinstance(data, list):
            try:
                return jsonpatch.apply_patch(copy.deepcopy(target), data)  # type: ignore[no-any-return]
            except jsonpatch.JsonPatchTestFailed as e:
                raise _error(422, "Invalid", f"the server rejected our request due to an error in our request: {e}") from e
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise _error(422, "Invalid", f"invalid JSON patch: {e}") from e
        if content_type == "application/apply-patch+yaml":
            raise _error(415, "UnsupportedMediaType", "server-side apply is not emulated")
        if not isinstance(data, Mapping):
            raise _error(400, "BadRequest", "the patch must be a JSON object")
        if content_type == "application/strategic-merge-patch+json":
            data = _strip_patch_directives(data)
        return merge_patch(target, data)  # type: ignore[no-any-return]

    def _normalize(self, res: kmock.resource, obj: JSON) -> None:
        if res == SECRETS and "stringData" in obj:
            string_data = obj.pop("stringData") or {}
            data = obj.setdefault("data", {}) or {}
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            obj["data"] = data
        if res == CRD_RESOURCE:
            names = obj.get("spec", {}).get("names", {})
            obj["status"] = {
                "acceptedNames": names,
                "storedVersions": [v.get("name") for v in obj.get("spec", {}).get("versions", []) if v.get("storage")],
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": ""},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": ""},
                ],
            }
            self.register_crd(obj)

    @staticmethod
    def _scale_view(obj: JSON) -> JSON:
        meta = obj.get("metadata", {})
        selector = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                         if k in meta},
            "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 1)},
            "status": {
                "replicas": (obj.get("status") or {}).get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in sorted(selector.items())),
            },
        }

    # ----------------------------------------------------------------------------------
    # Reading (the fallback reactions kmock's constructor registered; overridden here)

    def _select(self, request: rendering.Request, objs: Iterable[JSON]) -> list[JSON]:
        labels = _parse_label_selector(request.params.get("labelSelector", ""))
        fields = request.params.get("fieldSelector", "")
        return [o for o in objs
                if _labels_match(o.get("metadata", {}).get("labels") or {}, labels)
                and (not fields or _fields_match(o, fields))]

    def _in_scope(self, request: rendering.Request, res: kmock.resource, namespace: str | None) -> bool:
        return res == request.resource and (request.namespace is None or namespace == request.namespace)

    def _snapshot(self, request: rendering.Request) -> list[JSON]:
        objs = [copy.deepcopy(obj.raw) for (res, ns, _), obj in self._objects.items()
                if not obj.deleted and self._in_scope(request, res, ns)]
        objs = [o for o in objs if request.name is None or o.get("metadata", {}).get("name") == request.name]
        return sorted(self._select(request, objs),
                      key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"].get("name") or ""))

    def _wants_table(self, request: rendering.Request) -> bool:
        return "as=Table" in (request.headers.get("Accept") or "")

    def _table(self, request: rendering.Request, objs: list[JSON]) -> JSON:
        assert request.resource is not None
        columns = self._columns.get(request.resource) or [
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
        definitions = [{"name": "Name", "type": "string", "format": "name", "priority": 0,
                        "description": "Name must be unique within a namespace."}]
        definitions += [{"name": c["name"], "type": c.get("type", "string"), "format": c.get("format", ""),
                         "priority": c.get("priority", 0), "description": c.get("description", "")}
                        for c in columns]
        rows = []
        for obj in objs:
            cells: list[Any] = [obj.get("metadata", {}).get("name")]
            for column in columns:
                value = _jsonpath(obj, column["jsonPath"])
                cells.append(_age(value) if column.get("type") == "date" else value)
            include = request.params.get("includeObject", "Metadata")
            row_obj = obj if include == "Object" else None if include == "None" else {
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {})}
            rows.append({"cells": cells, "object": row_obj})
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                "metadata": {"resourceVersion": str(self._revision)},
                "columnDefinitions": definitions, "rows": rows}

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        assert request.resource is not None
        if self._info(request.resource) is None:
            raise _error(404, "NotFound", f"the server could not find the requested resource ({request.resource})")
        async with self._lock:
            objs = self._snapshot(request)
            revision = self._revision
        if self._wants_table(request):
            return self._table(request, objs)
        kind, api_version = self._kind_of(request.resource)
        return {"apiVersion": api_version, "kind": f"{kind}List",
                "metadata": {"resourceVersion": str(revision)}, "items": objs}

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        assert request.resource is not None and request.name is not None
        info = self._info(request.resource)
        if info is None:
            raise _error(404, "NotFound", f"the server could not find the requested resource ({request.resource})")
        namespace = request.namespace if info.namespaced else None
        async with self._lock:
            obj = self._current(request.resource, namespace, request.name)
        if obj is None:
            raise _error(404, "NotFound", f'{request.resource.plural} "{request.name}" not found')
        if request.subresource is not None and request.subresource not in info.subresources:
            raise _error(404, "NotFound", f"{request.resource.plural}/{request.subresource} is not served")
        if request.subresource == "scale":
            return self._scale_view(obj)
        if self._wants_table(request):
            return self._table(request, [obj])
        return obj

    def _outcome(self, request: rendering.Request) -> rendering.Payload:
        outcome = self._outcomes.get(request.id)
        if outcome is None:  # only if a user reaction re-routed the request; keep kmock's 404
            raise _error(404, "NotFound", "no such object")
        if request.subresource == "scale":
            return self._scale_view(outcome)
        return outcome

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        return rendering.Response(status=201, payload=self._outcome(request))

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        return self._outcome(request)

    async def _serve_delete(self, request: rendering.Request) -> rendering.Payload:
        return self._outcome(request)

    def _serve_watch(self, request: rendering.Request) -> rendering.Payload:  # type: ignore[override]
        return rendering.Response(headers={"Content-Type": "application/json"}, payload=self._watch(request))

    async def _watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""  # send the headers now, even if nothing happens for a while
        assert request.resource is not None
        since = request.params.get("resourceVersion") or "0"
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        initial: list[JSON] = []
        # "Watch-list" (client-go's streaming list, e.g. in `kubectl delete --wait`): the current
        # objects, then a bookmark that marks the end of the initial events.
        watch_list = request.params.get("sendInitialEvents") == "true"
        async with self._lock:
            if since in ("0", "") or watch_list:
                initial = self._snapshot(request)
                cursor = len(self._log)
            else:
                cursor = next((i for i, (_, ev) in enumerate(self._log)
                               if int(ev["object"]["metadata"]["resourceVersion"]) > int(since)), len(self._log))
            revision = self._revision
        for obj in initial:
            yield {"type": "ADDED", "object": obj}
        if watch_list:
            kind, api_version = self._kind_of(request.resource)
            yield {"type": "BOOKMARK", "object": {
                "kind": kind, "apiVersion": api_version,
                "metadata": {"resourceVersion": str(revision),
                             "annotations": {"k8s.io/initial-events-end": "true"}}}}
        while True:
            while cursor < len(self._log):
                res, event = self._log[cursor]
                cursor += 1
                obj = event["object"]
                meta = obj.get("metadata", {})
                if not self._in_scope(request, res, meta.get("namespace")):
                    continue
                if request.name is not None and meta.get("name") != request.name:
                    continue
                if self._select(request, [obj]):
                    yield copy.deepcopy(event)
            grew = self._log_grew
            if cursor < len(self._log):
                continue
            remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if remaining is not None and remaining <= 0:
                return
            try:
                await asyncio.wait_for(grew.wait(), remaining)
            except TimeoutError:
                return

    # ----------------------------------------------------------------------------------
    # Discovery fixes

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        payload = await super()._serve_version(request)
        assert isinstance(payload, dict) and request.resource is not None
        if request.resource.group == "":
            payload["groupVersion"] = request.resource.version
        for entry in payload["resources"]:
            entry["verbs"] = sorted(entry["verbs"])
            if "/" in entry["name"]:
                entry["shortNames"], entry["categories"] = [], []
                entry["singularName"] = ""
                entry["verbs"] = list(SUBRESOURCE_VERBS)
                if entry["name"].endswith("/scale"):
                    entry.update(kind="Scale", group="autoscaling", version="v1")
            else:
                entry["shortNames"], entry["categories"] = sorted(entry["shortNames"]), sorted(entry["categories"])
        payload["resources"].sort(key=lambda e: e["name"])
        return payload

    def events_for(self, involved_name: str) -> list[JSON]:
        """Core v1 Events whose involvedObject has this name (for assertions)."""
        return [obj.raw for (res, _, _), obj in self._objects.items()
                if res == kmock.resource("", "v1", "events") and not obj.deleted
                and obj.raw.get("involvedObject", {}).get("name") == involved_name]

    def read_object(self, res: str, namespace: str | None, name: str) -> JSON | None:
        """The current state of an object, or None (not an HTTP call, unlike kmock's .get())."""
        key = (kmock.resource(res), namespace, name)
        if key not in self._objects or self._objects[key].deleted:
            return None
        return copy.deepcopy(self._objects[key].raw)

    def stored_json(self) -> str:
        """All live objects as JSON, for debugging failed tests."""
        return json.dumps([o.raw for o in self._objects.values() if not o.deleted], indent=1, default=str)

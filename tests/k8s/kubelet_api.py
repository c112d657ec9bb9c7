"""The process kubelet's view of the API server: a few JSON calls and list+watch informers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

JSON = dict[str, Any]
MERGE = {"Content-Type": "application/merge-patch+json"}


class ApiError(RuntimeError):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:500]}")
        self.status = status


class Api:
    """JSON over HTTP; ``write_status`` sends a status only when it changed."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self._written: dict[str, JSON] = {}

    async def _call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                    missing_ok: bool = False) -> JSON | None:
        async with self.session.request(method, path, json=body, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=15)) as resp:
            text = await resp.text()
            if resp.status == 404 and missing_ok:
                return None
            if resp.status >= 300:
                raise ApiError(resp.status, f"{method} {path}: {text}")
            return json.loads(text) if text else {}

    async def get(self, path: str) -> JSON:
        return await self._call("GET", path) or {}

    async def create(self, collection: str, body: JSON) -> JSON:
        try:
            return await self._call("POST", collection, body) or {}
        except ApiError as exc:
            if exc.status != 409:
                raise
            return await self.get(f"{collection}/{body['metadata']['name']}")

    async def patch(self, path: str, body: JSON) -> JSON | None:
        return await self._call("PATCH", path, body, MERGE, missing_ok=True)

    async def delete(self, path: str) -> None:
        await self._call("DELETE", path, missing_ok=True)

    async def write_status(self, path: str, status: JSON) -> None:
        old = self._written.get(path)
        if old == status:
            return
        patch = {**{k: None for k in old or {} if k not in status}, **status}
        if await self.patch(path, {"status": patch}) is None:
            self._written.pop(path, None)
        else:
            self._written[path] = status


class Informer:
    """A cache of one resource kind in every namespace, kept by list + watch; sets ``wake``
    on every change."""

    def __init__(self, api: Api, path: str, wake: asyncio.Event) -> None:
        self.api, self.path, self.wake = api, path, wake
        self.cache: dict[tuple[str, str], JSON] = {}
        self.synced = False

    def items(self) -> list[JSON]:
        return list(self.cache.values())

    def get(self, namespace: str, name: str) -> JSON | None:
        return self.cache.get((namespace, name))

    @staticmethod
    def _key(obj: JSON) -> tuple[str, str]:
        return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]

    async def run(self) -> None:
        version: str | None = None
        while True:
            try:
                if version is None:
                    listing = await self.api.get(self.path)
                    self.cache = {self._key(o): o for o in listing.get("items", [])}
                    version = listing["metadata"]["resourceVersion"]
                    self.synced = True
                    self.wake.set()
                params = {"watch": "true", "resourceVersion": version, "timeoutSeconds": "300",
                          "allowWatchBookmarks": "true"}
                async with self.api.session.get(self.path, params=params,
                                                timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as resp:
                    if resp.status != 200:
                        version = None
                        await asyncio.sleep(0.2)
                        continue
                    async for line in resp.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            version = None
                            break
                        version = obj.get("metadata", {}).get("resourceVersion", version)
                        if event["type"] == "DELETED":
                            self.cache.pop(self._key(obj), None)
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            self.cache[self._key(obj)] = obj
                        self.wake.set()
            except (aiohttp.ClientError, TimeoutError, ValueError, ApiError):
                await asyncio.sleep(0.2)

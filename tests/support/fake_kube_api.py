"""A small stand-in for the Kubernetes API's list and watch of Nodes and Pods, on loopback.

Enough of the protocol for the hub's watches to be tested on the paths a real cluster
rarely shows on demand: paged lists with continue tokens, watches resumed from a
resourceVersion, bookmarks, ``410 Gone`` for a version that is too old, and an API server
that stops answering. The real control plane tests (``tests/kube/test_api_outage.py``) cover
the rest against kube-apiserver itself.

For KubeSpawner's own start and stop, a namespace's Pods and Events are listed and watched
(label selectors of ``key=value`` terms, the watch's ``timeoutSeconds``), and Pods created
(uid assigned, Pending) and deleted.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api

PATHS = {"/api/v1/nodes": "nodes", "/api/v1/pods": "pods"}
NAMESPACED = "/api/v1/namespaces/{namespace}/{kind:pods|events}"


def _key(kind: str, obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return meta["name"] if kind == "nodes" else f"{meta['namespace']}/{meta['name']}"


def _phase_selected(selector: str, obj: dict[str, Any]) -> bool:
    phase = (obj.get("status") or {}).get("phase")
    for term in filter(None, selector.split(",")):
        field_name, _, value = term.partition("!=")
        if field_name == "status.phase" and phase == value:
            return False
    return True


def _labels_selected(selector: str, obj: dict[str, Any]) -> bool:
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, selector.split(",")):
        name, _, value = term.partition("=")
        if labels.get(name) != value.lstrip("="):
            return False
    return True


def _in(namespace: str | None, obj: dict[str, Any]) -> bool:
    return namespace is None or obj["metadata"].get("namespace") == namespace


@dataclass
class FakeKubeApi:
    """Objects by kind and key, a change log for watches, and switches for faults."""

    rv: int = 1
    objects: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {"nodes": {}, "pods": {}, "events": {}}
    )
    changes: dict[str, list[tuple[int, str, dict[str, Any]]]] = field(
        default_factory=lambda: {"nodes": [], "pods": [], "events": []}
    )
    oldest: int = 0  # watches from before this version get 410 Gone (etcd compaction)
    up: bool = True
    watch_seconds: float = 30.0  # the server ends each watch after this long
    requests: list[str] = field(default_factory=list)
    _generation: int = 0
    _wake: asyncio.Condition = field(default_factory=asyncio.Condition)
    _streams: list[web.Request] = field(default_factory=list)

    # -- changing the cluster ------------------------------------------------------------------

    async def put(self, kind: str, obj: dict[str, Any], *, unseen: bool = False) -> None:
        """Create or replace ``obj``; ``unseen``: no watch event (as if it happened during a gap)."""
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = _key(kind, obj)
        kind_of_change = "MODIFIED" if key in self.objects[kind] else "ADDED"
        self.objects[kind][key] = obj
        await self._log(kind, kind_of_change, obj, unseen)

    async def delete(self, kind: str, key: str, *, unseen: bool = False) -> None:
        self.rv += 1
        obj = self.objects[kind].pop(key)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        await self._log(kind, "DELETED", obj, unseen)

    async def _log(self, kind: str, change: str, obj: dict[str, Any], unseen: bool) -> None:
        if unseen:  # compacted away before any watch saw it: a watch cannot bridge the gap
            self.oldest = self.rv
            return
        self.changes[kind].append((self.rv, change, json.loads(json.dumps(obj))))
        async with self._wake:
            self._wake.notify_all()

    async def end_watches(self) -> None:
        """End every open watch cleanly, as the server does at its timeout."""
        self._generation += 1
        async with self._wake:
            self._wake.notify_all()

    async def outage(self, down: bool) -> None:
        """Stop (or resume) answering: open watches break, new requests get 503."""
        self.up = not down
        if down:
            for request in list(self._streams):
                if request.transport is not None:
                    request.transport.close()

    # -- serving ---------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info.get("namespace")
        kind = PATHS.get(request.path) or request.match_info["kind"]
        query = request.query
        watching = query.get("watch") in ("true", "True", "1")
        self.requests.append(f"{namespace + '/' if namespace else ''}{kind}{' watch' if watching else ''}")
        if not self.up:
            return web.json_response({"kind": "Status", "code": 503, "message": "stopped"}, status=503)
        fields, labels = query.get("fieldSelector", ""), query.get("labelSelector", "")

        def selected(obj: dict[str, Any]) -> bool:
            return _in(namespace, obj) and _labels_selected(labels, obj) and _phase_selected(fields, obj)

        if watching:
            timeout = float(query.get("timeoutSeconds") or self.watch_seconds)
            bookmarks = query.get("allowWatchBookmarks") in ("true", "True", "1")
            return await self._watch(
                request,
                kind,
                int(query.get("resourceVersion") or 0),
                selected,
                min(timeout, self.watch_seconds),
                bookmarks,
            )
        items = sorted((k, o) for k, o in self.objects[kind].items() if selected(o))
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0) or len(items)
        page = [o for _, o in items[start : start + limit]]
        more = start + limit < len(items)
        meta = {"resourceVersion": str(self.rv), **({"continue": str(start + limit)} if more else {})}
        return web.json_response({"kind": "List", "metadata": meta, "items": page})

    async def create_pod(self, request: web.Request) -> web.Response:
        """POST a Pod: it exists at once, Pending, with a uid (409 if the name is taken)."""
        self.requests.append("create pod")
        pod = await request.json()
        pod["metadata"]["namespace"] = request.match_info["namespace"]
        if _key("pods", pod) in self.objects["pods"]:
            return web.json_response({"kind": "Status", "code": 409, "reason": "AlreadyExists"}, status=409)
        pod["metadata"]["uid"] = f"uid-{pod['metadata']['name']}-{self.rv + 1}"
        pod["status"] = {"phase": "Pending"}
        await self.put("pods", pod)
        return web.json_response(pod, status=201)

    async def delete_pod(self, request: web.Request) -> web.Response:
        self.requests.append("delete pod")
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        if key not in self.objects["pods"]:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        pod = self.objects["pods"][key]
        await self.delete("pods", key)
        return web.json_response(pod)

    async def _watch(
        self, request: web.Request, kind: str, since: int, selected: Any, seconds: float, bookmarks: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        self._streams.append(request)
        try:
            if since < self.oldest:
                gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
                await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                return response
            deadline = asyncio.get_running_loop().time() + seconds
            generation, sent = self._generation, since
            while True:
                for rv, change, obj in self.changes[kind]:
                    if rv > sent:
                        sent = rv
                        if not _in(request.match_info.get("namespace"), obj):
                            continue
                        if change != "DELETED" and not selected(obj):
                            change = "DELETED"  # no longer selected: the API server says deleted
                        await response.write(json.dumps({"type": change, "object": obj}).encode() + b"\n")
                if bookmarks:
                    bookmark = {"kind": "Pod", "metadata": {"resourceVersion": str(sent)}}
                    await response.write(json.dumps({"type": "BOOKMARK", "object": bookmark}).encode() + b"\n")
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0 or generation != self._generation:
                    return response
                async with self._wake:
                    try:
                        await asyncio.wait_for(self._wake.wait(), left)
                    except asyncio.TimeoutError:
                        pass
        except ConnectionResetError:  # the client went away
            return response
        finally:
            self._streams.remove(request)


async def serve(api: FakeKubeApi) -> tuple[web.AppRunner, CoreV1Api]:
    """Serve ``api`` on a free loopback port; return the runner and a client aimed at it."""
    app = web.Application()
    for path in [*PATHS, NAMESPACED]:
        app.router.add_get(path, api.handle)
    app.router.add_post("/api/v1/namespaces/{namespace}/pods", api.create_pod)
    app.router.add_delete("/api/v1/namespaces/{namespace}/pods/{name}", api.delete_pod)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    configuration = Configuration(host=f"http://127.0.0.1:{sock.getsockname()[1]}")
    return runner, CoreV1Api(ApiClient(configuration))

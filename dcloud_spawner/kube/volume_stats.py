"""How much of a home volume is used, as the kubelet of the node that mounts it reports it.

The kubelet's summary API (``/stats/summary``: ``pods[].volume[]``, each with its ``pvcRef`` and
``usedBytes``) is read from the kubelet directly, with the hub's own credentials, trusting the
cluster's CA as the hub's client does. The kubelet asks the API server whether the hub may
(webhook authorization), which takes ``get`` on ``nodes/stats`` only (helm-values/rbac.yaml); the
API server's node proxy would need ``nodes/proxy``, which reaches every kubelet endpoint
(exec and logs of every pod included), so it is not used. Where the kubelet's serving
certificate is not from the cluster's CA, or the hub cannot reach it, nothing is shown.

Only a claim that a running pod mounts has a reading: found in KubeSpawner's pod watch (no
request). One node's summary is read at most once per ``CACHE_SECONDS`` (with its Node, for the
kubelet's address and port), so the form costs at most two requests, bounded in time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiException

log = logging.getLogger("dcloud")

CACHE_SECONDS = 30.0
KUBELET_PORT = 10250
ADDRESS_TYPES = ("InternalIP", "ExternalIP", "Hostname")


def node_mounting(pods: Iterable[dict], namespace: str, claim: str) -> str | None:
    """The node of a running pod of ``namespace`` that mounts ``claim``; None if none does."""
    for pod in pods:
        meta, spec, status = (pod.get(k) or {} for k in ("metadata", "spec", "status"))
        if meta.get("namespace") != namespace or status.get("phase") != "Running" or not spec.get("nodeName"):
            continue
        for volume in spec.get("volumes") or []:
            if isinstance(volume, dict) and (volume.get("persistentVolumeClaim") or {}).get("claimName") == claim:
                return str(spec["nodeName"])
    return None


def volume_usage(summary: Any) -> dict[tuple[str, str], int]:
    """(namespace, claim) -> bytes used, from a kubelet's summary (read as untrusted)."""
    used: dict[tuple[str, str], int] = {}
    pods = summary.get("pods") if isinstance(summary, dict) else None
    for pod in pods if isinstance(pods, list) else []:
        volumes = pod.get("volume") if isinstance(pod, dict) else None
        for volume in volumes if isinstance(volumes, list) else []:
            ref = volume.get("pvcRef") if isinstance(volume, dict) else None
            amount = volume.get("usedBytes") if isinstance(volume, dict) else None
            if (
                isinstance(ref, dict)
                and isinstance(ref.get("name"), str)
                and isinstance(ref.get("namespace"), str)
                and type(amount) is int
                and amount >= 0
            ):
                used[(ref["namespace"], ref["name"])] = amount
    return used


def kubelet_url(node: Any) -> str | None:
    """The kubelet's summary URL from a Node object (its address and port)."""
    status = node.status
    addresses = {a.type: a.address for a in (status.addresses or []) if a.address}
    address = next((addresses[t] for t in ADDRESS_TYPES if t in addresses), None)
    if address is None:
        return None
    endpoint = status.daemon_endpoints.kubelet_endpoint if status.daemon_endpoints else None
    port = endpoint.port if endpoint is not None and endpoint.port else KUBELET_PORT
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}:{port}/stats/summary"


class KubeletStats:
    """The hub-wide cache of the volumes' usage each node's kubelet last reported."""

    def __init__(self) -> None:
        self._read: dict[str, tuple[float, dict[tuple[str, str], int]]] = {}

    async def used(self, api: Any, node: str, namespace: str, claim: str, timeout: float,
                   max_age: float = CACHE_SECONDS) -> int | None:
        """Bytes used on ``claim`` as ``node``'s kubelet reports it (``api``: a CoreV1Api), read
        afresh when the node's last reading is older than ``max_age`` seconds."""
        read = self._read.get(node)
        if read is None or time.monotonic() - read[0] > max_age:
            try:
                usage = await self._summary(api, node, timeout)
            except (ApiException, aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                log.debug("DCloud: no volume stats from node %s's kubelet: %s", node, exc)
                usage = {}  # not asked again before CACHE_SECONDS: a failing kubelet costs each form nothing
            read = self._read[node] = (time.monotonic(), usage)
        return read[1].get((namespace, claim))

    @staticmethod
    async def _summary(api: Any, node: str, timeout: float) -> dict[tuple[str, str], int]:
        url = kubelet_url(await api.read_node(node, _request_timeout=timeout))
        if url is None:
            return {}
        client = api.api_client
        auth = (await client.configuration.auth_settings()).get("BearerToken")
        headers = {"Accept": "application/json", **({"Authorization": auth["value"]} if auth else {})}
        response = await client.rest_client.GET(url, headers=headers, _request_timeout=timeout)
        return volume_usage(json.loads(response.data))

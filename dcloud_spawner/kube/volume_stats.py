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
kubelet's address and port), so the form costs at most two requests, bounded in time; callers
that want a node's summary while it is being read (forms at once, a culler stopping many
servers) share that one read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

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
    """The kubelet's summary URL from a Node object (its address and port); None where it has
    none (a Node without status, as a node being registered may be)."""
    status = getattr(node, "status", None)
    addresses = {a.type: a.address for a in (getattr(status, "addresses", None) or [])
                 if isinstance(getattr(a, "address", None), str) and a.address}
    address = next((addresses[t] for t in ADDRESS_TYPES if t in addresses), None)
    if address is None:
        return None
    endpoint = getattr(getattr(status, "daemon_endpoints", None), "kubelet_endpoint", None)
    port = getattr(endpoint, "port", None)
    port = port if type(port) is int and 0 < port < 65536 else KUBELET_PORT
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}:{port}/stats/summary"


class KubeletStats:
    """The hub-wide cache of the volumes' usage each node's kubelet last reported."""

    def __init__(self) -> None:
        self._read: dict[str, tuple[float, dict[tuple[str, str], int]]] = {}
        self._reading: dict[str, asyncio.Task[dict[tuple[str, str], int]]] = {}  # node -> its read now

    async def used(self, api: Any, node: str, namespace: str, claim: str, timeout: float,
                   max_age: float = CACHE_SECONDS) -> int | None:
        """Bytes used on ``claim`` as ``node``'s kubelet reports it (``api``: a CoreV1Api), read
        afresh when the node's last reading is older than ``max_age`` seconds, or taken from the
        read of the node under way."""
        read = self._read.get(node)
        if read is not None and time.monotonic() - read[0] <= max_age:
            return read[1].get((namespace, claim))
        task = self._reading.get(node)
        if task is None:
            task = self._reading[node] = asyncio.ensure_future(self._read_node(api, node, timeout))
        # shielded: a caller that stops waiting (its own bound) does not end the others' read
        return (await asyncio.shield(task)).get((namespace, claim))

    async def _read_node(self, api: Any, node: str, timeout: float) -> dict[tuple[str, str], int]:
        try:
            usage = await asyncio.wait_for(self._summary(api, node, timeout), timeout)
        except Exception as exc:  # anything a kubelet sends (nested past Python's recursion limit, too)
            log.debug("DCloud: no volume stats from node %s's kubelet: %s", node, exc)
            usage = {}  # not asked again before CACHE_SECONDS: a failing kubelet costs each form nothing
        finally:
            self._reading.pop(node, None)
        now = time.monotonic()
        # readings past CACHE_SECONDS are read afresh anyway: dropped, so nodes gone (autoscaled
        # away) are not kept for the hub's lifetime
        for old in [n for n, (at, _) in self._read.items() if now - at > CACHE_SECONDS]:
            del self._read[old]
        self._read[node] = (now, usage)
        return usage

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

"""The test cluster's volume resizer: grows a volume of real-0 when its claim asks for more.

local-path-provisioner does not resize volumes. On a real cluster a CSI driver's external
resizer would: it watches claims whose requested size exceeds ``status.capacity``, has the driver
expand the volume, then records the new size on the PersistentVolume (``spec.capacity``) and on
the claim (``status.capacity``, through the status subresource, with the ``Resizing`` condition
and ``allocatedResourceStatuses`` while it works). This process stands in for that pair, for the
volumes volume-setup.sh makes; volumes.py does the growing. Files on the volume are kept.

Where this process may resize a mounted file system (CAP_SYS_RESOURCE) it grows volumes online,
in use. Where it may not, it behaves like a driver without online expansion: the claim's growth
waits (event ``VolumeResizePending``) until no pod uses the claim, then the volume grows offline
and the next pod sees the new size.

It runs on the host, as root, beside the provisioner (storage.py starts it; ``down`` stops it),
with its own client certificate, and only touches volumes in the folder ``--volumes``.

    python -m tests.cluster.resizer --kubeconfig K --storage-class C --volumes DIR
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from kubernetes import client, watch
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity

from . import volumes

COMPONENT = "dcloud-test-volume-resizer"
RESYNC_SECONDS = 30  # every claim is looked at again at least this often
WAITING_SECONDS = 1  # ... and this often while a claim waits for its pods to stop
RETRY_SECONDS = 30  # after a failed attempt
IN_PROGRESS = "ControllerResizeInProgress"
INFEASIBLE = "ControllerResizeInfeasible"
ENDED = ("Succeeded", "Failed")

log = logging.getLogger("resizer")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class Resizer:
    def __init__(self, core: client.CoreV1Api, storage_class: str, folder: Path, online: bool) -> None:
        self.core, self.storage_class, self.folder, self.online = core, storage_class, folder.resolve(), online
        self.retry_at: dict[str, float] = {}  # claim uid -> when to try again after a failure
        self.waiting: dict[str, str] = {}  # claim uid -> the size it waits to grow to (told once)

    def _event(self, pvc: client.V1PersistentVolumeClaim, kind: str, reason: str, message: str) -> None:
        meta = pvc.metadata
        event = {
            "metadata": {"generateName": f"{meta.name}.", "namespace": meta.namespace},
            "involvedObject": {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": meta.namespace,
                               "name": meta.name, "uid": meta.uid, "resourceVersion": meta.resource_version},
            "type": kind, "reason": reason, "message": message, "source": {"component": COMPONENT},
            "firstTimestamp": _now(), "lastTimestamp": _now(), "count": 1,
        }  # fmt: skip
        try:
            self.core.create_namespaced_event(meta.namespace, event)
        except ApiException as error:
            log.warning("could not record event %s on %s/%s: %s", reason, meta.namespace, meta.name, error.reason)

    def _set_status(self, pvc: client.V1PersistentVolumeClaim, change: dict[str, object]) -> None:
        """Merge-patch the claim's status subresource, as a CSI resizer does."""
        self.core.patch_namespaced_persistent_volume_claim_status(
            pvc.metadata.name, pvc.metadata.namespace, {"status": change}, _content_type="application/merge-patch+json"
        )

    def wanted(self, pvc: client.V1PersistentVolumeClaim) -> str | None:
        """The size ``pvc`` asks for beyond what its volume has, or None."""
        if pvc.spec.storage_class_name != self.storage_class or not pvc.spec.volume_name:
            return None
        if pvc.status is None or pvc.status.phase != "Bound" or pvc.metadata.deletion_timestamp:
            return None
        requested = (pvc.spec.resources.requests or {}).get("storage")
        current = (pvc.status.capacity or {}).get("storage")
        if requested is None or current is None or parse_quantity(requested) <= parse_quantity(current):
            return None
        return str(requested)

    def users(self, pvc: client.V1PersistentVolumeClaim) -> list[str]:
        """Running pods that use the claim. A pending one may be about to start, or its kubelet
        mounting the volume: growing is tried then, and volumes.grow_offline finds out whether
        the kubelet came first (the volume is then in use) or comes later (it retries until the
        volume's path is back)."""
        pods = self.core.list_namespaced_pod(pvc.metadata.namespace).items
        return [
            pod.metadata.name
            for pod in pods
            if pod.status is not None and pod.status.phase not in (*ENDED, "Pending")
            and any(v.persistent_volume_claim and v.persistent_volume_claim.claim_name == pvc.metadata.name
                    for v in pod.spec.volumes or [])
        ]  # fmt: skip

    def _wait_for_pods(self, pvc: client.V1PersistentVolumeClaim, requested: str, using: str) -> None:
        """Say once per size that the claim grows when no pod uses it; look again soon."""
        if self.waiting.get(pvc.metadata.uid) == requested:
            return
        self.waiting[pvc.metadata.uid] = requested
        message = (f"{requested} once no pod uses the claim ({using}): this machine cannot grow a mounted file "
                   "system (no CAP_SYS_RESOURCE)")  # fmt: skip
        self._event(pvc, "Normal", "VolumeResizePending", message)
        log.info("%s/%s: waiting to grow to %s", pvc.metadata.namespace, pvc.metadata.name, message)

    def reconcile(self, seen: client.V1PersistentVolumeClaim) -> None:
        uid = seen.metadata.uid
        if self.wanted(seen) is None or self.retry_at.get(uid, 0) > time.monotonic():
            return
        # Events may be stale (this process's own status patches make some): act on the claim now.
        pvc = self.core.read_namespaced_persistent_volume_claim(seen.metadata.name, seen.metadata.namespace)
        requested = self.wanted(pvc)
        if requested is None:
            self.waiting.pop(uid, None)
            return
        pv = self.core.read_persistent_volume(pvc.spec.volume_name)
        path = Path(pv.spec.local.path if pv.spec.local else pv.spec.host_path.path if pv.spec.host_path else "/")
        if path.parent.resolve() != self.folder:  # (the path itself is a link into the mount)
            return  # not one of this cluster's volumes
        name = f"{pvc.metadata.namespace}/{pvc.metadata.name}"
        if not self.online and (using := self.users(pvc) or volumes.mounted_elsewhere(path)):
            self._wait_for_pods(pvc, requested, ", ".join(using))
            return
        self.waiting.pop(uid, None)
        log.info("%s: growing %s to %s (%s)", name, pv.metadata.name, requested, "online" if self.online else "offline")
        self._set_status(pvc, {
            "conditions": [{"type": "Resizing", "status": "True", "lastTransitionTime": _now()}],
            "allocatedResources": {"storage": requested},
            "allocatedResourceStatuses": {"storage": IN_PROGRESS},
        })  # fmt: skip
        self._event(pvc, "Normal", "Resizing", f"{COMPONENT} is resizing volume {pv.metadata.name}")
        size = int(parse_quantity(requested))
        try:
            total = volumes.grow_online(path, size) if self.online else volumes.grow_offline(path, size)
        except volumes.VolumeBusy as error:  # a pod came first: wait for it like the others
            log.info("%s: %s", name, error)
            self._set_status(pvc, {"conditions": [], "allocatedResourceStatuses": None})
            self._wait_for_pods(pvc, requested, str(error))
            return
        except (volumes.GrowFailed, OSError) as error:
            log.error("%s: %s", name, error)
            self.retry_at[uid] = time.monotonic() + RETRY_SECONDS
            self._set_status(pvc, {"conditions": [], "allocatedResourceStatuses": {"storage": INFEASIBLE}})
            self._event(pvc, "Warning", "VolumeResizeFailed", str(error))
            return
        self.retry_at.pop(uid, None)
        self.core.patch_persistent_volume(pv.metadata.name, {"spec": {"capacity": {"storage": requested}}})
        self._set_status(pvc, {"capacity": {"storage": requested}, "conditions": [], "allocatedResourceStatuses": None})
        self._event(pvc, "Normal", "VolumeResizeSuccessful", f"Resize volume succeeded: {requested}")
        log.info("%s: %s is %s now (file system %d bytes)", name, pv.metadata.name, requested, total)

    def _reconcile_logged(self, pvc: client.V1PersistentVolumeClaim) -> None:
        try:
            self.reconcile(pvc)
        except ApiException as error:  # a conflict or a claim gone meanwhile: the next round retries
            log.warning("%s/%s: %s %s", pvc.metadata.namespace, pvc.metadata.name, error.status, error.reason)

    def run(self) -> None:
        """List every claim, then follow changes; list again every RESYNC_SECONDS, or every
        WAITING_SECONDS while a claim waits for its pods (pods ending change no claim)."""
        while True:
            try:
                listing = self.core.list_persistent_volume_claim_for_all_namespaces()
                for pvc in listing.items:
                    self._reconcile_logged(pvc)
                timeout = WAITING_SECONDS if self.waiting else RESYNC_SECONDS
                follow = watch.Watch()
                for event in follow.stream(
                    self.core.list_persistent_volume_claim_for_all_namespaces,
                    resource_version=listing.metadata.resource_version,
                    timeout_seconds=timeout,
                ):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._reconcile_logged(event["object"])
                    if self.waiting and timeout != WAITING_SECONDS:
                        follow.stop()  # a claim began to wait: look again soon, not in RESYNC_SECONDS
            except Exception as error:  # the API server restarting, a 410 Gone: list again
                log.warning("watch ended (%s); listing again", error)
                time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.resizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--storage-class", required=True)
    parser.add_argument("--volumes", required=True, type=Path, help="the only folder whose volumes it grows")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    online = volumes.can_grow_online()
    api = kube_config.new_client_from_config(config_file=args.kubeconfig)
    log.info("growing volumes of class %s under %s %s", args.storage_class, args.volumes,
             "online" if online else "offline, once no pod uses them (no CAP_SYS_RESOURCE)")  # fmt: skip
    Resizer(client.CoreV1Api(api), args.storage_class, args.volumes, online).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

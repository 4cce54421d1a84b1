"""A test agent acting as the kubelet of one node: it runs pods as local processes.

KWOK simulates pods without running anything. For the end-to-end test a notebook has to
really answer, so this agent serves node ``local-0``: for each pod the scheduler binds
there it runs the first container's command and args as a local process with the pod's
environment (the image is ignored: the command comes from this machine), reports the pod
Running with a loopback pod IP, and kills the process when the pod is deleted, then
confirms the deletion as a kubelet does. It keeps the node's lease fresh.

Supported: one container, env with plain values, emptyDir volumes (not mounted: the host's
/dev/shm serves). Anything else fails the pod with a reason instead of pretending.
Standalone script (no package imports) so the harness can start it by path.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

POOL_LABEL = "dcloud.test/pool"
TAINT = {"key": "dcloud.test/agent", "value": "local", "effect": "NoSchedule"}
LEASE_SECONDS = 40


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Agent:
    def __init__(self, kubeconfig: str, node: str, workdir: Path):
        api = config.new_client_from_config(config_file=kubeconfig)
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.node = node
        self.workdir = workdir
        self.processes: dict[str, subprocess.Popen] = {}  # pod uid -> process
        self.ips = (f"127.2.0.{i}" for i in itertools.cycle(range(1, 250)))
        self.lock = threading.Lock()

    # -- node ---------------------------------------------------------------------------

    def register(self) -> None:
        resources = {"cpu": "8", "memory": "16Gi", "pods": "10", "ephemeral-storage": "20Gi"}
        manifest = {
            "metadata": {
                "name": self.node,
                "labels": {POOL_LABEL: "local", "kubernetes.io/hostname": self.node,
                           "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
            },
            "spec": {"taints": [TAINT]},
        }
        try:
            self.core.create_node(manifest)
        except ApiException as error:
            if error.status != 409:
                raise
        self.core.patch_node_status(self.node, {"status": {
            "capacity": resources, "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": self.node}],
            "conditions": self._conditions(),
            "nodeInfo": {"kubeletVersion": "dcloud-test-agent", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "local-process://0",
                         "kernelVersion": os.uname().release, "osImage": "local", "kubeProxyVersion": "",
                         "machineID": "", "systemUUID": "", "bootID": ""},
        }})

    def _conditions(self) -> list[dict[str, str]]:
        stamp = now()
        ready = {"type": "Ready", "status": "True", "reason": "AgentReady", "message": "test agent running",
                 "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
        quiet = [{"type": t, "status": "False", "reason": "AgentFine", "message": "",
                  "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
                 for t in ("MemoryPressure", "DiskPressure", "PIDPressure")]
        return [ready, *quiet]

    def heartbeat_forever(self) -> None:
        while True:
            try:
                self._renew_lease()
                self.core.patch_node_status(self.node, {"status": {"conditions": self._conditions()}})
            except ApiException as error:
                print(f"heartbeat failed: {error.status} {error.reason}", flush=True)
            time.sleep(10)

    def _renew_lease(self) -> None:
        body = {"metadata": {"name": self.node, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": self.node, "leaseDurationSeconds": LEASE_SECONDS,
                         "renewTime": micro_now()}}
        try:
            self.coordination.patch_namespaced_lease(self.node, "kube-node-lease", body)
        except ApiException as error:
            if error.status != 404:
                raise
            self.coordination.create_namespaced_lease("kube-node-lease", body)

    # -- pods ---------------------------------------------------------------------------

    def watch_pods_forever(self) -> None:
        selector = f"spec.nodeName={self.node}"
        while True:
            try:
                for event in watch.Watch().stream(self.core.list_pod_for_all_namespaces,
                                                   field_selector=selector, timeout_seconds=300):
                    self.handle(event["type"], event["object"])
            except Exception as error:  # a dropped watch: start again
                print(f"pod watch restarted: {error}", flush=True)
                time.sleep(1)

    def handle(self, kind: str, pod: client.V1Pod) -> None:
        uid = pod.metadata.uid
        if kind == "DELETED" or pod.metadata.deletion_timestamp:
            self.kill(uid)
            if kind != "DELETED":
                self._confirm_deletion(pod)
            return
        if uid in self.processes or pod.status.phase in ("Running", "Succeeded", "Failed"):
            return
        self.run(pod)

    def run(self, pod: client.V1Pod) -> None:
        spec = pod.spec
        problem = self._unsupported(pod)
        if problem:
            self._status(pod, "Failed", reason="UnsupportedByTestAgent", message=problem)
            return
        container = spec.containers[0]
        argv = list(container.command or []) + list(container.args or [])
        home = self.workdir / f"{pod.metadata.namespace}-{pod.metadata.name}-{pod.metadata.uid[:8]}"
        home.mkdir(parents=True, exist_ok=True)
        env = {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", "HOME": str(home)}
        env.update({e.name: e.value or "" for e in container.env or []})
        try:
            process = subprocess.Popen(argv, env=env, cwd=home, start_new_session=True,
                                       stdout=open(home / "output.log", "ab"), stderr=subprocess.STDOUT)
        except OSError as error:
            self._status(pod, "Failed", reason="StartError", message=str(error))
            return
        with self.lock:
            self.processes[pod.metadata.uid] = process
        ip = next(self.ips)
        print(f"running {pod.metadata.namespace}/{pod.metadata.name} as pid {process.pid} at {ip}", flush=True)
        self._status(pod, "Running", ip=ip, container=container.name, image=container.image)
        threading.Thread(target=self._wait_exit, args=(pod, process, container), daemon=True).start()

    def _unsupported(self, pod: client.V1Pod) -> str:
        spec = pod.spec
        if len(spec.containers) != 1:
            return "the test agent runs pods with exactly one container"
        if spec.init_containers:
            return "the test agent does not run init containers"
        for volume in spec.volumes or []:
            if volume.empty_dir is None and volume.projected is None:
                return f"the test agent cannot provide volume {volume.name}"
        for var in spec.containers[0].env or []:
            if var.value_from is not None:
                return f"the test agent cannot resolve env {var.name} from a reference"
        if not (spec.containers[0].command or spec.containers[0].args):
            return "the test agent needs an explicit command (images are not pulled)"
        return ""

    def _wait_exit(self, pod: client.V1Pod, process: subprocess.Popen, container: Any) -> None:
        code = process.wait()
        with self.lock:
            still_ours = self.processes.pop(pod.metadata.uid, None) is process
        if still_ours:  # exited by itself, not killed for a deletion
            phase = "Succeeded" if code == 0 else "Failed"
            self._status(pod, phase, exit_code=code, container=container.name, image=container.image)

    def kill(self, uid: str) -> None:
        with self.lock:
            process = self.processes.pop(uid, None)
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        print(f"stopped pid {process.pid}", flush=True)

    def _confirm_deletion(self, pod: client.V1Pod) -> None:
        try:
            # with a body, the API server reads the options from it, not from the query
            options = client.V1DeleteOptions(grace_period_seconds=0, preconditions={"uid": pod.metadata.uid})
            self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, body=options)
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    def _status(self, pod: client.V1Pod, phase: str, *, ip: str = "", reason: str = "", message: str = "",
                exit_code: int | None = None, container: str = "", image: str = "") -> None:
        stamp = now()
        running = phase == "Running"
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "startTime": stamp,
            "conditions": [
                {"type": t, "status": "True" if (running or t == "PodScheduled") else "False",
                 "lastTransitionTime": stamp}
                for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
        }
        if ip:
            status["podIP"] = ip
            status["podIPs"] = [{"ip": ip}]
        if reason:
            status["reason"] = reason
            status["message"] = message
        if container:
            state = ({"running": {"startedAt": stamp}} if running
                     else {"terminated": {"exitCode": exit_code or 0, "finishedAt": stamp, "startedAt": stamp}})
            status["containerStatuses"] = [{"name": container, "ready": running, "started": running,
                                            "restartCount": 0, "image": image, "imageID": "", "state": state}]
        try:
            self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": status})
        except ApiException as error:
            print(f"status update of {pod.metadata.name} failed: {error.status}", flush=True)

    def shutdown(self, *_: Any) -> None:
        for uid in list(self.processes):
            self.kill(uid)
        sys.exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", default="local-0")
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    agent = Agent(args.kubeconfig, args.node, Path(args.workdir))
    signal.signal(signal.SIGTERM, agent.shutdown)
    agent.register()
    threading.Thread(target=agent.heartbeat_forever, daemon=True).start()
    print(f"serving node {args.node}", flush=True)
    agent.watch_pods_forever()


if __name__ == "__main__":
    main()

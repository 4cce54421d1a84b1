"""Where the harness keeps its binaries and the state of a running cluster."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

K8S_VERSION = os.environ.get("DCLOUD_K8S_VERSION", "v1.36.3")
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
)
# The real node's kubelet and container runtime (runc and the CNI plugins come from the OS).
NODE_BINARIES = ("kubelet", "containerd", "containerd-shim-runc-v2", "ctr")
# Tools the tests drive beside the cluster: Helm (the Zero to JupyterHub chart), Kueue's
# manager (queueing) and real-0's volume provisioner; build.sh builds them with the rest.
TOOL_BINARIES = ("helm", "kueue", "local-path-provisioner")
BUILD_SCRIPT = Path(__file__).with_name("build.sh")


def cache_dir() -> Path:
    """The build cache: ``$DCLOUD_K8S_CACHE`` or ``~/.cache/dcloud-k8s`` (same as build.sh)."""
    return Path(os.environ.get("DCLOUD_K8S_CACHE", Path.home() / ".cache" / "dcloud-k8s"))


def bin_dir() -> Path:
    return cache_dir() / K8S_VERSION / "bin"


def stages_dir() -> Path:
    """KWOK's stage definitions (``kustomize/stage`` of the KWOK module), copied by build.sh."""
    return cache_dir() / K8S_VERSION / "stages"


def kueue_manifests_dir() -> Path:
    """Kueue's CRDs (``crd/``) and webhook configurations (``webhook/``), copied by build.sh
    from the Kueue module."""
    return cache_dir() / K8S_VERSION / "kueue"


def default_run_dir() -> Path:
    return Path(os.environ.get("DCLOUD_CLUSTER_DIR", cache_dir() / "run"))


@dataclass(frozen=True)
class RunDir:
    """The files of one cluster. Everything the harness writes at run time lives under ``root``."""

    root: Path

    @property
    def state(self) -> Path:
        """JSON: pids, ports and the binaries behind them."""
        return self.root / "state.json"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd-data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def admin_kubeconfig(self) -> Path:
        """Client certificate in group system:masters."""
        return self.root / "admin.kubeconfig"

    @property
    def hub_kubeconfig(self) -> Path:
        """Token of ServiceAccount dcloud/hub; default namespace dcloud."""
        return self.root / "hub.kubeconfig"

    @property
    def kwok_stages(self) -> Path:
        return self.root / "kwok-stages.yaml"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    @property
    def node(self) -> Path:
        """Everything of the real node ``real-0``: containerd, kubelet, CNI, host record.
        Removed by ``node.stop`` (after unmounting), never by a plain recursive delete."""
        return self.root / "node"

    @property
    def kueue(self) -> Path:
        """Kueue's manager: the root directory it runs chrooted in (binary, configuration,
        kubeconfig, certificates at the fixed paths it reads) and why it is missing, if so."""
        return self.root / "kueue"

    @property
    def storage(self) -> Path:
        """The volume provisioner's and resizer's configuration, credentials and why they are
        missing, if so (storage.py)."""
        return self.root / "storage"

    @property
    def volumes(self) -> Path:
        """real-0's provisioned volumes: a shared bind mount of itself holding each volume's
        image file and its mount point. Unmounted by ``storage.release``, never deleted while
        mounted."""
        return self.root / "volumes"

    @property
    def datasets(self) -> Path:
        """Host-path folders behind the dataset volumes (read by pods on real-0)."""
        return self.root / "datasets"

    def generated(self) -> list[Path]:
        """What ``down`` removes: only paths the harness itself creates."""
        return [
            self.state,
            self.pki,
            self.etcd_data,
            self.logs,
            self.admin_kubeconfig,
            self.hub_kubeconfig,
            self.kwok_stages,
            self.datasets,
            self.kueue,
            self.storage,
            self.volumes,
        ]

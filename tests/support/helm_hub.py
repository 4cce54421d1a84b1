"""The chart's own hub, run on this machine from what ``helm template`` rendered.

The hub Deployment's container mounts the rendered ConfigMap (the chart's
``jupyterhub_config.py``, ``z2jh.py`` and the names of its objects) and Secret (the values, the
generated tokens and ``hub.extraFiles``) at fixed paths: ``/usr/local/etc/jupyterhub/...`` and,
for DCloud, ``/etc/dcloud/...``. :func:`hub_filesystem` lays those files out as the kubelet
would, following the Deployment's ``volumeMounts``; :func:`in_hub_filesystem` runs a command in
a private mount namespace where they appear at those paths (overlays on ``/usr/local`` and
``/etc`` that vanish with the process: the host's own files are never touched). The command
then is the container's own ``args``, with the environment its ``env`` gives it, plus the
``<SERVICE>_SERVICE_HOST/PORT`` variables Kubernetes sets for the release's Services.
"""

from __future__ import annotations

import base64
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.helm import find, unavailable
from tests.support.hub import free_port

# Directories that get an overlay; every path the hub container mounts must be under one.
OVERLAID = ("/usr/local", "/etc")

_SCRIPT = """\
set -e
root=$1; shift
scratch="$root/mnt"
mkdir -p "$scratch"
mount -t tmpfs dcloud-hub-files "$scratch"
for dir in {dirs}; do
  name=$(echo "${{dir#/}}" | tr / _)
  mkdir -p "$scratch/$name/upper" "$scratch/$name/work"
  if [ -d "$root/files/$name" ]; then cp -a "$root/files/$name/." "$scratch/$name/upper/"; fi
  mount -t overlay overlay -o "lowerdir=$dir,upperdir=$scratch/$name/upper,workdir=$scratch/$name/work" "$dir"
done
exec "$@"
"""


@dataclass
class HubFilesystem:
    """The hub container's files under ``root``, its ``args`` and environment."""

    root: Path
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    mounted: dict[str, str] = field(default_factory=dict)  # path in the container -> text

    def command(self, argv: list[str] | None = None) -> list[str]:
        """``argv`` (default: the container's args) in the hub's filesystem."""
        script = _SCRIPT.format(dirs=" ".join(OVERLAID))
        # its own PID namespace too, as in its container: when the hub dies, so do the services it
        # started (the culler runs in a session of its own, which no signal to the hub's group reaches)
        return ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--",
                "/bin/sh", "-c", script, "sh", str(self.root), *(argv or self.argv)]  # fmt: skip


def require_mount_namespaces() -> None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        unavailable("the chart's hub runs in a private mount namespace: needs root and unshare")


def _object_files(obj: dict[str, Any]) -> dict[str, str]:
    data = obj.get("data") or {}
    if obj["kind"] == "ConfigMap":
        files = dict(data)
    else:
        files = {key: base64.b64decode(value).decode() for key, value in data.items()}
    files.update(obj.get("stringData") or {})
    return files


def _volume_files(volume: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, str] | None:
    """The files a configMap or secret volume shows, by path in the volume; None for others."""
    if "configMap" in volume:
        source, kind, name = volume["configMap"], "ConfigMap", volume["configMap"]["name"]
    elif "secret" in volume:
        source, kind, name = volume["secret"], "Secret", volume["secret"]["secretName"]
    else:
        return None
    data = _object_files(find(objects, kind, name))
    if source.get("items"):
        return {item["path"]: data[item["key"]] for item in source["items"]}
    return data


def _env_value(
    entry: dict[str, Any], objects: list[dict[str, Any]], namespace: str, secrets: dict[str, dict[str, str]]
) -> str:
    if "value" in entry:
        return str(entry["value"])
    source = entry["valueFrom"]
    if "fieldRef" in source:
        if source["fieldRef"]["fieldPath"] != "metadata.namespace":
            raise ValueError(f"env {entry['name']}: field {source['fieldRef']['fieldPath']} not laid out")
        return namespace
    ref = source["secretKeyRef"]
    if ref["name"] in secrets:  # a Secret the operator creates beside the release
        return secrets[ref["name"]][ref["key"]]
    return _object_files(find(objects, "Secret", ref["name"]))[ref["key"]]


def hub_filesystem(
    objects: list[dict[str, Any]], root: Path, namespace: str, secrets: dict[str, dict[str, str]] | None = None
) -> HubFilesystem:
    """Lay out the rendered hub container's mounted files under ``root``; ``secrets`` holds the
    Secrets its environment names that the release does not create (``dcloud-oidc``)."""
    spec = find(objects, "Deployment", "hub")["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "hub"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    files_root = root / "files"
    shutil.rmtree(files_root, ignore_errors=True)
    mounted: dict[str, str] = {}
    for mount in container["volumeMounts"]:
        files = _volume_files(volumes[mount["name"]], objects)
        if files is None:  # the database volume: the hub's working directory stands in
            continue
        target = mount["mountPath"]
        if mount.get("subPath"):
            mounted[target] = files[mount["subPath"]]
        else:
            mounted.update({f"{target.rstrip('/')}/{key}": text for key, text in files.items()})
    for path, text in mounted.items():
        base = next((d for d in OVERLAID if path.startswith(d + "/")), None)
        if base is None:
            raise ValueError(f"the hub mounts {path}, outside {', '.join(OVERLAID)}")
        local = files_root / base.strip("/").replace("/", "_") / path.removeprefix(base + "/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(text)
    env = {e["name"]: _env_value(e, objects, namespace, secrets or {}) for e in container.get("env") or []}
    for service in (o for o in objects if o["kind"] == "Service"):
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        env[f"{prefix}_SERVICE_HOST"] = "127.0.0.1"
        env[f"{prefix}_SERVICE_PORT"] = str(service["spec"]["ports"][0]["port"])
    return HubFilesystem(root, list(container["args"]), env, mounted)


def hub_environment(fs: HubFilesystem, **extra: str) -> dict[str, str]:
    """This machine's environment, this Python's scripts first on PATH (the image's `python3`,
    `jupyterhub`), and the container's variables."""
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return {**os.environ, "PATH": path, **fs.env, **extra}


def outside_the_cluster(port: int, hub_port: int, proxy_port: int, token_service: str = "tests") -> dict[str, Any]:
    """Values for running the chart's hub as a process on this machine, not in its pod.

    Only what a pod has and a process here lacks is changed: the hub binds the ports it is
    given instead of 8081 in its own network namespace, and starts a proxy itself (the chart's
    proxy pod runs on no real node here), and the culler's ``--url`` follows the hub's port.
    The test cluster has no StorageClass and no image for the chart's user scheduler, so user
    pods get no home volume and go to the cluster's scheduler. A service ``token_service``
    (its token generated by the chart, like the culler's) lets the tests use the REST API and
    DCloud's admin pages, whose service listens on a free local port instead of the hub
    Service's 10101 (no ``hub`` host name here).
    """
    proxy = [sys.executable, "-m", "dcloud_spawner.demo.proxy"]
    snippet = "\n".join([
        "# The hub runs as a process on the test machine (tests/support/helm_hub.py).",
        f"c.JupyterHub.bind_url = 'http://127.0.0.1:{port}'",
        f"c.JupyterHub.hub_bind_url = 'http://127.0.0.1:{hub_port}'",
        f"c.JupyterHub.hub_connect_url = 'http://127.0.0.1:{hub_port}'",
        f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{proxy_port}'",
        "c.ConfigurableHTTPProxy.should_start = True",
        f"c.ConfigurableHTTPProxy.command = {proxy!r}",
    ])  # fmt: skip
    culler_command = [
        "python3", "-m", "jupyterhub_idle_culler", "--config=/etc/dcloud/idle_culler_config.py",
        f"--url=http://127.0.0.1:{hub_port}/hub/api",
    ]  # fmt: skip
    return {
        "scheduling": {"userScheduler": {"enabled": False}},
        "singleuser": {"storage": {"type": "none"}},
        "hub": {
            "extraConfig": {"zz-outside-the-cluster": snippet},
            "services": {token_service: {}, "dcloud-idle-culler": {"command": culler_command},
                         "dcloud": {"url": f"http://127.0.0.1:{free_port()}"}},
            "loadRoles": {token_service: {
                "scopes": ["admin:users", "admin:servers", "list:users", "read:users", "servers",
                           "read:metrics", "read:servers", "access:servers", "admin-ui", "admin:groups",
                           "custom:dcloud-admin:read"],
                "services": [token_service],
            }},
        },
    }  # fmt: skip

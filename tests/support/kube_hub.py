"""A real JupyterHub with DCloudSpawner against the test cluster.

With ``real_node``, its servers run in containers on node real-0: the hub API listens on the
node's address, which the servers reach over the pod bridge as they would a hub Service, and
the proxy routes to the pods' IPs. Otherwise pods go to the KWOK fleet (Running, nobody home)."""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

from tests.conftest import EXAMPLE_CATALOG
from tests.support.hub import DemoHub, free_port, launch_hub
from tests.support.real_node import RealNode, spawner_config

CONFIG = """\
import json
settings = json.loads({settings!r})
c.JupyterHub.bind_url = f"http://127.0.0.1:{{settings['port']}}"
c.JupyterHub.hub_bind_url = f"http://{{settings['hub_ip']}}:{{settings['hub_port']}}"
c.JupyterHub.hub_connect_url = f"http://{{settings['hub_ip']}}:{{settings['hub_port']}}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{{settings['proxy_port']}}"
c.ConfigurableHTTPProxy.command = settings["proxy"]
c.JupyterHub.db_url = "sqlite:///" + settings["state"] + "/hub.sqlite"
c.JupyterHub.cookie_secret_file = settings["state"] + "/cookie_secret"
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = settings["password"]
c.Authenticator.allowed_users = set(settings["users"]) | {{"admin"}}
c.Authenticator.admin_users = {{"admin"}}
groups = {{}}
for user, user_groups in settings["users"].items():
    for group in user_groups:
        groups.setdefault(group, {{"users": []}})["users"].append(user)
c.JupyterHub.load_groups = groups
c.JupyterHub.allow_named_servers = True
from dcloud_spawner.hub.service import ADMIN_SCOPE, admin_role, admin_service
c.JupyterHub.services = [{{"name": "tests", "api_token": settings["token"]}}]
c.JupyterHub.load_roles = [{{"name": "tests", "services": ["tests"],
                             "scopes": ["admin:users", "admin:servers", "list:users", "read:users", "tokens",
                                        "servers", "access:servers", "read:metrics", ADMIN_SCOPE]}}]
admin_service(c)
c.JupyterHub.load_roles.append(admin_role(users=["admin"]))
c.JupyterHub.spawner_class = "dcloud"
c.DCloudSpawner.namespace = settings["namespace"]
for name, value in settings["spawner"].items():
    setattr(c.DCloudSpawner, name, value)
c.DCloudSpawner.start_timeout = 180
c.DCloudSpawner.http_timeout = 120
"""


def start_kube_hub(
    state: Path,
    cluster,
    *,
    real_node: RealNode | None = None,
    catalog: Path = EXAMPLE_CATALOG,
    users: dict[str, list[str]] | None = None,
    spawner: dict[str, object] | None = None,
) -> DemoHub:
    """A hub whose servers run on ``real_node`` (with ``catalog`` naming images it has), or
    on the KWOK fleet; ``spawner``: more DCloudSpawner (KubeSpawner) settings, e.g. a home volume."""
    state.mkdir(parents=True, exist_ok=True)
    port, token, password = free_port(), secrets.token_hex(16), secrets.token_hex(8)
    spawner = {**(spawner_config(catalog) if real_node else {"catalog_path": str(catalog)}), **(spawner or {})}
    hub_ip = real_node.address if real_node else "127.0.0.1"
    settings = {
        "port": port,
        "hub_ip": hub_ip,
        "hub_port": free_port(hub_ip),
        "proxy_port": free_port(),
        "state": str(state),
        "proxy": [sys.executable, "-m", "dcloud_spawner.demo.proxy"],
        "password": password,
        "token": token,
        "namespace": cluster.namespace,
        "spawner": spawner,
        "users": users or {"student": ["students"]},
    }
    config = state / "jupyterhub_config.py"
    config.write_text(CONFIG.format(settings=json.dumps(settings)))
    env = {**os.environ, "KUBECONFIG": cluster.hub_kubeconfig}
    return launch_hub([sys.executable, "-m", "jupyterhub", "-f", str(config)], state, env, token, password, port)

"""A real JupyterHub with DCloudSpawner against the test cluster, proxied to pods the
test agent runs on node local-0 (see tests/cluster/agent.py)."""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

from tests.conftest import EXAMPLE_CATALOG
from tests.hub import DemoHub, free_port, launch_hub

CONFIG = """\
import json
settings = json.loads({settings!r})
c.JupyterHub.bind_url = f"http://127.0.0.1:{{settings['port']}}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{{settings['hub_port']}}"
c.JupyterHub.hub_connect_url = f"http://127.0.0.1:{{settings['hub_port']}}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{{settings['proxy_port']}}"
c.ConfigurableHTTPProxy.command = settings["proxy"]
c.JupyterHub.db_url = "sqlite:///" + settings["state"] + "/hub.sqlite"
c.JupyterHub.cookie_secret_file = settings["state"] + "/cookie_secret"
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = settings["password"]
c.Authenticator.allowed_users = set(settings["users"]) | {{"admin"}}
c.Authenticator.admin_users = {{"admin"}}
groups = {{}}
for user, user_groups in settings["users"].items():
    for group in user_groups:
        groups.setdefault(group, {{"users": []}})["users"].append(user)
c.JupyterHub.load_groups = groups
c.JupyterHub.allow_named_servers = True
c.JupyterHub.services = [{{"name": "tests", "api_token": settings["token"]}}]
c.JupyterHub.load_roles = [{{"name": "tests", "services": ["tests"],
                             "scopes": ["admin:users", "admin:servers", "list:users", "read:users", "tokens",
                                        "servers", "read:metrics"]}}]
from dcloud_spawner.hub.admin import handlers
c.JupyterHub.extra_handlers = handlers()
c.JupyterHub.spawner_class = "dcloud"
c.DCloudSpawner.catalog_path = settings["catalog"]
c.DCloudSpawner.namespace = settings["namespace"]
if settings["on_agent"]:
    # pods of this hub go to the node whose pods really run (the test agent's)
    c.DCloudSpawner.node_selector = {{"dcloud.test/pool": "local"}}
    c.DCloudSpawner.tolerations = [{{"key": "dcloud.test/agent", "operator": "Equal", "value": "local",
                                     "effect": "NoSchedule"}}]
c.DCloudSpawner.cmd = ["jupyterhub-singleuser"]
c.DCloudSpawner.args = settings["args"]
c.DCloudSpawner.start_timeout = 120
c.DCloudSpawner.http_timeout = 90
"""


def start_kube_hub(state: Path, cluster, *, on_agent: bool = True, catalog: Path = EXAMPLE_CATALOG,
                   users: dict[str, list[str]] | None = None) -> DemoHub:
    """``on_agent``: pin CPU servers to the agent's node so they really run; otherwise pods
    go wherever the scheduler puts them (KWOK nodes: Running, but nothing answers)."""
    state.mkdir(parents=True, exist_ok=True)
    port, token, password = free_port(), secrets.token_hex(16), secrets.token_hex(8)
    settings = {
        "port": port, "hub_port": free_port(), "proxy_port": free_port(), "state": str(state),
        "proxy": [sys.executable, "-m", "dcloud_spawner.demo.proxy"], "password": password, "token": token,
        "catalog": str(catalog), "namespace": cluster.namespace, "on_agent": on_agent,
        "users": users or {"student": ["students"]},
        # the agent runs the notebook as this machine's user, root in CI
        "args": ["--ServerApp.allow_root=True"] if os.geteuid() == 0 else [],
    }
    config = state / "jupyterhub_config.py"
    config.write_text(CONFIG.format(settings=json.dumps(settings)))
    env = {**os.environ, "KUBECONFIG": cluster.hub_kubeconfig}
    return launch_hub([sys.executable, "-m", "jupyterhub", "-f", str(config)], state, env, token, password, port)

"""``dcloud demo``: JupyterHub on this machine with the example catalog and the local backend.

Demo users: ``student`` (group students), ``researcher`` (groups researchers and medical),
``guest`` (no group), who share one password, and ``admin`` (hub admin, no group), who logs
in with the admin password (JupyterHub's SharedPasswordAuthenticator keeps the two apart).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from ..core.catalog import Catalog, CatalogError
from ..hub.service import ADMIN_SCOPE, SERVICE_NAME, admin_role, admin_service

# The example catalog ships inside the package, so `dcloud demo` works outside a checkout
# (hub_config/catalog.yaml in the repository is a link to this file).
DEMO_CATALOG = Path(__file__).with_name("catalog.yaml")
USERS = {"student": ["students"], "researcher": ["researchers", "medical"], "guest": [], "admin": []}
# SharedPasswordAuthenticator's minimum lengths for user_password and admin_password
MIN_PASSWORD = 8
MIN_ADMIN_PASSWORD = 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the hub binds: TIME_WAIT is fine
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _proxy_still_running(state: Path) -> bool:
    """The previous hub's proxy outlived it; the new hub stops it before taking its port."""
    try:
        os.kill(int((state / "proxy.pid").read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def internal_ports(state: Path) -> dict[str, int]:
    """The hub API and proxy API ports, the same at every start on the same state directory.

    Servers that outlive a hub (a crash, a restart) keep calling the hub API at the address
    they were started with, so a new hub must listen there again. Ports are chosen once,
    kept in ``ports.json``, and chosen anew only when another program took them meanwhile.
    """
    record = state / "ports.json"
    try:
        kept = {k: int(v) for k, v in json.loads(record.read_text()).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        kept = {}
    proxy_alive = _proxy_still_running(state)
    ports = {}
    for name in ("hub", "proxy_api"):
        port = kept.get(name, 0)
        reusable = 0 < port < 65536 and (_port_is_free(port) or (name == "proxy_api" and proxy_alive))
        ports[name] = port if reusable else _free_port()
    if ports != kept:
        record.write_text(json.dumps(ports) + "\n")
    return ports


def _proxy_command() -> list[str]:
    """Node's configurable-http-proxy where installed, else the pip-installed Python one
    (through demo_proxy, which makes it stream the spawn-progress events)."""
    node_chp = shutil.which("configurable-http-proxy")
    if node_chp and Path(node_chp).parent != Path(sys.executable).parent:
        return [node_chp]
    try:
        import configurable_http_proxy  # noqa: F401
    except ImportError:
        raise SystemExit(
            "error: configurable-http-proxy not found; install the demo extra: pip install -e '.[demo]'"
        ) from None
    return [sys.executable, "-m", "dcloud_spawner.demo.proxy"]


def sample_datasets(state: Path, catalog: Catalog) -> dict[str, str]:
    """Small local folders standing in for the catalog's cluster datasets."""
    paths = {}
    for dataset in catalog.datasets:
        if dataset.source.type == "host_path":
            continue
        folder = state / "datasets" / dataset.id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "README.txt").write_text(
            f"{dataset.display_name}\n{dataset.description}\n"
            f"Sample stand-in for the demo; on the cluster this is {dataset.size} of {dataset.format}.\n"
        )
        paths[dataset.id] = str(folder)
    return paths


def demo_settings(port: int, password: str, catalog_path: Path, state: Path,
                  simulated_gpus: list[str] | None = None, admin_password: str = "") -> dict[str, Any]:
    """Everything the demo's jupyterhub_config.py applies, as plain data."""
    catalog = Catalog.from_path(catalog_path)
    ports = internal_ports(state)
    return {
        "local_gpus": [
            {"index": i, "uuid": f"GPU-simulated-{i}", "name": name}
            for i, name in enumerate(simulated_gpus or [])
        ],
        # an admin token for scripted use (tests, automation), only when asked for
        "api_token": os.environ.get("DCLOUD_DEMO_API_TOKEN") or None,
        "port": port,
        "password": password,
        "admin_password": admin_password,
        "catalog": str(catalog_path),
        "state": str(state),
        "hub_port": ports["hub"],
        "proxy_api_port": ports["proxy_api"],
        "proxy_command": _proxy_command(),
        "dataset_paths": sample_datasets(state, catalog),
        "users": USERS,
    }


def apply_demo_config(c: Any, settings: dict[str, Any]) -> None:
    """Fill a JupyterHub config object ``c`` for the demo."""
    state = Path(settings["state"])
    c.JupyterHub.bind_url = f"http://127.0.0.1:{settings['port']}"
    c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{settings['hub_port']}"
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{settings['proxy_api_port']}"
    c.ConfigurableHTTPProxy.command = settings["proxy_command"]
    c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
    c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(state / "cookie_secret")
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.cleanup_servers = True

    c.JupyterHub.authenticator_class = "shared-password"
    c.SharedPasswordAuthenticator.user_password = settings["password"]
    if settings.get("admin_password"):
        c.SharedPasswordAuthenticator.admin_password = settings["admin_password"]
    c.Authenticator.allowed_users = set(settings["users"])
    c.Authenticator.admin_users = {"admin"}
    groups: dict[str, dict[str, list[str]]] = {}
    for user, user_groups in settings["users"].items():
        for group in user_groups:
            groups.setdefault(group, {"users": []})["users"].append(user)
    c.JupyterHub.load_groups = groups

    # DCloud's admin pages, /services/dcloud/allocations, as a JupyterHub service in this process
    c.JupyterHub.services = []
    c.JupyterHub.load_roles = [admin_role(users=["admin"])]
    admin_service(c)
    c.JupyterHub.spawner_class = "dcloud-local"
    c.DCloudLocalSpawner.catalog_path = settings["catalog"]
    c.DCloudLocalSpawner.server_root = str(state / "servers")
    c.DCloudLocalSpawner.record_root = str(state / "records")
    c.DCloudLocalSpawner.dataset_paths = settings["dataset_paths"]
    if settings.get("local_gpus"):
        c.DCloudLocalSpawner.local_gpus = settings["local_gpus"]
    if settings.get("api_token"):
        c.JupyterHub.services.append({"name": "dcloud-automation", "api_token": settings["api_token"]})
        c.JupyterHub.load_roles.append({
            "name": "dcloud-automation",
            "scopes": ["admin:users", "admin:servers", "admin:server_state", "tokens", "list:users",
                       "read:users", "servers", "access:servers", ADMIN_SCOPE,
                       f"access:services!service={SERVICE_NAME}"],
            "services": ["dcloud-automation"],
        })
    c.DCloudLocalSpawner.package_install_timeout = 100  # below start_timeout: pip's refusal comes first
    c.Spawner.start_timeout = 120
    c.Spawner.http_timeout = 90


CONFIG_TEMPLATE = """\
# Written by `dcloud demo`; regenerated at every start.
import json
from dcloud_spawner.demo import apply_demo_config

apply_demo_config(c, json.loads({settings!r}))
"""


def run_demo(port: int = 8000, password: str | None = None, catalog: str | None = None,
             simulated_gpus: list[str] | None = None) -> int:
    catalog_path = Path(catalog) if catalog else DEMO_CATALOG
    if not catalog_path.exists():
        print(f"error: catalog not found: {catalog_path}; pass --catalog PATH", file=sys.stderr)
        return 1
    try:
        Catalog.from_path(catalog_path)
    except CatalogError as exc:
        for line in exc.errors:
            print(f"error: {line}", file=sys.stderr)
        return 1
    state = Path(os.environ.get("DCLOUD_DEMO_DIR", "~/.local/share/dcloud/demo")).expanduser()
    state.mkdir(parents=True, exist_ok=True)
    generated = password is None
    password = password or secrets.token_urlsafe(9)
    if len(password) < MIN_PASSWORD:
        print(f"error: the password must be at least {MIN_PASSWORD} characters (JupyterHub's "
              "SharedPasswordAuthenticator asks that much)", file=sys.stderr)
        return 1
    admin_password = os.environ.get("DCLOUD_DEMO_ADMIN_PASSWORD") or secrets.token_urlsafe(24)
    if len(admin_password) < MIN_ADMIN_PASSWORD or admin_password == password:
        print(f"error: DCLOUD_DEMO_ADMIN_PASSWORD must be at least {MIN_ADMIN_PASSWORD} characters "
              "and differ from the users' password", file=sys.stderr)
        return 1
    settings = demo_settings(port, password, catalog_path.resolve(), state, simulated_gpus, admin_password)
    config_file = state / "jupyterhub_config.py"
    config_file.write_text(CONFIG_TEMPLATE.format(settings=json.dumps(settings)))

    print(f"DCloud demo: http://127.0.0.1:{port}/")
    users = [name for name in USERS if name != "admin"]
    print(f"  users: {', '.join(users)}  password: {password}"
          + ("  (random; choose one with --password)" if generated else ""))
    chosen = "DCLOUD_DEMO_ADMIN_PASSWORD" in os.environ
    print(f"  admin: admin  password: {admin_password}"
          + ("" if chosen else "  (random; choose one with DCLOUD_DEMO_ADMIN_PASSWORD)"))
    print(f"  admin pages: http://127.0.0.1:{port}/services/{SERVICE_NAME}/allocations")
    print(f"  catalog: {catalog_path}  state: {state}")
    if simulated_gpus:
        print(f"  simulated GPUs (no real device behind them): {', '.join(simulated_gpus)}")
    sys.stdout.flush()
    os.chdir(state)
    argv = [sys.executable, "-m", "jupyterhub", "-f", str(config_file)]
    os.execv(sys.executable, argv)
    return 0  # not reached

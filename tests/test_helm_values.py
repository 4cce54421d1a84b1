"""helm-values/: DCloud's Zero to JupyterHub 4.4.0 values, read as Helm and the hub read them.

Helm merges ``helm-values/values.yaml`` over the chart's defaults and validates the
result against the chart's schema; the hub then loads ``hub.config`` into its traitlets
config and runs the ``hub.extraConfig`` snippets. These tests do the same with the
chart's own defaults and schema from ``../shared/z2jh-4.4.0``.
"""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from traitlets.config import Config

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT.parent / "shared" / "z2jh-4.4.0"
VALUES = ROOT / "helm-values" / "values.yaml"
RBAC = ROOT / "helm-values" / "rbac.yaml"
EXAMPLE_CATALOG = ROOT / "hub_config" / "catalog.yaml"
CATALOG_FILE = "dcloud-catalog"  # the hub.extraFiles key the docs' --set-file targets


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def helm_merge(defaults: Any, overrides: Any) -> Any:
    """``overrides`` coalesced over ``defaults`` as Helm does for ``--values``.

    Maps merge key by key, a null value deletes the key, anything else (lists
    included) replaces the default outright.
    """
    if not isinstance(defaults, dict) or not isinstance(overrides, dict):
        return copy.deepcopy(overrides)
    merged = copy.deepcopy(defaults)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif key in merged:
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_file(values: dict, path: tuple[str, ...], text: str) -> dict:
    """``helm --set-file a.b.c=FILE``: the file's text as a string at that path."""
    result = copy.deepcopy(values)
    node = result
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = text
    return result


def schema_errors(schema: dict, values: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path))
    ]


@pytest.fixture(scope="module")
def schema() -> dict:
    return load_yaml(CHART / "values.schema.yaml")


@pytest.fixture(scope="module")
def values() -> dict:
    """What Helm renders the chart with for ``--values helm-values/values.yaml``."""
    return helm_merge(load_yaml(CHART / "values.yaml"), load_yaml(VALUES))


@pytest.fixture(scope="module")
def deployed_values(values: dict) -> dict:
    """The values of docs/deploy.md's command, which also passes the example catalog."""
    path = ("hub", "extraFiles", CATALOG_FILE, "stringData")
    return set_file(values, path, EXAMPLE_CATALOG.read_text())


# --- Helm: merge and schema --------------------------------------------------------------


def test_helm_merge_follows_helm_rules():
    defaults = {"a": {"keep": 1, "drop": 2, "list": [1, 2]}, "b": "x"}
    overrides = {"a": {"drop": None, "list": [3], "new": {"n": 1}}, "b": "y"}
    assert helm_merge(defaults, overrides) == {
        "a": {"keep": 1, "list": [3], "new": {"n": 1}},
        "b": "y",
    }
    assert defaults["a"]["drop"] == 2, "the defaults must not be modified"


def test_values_match_the_chart_schema(schema, values):
    assert schema_errors(schema, values) == []


def test_values_with_the_example_catalog_match_the_chart_schema(schema, deployed_values):
    assert schema_errors(schema, deployed_values) == []


def test_schema_check_catches_a_misspelt_key(schema, values):
    broken = copy.deepcopy(values)
    broken["hub"]["extraFiles"][CATALOG_FILE]["mountpath"] = "/etc/dcloud/catalog.yaml"
    errors = schema_errors(schema, broken)
    assert any("mountpath" in e for e in errors), errors


# --- The hub's configuration, as the chart's jupyterhub_config.py builds it ---------------


def value_at(values: dict, dotted: str, default: Any = None) -> Any:
    node: Any = values
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def chart_hub_config(values: dict) -> Config:
    """The traitlets config the chart's jupyterhub_config.py gives the hub.

    In the chart's order: its own settings (only those shaping the user pod are
    reproduced here), then ``hub.config`` section by section, then the
    ``hub.extraConfig`` snippets sorted by key, run with ``c`` and ``get_config``.
    """
    c = Config()
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    singleuser = values["singleuser"]
    c.KubeSpawner.uid = singleuser["uid"]
    c.KubeSpawner.fs_gid = singleuser["fsGid"]
    c.KubeSpawner.allow_privilege_escalation = singleuser["allowPrivilegeEscalation"]
    c.KubeSpawner.image = f"{singleuser['image']['name']}:{singleuser['image']['tag']}"
    c.KubeSpawner.extra_labels = dict(singleuser.get("extraLabels") or {})
    c.KubeSpawner.init_containers = []
    storage = singleuser["storage"]
    if storage["type"] == "dynamic":
        volume = storage["dynamic"]["volumeNameTemplate"]
        c.KubeSpawner.storage_pvc_ensure = True
        c.KubeSpawner.volumes = [{"name": volume, "persistentVolumeClaim": {
            "claimName": "{pvc_name}"}}]
        c.KubeSpawner.volume_mounts = [{"name": volume, "mountPath": storage["homeMountPath"]}]
    if singleuser["cloudMetadata"]["blockWithIptables"]:
        # The chart adds this privileged container to block the metadata server.
        c.KubeSpawner.init_containers.append({
            "name": "block-cloud-metadata",
            "image": "quay.io/jupyterhub/k8s-network-tools:4.4.0",
            "command": ["iptables", "--append", "OUTPUT", "--destination",
                        singleuser["cloudMetadata"]["ip"], "--jump", "DROP"],
            "securityContext": {"privileged": True, "runAsUser": 0,
                                "capabilities": {"add": ["NET_ADMIN"]}},
        })

    for section, traits in (value_at(values, "hub.config") or {}).items():
        c[section].update(copy.deepcopy(traits))

    def get_config(key: str, default: Any = None) -> Any:
        return copy.deepcopy(value_at(values, key, default))

    for _key, snippet in sorted((value_at(values, "hub.extraConfig") or {}).items()):
        exec(snippet, {"c": c, "get_config": get_config})
    return c


@pytest.fixture(scope="module")
def hub_config(values: dict) -> Config:
    return chart_hub_config(values)


def configurable_classes() -> dict[str, type]:
    from jupyterhub.app import JupyterHub
    from kubespawner import KubeSpawner
    from oauthenticator.generic import GenericOAuthenticator

    from dcloud_spawner.kube import DCloudSpawner

    return {cls.__name__: cls for cls in (
        JupyterHub, KubeSpawner, DCloudSpawner, GenericOAuthenticator,
    )}


def test_spawner_class_resolves_to_dcloud_spawner(hub_config):
    from jupyterhub.app import JupyterHub

    from dcloud_spawner.kube import DCloudSpawner

    # JupyterHub resolves the name through the `jupyterhub.spawners` entry points.
    assert JupyterHub(config=hub_config).spawner_class is DCloudSpawner


def test_authenticator_class_resolves_to_generic_oauth(hub_config):
    from jupyterhub.app import JupyterHub
    from oauthenticator.generic import GenericOAuthenticator

    assert JupyterHub(config=hub_config).authenticator_class is GenericOAuthenticator


def test_every_configured_trait_exists(hub_config):
    classes = configurable_classes()
    unknown = []
    for section in hub_config:
        assert section in classes, f"no class known for config section {section}"
        traits = classes[section].class_trait_names(config=True)
        unknown += [f"{section}.{name}" for name in hub_config[section] if name not in traits]
    assert unknown == [], "these are not configurable traits (misspelt?)"


def test_oidc_login_maps_groups(hub_config):
    oauth = hub_config.GenericOAuthenticator
    assert oauth.manage_groups is True
    assert oauth.auth_state_groups_key == "oauth_user.groups"
    assert "groups" in oauth.scope
    assert "client_secret" not in oauth, "the secret belongs in the dcloud-oidc Secret"


def test_every_catalog_group_may_log_in(hub_config):
    catalog_groups = load_yaml(EXAMPLE_CATALOG)["policies"]["groups"]
    missing = set(catalog_groups) - set(hub_config.GenericOAuthenticator.allowed_groups)
    assert missing == set(), "members of these catalog groups could not log in"


def test_oauth_callback_is_on_the_https_host(values, hub_config):
    callback = urlsplit(hub_config.GenericOAuthenticator.oauth_callback_url)
    assert values["proxy"]["https"]["enabled"] is True
    assert callback.scheme == "https"
    assert callback.hostname in values["proxy"]["https"]["hosts"]
    base_url = values["hub"]["baseUrl"].rstrip("/")
    assert callback.path == f"{base_url}/hub/oauth_callback"


def test_catalog_path_is_where_the_catalog_is_mounted(values, hub_config):
    mount = values["hub"]["extraFiles"][CATALOG_FILE]["mountPath"]
    assert hub_config.DCloudSpawner.catalog_path == mount


@pytest.mark.parametrize("which", ["inline", "example"])
def test_mounted_catalog_loads(which, values, deployed_values, tmp_path):
    from dcloud_spawner.core.catalog import Catalog

    chosen = values if which == "inline" else deployed_values
    text = chosen["hub"]["extraFiles"][CATALOG_FILE]["stringData"]
    mounted = tmp_path / "catalog.yaml"
    mounted.write_text(text)
    catalog = Catalog.from_yaml(mounted.read_text())
    assert catalog.environments, "a catalog offers at least one environment"


def test_broken_catalog_in_values_is_refused(values):
    from dcloud_spawner.core.catalog import Catalog, CatalogError

    text = values["hub"]["extraFiles"][CATALOG_FILE]["stringData"]
    with pytest.raises(CatalogError):
        Catalog.from_yaml(text.replace("environments:", "environment:", 1))


# --- Network, RBAC, and the user pod --------------------------------------------------------


def test_private_index_egress_is_narrow(values):
    rules = values["singleuser"]["networkPolicy"]["egress"]
    assert rules, "a private package index needs an explicit egress rule"
    for rule in rules:
        assert {p["port"] for p in rule["ports"]} == {443}
        for peer in rule["to"]:
            network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
            assert network.is_private
            # A whole private range would also open the Kubernetes API service.
            assert network.num_addresses <= 256, f"{network} is wider than one index needs"


def test_rbac_binds_exactly_node_reads_to_the_hub(values):
    role, binding = list(yaml.safe_load_all(RBAC.read_text()))
    assert role["kind"] == "ClusterRole"
    assert role["metadata"] == {"name": "dcloud-hub-nodes"}
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list", "watch"]}
    ]
    assert binding["kind"] == "ClusterRoleBinding"
    assert binding["metadata"] == {"name": "dcloud-hub-nodes"}
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "dcloud-hub-nodes",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hub", "namespace": "jhub"}]
    # The chart names the hub's ServiceAccount `hub` only with these values.
    assert values["fullnameOverride"] == ""
    assert values["hub"]["serviceAccount"]["create"] is True
    assert values["hub"]["serviceAccount"].get("name") is None


RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
    "persistentVolumeClaim", "projected", "secret",
}


def restricted_violations(pod: dict) -> list[str]:
    """Where ``pod`` breaks the Pod Security Standard "restricted" (Kubernetes 1.28+)."""
    spec = pod["spec"]
    pod_sc = spec.get("securityContext") or {}
    problems = [f"spec.{f}" for f in ("hostNetwork", "hostPID", "hostIPC") if spec.get(f)]
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: type {sorted(kinds)}")
    containers = (spec.get("initContainers") or []) + spec["containers"]
    for container in containers:
        name = container["name"]
        sc = container.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile {seccomp}")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{name}: capabilities not dropped")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities added {capabilities['add']}")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            problems.append(f"{name}: hostPort")
    return problems


async def render_user_pod(values: dict, tmp_path: Path) -> dict:
    """The pod the deployed hub would create for a GPU server with every extra chosen."""
    from dcloud_spawner.cli import render_objects

    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(values["hub"]["extraFiles"][CATALOG_FILE]["stringData"])
    options = {
        "environment": "pytorch",
        "gpu": {"type": "a100", "count": 1},
        "datasets": ["coco", "imagenet"],
        "packages": ["timm>=1.0"],
    }
    config = chart_hub_config(values)
    objects = await render_objects(str(catalog), "alice", ["researchers"], options, config)
    return objects[0]


async def test_user_pod_meets_pod_security_restricted(deployed_values, tmp_path,
                                                      offline_kubeconfig):
    pod = await render_user_pod(deployed_values, tmp_path)
    assert pod["spec"]["initContainers"], "the packages init container should be checked too"
    assert restricted_violations(pod) == []


async def test_chart_metadata_blocker_would_break_restricted(deployed_values, tmp_path,
                                                             offline_kubeconfig):
    # Why values.yaml turns singleuser.cloudMetadata.blockWithIptables off.
    blocking = copy.deepcopy(deployed_values)
    blocking["singleuser"]["cloudMetadata"]["blockWithIptables"] = True
    pod = await render_user_pod(blocking, tmp_path)
    assert "block-cloud-metadata: privileged" in restricted_violations(pod)


@pytest.mark.parametrize("doc", ["docs/deploy.md", "helm-values/README.md", "helm-values/values.yaml"])
def test_documented_install_command_matches_these_values(doc):
    text = " ".join((ROOT / doc).read_text().replace("\\\n", " ").replace("#", " ").split())
    assert f"jupyterhub/jupyterhub --version {CHART.name.removeprefix('z2jh-')}" in text
    assert "--values helm-values/values.yaml" in text
    assert f"--set-file hub.extraFiles.{CATALOG_FILE}.stringData=hub_config/catalog.yaml" in text


# --- Idle culling: DCloud's culler as a hub-managed service -------------------------------

CULLER = "dcloud-idle-culler"  # the key of the service, its role and its config file
CULLER_CONFIG = ROOT / "hub_config" / "idle_culler_config.py"


def chart_services_and_roles(values: dict) -> tuple[list[dict], list[dict]]:
    """``c.JupyterHub.services`` and ``load_roles`` as the chart builds them from
    ``hub.services`` and ``hub.loadRoles`` (each key becomes the entry's name; the chart
    adds a generated api_token to each service), its own culler first if enabled."""
    services, roles = [], []
    if values["cull"]["enabled"]:
        services.append({"name": "jupyterhub-idle-culler", "command": ["python3", "-m", "jupyterhub_idle_culler"]})
        roles.append({"name": "jupyterhub-idle-culler", "services": ["jupyterhub-idle-culler"]})
    for key, service in (value_at(values, "hub.services") or {}).items():
        services.append({"name": key, **copy.deepcopy(service), "api_token": "generated-by-the-chart"})
    for key, role in (value_at(values, "hub.loadRoles") or {}).items():
        roles.append({"name": key, **copy.deepcopy(role)})
    return services, roles


def test_only_dcloud_s_culler_runs(values):
    # The chart's culler cannot take DCloud's arbiter; two cullers would race anyway.
    assert values["cull"]["enabled"] is False
    services, _ = chart_services_and_roles(values)
    culler_commands = [s for s in services if "jupyterhub_idle_culler" in s.get("command", [])]
    assert [s["name"] for s in culler_commands] == [CULLER]


def test_culler_service_runs_the_mounted_config_against_the_local_hub(values):
    from jupyterhub.utils import url_path_join

    service = values["hub"]["services"][CULLER]
    command = service["command"]
    assert command[:3] == ["python3", "-m", "jupyterhub_idle_culler"]
    assert f"--config={values['hub']['extraFiles'][CULLER]['mountPath']}" in command
    # The hub's API on localhost, as the chart's own culler reaches it, under hub.baseUrl.
    api = "http://localhost:8081" + url_path_join(values["hub"]["baseUrl"], "hub/api")
    assert f"--url={api}" in command


def test_culler_service_fields_are_jupyterhub_service_traits(values):
    from jupyterhub.services.service import Service

    services, _ = chart_services_and_roles(values)
    (service,) = [s for s in services if s["name"] == CULLER]
    assert set(service) <= set(Service.class_trait_names())
    assert all(isinstance(v, str) for v in service["environment"].values()), "environment values are strings"


def test_culler_role_grants_exactly_the_culler_scopes(values):
    from jupyterhub.scopes import scope_definitions

    from dcloud_spawner.hub.culler import CULLER_SCOPES

    _, roles = chart_services_and_roles(values)
    (role,) = [r for r in roles if r["name"] == CULLER]
    assert role["scopes"] == list(CULLER_SCOPES)
    assert set(role["scopes"]) <= set(scope_definitions)
    assert role["services"] == [CULLER]


def test_mounted_culler_config_is_the_repository_file(values):
    assert values["hub"]["extraFiles"][CULLER]["stringData"] == CULLER_CONFIG.read_text()


def test_mounted_culler_config_loads_with_the_service_environment(values, tmp_path, monkeypatch):
    from jupyterhub_idle_culler import IdleCuller

    mounted = tmp_path / "idle_culler_config.py"
    mounted.write_text(values["hub"]["extraFiles"][CULLER]["stringData"])
    environment = values["hub"]["services"][CULLER]["environment"]
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    culler = IdleCuller()
    culler.load_config_file(str(mounted))
    assert culler.timeout == int(environment["DCLOUD_CULL_TIMEOUT"])
    assert culler.cull_arbiter_hook.gpu_timeout == int(environment["DCLOUD_CULL_GPU_TIMEOUT"])
    assert culler.cull_arbiter_hook.gpu_timeout < culler.timeout
    assert culler.cull_every == 300

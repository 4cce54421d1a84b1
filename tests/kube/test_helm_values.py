"""helm-values/: DCloud's values rendered by Helm with the Zero to JupyterHub 4.4.0 chart.

``helm template`` and ``helm lint --strict`` run on the chart (tests/support/helm.py says where it is
found) with ``helm-values/values.yaml`` and docs/deploy.md's ``--set-file`` of the catalog; the
tests look at the objects Helm renders, and run the chart's own ``jupyterhub_config.py`` in the
filesystem the hub container would see (tests/support/helm_hub.py) to read the hub's configuration.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.helm import (
    CATALOG_FILE,
    CHART_VERSION,
    EXAMPLE_CATALOG,
    RBAC,
    ROOT,
    find,
    helm,
    rbac_objects,
    require_helm_and_chart,
    template,
    value_args,
)
from tests.support.helm_hub import hub_environment, hub_filesystem, require_mount_namespaces

NAMESPACE = "dcloud-helm"
CULLER = "dcloud-idle-culler"  # the key of the service, its role and its config file
CULLER_CONFIG = ROOT / "hub_config" / "idle_culler_config.py"
OIDC_SECRET = {"dcloud-oidc": {"client-secret": "not-a-real-secret"}}


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """The objects of docs/deploy.md's install command."""
    return template(NAMESPACE, *value_args())


def secret_files(rendered) -> dict[str, str]:
    """The hub Secret's files (the values Helm rendered with are its ``values.yaml``)."""
    secret = find(rendered, "Secret", "hub")
    files = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    files.update(secret.get("stringData") or {})
    return files


def hub_container(rendered) -> dict[str, Any]:
    spec = find(rendered, "Deployment", "hub")["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == "hub")


# --- Helm: lint and render --------------------------------------------------------------------


def test_lint_strict_passes():
    _, chart = require_helm_and_chart()
    result = helm("lint", "--strict", str(chart), *value_args(), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_strict_catches_a_misspelt_key(tmp_path):
    _, chart = require_helm_and_chart()
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"hub": {"extraFiles": {CATALOG_FILE: {"mountpath": "/etc/x"}}}}))
    result = helm("lint", "--strict", str(chart), *value_args([typo]), check=False)
    assert result.returncode != 0
    assert "mountpath" in result.stdout + result.stderr


def test_the_deployed_catalog_is_in_the_hub_secret_and_mounted(rendered):
    files = secret_files(rendered)
    assert files[CATALOG_FILE] == EXAMPLE_CATALOG.read_text()
    mounts = {m["mountPath"]: m for m in hub_container(rendered)["volumeMounts"]}
    assert mounts["/etc/dcloud/catalog.yaml"]["subPath"] == CATALOG_FILE
    volume = next(v for v in find(rendered, "Deployment", "hub")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == mounts["/etc/dcloud/catalog.yaml"]["name"])  # fmt: skip
    assert volume["secret"]["secretName"] == "hub"


def test_without_set_file_the_inline_catalog_is_a_valid_catalog():
    from dcloud_spawner.core.catalog import Catalog

    files = secret_files(template(NAMESPACE, *value_args(catalog=None)))
    assert Catalog.from_yaml(files[CATALOG_FILE]).environments


def test_the_hub_upgrades_its_database(rendered):
    # The image's JupyterHub (6.1) is newer than the chart's (5.5): the schema must migrate.
    assert hub_container(rendered)["args"] == [
        "jupyterhub", "--config", "/usr/local/etc/jupyterhub/jupyterhub_config.py", "--upgrade-db",
    ]  # fmt: skip


def test_the_hub_restarts_when_its_secret_changes(tmp_path):
    other = tmp_path / "catalog.yaml"
    other.write_text(EXAMPLE_CATALOG.read_text().replace("display_name: PyTorch", "display_name: PyTorch 2"))
    assert other.read_text() != EXAMPLE_CATALOG.read_text()

    def checksum(catalog: Path) -> str:
        hub = find(template(NAMESPACE, *value_args(catalog=catalog)), "Deployment", "hub")
        return hub["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]

    assert checksum(EXAMPLE_CATALOG) != checksum(other)


def test_culler_config_is_the_repository_file_and_mounted(rendered):
    assert secret_files(rendered)[CULLER] == CULLER_CONFIG.read_text()
    mounts = {m["mountPath"]: m["subPath"] for m in hub_container(rendered)["volumeMounts"] if m.get("subPath")}
    assert mounts["/etc/dcloud/idle_culler_config.py"] == CULLER


def test_culler_has_a_generated_token(rendered):
    token = secret_files(rendered)[f"hub.services.{CULLER}.apiToken"]
    assert len(token) >= 32 and token.isalnum()


def test_chart_culler_is_off(rendered):
    # It cannot take DCloud's arbiter; two cullers would race anyway.
    assert yaml.safe_load(secret_files(rendered)["values.yaml"])["cull"]["enabled"] is False


def test_private_index_egress_is_narrow(rendered):
    policy = find(rendered, "NetworkPolicy", "singleuser")
    rules = [r for r in policy["spec"]["egress"] if any("ipBlock" in p for p in r.get("to", []))]
    private = [r for r in rules if any(ipaddress.ip_network(p["ipBlock"]["cidr"]).is_private
                                       for p in r["to"] if "ipBlock" in p)
               and {p["port"] for p in r.get("ports", [])} != {53}]  # the chart's DNS rule  # fmt: skip
    assert private, "a private package index needs an explicit egress rule"
    for rule in private:
        assert {p["port"] for p in rule["ports"]} == {443}
        for peer in rule["to"]:
            network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
            # A whole private range would also open the Kubernetes API service.
            assert network.num_addresses <= 256, f"{network} is wider than one index needs"
    # The chart's own rule still blocks the cloud metadata address for everything else.
    public = [r for r in rules if any(p["ipBlock"]["cidr"] == "0.0.0.0/0" for p in r["to"] if "ipBlock" in p)]
    assert public and all("169.254.169.254/32" in p["ipBlock"]["except"] for r in public for p in r["to"])


# --- Pod Security "restricted" on every pod the release runs -----------------------------------

RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip


def restricted_violations(pod_spec: dict) -> list[str]:
    """Where a pod spec breaks the Pod Security Standard "restricted" (Kubernetes 1.28+). The
    cluster tests have the API server judge the same objects."""
    pod_sc = pod_spec.get("securityContext") or {}
    problems = [f"spec.{f}" for f in ("hostNetwork", "hostPID", "hostIPC") if pod_spec.get(f)]
    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: type {sorted(kinds)}")
    for container in (pod_spec.get("initContainers") or []) + pod_spec["containers"]:
        name, sc = container["name"], container.get("securityContext") or {}
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
    return problems


def pod_templates(objects: list[dict]) -> dict[str, dict]:
    return {f"{o['kind']}/{o['metadata']['name']}": o["spec"]["template"]["spec"]
            for o in objects if o["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job")}  # fmt: skip


def test_every_pod_template_meets_restricted(rendered):
    templates = pod_templates(rendered)
    assert {"Deployment/hub", "Deployment/proxy", "DaemonSet/continuous-image-puller"} <= set(templates)
    violations = {name: restricted_violations(spec) for name, spec in templates.items()}
    assert {name: found for name, found in violations.items() if found} == {}


def test_restricted_check_catches_the_chart_s_metadata_blocker():
    # Why values.yaml turns singleuser.cloudMetadata.blockWithIptables off: the chart's
    # init container for it (in jupyterhub_config.py) is privileged.
    blocker = {"containers": [{"name": "block-cloud-metadata",
                               "securityContext": {"privileged": True, "runAsUser": 0}}]}  # fmt: skip
    assert "block-cloud-metadata: privileged" in restricted_violations(blocker)


# --- The image pullers pull the catalog's images ---------------------------------------------


def catalog_images(catalog: dict) -> set[str]:
    return {ref for env in catalog["environments"] for ref in env["image"].values() if ref}


def test_the_image_puller_pulls_every_catalog_image(rendered):
    puller = find(rendered, "DaemonSet", "continuous-image-puller")["spec"]["template"]["spec"]
    pulled = {c["image"] for c in puller["initContainers"]}
    catalog = yaml.safe_load(EXAMPLE_CATALOG.read_text())
    assert catalog_images(catalog) <= pulled, "add these to prePuller.extraImages"


def test_the_image_puller_runs_on_gpu_nodes(rendered):
    catalog = yaml.safe_load(EXAMPLE_CATALOG.read_text())
    puller = find(rendered, "DaemonSet", "continuous-image-puller")["spec"]["template"]["spec"]
    tolerated = puller.get("tolerations") or []

    def tolerates(taint: dict) -> bool:
        return any(t.get("key") == taint["key"] and t.get("effect") in (None, taint.get("effect"))
                   and (t.get("operator") == "Exists" or t.get("value") == taint.get("value"))
                   for t in tolerated)  # fmt: skip

    taints = [t for gpu in catalog["gpu_classes"] for t in gpu.get("tolerations") or []]
    assert taints and all(tolerates(t) for t in taints)


def test_no_hook_holds_an_upgrade(rendered):
    # Helm would wait for every node to pull multi-GB images before each upgrade.
    hooks = [o["metadata"]["name"] for o in rendered if "helm.sh/hook" in (o["metadata"].get("annotations") or {})]
    assert hooks == []


# --- The hub's configuration, as the chart's jupyterhub_config.py builds it ----------------

DUMP_CONFIG = """
import json
from traitlets.config.loader import PyFileConfigLoader
from jupyterhub.app import JupyterHub
config = PyFileConfigLoader("jupyterhub_config.py", path="/usr/local/etc/jupyterhub").load_config()
app = JupyterHub(config=config)
classes = {"spawner": [f"{k.__module__}.{k.__name__}" for k in app.spawner_class.__mro__],
           "authenticator": [f"{k.__module__}.{k.__name__}" for k in app.authenticator_class.__mro__]}
print("CONFIG=" + json.dumps({**config, "classes": classes}, default=repr))
"""


@pytest.fixture(scope="module")
def hub_config(rendered, tmp_path_factory) -> dict[str, Any]:
    """The traitlets config the chart's jupyterhub_config.py builds, run where the hub's
    mounted files are where the container has them."""
    require_mount_namespaces()
    root = tmp_path_factory.mktemp("hub-files")
    fs = hub_filesystem(rendered, root, NAMESPACE, OIDC_SECRET)
    cwd = root / "srv"
    cwd.mkdir()
    result = subprocess.run(fs.command([sys.executable, "-c", DUMP_CONFIG]), env=hub_environment(fs),
                            capture_output=True, text=True, cwd=cwd, timeout=120)  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("CONFIG=")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[0].removeprefix("CONFIG="))


def test_spawner_and_authenticator_resolve(hub_config):
    # As the hub resolves them: entry point names that dcloud_spawner registers.
    assert hub_config["classes"]["spawner"][0] == "dcloud_spawner.kube.spawner.DCloudSpawner"
    authenticator = hub_config["classes"]["authenticator"]
    assert authenticator[0] == "dcloud_spawner.hub.login.DCloudOAuthenticator"
    # so that the values' GenericOAuthenticator section configures it
    assert "oauthenticator.generic.GenericOAuthenticator" in authenticator


def test_the_tests_run_the_chart_s_config_with_the_image_s_pycurl():
    # The chart's jupyterhub_config.py selects tornado's curl client; the test extra installs
    # the pycurl that the hub image pins, so the tests run the chart's hub as the image does.
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    pinned = [line for line in (ROOT / "images" / "hub" / "constraints.txt").read_text().splitlines()
              if line.startswith("pycurl==")]  # fmt: skip
    test_extra = [Requirement(r) for r in requires("dcloud-spawner") or []
                  if Requirement(r).name == "pycurl" and 'extra == "test"' in r]  # fmt: skip
    assert len(pinned) == 1 and [str(r.specifier) for r in test_extra] == [pinned[0].removeprefix("pycurl")]


def test_every_configured_trait_exists(hub_config):
    from jupyterhub.app import JupyterHub
    from jupyterhub.crypto import CryptKeeper
    from jupyterhub.proxy import ConfigurableHTTPProxy
    from jupyterhub.spawner import Spawner
    from kubespawner import KubeSpawner
    from oauthenticator.generic import GenericOAuthenticator

    from dcloud_spawner.kube import DCloudSpawner

    classes = {cls.__name__: cls for cls in (JupyterHub, KubeSpawner, DCloudSpawner, GenericOAuthenticator,
                                             Spawner, ConfigurableHTTPProxy, CryptKeeper)}  # fmt: skip
    sections = {k: v for k, v in hub_config.items() if k != "classes"}
    unknown = [f"{section}.{name}" for section, traits in sections.items()
               for name in traits if name not in classes[section].class_trait_names(config=True)]  # fmt: skip
    assert unknown == [], "not configurable traits (misspelt?)"


def test_catalog_path_is_the_mounted_catalog(hub_config):
    assert hub_config["DCloudSpawner"]["catalog_path"] == "/etc/dcloud/catalog.yaml"


def test_oidc_login_maps_groups(hub_config):
    oauth = hub_config["GenericOAuthenticator"]
    assert oauth["manage_groups"] is True
    assert oauth["auth_state_groups_key"] == "oauth_user.groups"
    assert "groups" in oauth["scope"]
    assert "client_secret" not in oauth, "the secret belongs in the dcloud-oidc Secret"


def test_every_catalog_group_may_log_in(hub_config):
    # Users in no group too: the catalog's policies.everyone is for them.
    oauth = hub_config["GenericOAuthenticator"]
    groups = set(yaml.safe_load(EXAMPLE_CATALOG.read_text())["policies"]["groups"])
    assert oauth.get("allow_all") is True or groups <= set(oauth.get("allowed_groups", []))


def test_culler_service_gets_its_token_and_exactly_its_scopes(hub_config, rendered):
    from dcloud_spawner.hub.culler import CULLER_SCOPES

    (service,) = [s for s in hub_config["JupyterHub"]["services"] if s["name"] == CULLER]
    assert service["api_token"] == secret_files(rendered)[f"hub.services.{CULLER}.apiToken"]
    assert service["command"][:3] == ["python3", "-m", "jupyterhub_idle_culler"]
    assert "--config=/etc/dcloud/idle_culler_config.py" in service["command"]
    assert "--url=http://localhost:8081/hub/api" in service["command"]
    (role,) = [r for r in hub_config["JupyterHub"]["load_roles"] if r["name"] == CULLER]
    assert role["scopes"] == list(CULLER_SCOPES)
    assert role["services"] == [CULLER]


def test_admin_service_gets_its_token_its_scope_and_the_admins(hub_config, rendered):
    from dcloud_spawner.hub.service import ADMIN_SCOPE

    hub = hub_config["JupyterHub"]
    assert "extra_handlers" not in hub  # deprecated since JupyterHub 3.1
    (service,) = [s for s in hub["services"] if s["name"] == "dcloud"]
    assert service["api_token"] == secret_files(rendered)["hub.services.dcloud.apiToken"]
    assert service["url"] == "http://hub:10101"
    assert service["oauth_client_allowed_scopes"] == [ADMIN_SCOPE]
    assert ADMIN_SCOPE in hub["custom_scopes"]
    (role,) = [r for r in hub["load_roles"] if r["name"] == "dcloud-admin"]
    assert set(role["scopes"]) == {ADMIN_SCOPE, "access:services!service=dcloud"}
    assert role["groups"] == hub_config["GenericOAuthenticator"]["admin_groups"]


def test_the_proxy_reaches_the_admin_service_through_the_hub_service(rendered):
    ports = {p["name"]: p for p in find(rendered, "Service", "hub")["spec"]["ports"]}
    assert ports["dcloud"]["port"] == 10101 and ports["dcloud"]["targetPort"] == 10101
    ingress = find(rendered, "NetworkPolicy", "hub")["spec"]["ingress"]
    (rule,) = [r for r in ingress if {"port": 10101} in r.get("ports", [])]
    (source,) = rule["from"]
    proxy_labels = find(rendered, "Deployment", "proxy")["spec"]["template"]["metadata"]["labels"]
    assert source["podSelector"]["matchLabels"].items() <= proxy_labels.items()
    user_labels = {"app.kubernetes.io/component": "singleuser-server"}  # user pods reach it only via the proxy
    assert not source["podSelector"]["matchLabels"].items() <= user_labels.items()


def test_user_pods_get_no_privileged_init_container(hub_config):
    assert not hub_config.get("KubeSpawner", {}).get("init_containers")


def test_mounted_culler_config_loads_with_the_service_environment(hub_config, tmp_path, monkeypatch):
    from jupyterhub_idle_culler import IdleCuller

    (service,) = [s for s in hub_config["JupyterHub"]["services"] if s["name"] == CULLER]
    for name, value in service["environment"].items():
        monkeypatch.setenv(name, value)
    culler = IdleCuller()
    culler.load_config_file(str(CULLER_CONFIG))
    assert culler.timeout == int(service["environment"]["DCLOUD_CULL_TIMEOUT"])
    assert culler.cull_arbiter_hook.gpu_timeout == int(service["environment"]["DCLOUD_CULL_GPU_TIMEOUT"])
    assert culler.cull_arbiter_hook.gpu_timeout < culler.timeout


# --- Where the chart comes from on a machine without ../shared ------------------------------


def test_the_released_chart_is_pulled_from_a_chart_repository(tmp_path):
    """What .ci/setup does on a fresh machine (``python -m tests.support.helm pull``), against a chart
    repository served here from the chart's own package, then rendered like the others."""
    import http.server
    import threading
    from functools import partial

    from tests.support.helm import pull_release

    _, chart = require_helm_and_chart()
    repository = tmp_path / "repository"
    helm("package", str(chart), "--destination", str(repository))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(http.server.SimpleHTTPRequestHandler, directory=str(repository)))  # fmt: skip
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    helm("repo", "index", str(repository), "--url", url)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pulled = pull_release(tmp_path / "cache" / "jupyterhub", url)
    finally:
        server.shutdown()
    assert yaml.safe_load((pulled / "Chart.yaml").read_text())["version"] == CHART_VERSION
    out = helm("template", "dcloud", str(pulled), "--namespace", NAMESPACE, *value_args()).stdout
    names = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out) if d}
    assert names == {(d["kind"], d["metadata"]["name"]) for d in template(NAMESPACE, *value_args())}
    assert ("Deployment", "hub") in names


# --- rbac.yaml and the documented commands ---------------------------------------------------


def test_rbac_binds_node_and_pod_reads_to_the_release_s_hub():
    role, binding, home_role, home_binding = rbac_objects("team-a")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get", "list", "watch"]},
        # a home volume's use, from the kubelet's summary API: nodes/stats, never nodes/proxy
        {"apiGroups": [""], "resources": ["nodes/stats"], "verbs": ["get"]},
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hub", "namespace": "team-a"}]
    # growing home volumes: claims may be patched, in the release's namespace only
    assert (home_role["kind"], home_role["metadata"]["namespace"]) == ("Role", "team-a")
    assert home_role["rules"] == [{"apiGroups": [""], "resources": ["persistentvolumeclaims"],
                                   "verbs": ["get", "patch"]}]
    assert home_binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                       "name": home_role["metadata"]["name"]}
    assert home_binding["subjects"] == [{"kind": "ServiceAccount", "name": "hub", "namespace": "team-a"}]


def test_rbac_names_no_namespace_of_its_own():
    assert "${NAMESPACE}" in RBAC.read_text()
    assert "jhub" not in "".join(line for line in RBAC.read_text().splitlines() if not line.startswith("#"))


def test_rbac_binds_the_chart_s_service_account(rendered):
    # rbac.yaml's subject is this account: the chart names it `hub` as long as the values
    # set neither fullnameOverride nor hub.serviceAccount.name.
    assert find(rendered, "ServiceAccount", "hub")
    assert find(rendered, "Deployment", "hub")["spec"]["template"]["spec"]["serviceAccountName"] == "hub"


@pytest.mark.parametrize("doc", ["docs/deploy.md", "helm-values/README.md", "helm-values/values.yaml"])
def test_documented_install_command_matches_these_values(doc):
    text = " ".join((ROOT / doc).read_text().replace("\\\n", " ").replace("#", " ").split())
    assert f"jupyterhub/jupyterhub --version {CHART_VERSION}" in text
    assert "--values helm-values/values.yaml" in text
    assert f"--set-file hub.extraFiles.{CATALOG_FILE}.stringData=hub_config/catalog.yaml" in text

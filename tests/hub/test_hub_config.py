"""hub_config/jupyterhub_config.py loads into a JupyterHub config and selects DCloud."""

import runpy
from importlib.metadata import entry_points

import pytest
from traitlets.config import Config

from dcloud_spawner.core.catalog import Catalog
from tests.conftest import ROOT

CONFIG = ROOT / "hub_config" / "jupyterhub_config.py"


def load(monkeypatch, **env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    c = Config()
    runpy.run_path(str(CONFIG), init_globals={"get_config": lambda: c})
    return c


def spawner_class(name):
    return next(e for e in entry_points(group="jupyterhub.spawners") if e.name == name).load()


@pytest.mark.parametrize("backend, name, cls", [("kube", "dcloud", "DCloudSpawner"),
                                                ("local", "dcloud-local", "DCloudLocalSpawner")])
def test_backends(monkeypatch, backend, name, cls):
    c = load(monkeypatch, DCLOUD_BACKEND=backend)
    assert c.JupyterHub.spawner_class == name
    assert spawner_class(name).__name__ == cls
    Catalog.from_path(c[cls].catalog_path)


def test_oidc_groups(monkeypatch):
    from oauthenticator.generic import GenericOAuthenticator

    from dcloud_spawner.hub.login import DCloudOAuthenticator

    c = load(monkeypatch, DCLOUD_AUTH="oidc")
    assert c.JupyterHub.authenticator_class == "dcloud-oauth"
    (entry,) = [e for e in entry_points(group="jupyterhub.authenticators") if e.name == "dcloud-oauth"]
    assert entry.load() is DCloudOAuthenticator
    for trait in c.GenericOAuthenticator:
        assert GenericOAuthenticator.class_traits().get(trait) is not None, trait
    assert c.GenericOAuthenticator.manage_groups is True
    assert "groups" in c.GenericOAuthenticator.scope


def test_demo_groups_match_the_catalog(monkeypatch, catalog):
    c = load(monkeypatch)
    assert set(c.JupyterHub.load_groups) == set(catalog.policies.groups)


@pytest.mark.parametrize("auth, holders", [("shared-password", {"users": ["admin"], "groups": []}),
                                           ("oidc", {"users": [], "groups": ["dcloud-admins"]})])
def test_admin_pages_are_a_service_guarded_by_a_custom_scope(monkeypatch, auth, holders):
    from jupyterhub.app import JupyterHub

    from dcloud_spawner.hub.service import ADMIN_SCOPE

    hub = JupyterHub(config=load(monkeypatch, DCLOUD_AUTH=auth))
    assert not hub.extra_handlers  # deprecated since JupyterHub 3.1
    (service,) = [s for s in hub.services if s["name"] == "dcloud"]
    assert service["url"].startswith("http://127.0.0.1:") and service["api_token"]
    assert service["oauth_client_allowed_scopes"] == [ADMIN_SCOPE]
    assert service["display"] is True and service["oauth_no_confirm"] is True
    assert ADMIN_SCOPE in hub.custom_scopes
    (role,) = [r for r in hub.load_roles if r["name"] == "dcloud-admin"]
    assert set(role["scopes"]) == {ADMIN_SCOPE, "access:services!service=dcloud"}
    assert {"users": role["users"], "groups": role["groups"]} == holders
    if auth == "oidc":
        assert set(role["groups"]) == set(hub.config.GenericOAuthenticator.admin_groups)


def test_example_logs_in_with_shared_passwords(monkeypatch):
    c = load(monkeypatch, DCLOUD_PASSWORD="students-pw", DCLOUD_ADMIN_PASSWORD="a" * 32)
    assert c.JupyterHub.authenticator_class == "shared-password"
    assert "DummyAuthenticator" not in c
    assert c.SharedPasswordAuthenticator.user_password == "students-pw"
    assert c.SharedPasswordAuthenticator.admin_password == "a" * 32


def test_oidc_example_logs_in_as_the_helm_values_do(monkeypatch):
    """The example and helm-values/values.yaml configure the same login, but for addresses."""
    import yaml

    values = yaml.safe_load((ROOT / "helm-values" / "values.yaml").read_text())
    chart = values["hub"]["config"]["GenericOAuthenticator"]
    example = load(monkeypatch, DCLOUD_AUTH="oidc").GenericOAuthenticator
    same = ("scope", "username_claim", "manage_groups", "auth_state_groups_key", "allow_all")
    assert {k: example[k] for k in same} == {k: chart[k] for k in same}
    assert set(example.admin_groups) == set(chart["admin_groups"])
    authenticator = load(monkeypatch, DCLOUD_AUTH="oidc").JupyterHub.authenticator_class
    assert authenticator == values["hub"]["config"]["JupyterHub"]["authenticator_class"]

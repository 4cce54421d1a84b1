"""Faults the hub must survive without a restart (issue 11): a refused request after a stop,
an unreachable Kubernetes API during a refused start, a catalog edited into invalid YAML,
and errors of the allocations JSON. JupyterHub's calls are replayed in its own order."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from types import SimpleNamespace

import pytest
from jupyterhub.services.auth import HubOAuth
from kubespawner import KubeSpawner
from tornado import web
from traitlets.config import Config

from dcloud_spawner.core.catalog import CatalogError
from dcloud_spawner.hub.offline import OfflineUser, offline_hub
from dcloud_spawner.hub.service import ADMIN_SCOPE, AdminServer
from dcloud_spawner.hub.state import hub_state
from dcloud_spawner.kube import DCloudSpawner
from tests.conftest import EXAMPLE_CATALOG

pytestmark = pytest.mark.usefixtures("offline_kubeconfig")  # KubeSpawner's API: https://127.0.0.1:9

GOOD = {"environment": "tensorflow", "gpu": {"type": "a100", "count": 2}}
BAD = {"environment": "pytorch", "image": "evil"}
TENSORFLOW_SELECTED = 'value="tensorflow" data-gpu="yes"\n              selected'


@pytest.fixture(autouse=True)
def _own_reflectors(monkeypatch):
    """KubeSpawner keeps its pod reflectors on the class; a failed one left by another test
    would answer polls without asking the API."""
    monkeypatch.setattr(DCloudSpawner, "reflectors", {})


class OrmSpawner:
    """The columns of JupyterHub's orm.Spawner that outlive the Spawner objects."""

    def __init__(self) -> None:
        self.user_options: dict | None = None
        self.state: dict | None = None
        self.server = None
        self.name = ""


def spawner_from_db(orm: OrmSpawner, groups=("researchers",), catalog=EXAMPLE_CATALOG) -> DCloudSpawner:
    """A new Spawner object, built the way JupyterHub's User._new_spawner builds one."""
    cfg = Config()
    cfg.DCloudSpawner.catalog_path = str(catalog)
    cfg.DCloudSpawner.show_availability = False
    spawner = DCloudSpawner(user=OfflineUser("alice", groups), hub=offline_hub(), config=cfg,
                            orm_spawner=orm, user_options=orm.user_options or {})
    spawner.load_state(orm.state or {})
    return spawner


async def rest_start(spawner: DCloudSpawner, orm: OrmSpawner, options: dict) -> None:
    """User.spawn up to apply_user_options: store the request's options, clear the state, apply."""
    orm.user_options = options
    spawner.user_options = options
    spawner.clear_state()
    await spawner._run_apply_user_options(options)


async def hub_stop(spawner: DCloudSpawner, orm: OrmSpawner) -> None:
    """User.stop: poll, stop if running, then clear the state and store what is left of it."""
    if await spawner.poll() is None:
        await spawner.stop()
    spawner.clear_state()
    orm.state = spawner.get_state()


# -- item 6: the last valid options outlive the Spawner object -------------------------------


async def test_a_refused_request_after_a_stop_keeps_the_last_valid_options():
    orm = OrmSpawner()
    first = spawner_from_db(orm)
    await rest_start(first, orm, GOOD)
    await hub_stop(first, orm)

    second = spawner_from_db(orm)  # JupyterHub dropped the stopped server's object
    with pytest.raises(web.HTTPError) as err:
        await rest_start(second, orm, BAD)
    assert err.value.status_code == 400
    assert orm.user_options == second.user_options
    assert orm.user_options["environment"] == "tensorflow"
    assert TENSORFLOW_SELECTED in await second.get_options_form()
    assert TENSORFLOW_SELECTED in await spawner_from_db(orm).get_options_form()  # after a hub restart


def normal(options: dict) -> dict:
    """A student's options in the normal form validation gives them."""
    from dcloud_spawner.core.catalog import Catalog
    from dcloud_spawner.core.validation import validate
    from tests.conftest import EXAMPLE_CATALOG

    return validate(options, Catalog.from_path(EXAMPLE_CATALOG), ["students"]).user_options()


def test_a_real_hub_keeps_the_options_through_a_refused_request(tmp_path):
    from tests.support.hub import stop_demo_hub
    from tests.support.kube_hub import start_kube_hub

    cluster = SimpleNamespace(namespace="default", hub_kubeconfig=offline_kubeconfig_file(tmp_path))
    hub = start_kube_hub(tmp_path / "hub", cluster)

    def stored() -> dict:
        _, model = hub.api("GET", "/users/student?include_stopped_servers=1")
        return model["servers"][""]["user_options"]

    try:
        hub.api("POST", "/users/student/server", {"user_options": {"environment": "scipy", "cpu": 3}})
        deadline = time.monotonic() + 30  # the start fails (no cluster); the server is stopped
        while hub.api("GET", "/users/student")[1]["pending"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stored()["environment"] == "scipy"
        status, _ = hub.api("POST", "/users/student/server", {"user_options": BAD})  # a new Spawner object
        assert status == 400
        # as asked, or in the normal form the accepted start stored (which one the hub's database
        # holds depends on when the failed start's commit lands): the same choice either way
        assert normal(stored()) == normal({"environment": "scipy", "cpu": 3})
    finally:
        stop_demo_hub(hub)


async def test_the_local_backend_keeps_them_too():
    from dcloud_spawner.local import DCloudLocalSpawner

    def local_from_db(orm: OrmSpawner) -> DCloudLocalSpawner:
        cfg = Config()
        cfg.DCloudLocalSpawner.catalog_path = str(EXAMPLE_CATALOG)
        cfg.DCloudLocalSpawner.local_gpus = []
        spawner = DCloudLocalSpawner(user=OfflineUser("alice", ["students"]), hub=offline_hub(), config=cfg,
                                     orm_spawner=orm, user_options=orm.user_options or {})
        spawner.load_state(orm.state or {})
        return spawner

    orm = OrmSpawner()
    first = local_from_db(orm)
    await rest_start(first, orm, {"environment": "scipy", "cpu": 3})
    first.clear_state()
    orm.state = first.get_state()
    second = local_from_db(orm)
    with pytest.raises(web.HTTPError):
        await rest_start(second, orm, BAD)
    assert orm.user_options == {"environment": "scipy", "cpu": 3}  # as stored before the refused request
    assert re.search(r'value="scipy"[^>]*selected', await local_from_db(orm).get_options_form())


async def test_a_stopped_server_leaves_no_claim_in_its_stored_state():
    orm = OrmSpawner()
    running = spawner_from_db(orm)
    await rest_start(running, orm, GOOD)
    running.pod_id = "uid-1"  # as KubeSpawner's start sets it
    assert running.get_state()["dcloud_options"]["environment"] == "tensorflow"
    running.clear_state()  # the end of User.stop
    orm.state = running.get_state()
    assert "dcloud_options" not in orm.state
    hub_state().ledger.release("alice", "")
    spawner_from_db(orm)  # a stopped server's spawner built again (home page, hub restart)
    assert hub_state().ledger.claims == []


# -- item 9: a 400 stays a 400 while the Kubernetes API is unreachable ----------------------


async def test_invalid_options_are_cleaned_up_without_the_kubernetes_api():
    orm = OrmSpawner()
    spawner = spawner_from_db(orm)
    with pytest.raises(web.HTTPError) as err:
        await rest_start(spawner, orm, BAD)
    assert err.value.status_code == 400
    # JupyterHub's cleanup after the failed start (User.stop): nothing may raise or wait
    assert await asyncio.wait_for(spawner.poll(), 2) == 0
    await asyncio.wait_for(spawner.stop(), 2)


async def test_a_claim_made_before_a_failed_start_is_released_without_the_api():
    orm = OrmSpawner()
    spawner = spawner_from_db(orm)
    await rest_start(spawner, orm, GOOD)  # claimed; then e.g. the pre-spawn hook fails
    assert len(hub_state().ledger.claims) == 1
    assert await asyncio.wait_for(spawner.poll(), 2) == 0
    assert hub_state().ledger.claims == []


async def test_a_spawner_that_may_have_a_pod_still_asks_the_api(monkeypatch):
    asked = []

    async def kubespawner_poll(self):
        asked.append(self.pod_name)
        return None

    monkeypatch.setattr(KubeSpawner, "poll", kubespawner_poll)
    restarted = spawner_from_db(OrmSpawner())  # built from the database: its pod may be running
    assert await restarted.poll() is None and asked == ["jupyter-alice"]
    orm = OrmSpawner()
    starting = spawner_from_db(orm)
    await rest_start(starting, orm, GOOD)
    starting._dcloud_may_have_pod = True  # what start() sets before asking for the pod
    assert await starting.poll() is None and len(asked) == 2


def test_a_real_hub_answers_400_while_the_api_server_hangs(tmp_path):
    """JupyterHub's cleanup after the refused start used to wait on the API (a pod list that
    never answers), so the client got the proxy's 503 after 20 s, then "pending stop"."""
    import socket

    import yaml

    from tests.support.hub import stop_demo_hub
    from tests.support.kube_hub import start_kube_hub

    with socket.socket() as sink:  # accepts connections, never answers: an API server that hangs
        sink.bind(("127.0.0.1", 0))
        sink.listen(64)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "hanging",
            "clusters": [{"name": "hanging", "cluster": {"server": f"https://127.0.0.1:{sink.getsockname()[1]}"}}],
            "users": [{"name": "hanging", "user": {"token": "none"}}],
            "contexts": [{"name": "hanging", "context": {"cluster": "hanging", "user": "hanging"}}],
        }))
        cluster = SimpleNamespace(namespace="default", hub_kubeconfig=str(kubeconfig))
        hub = start_kube_hub(tmp_path / "hub", cluster)
        try:
            for _ in range(2):
                began = time.monotonic()
                status, body = hub.api("POST", "/users/student/server", {"user_options": BAD})
                assert status == 400, (status, str(body)[-300:])
                assert body["message"].startswith("Unknown field 'image'")
                assert time.monotonic() - began < 5
        finally:
            stop_demo_hub(hub)


# -- the catalog edited into invalid YAML while the hub runs ---------------------------------


def edit(path, text: str) -> None:
    """Write the catalog as an admin's editor would, with a newer modification time."""
    stamp = os.stat(path).st_mtime if path.exists() else 0
    path.write_text(text)
    os.utime(path, (stamp + 10, stamp + 10))


JULIA = """environments:
  - id: julia
    display_name: Julia
    description: Julia 1.11 and JupyterLab.
    image:
      cpu: quay.io/jupyter/julia-notebook:2025-07-07
"""


async def test_a_catalog_broken_while_the_hub_runs_keeps_the_last_valid_one(tmp_path, caplog):
    path = tmp_path / "catalog.yaml"
    good = EXAMPLE_CATALOG.read_text()
    edit(path, good)
    spawner = spawner_from_db(OrmSpawner(), catalog=path)
    assert 'value="tensorflow"' in await spawner.get_options_form()

    edit(path, good.replace("environments:\n", "environments:\n  - id: [unclosed\n", 1))
    with caplog.at_level(logging.WARNING):
        html = await spawner.get_options_form()
        assert 'value="tensorflow"' in html  # users are unaffected
        assert spawner.validate_options(GOOD).gpu.id == "a100"
        await spawner.get_options_form()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # once per change of the file, not per request
    assert str(path) in warnings[0] and "not valid YAML (line 6)" in warnings[0]  # where the parser stopped
    problem = hub_state().catalogs.error(str(path))
    assert problem is not None and "not valid YAML (line 6)" in problem

    edit(path, good.replace("environments:\n", JULIA, 1))  # fixed, with a new choice
    assert 'value="julia"' in await spawner.get_options_form()
    assert hub_state().catalogs.error(str(path)) is None


def test_a_real_hub_keeps_serving_the_last_valid_catalog(tmp_path):
    import urllib.request

    from tests.support.hub import stop_demo_hub
    from tests.support.kube_hub import start_kube_hub

    path = tmp_path / "catalog.yaml"
    edit(path, EXAMPLE_CATALOG.read_text())
    cluster = SimpleNamespace(namespace="default", hub_kubeconfig=offline_kubeconfig_file(tmp_path))
    hub = start_kube_hub(tmp_path / "hub", cluster, catalog=path)

    def admin_json() -> dict:
        request = urllib.request.Request(f"{hub.url}/services/dcloud/allocations.json",
                                         headers={"Authorization": f"token {hub.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    try:
        status, body = hub.api("POST", "/users/student/server", {"user_options": {"environment": "nope"}})
        assert status == 400 and "you can use: pytorch, tensorflow, scipy" in body["message"]
        edit(path, "environments: [unclosed\n")
        for _ in range(2):
            status, body = hub.api("POST", "/users/student/server", {"user_options": {"environment": "nope"}})
            assert status == 400 and "you can use: pytorch, tensorflow, scipy" in body["message"], body
        assert "not valid YAML (line 2)" in admin_json()["catalog_error"]
        log = (tmp_path / "hub" / "hub.log").read_text()
        assert log.count("is invalid; still using the last valid one") == 1, log[-3000:]
        edit(path, EXAMPLE_CATALOG.read_text().replace("environments:\n", JULIA, 1))
        status, body = hub.api("POST", "/users/student/server", {"user_options": {"environment": "nope"}})
        assert status == 400 and "julia" in body["message"], body
        assert admin_json()["catalog_error"] is None
    finally:
        stop_demo_hub(hub)


def offline_kubeconfig_file(folder) -> str:
    """A kubeconfig whose API server refuses connections (the tests here never need one)."""
    import yaml

    path = folder / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "offline",
        "clusters": [{"name": "offline", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "offline", "user": {"token": "none"}}],
        "contexts": [{"name": "offline", "context": {"cluster": "offline", "user": "offline"}}],
    }))
    return str(path)


async def test_a_catalog_never_valid_stays_an_error(tmp_path):
    path = tmp_path / "catalog.yaml"
    edit(path, "environments: [unclosed\n")
    spawner = spawner_from_db(OrmSpawner(), catalog=path)
    with pytest.raises(CatalogError):
        await spawner.get_options_form()


async def test_a_catalog_removed_mid_save_keeps_the_last_valid_one(tmp_path):
    path = tmp_path / "catalog.yaml"
    edit(path, EXAMPLE_CATALOG.read_text())
    spawner = spawner_from_db(OrmSpawner(), catalog=path)
    spawner.catalog  # noqa: B018 - loaded once
    path.unlink()
    assert spawner.catalog.environment("scipy") is not None
    assert "cannot read the catalog" in hub_state().catalogs.error(str(path))


# -- the allocations page and its JSON -------------------------------------------------------


class ScopedHubOAuth(HubOAuth):
    """The service's OAuth client, with the hub's answer about the requester given."""

    model: dict | None = None

    def get_user(self, handler, *, sync=True):
        async def user():
            return self.model

        return user()


class Answer:
    def __init__(self, status: int, headers, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


async def allocations(path: str, scopes: set[str] | None) -> Answer:
    """GET ``path`` from DCloud's service as a user holding ``scopes`` (None: no login)."""
    from tornado.httpclient import AsyncHTTPClient, HTTPClientError

    server = _service_server()
    server.hub_auth.model = None if scopes is None else {"name": "admin", "kind": "user", "scopes": sorted(scopes)}
    try:
        response = await AsyncHTTPClient().fetch(server.url + path, follow_redirects=False)
    except HTTPClientError as exc:
        response = exc.response
    return Answer(response.code, response.headers, response.body)


_server: list = []


def _service_server():
    if not _server:
        server = AdminServer("dcloud", {"name": "dcloud", "url": "http://127.0.0.1:0", "api_token": "t"})
        server.listen("http://127.0.0.1:0")
        server.hub_auth = ScopedHubOAuth(api_token="t", oauth_client_id="service-dcloud",
                                         base_url="/services/dcloud/", hub_prefix="/hub/",
                                         api_url="http://127.0.0.1:9/hub/api")
        _server.append(server)
    return _server[0]


async def test_allocations_json_answers_errors_as_json():
    answer = await allocations("/services/dcloud/allocations.json", None)
    assert answer.status == 403 and answer.headers["Content-Type"] == "application/json"
    assert json.loads(answer.body) == {"status": 403, "message": "Missing or invalid credentials."}

    # hub admins hold read:servers, but the page asks for its own scope
    answer = await allocations("/services/dcloud/allocations.json", {"read:servers", "admin:users"})
    assert answer.status == 403
    assert json.loads(answer.body) == {
        "status": 403, "message": "The user admin does not hold the scope custom:dcloud-admin:read."}

    answer = await allocations("/services/dcloud/allocations.json", {ADMIN_SCOPE})
    assert answer.status == 503
    assert json.loads(answer.body) == {"status": 503, "message": "No DCloud spawner has started in this hub yet."}

    # a browser: the hub's OAuth (and its login page) first, then back here
    answer = await allocations("/services/dcloud/allocations", None)
    assert answer.status == 302
    assert answer.headers["Location"].startswith("/hub/api/oauth2/authorize?client_id=service-dcloud")
    assert "redirect_uri=%2Fservices%2Fdcloud%2Foauth_callback" in answer.headers["Location"]


async def test_allocations_say_what_is_wrong_with_the_catalog(tmp_path):
    path = tmp_path / "catalog.yaml"
    edit(path, EXAMPLE_CATALOG.read_text())
    spawner_from_db(OrmSpawner(), catalog=path).catalog  # noqa: B018 - a spawner has started
    answer = await allocations("/services/dcloud/allocations.json", {ADMIN_SCOPE})
    assert answer.status == 200 and json.loads(answer.body)["catalog_error"] is None

    edit(path, "environments: [unclosed\n")
    answer = await allocations("/services/dcloud/allocations.json", {ADMIN_SCOPE})
    assert answer.status == 200
    payload = json.loads(answer.body)
    assert "not valid YAML (line 2)" in payload["catalog_error"]
    assert set(payload["by_class"]) == {"a100", "t4", "a100-mig-1g"}  # the last valid catalog's
    answer = await allocations("/services/dcloud/allocations", {ADMIN_SCOPE})
    assert answer.status == 200
    assert b'id="dcloud-catalog-error"' in answer.body and b"last valid version" in answer.body
    assert str(path).encode() in answer.body

"""The home volume's size as the user meets it: a start that names no size keeps the volume as it
is, the form offers its size now, and the form renders whatever the API server or a kubelet
answers (or the hub's stored state holds)."""

from __future__ import annotations

import asyncio
import json
import re
from types import SimpleNamespace

import pytest
import yaml
from jupyterhub.spawner import SpawnException
from kubernetes_asyncio.client import ApiException

from dcloud_spawner.kube import volume_stats
from tests.conftest import EXAMPLE_CATALOG
from tests.kube.test_home_volume import GI, Claims, Kubelet

pytestmark = pytest.mark.usefixtures("offline_kubeconfig")


@pytest.fixture
def home_catalog(tmp_path):
    data = yaml.safe_load(EXAMPLE_CATALOG.read_text())
    data["storage"] = {"home": {"storage_class": "standard", "min": "1Gi", "default": "5Gi", "max": "50Gi"}}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture
def expandable(monkeypatch):
    from dcloud_spawner.kube import home_volume

    async def lookup(spawner, name):
        return True

    monkeypatch.setattr(home_volume, "_expandable", lookup)


def spawner_with(home_catalog, claims: Claims):
    from tests.support.spawners import make_spawner

    spawner = make_spawner(["students"], catalog_path=home_catalog, storage_pvc_ensure=True)
    spawner.api = claims
    return spawner


def home_field(html: str) -> str:
    found = re.search(r'name="home"\s+value="([^"]*)"', html)
    assert found, "no home field"
    return found.group(1)


# -- no size named: the volume as it is --------------------------------------------------------------


@pytest.mark.usefixtures("expandable")
async def test_a_start_without_a_home_size_keeps_a_volume_grown_past_the_default(home_catalog):
    """The volume grew to 10Gi (the default is 5Gi): a start that names no size (REST, a stored
    request) starts with it as it is, where it was refused as a shrink."""
    spawner = spawner_with(home_catalog, Claims("10Gi"))
    await spawner.dcloud_apply_user_options(spawner, {"environment": "scipy"})
    assert spawner.dcloud_plan.home_bytes == 10 * GI and spawner.user_options["home"] == "10Gi"
    await spawner.load_user_options()
    assert [body for *_, body in spawner.api.patches if "spec" in body] == []  # nothing resized
    assert spawner.get_env()["DCLOUD_HOME_SIZE"] == "10Gi"


@pytest.mark.usefixtures("expandable")
async def test_a_named_smaller_home_size_is_still_refused_as_a_shrink(home_catalog):
    spawner = spawner_with(home_catalog, Claims("10Gi"))
    await spawner.dcloud_apply_user_options(spawner, {"environment": "scipy", "home": "5Gi"})
    with pytest.raises(SpawnException) as err:
        await spawner.load_user_options()
    assert err.value.jupyterhub_message == (
        "Home size 5Gi is smaller than your home volume, which is 10Gi and only grows; ask for 10Gi or more "
        "(up to 50Gi).")
    assert all("spec" not in body for *_, body in spawner.api.patches)


@pytest.mark.usefixtures("expandable")
async def test_a_start_without_a_home_size_takes_the_default_where_it_is_larger(home_catalog):
    spawner = spawner_with(home_catalog, Claims("3Gi"))
    await spawner.dcloud_apply_user_options(spawner, {"environment": "scipy"})
    assert spawner.dcloud_plan.home_bytes == 5 * GI
    await spawner.load_user_options()
    assert [body["spec"] for *_, body in spawner.api.patches] == [{"resources": {"requests": {"storage": "5Gi"}}}]


async def test_the_form_offers_the_home_volume_s_size_where_it_is_past_the_default(home_catalog):
    spawner = spawner_with(home_catalog, Claims("10Gi"))
    assert home_field(await spawner.get_options_form()) == "10Gi"
    spawner.api = Claims("3Gi")
    assert home_field(await spawner.get_options_form()) == "5Gi"  # the default, larger


# -- the form renders whatever it is answered -----------------------------------------------------


class Answering(Claims):
    def __init__(self, error: BaseException) -> None:
        super().__init__("6Gi")
        self.error = error

    async def read_namespaced_persistent_volume_claim(self, name, namespace, **kwargs):
        raise self.error


@pytest.mark.parametrize("error", [ApiException(status=403, reason="Forbidden"), ValueError("junk"),
                                   AttributeError("status"), RecursionError()])
async def test_the_form_renders_whatever_the_claim_s_read_raises(home_catalog, error):
    html = await spawner_with(home_catalog, Answering(error)).get_options_form()
    assert "1Gi to 50Gi" in html and "Your home volume is" not in html


async def test_the_form_renders_whatever_the_kubelet_sends(home_catalog, monkeypatch):
    spawner = spawner_with(home_catalog, Claims("6Gi"))
    pod = {"metadata": {"namespace": spawner.namespace, "name": spawner.pod_name},
           "spec": {"nodeName": "real-0", "volumes": [{"persistentVolumeClaim": {"claimName": spawner.pvc_name}}]},
           "status": {"phase": "Running"}}
    monkeypatch.setattr(type(spawner), "pod_reflector", property(lambda self: SimpleNamespace(pods={"x": pod})))

    class Deep(Kubelet):
        async def _get(self, url, headers, _request_timeout):
            return SimpleNamespace(data=b"[" * 100_000 + b"]" * 100_000)  # past Python's recursion limit

    kubelet, claim = Deep(), Claims("6Gi")
    spawner.api = SimpleNamespace(read_namespaced_persistent_volume_claim=claim.read_namespaced_persistent_volume_claim,
                                  read_node=kubelet.read_node, api_client=kubelet.api_client)
    html = await spawner.get_options_form()
    assert "Your home volume is 6Gi now; it only grows." in html


@pytest.mark.parametrize("node", [
    SimpleNamespace(status=None),  # a Node being registered
    SimpleNamespace(status=SimpleNamespace(addresses=None, daemon_endpoints=None)),
    SimpleNamespace(status=SimpleNamespace(addresses=[SimpleNamespace(type="InternalIP", address=None)],
                                           daemon_endpoints=SimpleNamespace(kubelet_endpoint=None))),
])
def test_a_node_without_an_address_has_no_kubelet_to_ask(node):
    assert volume_stats.kubelet_url(node) is None


def test_a_kubelet_port_that_is_no_port_is_the_default():
    node = SimpleNamespace(status=SimpleNamespace(
        addresses=[SimpleNamespace(type="InternalIP", address="10.0.0.5")],
        daemon_endpoints=SimpleNamespace(kubelet_endpoint=SimpleNamespace(port=0))))
    assert volume_stats.kubelet_url(node) == "https://10.0.0.5:10250/stats/summary"


# -- the kubelets are asked once per node at a time, and the cache is bounded ----------------------


class Slow(Kubelet):
    async def _get(self, url, headers, _request_timeout):
        await asyncio.sleep(0.1)
        return await super()._get(url, headers, _request_timeout)


async def test_readings_of_one_node_at_once_share_one_request():
    """Many forms at once, or a culler stopping many servers of one node (each stop reads afresh):
    the kubelet is asked once."""
    kubelet = Slow({"pods": [{"volume": [{"usedBytes": 3 * GI, "pvcRef": {"name": f"c{i}", "namespace": "n"}}
                                         for i in range(5)]}]})
    stats = volume_stats.KubeletStats()
    used = await asyncio.gather(*(stats.used(kubelet, "real-0", "n", f"c{i}", 2, max_age=0) for i in range(5)))
    assert used == [3 * GI] * 5
    assert kubelet.requests == ["node/real-0", ("https://10.0.0.5:50967/stats/summary", "Bearer hub-token")]


async def test_a_reader_that_stops_waiting_does_not_end_the_others_read():
    kubelet = Slow({"pods": [{"volume": [{"usedBytes": GI, "pvcRef": {"name": "c", "namespace": "n"}}]}]})
    stats = volume_stats.KubeletStats()
    impatient = asyncio.ensure_future(stats.used(kubelet, "real-0", "n", "c", 2))
    patient = asyncio.ensure_future(stats.used(kubelet, "real-0", "n", "c", 2))
    await asyncio.sleep(0.01)
    impatient.cancel()
    assert await patient == GI


async def test_old_readings_are_dropped(monkeypatch):
    monkeypatch.setattr(volume_stats, "CACHE_SECONDS", 0.05)
    kubelet = Kubelet({"pods": []})
    stats = volume_stats.KubeletStats()
    for node in ("gpu-1", "gpu-2", "gpu-3"):  # autoscaled nodes, come and gone
        await stats.used(kubelet, node, "n", "c", 2)
        await asyncio.sleep(0.06)
    await stats.used(kubelet, "real-0", "n", "c", 2)
    assert list(stats._read) == ["real-0"]


# -- the hub's stored state, read strictly -----------------------------------------------------------


@pytest.mark.parametrize("used", [[True, 1], [float("nan"), 1], [1, float("inf")], [-1, 1], [10**400, 1],
                                  ["1", 1], [1], None])
async def test_a_stored_home_use_that_is_no_amount_is_not_shown(home_catalog, used):
    spawner = spawner_with(home_catalog, Claims("6Gi"))
    spawner.load_state({"dcloud_home_used": used})
    assert spawner.dcloud_home_used is None
    assert "used when your server stopped" not in await spawner.get_options_form()
    spawner.load_state({"dcloud_home_used": [2 * GI, 1.5e9]})
    assert spawner.dcloud_home_used == [2.0 * GI, 1.5e9]
    assert json.dumps(spawner.get_state()["dcloud_home_used"]) == json.dumps([2.0 * GI, 1.5e9])

"""Every refusal leaves through one path: audited, counted by DCloud, labelled for JupyterHub.

The unit tests drive ``refuse()`` of both backends with every refusal DCloud makes; the hub
test drives a real JupyterHub (the demo, local backend) and reads its own
``server_spawn_duration_seconds{status="failure", reason}`` beside DCloud's metric.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
from jupyterhub.spawner import SpawnException
from traitlets.config import Config

from dcloud_spawner.core import refusals
from dcloud_spawner.core.errors import CapacityRefusal, QuotaExceeded, RequestError
from dcloud_spawner.core.validation import validate
from dcloud_spawner.hub.mixin import SpawnRefused
from dcloud_spawner.hub.offline import OfflineUser, offline_hub
from dcloud_spawner.hub.state import hub_state
from dcloud_spawner.local import DCloudLocalSpawner
from tests.conftest import EXAMPLE_CATALOG
from tests.support.hub import start_demo_hub, stop_demo_hub
from tests.support.spawners import make_spawner


def every_refusal(catalog):
    """One of each refusal DCloud makes, by the function or class that makes it."""
    gpu_plan = validate({"gpu": {"type": "t4", "count": 1}, "wait": False}, catalog, ["students"])
    return {
        "options_not_applied": refusals.options_not_applied("project must be one of p1, p2"),
        "configuration": refusals.configuration("uid 0 and runAsNonRoot contradict each other."),
        "cluster_unreachable": refusals.cluster_unreachable(),
        "queue_unavailable": refusals.queue_unavailable(),
        "namespace_quota": refusals.namespace_quota("gpu-backstop", [("nvidia.com/gpu", "1", "4", "4")]),
        "unschedulable": refusals.unschedulable(gpu_plan, {"nvidia.com/gpu"}, False, "0/3 nodes are available"),
        "too_many_waiting": refusals.too_many_waiting(1, 1),
        "queue_timeout": refusals.queue_timeout(gpu_plan, 1800, 3),
        "queue_full": refusals.queue_full(gpu_plan, "group 'students'", "", 1800),
        "packages_failed": refusals.packages_failed(gpu_plan.install_failure("ERROR: no such thing")),
        "packages_too_slow": refusals.packages_too_slow(1.5),
        "packages_too_big": refusals.packages_too_big("1 MiB"),
        "dataset_folders_taken": refusals.dataset_folders_taken(["datasets", ".dcloud-datasets"]),
        "dataset_folder_changed": refusals.dataset_folder_changed(),
        "home_only_grows": refusals.home_only_grows(4 * 1024**3, 10 * 1024**3, 50 * 1024**3),
        "home_cannot_grow": refusals.home_cannot_grow(5 * 1024**3, "fixed"),
        "group_home_quota": refusals.group_home_quota("students", 18 * 1024**3, 20 * 1024**3, 5 * 1024**3, 0),
        "storage_class_missing": refusals.storage_class_missing("scratch", "fast"),
        "volume_pending": refusals.volume_pending("home", None, 120),
        "home_not_bound": refusals.home_not_bound(8 * 1024**3, 5 * 1024**3),
        "volume_api_error": refusals.volume_api_error("home", "reading your home volume", "HTTP 403 (Forbidden)"),
        "validation": RequestError("gpu.type", "GPU class 'a100' is not available to you; you can use: t4."),
        "quota": QuotaExceeded("Quota of group 'students' reached."),
        "short_of_gpus": CapacityRefusal.short_of_gpus("NVIDIA T4 16GB", 2, 1, where="node"),
        "gpu_unavailable": CapacityRefusal.short_of_gpus("NVIDIA T4 16GB", 1, 2, "0 of 2 free",
                                                          reason="gpu_unavailable"),
    }


def test_every_refusal_function_is_in_the_list(catalog):
    made = {name for name, value in vars(refusals).items()
            if inspect.isfunction(value) and value.__module__ == refusals.__name__ and not name.startswith("_")}
    assert made <= set(every_refusal(catalog))


def local_spawner() -> DCloudLocalSpawner:
    cfg = Config()
    cfg.DCloudLocalSpawner.catalog_path = str(EXAMPLE_CATALOG)
    return DCloudLocalSpawner(user=OfflineUser("auditee", ["students"]), hub=offline_hub(), config=cfg)


def refused_count(reason: str) -> float:
    return hub_state().metrics.spawns_refused.labels(reason=reason)._value.get()


@pytest.mark.parametrize("backend", ["kube", "local"])
async def test_every_refusal_is_audited_counted_and_labelled_for_jupyterhub(backend, catalog, capfd,
                                                                     offline_kubeconfig):
    spawner = make_spawner(["students"], name="auditee") if backend == "kube" else local_spawner()
    spawner.user_options = {"gpu": {"type": "t4"}}
    for name, refusal in every_refusal(catalog).items():
        before = refused_count(refusal.reason)
        with pytest.raises(SpawnRefused) as raised:
            spawner.refuse(refusal)
        # JupyterHub's own exception: User.spawn keeps its reason (a bare HTTPError's becomes
        # "error"), and spawn_single_user labels server_spawn_duration_seconds with it
        assert isinstance(raised.value, SpawnException), name
        assert (raised.value.status_code, raised.value.reason) == (400, refusal.reason), name
        assert raised.value.jupyterhub_message == refusal.sentence, name
        assert refused_count(refusal.reason) == before + 1, name
        lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
        record = json.loads(lines[-1])
        assert (record["event"], record["reason"], record["user"]) == ("refused", refusal.sentence, "auditee"), name
        assert record["requested"] == {"gpu": {"type": "t4"}}, name


async def test_a_refused_form_is_audited_and_counted_and_comes_back_as_the_form(offline_kubeconfig, capfd):
    spawner = make_spawner(["students"], name="auditee")
    before = refused_count("validation")
    with pytest.raises(RequestError):  # JupyterHub shows the form again with its sentence
        spawner.run_options_from_form({"environment": ["pytorch"], "gpu_type": ["a100"], "gpu_count": ["1"]})
    assert refused_count("validation") == before + 1
    assert '"event": "refused"' in capfd.readouterr().err


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    found = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_real_hub_labels_its_spawn_failures_with_dcloud_s_reasons(tmp_path: Path):
    hub = start_demo_hub(tmp_path / "demo", simulate_gpus="Tesla T4")
    try:
        asks = {
            "validation": ("student", {"gpu": {"type": "a100"}},
                           "GPU class 'a100' is not available to you; you can use: t4."),
            "capacity": ("researcher", {"environment": "pytorch", "gpu": {"type": "t4", "count": 2}},
                         "This machine has only 1 NVIDIA T4 16GB GPU; ask for at most 1."),
        }
        for reason, (user, options, sentence) in asks.items():
            status, body = hub.api("POST", f"/users/{user}/servers/{reason}", {"user_options": options})
            assert (status, body["message"]) == (400, sentence)
        status, created = hub.api("POST", "/users/admin/tokens", {"note": "metrics", "expires_in": 300})
        assert status == 201, created
        status, raw = hub.get("/hub/metrics", created["token"])
        assert status == 200
        text = raw.decode()
        audit = [json.loads(line) for line in (hub.state / "hub.log").read_text().splitlines()
                 if line.startswith('{"event": "refused"')]
        for reason, (_, _, sentence) in asks.items():
            assert metric(text, "jupyterhub_server_spawn_duration_seconds_count",
                          reason=reason, status="failure") == 1.0, reason
            assert metric(text, "dcloud_spawns_refused_total", reason=reason) == 1.0, reason
            assert sentence in [line["reason"] for line in audit], reason
        assert metric(text, "jupyterhub_server_spawn_duration_seconds_count", reason="error", status="failure") == 0
    finally:
        stop_demo_hub(hub)


async def test_package_install_args_is_one_setting_for_both_backends(offline_kubeconfig):
    from tests.support.spawners import pod_for

    args = ["--trusted-host", "pypi.internal"]
    pod = await pod_for({"packages": ["timm"]}, package_install_args=args)
    (installer,) = pod["spec"]["initContainers"]
    assert installer["command"][-4:] == [*args, "--", "timm"]
    kube = make_spawner(package_install_args=args)
    cfg = Config()
    cfg.DCloudLocalSpawner.catalog_path = str(EXAMPLE_CATALOG)
    cfg.DCloudLocalSpawner.package_install_args = args
    local = DCloudLocalSpawner(user=OfflineUser("guest", []), hub=offline_hub(), config=cfg)
    assert kube.package_install_args == local.package_install_args == args
    assert type(kube).class_traits()["package_install_args"] is type(local).class_traits()["package_install_args"]

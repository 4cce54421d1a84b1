"""KubeSpawner 7.1.0 keeps a reflector whose first list was cut short; DCloud drops it.

The first test pins the upstream defect: it passes while plain KubeSpawner still has it and
fails the day upstream fixes it, which is the day to delete ``kube/reflector_compat.py``
(and this first test). Write-up for upstream: docs/kubespawner-reflector-defect.md.
"""

from __future__ import annotations

import asyncio

import pytest
from kubespawner import KubeSpawner
from kubespawner.reflector import ResourceReflector
from traitlets.config import Config

from dcloud_spawner.hub.offline import OfflineUser, offline_hub
from dcloud_spawner.kube import DCloudSpawner
from tests.support.spawners import make_spawner

pytestmark = pytest.mark.usefixtures("offline_kubeconfig")


def stand_in_reflector(kind: str) -> tuple[type[ResourceReflector], asyncio.Event]:
    """A reflector whose first list hangs (the API server never answers) until ``hang`` is
    cleared; and the event set when a first list begins."""
    lists_began = asyncio.Event()

    class Reflector(ResourceReflector):
        list_method_name = "list_namespaced_pod"
        hang = True

        async def _list_and_update(self, resource_version=None):
            lists_began.set()
            if type(self).hang:
                await asyncio.sleep(3600)
            self.resources = {}
            self.first_load_future.set_result(None)
            return "1"

        async def _watch_and_update(self):
            await asyncio.sleep(3600)

    Reflector.kind = kind
    return Reflector, lists_began


async def cut_short(spawner: KubeSpawner, kind: str, reflector: type, lists_began: asyncio.Event) -> None:
    """Start a reflector and cancel the start mid-list, as KubeSpawner's start does to the pods
    reflector when the events reflector fails first (the API server is down)."""
    started = asyncio.ensure_future(spawner._start_reflector(kind, reflector))
    await lists_began.wait()
    started.cancel()
    await asyncio.wait([started])
    assert started.cancelled()


async def test_upstream_kubespawner_still_keeps_a_half_started_reflector():
    """Fails when KubeSpawner no longer keeps it: then delete kube/reflector_compat.py."""
    spawner = KubeSpawner(user=OfflineUser("alice"), hub=offline_hub(), config=Config())
    kind = "upstream-stand-ins"
    Reflector, lists_began = stand_in_reflector(kind)
    key = spawner._get_reflector_key(kind)
    try:
        await cut_short(spawner, kind, Reflector, lists_began)
        kept = KubeSpawner.reflectors.get(key)
        assert kept is not None and not kept.first_load_future.done()  # registered, never loaded
        Reflector.hang = False  # the API server is back: a later call still waits on the kept one
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(spawner._start_reflector(kind, Reflector), 1)
        assert KubeSpawner.reflectors.get(key) is kept
    finally:
        left = KubeSpawner.reflectors.pop(key, None)
        if getattr(left, "watch_task", None) is not None:
            left.watch_task.cancel()


async def test_a_reflector_whose_first_list_was_cut_short_is_not_waited_for_again():
    """With the API server down, KubeSpawner cancels the pods reflector's start when the events
    reflector fails first. Kept, that half-started reflector made every later start and stop of
    the namespace wait for a first list that never comes (a refused spawn's REST call hung)."""
    spawner = make_spawner()
    Reflector, lists_began = stand_in_reflector("stand-ins")
    await cut_short(spawner, "stand-ins", Reflector, lists_began)
    Reflector.hang = False
    started = await asyncio.wait_for(spawner._start_reflector("stand-ins", Reflector), 5)
    assert started.first_load_future.done()
    started.watch_task.cancel()
    DCloudSpawner.reflectors.pop(spawner._get_reflector_key("stand-ins"), None)

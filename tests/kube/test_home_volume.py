"""Growing the home volume before the pod: grow only, never shrink, never where the class
cannot expand. The Kubernetes API is stood in for here (an unbound claim cannot be resized,
and the test cluster has no storage provisioner yet: see the README)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from kubernetes_asyncio.client import ApiException

from dcloud_spawner.core.errors import Refusal
from dcloud_spawner.kube import home_volume

GI = 1024**3


class Claims:
    """The two calls home_volume makes on KubeSpawner's client, on one claim (or none)."""

    def __init__(self, size: str | None, storage_class: str | None = "standard") -> None:
        self.size, self.storage_class, self.patches = size, storage_class, []

    async def read_namespaced_persistent_volume_claim(self, name, namespace):
        if self.size is None:
            raise ApiException(status=404)
        spec = SimpleNamespace(resources=SimpleNamespace(requests={"storage": self.size}),
                               storage_class_name=self.storage_class)
        return SimpleNamespace(spec=spec)

    async def patch_namespaced_persistent_volume_claim(self, name, namespace, body):
        self.patches.append((name, namespace, body))


def spawner_on(claims: Claims, ensure: bool = True):
    return SimpleNamespace(api=claims, storage_pvc_ensure=ensure, pvc_name="claim-alice", namespace="dcloud")


def plan(home: int | None):
    return SimpleNamespace(home_bytes=home)


@pytest.fixture
def expandable(monkeypatch):
    classes = {"standard": True, "fixed": False}

    async def lookup(spawner, name):
        return classes.get(name, False)

    monkeypatch.setattr(home_volume, "_expandable", lookup)


@pytest.mark.usefixtures("expandable")
async def test_a_larger_size_patches_the_claim():
    claims = Claims("5Gi")
    said = await home_volume.grow(spawner_on(claims), plan(8 * GI), 50 * GI)
    assert said == "Growing your home volume from 5Gi to 8Gi"
    assert claims.patches == [("claim-alice", "dcloud", {"spec": {"resources": {"requests": {"storage": "8Gi"}}}})]


@pytest.mark.usefixtures("expandable")
async def test_the_same_size_or_no_claim_yet_changes_nothing():
    for claims in (Claims("8Gi"), Claims(None)):
        assert await home_volume.grow(spawner_on(claims), plan(8 * GI), 50 * GI) is None
        assert claims.patches == []
    assert await home_volume.grow(spawner_on(Claims("5Gi"), ensure=False), plan(8 * GI), None) is None


@pytest.mark.usefixtures("expandable")
async def test_a_smaller_size_is_refused_and_nothing_changes():
    claims = Claims("10Gi")
    with pytest.raises(Refusal) as err:
        await home_volume.grow(spawner_on(claims), plan(4 * GI), 50 * GI)
    assert err.value.field == "home" and err.value.sentence == (
        "Home size 4Gi is smaller than your home volume, which is 10Gi and only grows; ask for 10Gi or more "
        "(up to 50Gi).")
    assert claims.patches == []


@pytest.mark.usefixtures("expandable")
async def test_a_class_that_cannot_expand_is_refused_and_nothing_changes():
    claims = Claims("5Gi", storage_class="fixed")
    with pytest.raises(Refusal) as err:
        await home_volume.grow(spawner_on(claims), plan(8 * GI), 50 * GI)
    assert err.value.sentence.startswith("Home size: your home volume is 5Gi and storage class 'fixed' cannot grow")
    assert claims.patches == []

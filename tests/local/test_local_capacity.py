"""The local backend's capacity refusals: the right reason, without starting a hub."""

from __future__ import annotations

import pytest
from traitlets.config import Config

from dcloud_spawner.core.errors import CapacityRefusal
from dcloud_spawner.hub.offline import OfflineUser, offline_hub
from dcloud_spawner.hub.state import reset_hub_state
from dcloud_spawner.local import DCloudLocalSpawner
from tests.conftest import EXAMPLE_CATALOG

T4 = "Tesla T4"


@pytest.fixture
def local_spawner():
    reset_hub_state()  # the machine (GPUs, ledger) is hub-wide: each test gets its own
    made = []

    def make(gpu_names, name="alice"):
        cfg = Config()
        cfg.DCloudLocalSpawner.catalog_path = str(EXAMPLE_CATALOG)
        cfg.DCloudLocalSpawner.local_gpus = [{"index": i, "name": n} for i, n in enumerate(gpu_names)]
        spawner = DCloudLocalSpawner(user=OfflineUser(name, ["researchers"]), hub=offline_hub(), config=cfg)
        made.append(spawner)
        return spawner

    yield make
    reset_hub_state()


def refusal(spawner, options) -> CapacityRefusal:
    plan = spawner.validate_options(options)
    with pytest.raises(CapacityRefusal) as err:
        spawner.check_capacity(plan)
    return err.value


def test_a_class_the_machine_does_not_have_is_not_try_again_later(local_spawner):
    spawner = local_spawner([T4])
    err = refusal(spawner, {"environment": "pytorch", "gpu": {"type": "a100", "count": 1}})
    assert err.sentence == ("This machine has no NVIDIA A100 80GB GPU; choose another GPU class, or none "
                            "for a CPU-only server.")
    assert err.field == "gpu.type" and "try again" not in err.sentence


def test_more_gpus_than_the_machine_has_says_how_many_there_are(local_spawner):
    spawner = local_spawner([T4, T4])
    err = refusal(spawner, {"environment": "pytorch", "gpu": {"type": "t4", "count": 3}})
    assert err.sentence == "This machine has only 2 NVIDIA T4 16GB GPUs; ask for at most 2."
    assert err.field == "gpu.count"


def test_gpus_held_by_others_are_a_reason_to_try_again(local_spawner):
    spawner = local_spawner([T4, T4])
    spawner.machine.ledger.reserve("bob/", spawner.machine.gpus_by_class(spawner.catalog)["t4"], 1)
    err = refusal(spawner, {"environment": "pytorch", "gpu": {"type": "t4", "count": 2}})
    assert err.sentence.startswith("This machine does not have 2 free NVIDIA T4 16GB GPUs right now (1 of 2 free)")
    assert "try again" in err.sentence

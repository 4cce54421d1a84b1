import asyncio
from types import SimpleNamespace

import pytest

from dcloud_spawner.core import quotas as quota
from dcloud_spawner.core.validation import validate


def claim(catalog, user, groups, options, server=""):
    return quota.Claim.of(user, server, groups, validate(options, catalog, groups))


async def test_user_totals_across_servers(catalog):
    ledger = quota.Ledger()
    ledger.claim(catalog, claim(catalog, "sam", ["students"], {"gpu": {"type": "t4"}, "cpu": 4}, "a"))
    with pytest.raises(quota.QuotaExceeded) as err:
        ledger.claim(catalog, claim(catalog, "sam", ["students"], {"gpu": {"type": "t4"}}, "b"))
    assert err.value.sentence == (
        "Quota: you already run 1 server with 1 GPU (1 × t4), 4 CPU and 4Gi; with this server you would "
        "exceed 1 GPU in total, so you may still ask for 0 GPU(s), 4 CPU, 28Gi."
    )
    # a CPU server still fits
    ledger.claim(catalog, claim(catalog, "sam", ["students"], {"cpu": 4}, "b"))
    assert len(ledger.claims) == 2


async def test_releasing_makes_room(catalog):
    ledger = quota.Ledger()
    first = claim(catalog, "sam", ["students"], {"gpu": {"type": "t4"}}, "a")
    ledger.claim(catalog, first)
    with pytest.raises(quota.QuotaExceeded):  # students hold one GPU at a time
        ledger.claim(catalog, claim(catalog, "sam", ["students"], {"gpu": {"type": "t4"}}, "b"))
    ledger.release("sam", "a")
    ledger.claim(catalog, claim(catalog, "sam", ["students"], {"gpu": {"type": "t4"}}, "b"))
    assert [(c.server, c.gpus) for c in ledger.claims] == [("b", 1)]


async def test_restarting_the_same_server_does_not_count_twice(catalog):
    ledger = quota.Ledger()
    for _ in range(3):
        ledger.claim(catalog, claim(catalog, "sam", ["students"], {"gpu": {"type": "t4"}}, "a"))
    assert len(ledger.claims) == 1


async def test_per_class_totals(catalog):
    ledger = quota.Ledger()
    options = {"gpu": {"type": "a100-mig-1g", "count": 1}}
    ledger.claim(catalog, claim(catalog, "rita", ["researchers"], options, "a"))
    ledger.claim(catalog, claim(catalog, "rita", ["researchers"], options, "b"))
    with pytest.raises(quota.QuotaExceeded, match="exceed 2 × a100-mig-1g"):
        ledger.claim(catalog, claim(catalog, "rita", ["researchers"], options, "c"))


async def test_group_quota_counts_all_members(catalog):
    ledger = quota.Ledger()
    for i in range(4):
        ledger.claim(catalog, claim(catalog, f"s{i}", ["students"], {"gpu": {"type": "t4"}}))
    with pytest.raises(quota.QuotaExceeded) as err:
        ledger.claim(catalog, claim(catalog, "s4", ["students"], {"gpu": {"type": "t4"}}))
    assert err.value.sentence.startswith(
        "Quota of group 'students': its members already run 4 servers with 4 GPUs (4 × t4)"
    )
    assert "so it may still use 0 GPU(s)" in err.value.sentence


async def test_most_permissive_totals_win(catalog):
    limits = quota.user_limits(catalog, ["students", "researchers"])
    assert limits.gpus == 8 and limits.cpu == 96
    assert quota.user_limits(catalog, ["medical"]).gpus == 0  # 'everyone' applies


A100 = {"gpu": {"type": "a100", "count": 1}}


async def race(claim_one) -> int:
    """Start 20 claims at once, each yielding to the event loop before claiming, as spawns do;
    return how many succeeded."""

    async def attempt(i):
        await asyncio.sleep(0)
        try:
            await claim_one(i)
            return True
        except quota.QuotaExceeded:
            return False

    return sum(await asyncio.gather(*(attempt(i) for i in range(20))))


async def test_racing_claims_never_over_allocate(catalog):
    ledger = quota.Ledger()

    async def claim_one(i):
        ledger.claim(catalog, claim(catalog, "rita", ["researchers"], A100, f"s{i}"))

    assert await race(claim_one) == 8  # researchers may hold 8 GPUs in total
    assert sum(c.gpus for c in ledger.claims) == 8


async def test_the_race_catches_a_check_split_from_its_record(catalog):
    """The race above interleaves for real: with an await between the check and the record
    (the mistake Ledger.claim is written to exclude), the same race over-allocates."""
    ledger = quota.Ledger()

    async def split_claim(i):
        wanted = claim(catalog, "rita", ["researchers"], A100, f"s{i}")
        quota.check(catalog, ledger.claims, wanted)
        await asyncio.sleep(0)
        ledger.adopt(wanted)  # records without checking

    assert await race(split_claim) > 8


async def test_racing_spawns_through_the_hub_hook_never_over_allocate(offline_kubeconfig):
    """20 servers of one user applied at once through apply_user_options, whose live-data
    refresh yields to the event loop between validation and the quota claim."""
    from tornado.web import HTTPError

    from dcloud_spawner.hub.state import hub_state
    from tests.support.spawners import make_spawner

    async def refresh_that_yields():
        await asyncio.sleep(0)

    spawners = []
    for i in range(20):
        spawner = make_spawner(["researchers"], name="rita")
        spawner.orm_spawner = SimpleNamespace(name=f"s{i}", user_options=None, server=None)  # a named server
        spawner.refresh_live_data = refresh_that_yields
        spawners.append(spawner)

    async def apply(spawner):
        try:
            await spawner.apply_user_options(spawner, dict(A100))
            return True
        except HTTPError as exc:
            assert exc.status_code == 400 and "Quota" in exc.log_message
            return False

    results = await asyncio.gather(*(apply(s) for s in spawners))
    assert sum(results) == 8
    assert sum(c.gpus for c in hub_state().ledger.claims) == 8


def test_unknown_class_in_totals_is_a_catalog_error(catalog_data):
    import copy

    from dcloud_spawner.core.catalog import Catalog, CatalogError

    data = copy.deepcopy(catalog_data)
    data["quotas"]["groups"]["students"]["max_gpus_per_class"] = {"h100": 1}
    with pytest.raises(CatalogError) as err:
        Catalog.from_data(data)
    assert any("quotas.groups.students.max_gpus_per_class.h100: unknown GPU class 'h100'" in e
               for e in err.value.errors)

import asyncio

import pytest

from dcloud_spawner import quota
from dcloud_spawner.validation import validate


def claim(catalog, user, groups, options, server=""):
    return quota.Claim.of(user, server, groups, validate(options, catalog, groups))


async def test_user_totals_across_servers(catalog):
    ledger = quota.Ledger()
    await ledger.claim(catalog, claim(catalog, "sam", ["students"], {"gpu": {"type": "t4"}, "cpu": 4}, "a"))
    with pytest.raises(quota.QuotaExceeded) as err:
        await ledger.claim(catalog, claim(catalog, "sam", ["students"], {"gpu": {"type": "t4"}}, "b"))
    assert err.value.sentence == (
        "Quota: you already run 1 server with 1 GPU (1 × t4), 4 CPU and 4Gi; with this server you would "
        "exceed 1 GPU in total, so you may still ask for 0 GPU(s), 4 CPU, 28Gi."
    )
    # a CPU server still fits
    await ledger.claim(catalog, claim(catalog, "sam", ["students"], {"cpu": 4}, "b"))
    assert len(ledger.claims) == 2


async def test_releasing_makes_room(catalog):
    ledger = quota.Ledger()
    first = claim(catalog, "sam", ["students"], {"gpu": {"type": "t4"}}, "a")
    await ledger.claim(catalog, first)
    ledger.release("sam", "a")
    await ledger.claim(catalog, claim(catalog, "sam", ["students"], {"gpu": {"type": "t4"}}, "b"))


async def test_restarting_the_same_server_does_not_count_twice(catalog):
    ledger = quota.Ledger()
    for _ in range(3):
        await ledger.claim(catalog, claim(catalog, "sam", ["students"], {"gpu": {"type": "t4"}}, "a"))
    assert len(ledger.claims) == 1


async def test_per_class_totals(catalog):
    ledger = quota.Ledger()
    options = {"gpu": {"type": "a100-mig-1g", "count": 1}}
    await ledger.claim(catalog, claim(catalog, "rita", ["researchers"], options, "a"))
    await ledger.claim(catalog, claim(catalog, "rita", ["researchers"], options, "b"))
    with pytest.raises(quota.QuotaExceeded, match="exceed 2 × a100-mig-1g"):
        await ledger.claim(catalog, claim(catalog, "rita", ["researchers"], options, "c"))


async def test_group_quota_counts_all_members(catalog):
    ledger = quota.Ledger()
    for i in range(4):
        await ledger.claim(catalog, claim(catalog, f"s{i}", ["students"], {"gpu": {"type": "t4"}}))
    with pytest.raises(quota.QuotaExceeded) as err:
        await ledger.claim(catalog, claim(catalog, "s4", ["students"], {"gpu": {"type": "t4"}}))
    assert err.value.sentence.startswith(
        "Quota of group 'students': its members already run 4 servers with 4 GPUs (4 × t4)"
    )
    assert "so it may still use 0 GPU(s)" in err.value.sentence


async def test_most_permissive_totals_win(catalog):
    limits = quota.user_limits(catalog, ["students", "researchers"])
    assert limits.gpus == 8 and limits.cpu == 96
    assert quota.user_limits(catalog, ["medical"]).gpus == 0  # 'everyone' applies


async def test_racing_claims_never_over_allocate(catalog):
    ledger = quota.Ledger()

    async def try_claim(i):
        await asyncio.sleep(0)
        try:
            await ledger.claim(catalog, claim(catalog, "rita", ["researchers"],
                                              {"gpu": {"type": "a100", "count": 1}}, f"s{i}"))
            return True
        except quota.QuotaExceeded:
            return False

    results = await asyncio.gather(*(try_claim(i) for i in range(20)))
    assert sum(results) == 8  # researchers may hold 8 GPUs in total
    assert sum(c.gpus for c in ledger.claims) == 8


def test_unknown_class_in_totals_is_a_catalog_error(catalog_data):
    import copy

    from dcloud_spawner.catalog import Catalog, CatalogError

    data = copy.deepcopy(catalog_data)
    data["quotas"]["groups"]["students"]["max_gpus_per_class"] = {"h100": 1}
    with pytest.raises(CatalogError) as err:
        Catalog.from_data(data)
    assert any("quotas.groups.students.max_gpus_per_class.h100: unknown GPU class 'h100'" in e
               for e in err.value.errors)

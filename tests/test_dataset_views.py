"""The local server's datasets/ folder: read-only bind mounts where possible, else links."""

import os
import stat

import pytest

from dcloud_spawner.local import dataset_views


@pytest.fixture
def sources(tmp_path):
    made = []
    for name in ("imagenet", "coco"):
        folder = tmp_path / "store" / name
        folder.mkdir(parents=True)
        (folder / "README.txt").write_text(name)
        made.append((name, folder))
    return made


async def test_links_when_the_hub_cannot_mount(tmp_path, sources, monkeypatch):
    monkeypatch.setattr(dataset_views.os, "geteuid", lambda: 1000)
    folder = tmp_path / "server" / "datasets"
    folder.parent.mkdir()
    assert await dataset_views.build(folder, sources) == {"imagenet": "linked", "coco": "linked"}
    assert (folder / "coco").is_symlink() and (folder / "coco" / "README.txt").read_text() == "coco"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o550  # no entries added or removed by the server
    await dataset_views.clear(folder)
    assert not folder.exists()
    assert all((source / "README.txt").exists() for _, source in sources)


@pytest.mark.parametrize("euid", [1000, 0], ids=["links", "mounts"])
async def test_a_server_that_used_datasets_starts_again(tmp_path, sources, monkeypatch, euid):
    """Start, stop, start (and start twice without a stop, as after a crash): no FileExistsError."""
    if euid == 0 and os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    monkeypatch.setattr(dataset_views.os, "geteuid", lambda: euid)
    folder = tmp_path / "server" / "datasets"
    folder.parent.mkdir()
    first = await dataset_views.build(folder, sources)
    await dataset_views.clear(folder)  # the server stopped
    assert await dataset_views.build(folder, sources[:1]) == {"imagenet": first["imagenet"]}
    assert await dataset_views.build(folder, sources) == first  # started again without a stop
    assert sorted(p.name for p in folder.iterdir()) == ["coco", "imagenet"]
    await dataset_views.build(folder, [])  # a start without datasets leaves no folder behind
    assert not folder.exists()
    assert dataset_views._mounts_under(folder) == []
    assert all((source / "README.txt").read_text() == name for name, source in sources)


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
async def test_read_only_bind_mounts_as_root(tmp_path, sources):
    folder = tmp_path / "server" / "datasets"
    folder.parent.mkdir()
    how = await dataset_views.build(folder, sources)
    if set(how.values()) == {"linked"}:
        pytest.skip("this machine refuses mounts even to root")
    assert how == {"imagenet": "read-only", "coco": "read-only"}
    assert (folder / "imagenet" / "README.txt").read_text() == "imagenet"
    with pytest.raises(OSError) as err:
        (folder / "imagenet" / "new.txt").write_text("x")
    assert err.value.errno == 30  # EROFS: even root cannot write
    await dataset_views.clear(folder)
    assert dataset_views._mounts_under(folder) == []
    assert all((source / "README.txt").exists() for _, source in sources)  # nothing deleted
    assert not folder.exists()


def swap_for_link_after(monkeypatch, call: str, folder, outside):
    """Act as a hostile user: right after the hub's `call` on the folder, swap it for a link."""
    real = getattr(os, call)
    done = []

    def then_swap(path, *args, **kwargs):
        result = real(path, *args, **kwargs)
        if not done and os.path.basename(os.fsdecode(path)) == folder.name:
            done.append(True)
            if os.path.lexists(folder) and not os.path.islink(folder):
                os.rename(folder, folder.with_name("renamed-by-user"))
            os.symlink(outside, folder)
        return result

    monkeypatch.setattr(dataset_views.os, call, then_swap)


@pytest.fixture
def outside(tmp_path):
    """A directory the server's user must not get the hub to touch (think /etc)."""
    folder = tmp_path / "outside"
    folder.mkdir(mode=0o755)
    (folder / "precious.conf").write_text("keep")
    return folder


def untouched(outside) -> bool:
    return (sorted(p.name for p in outside.iterdir()) == ["precious.conf"]
            and stat.S_IMODE(outside.stat().st_mode) == 0o755
            and (outside / "precious.conf").read_text() == "keep")


@pytest.mark.parametrize("euid", [1000, 0], ids=["links", "mounts"])
async def test_clearing_never_follows_a_folder_swapped_for_a_link(tmp_path, sources, outside, monkeypatch, euid):
    if euid == 0 and os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    monkeypatch.setattr(dataset_views.os, "geteuid", lambda: euid)
    folder = tmp_path / "server" / "datasets"
    folder.parent.mkdir()
    await dataset_views.build(folder, sources)
    swap_for_link_after(monkeypatch, "lstat", folder, outside)
    try:
        await dataset_views.clear(folder)
    except OSError:
        pass  # refusing is fine; touching the link's target is not
    assert untouched(outside)
    assert all((source / "README.txt").exists() for _, source in sources)
    monkeypatch.undo()
    for leftover in (folder, folder.with_name("renamed-by-user")):
        if os.path.lexists(leftover) and not os.path.islink(leftover):
            await dataset_views.clear(leftover)  # detach any mount the test left
    assert not dataset_views._mounts_under(tmp_path)


@pytest.mark.parametrize("euid", [1000, 0], ids=["links", "mounts"])
async def test_building_never_follows_a_folder_swapped_for_a_link(tmp_path, sources, outside, monkeypatch, euid):
    if euid == 0 and os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    monkeypatch.setattr(dataset_views.os, "geteuid", lambda: euid)
    folder = tmp_path / "server" / "datasets"
    folder.parent.mkdir()
    swap_for_link_after(monkeypatch, "mkdir", folder, outside)
    try:
        await dataset_views.build(folder, sources)
    except OSError:
        pass
    monkeypatch.undo()
    assert not dataset_views._mounts_under(outside)
    assert untouched(outside)
    await dataset_views.clear(folder)  # the link goes, its target stays
    assert not os.path.lexists(folder) and untouched(outside)


async def test_a_link_in_place_of_the_folder_is_removed_not_followed(tmp_path, sources, outside):
    folder = tmp_path / "server" / "datasets"
    folder.parent.mkdir()
    folder.symlink_to(outside, target_is_directory=True)
    how = await dataset_views.build(folder, sources)
    assert set(how) == {"imagenet", "coco"} and not folder.is_symlink()
    assert untouched(outside)
    await dataset_views.clear(folder)
    assert untouched(outside) and not os.path.lexists(folder)

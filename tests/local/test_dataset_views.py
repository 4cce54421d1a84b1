"""A local server's dataset views: read-only bind mounts where possible, else links, and
never anything of the user's removed."""

import os
import stat

import pytest

from dcloud_spawner.local import dataset_views
from dcloud_spawner.local.dataset_views import DatasetViews, FolderTaken, mounts_under

MODES = pytest.mark.parametrize("euid", [1000, 0], ids=["links", "mounts"])


@pytest.fixture
def sources(tmp_path):
    made = []
    for name in ("imagenet", "coco"):
        folder = tmp_path / "store" / name
        folder.mkdir(parents=True)
        (folder / "README.txt").write_text(name)
        made.append((name, folder))
    return made


@pytest.fixture
def workdir(tmp_path):
    folder = tmp_path / "server"
    folder.mkdir()
    return folder


def views(workdir) -> DatasetViews:
    """A fresh object each time, as after a hub restart: only the record file remembers."""
    return DatasetViews(workdir, workdir.parent / "records" / "alice" / "default.datasets.json")


@pytest.fixture
def as_euid(monkeypatch):
    def use(euid: int) -> None:
        if euid == 0 and os.geteuid() != 0:
            pytest.skip("bind mounts need root")
        monkeypatch.setattr(dataset_views.os, "geteuid", lambda: euid)
    return use


def users_own_things(folder) -> dict[str, str]:
    """Fill ``folder`` with what a user keeps: files, a sub-folder with files, a link."""
    folder.mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "cifar").mkdir()
    (folder / "cifar" / "train.bin").write_text("data")
    (folder / "empty-dir").mkdir()
    (folder / "shortcut").symlink_to(folder / "cifar", target_is_directory=True)
    return snapshot(folder)


def snapshot(folder) -> dict[str, str]:
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if os.path.islink(path):
                found[rel] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                found[rel] = "dir"
            else:
                found[rel] = open(path).read()
    return found


def test_links_when_the_hub_cannot_mount(workdir, sources, as_euid):
    as_euid(1000)
    assert views(workdir).build(sources) == {"imagenet": "linked", "coco": "linked"}
    folder = workdir / "datasets"
    assert (folder / "coco").is_symlink() and (folder / "coco" / "README.txt").read_text() == "coco"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o550  # no entries added or removed by the server
    assert views(workdir).clear() == []
    assert not folder.exists()
    assert all((source / "README.txt").exists() for _, source in sources)


@MODES
def test_a_server_that_used_datasets_starts_again(workdir, sources, as_euid, euid):
    """Start, stop, start (and start twice without a stop, as after a crash)."""
    as_euid(euid)
    folder = workdir / "datasets"
    first = views(workdir).build(sources)
    views(workdir).clear()  # the server stopped
    assert views(workdir).build(sources[:1]) == {"imagenet": first["imagenet"]}
    assert views(workdir).build(sources) == first  # started again without a stop
    assert sorted(p.name for p in folder.iterdir()) == ["coco", "imagenet"]
    views(workdir).build([])  # a start without datasets leaves no folder behind
    assert not folder.exists()
    assert mounts_under(workdir) == []
    assert all((source / "README.txt").read_text() == name for name, source in sources)


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_read_only_bind_mounts_as_root(workdir, sources):
    folder = workdir / "datasets"
    how = views(workdir).build(sources)
    if set(how.values()) == {"linked"}:
        pytest.skip("this machine refuses mounts even to root")
    assert how == {"imagenet": "read-only", "coco": "read-only"}
    assert (folder / "imagenet" / "README.txt").read_text() == "imagenet"
    with pytest.raises(OSError) as err:
        (folder / "imagenet" / "new.txt").write_text("x")
    assert err.value.errno == 30  # EROFS: even root cannot write
    views(workdir).clear()
    assert mounts_under(workdir) == []
    assert all((source / "README.txt").exists() for _, source in sources)  # nothing deleted
    assert not folder.exists()


# -- the user's own data ----------------------------------------------------------------


@MODES
def test_a_users_own_datasets_folder_is_never_touched(workdir, sources, as_euid, euid):
    """The data-loss defect: every start and stop used to empty the user's own datasets/."""
    as_euid(euid)
    mine = users_own_things(workdir / "datasets")
    assert views(workdir).build([]) == {}  # a start without datasets
    views(workdir).clear()  # its stop
    assert snapshot(workdir / "datasets") == mine
    how = views(workdir).build(sources)  # a start with datasets: they go elsewhere
    assert set(how) == {"imagenet", "coco"}
    assert views(workdir).folder == workdir / ".dcloud-datasets"
    assert (workdir / ".dcloud-datasets" / "coco" / "README.txt").read_text() == "coco"
    assert snapshot(workdir / "datasets") == mine
    views(workdir).clear()
    assert snapshot(workdir / "datasets") == mine
    assert not (workdir / ".dcloud-datasets").exists() and mounts_under(workdir) == []


def test_a_file_or_link_named_datasets_is_the_users(workdir, sources, tmp_path):
    (workdir / "datasets").write_text("a file of mine")
    views(workdir).build(sources)
    views(workdir).clear()
    assert (workdir / "datasets").read_text() == "a file of mine"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    os.unlink(workdir / "datasets")
    (workdir / "datasets").symlink_to(elsewhere, target_is_directory=True)
    views(workdir).build(sources)
    views(workdir).clear()
    assert (workdir / "datasets").is_symlink() and (elsewhere / "keep.txt").read_text() == "keep"


def test_both_names_taken_refuses_and_touches_nothing(workdir, sources):
    mine = users_own_things(workdir / "datasets")
    (workdir / ".dcloud-datasets").mkdir()
    (workdir / ".dcloud-datasets" / "also-mine.txt").write_text("x")
    with pytest.raises(FolderTaken) as err:
        views(workdir).build(sources)
    assert "rename one of them" in err.value.strerror
    assert snapshot(workdir / "datasets") == mine
    assert (workdir / ".dcloud-datasets" / "also-mine.txt").read_text() == "x"


@MODES
def test_what_the_user_adds_to_dclouds_folder_is_kept(workdir, sources, as_euid, euid):
    """The server's user (same uid in the demo) makes the folder writable and adds to it, and
    swaps one of DCloud's links for a folder of their own: all of it stays at the stop."""
    as_euid(euid)
    views(workdir).build(sources)
    folder = workdir / "datasets"
    os.chmod(folder, 0o755)
    (folder / "results.csv").write_text("1,2")
    if (folder / "coco").is_symlink():
        os.unlink(folder / "coco")
        (folder / "coco").mkdir()
        (folder / "coco" / "mine.txt").write_text("mine")
    left = views(workdir).clear()
    assert "datasets/results.csv" in left
    assert (folder / "results.csv").read_text() == "1,2"
    if (folder / "coco").exists():
        assert (folder / "coco" / "mine.txt").read_text() == "mine"
    assert not (folder / "imagenet").exists() and mounts_under(workdir) == []
    assert os.access(folder, os.W_OK)  # left usable, not read-only


def test_a_folder_the_user_made_in_place_of_dclouds_is_kept(workdir, sources):
    views(workdir).build(sources)
    os.chmod(workdir / "datasets", 0o755)
    os.rename(workdir / "datasets", workdir / "old-views")
    mine = users_own_things(workdir / "datasets")
    views(workdir).clear()
    assert snapshot(workdir / "datasets") == mine


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_a_mount_left_behind_by_a_crash_is_cleaned_up(workdir, sources, monkeypatch):
    """The hub died right after its first mount: the record written before it finds it."""
    real = dataset_views._bind_read_only

    def die_after_the_first(source, fd, name):
        real(source, fd, name)
        raise KeyboardInterrupt  # stands in for the hub being killed

    monkeypatch.setattr(dataset_views, "_bind_read_only", die_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        views(workdir).build(sources)
    monkeypatch.undo()
    if not mounts_under(workdir):
        pytest.skip("this machine refuses mounts even to root")
    views(workdir).clear()  # the next stop, by a new hub
    assert mounts_under(workdir) == [] and not (workdir / "datasets").exists()
    assert all((source / "README.txt").exists() for _, source in sources)


def test_a_crash_before_the_folder_was_recorded_removes_only_an_empty_folder(workdir, sources, monkeypatch):
    record = views(workdir).record
    record.folder = "datasets"  # written just before the mkdir; the hub died before the next write
    record.save()
    mine = users_own_things(workdir / "datasets")  # and the user put things there since
    views(workdir).clear()
    assert snapshot(workdir / "datasets") == mine


# -- hostile swaps ------------------------------------------------------------------------


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


@MODES
def test_clearing_never_follows_a_folder_swapped_for_a_link(workdir, sources, outside, monkeypatch, as_euid, euid):
    as_euid(euid)
    folder = workdir / "datasets"
    views(workdir).build(sources)
    swap_for_link_after(monkeypatch, "lstat", folder, outside)
    try:
        views(workdir).clear()
    except OSError:
        pass  # refusing is fine; touching the link's target is not
    assert untouched(outside)
    assert all((source / "README.txt").exists() for _, source in sources)
    monkeypatch.undo()
    renamed = folder.with_name("renamed-by-user")
    for point in mounts_under(renamed):  # the test's own leftovers, not the hub's to find
        os.system(f"umount -l '{point}'")
    assert not mounts_under(workdir / "datasets")


@MODES
def test_building_never_follows_a_folder_swapped_for_a_link(workdir, sources, outside, monkeypatch, as_euid, euid):
    as_euid(euid)
    folder = workdir / "datasets"
    swap_for_link_after(monkeypatch, "mkdir", folder, outside)
    try:
        views(workdir).build(sources)
    except OSError:
        pass
    monkeypatch.undo()
    assert not mounts_under(outside)
    assert untouched(outside)
    views(workdir).clear()  # the link is the user's now: it stays, its target untouched
    assert untouched(outside)

"""The README's module map names every module of the package, and only those."""

from __future__ import annotations

import re

from tests.conftest import ROOT

PACKAGE = ROOT / "dcloud_spawner"


def documented() -> dict[str, set[str]]:
    """Subpackage -> the module files its row of the README's package table names."""
    readme = (ROOT / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        row = re.match(r"\| `dcloud_spawner/(\w+)/` \| (.*) \|$", line)
        if row:
            rows[row.group(1)] = set(re.findall(r"`(\w+\.py)`", row.group(2)))
    return rows


def test_every_module_is_in_the_readme_map_and_nothing_else():
    rows = documented()
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file() and p.name != "demo"}
    assert set(rows) == subpackages
    for name, named in rows.items():
        modules = {p.name for p in (PACKAGE / name).glob("*.py") if p.name != "__init__.py"}
        assert named == modules, (f"README's dcloud_spawner/{name}/ row: missing {modules - named}, "
                                  f"stale {named - modules}")

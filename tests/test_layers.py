"""The package reads top-down as tools -> backends -> hub -> core, with no arrow back up."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dcloud_spawner"

# what each layer may import from the package (besides itself)
ALLOWED = {
    "core": set(),
    "hub": {"core"},
    "kube": {"core", "hub"},
    "local": {"core", "hub"},
    "demo": {"core", "hub"},  # the demo wires a hub; it names the local backend by entry point
    "cli": {"core", "hub", "kube", "local", "demo"},
}


def layer_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def package_imports(path: Path) -> set[str]:
    """The top-level parts of dcloud_spawner that a module imports (absolute or relative)."""
    module_parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(module_parts[: len(module_parts) - node.level])
                if path.name == "__init__.py":
                    base = list(module_parts[: len(module_parts) - node.level + 1])
                target = base + (node.module.split(".") if node.module else [])
                names = [[*target, alias.name] for alias in node.names]
            else:
                names = [(node.module or "").split(".")]
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        else:
            continue
        for name in names:
            if name[0] == "dcloud_spawner" and len(name) > 1:
                found.add(name[1])
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_points_back_up(path):
    layer = layer_of(path)
    if layer == "__init__":
        return
    imported = package_imports(path) - {layer, "__version__"}
    assert imported <= ALLOWED[layer], f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(imported)}"


def test_core_imports_nothing_of_jupyterhub_or_kubernetes():
    code = (
        "import sys, pkgutil, importlib, dcloud_spawner.core as core\n"
        "for m in pkgutil.iter_modules(core.__path__): importlib.import_module('dcloud_spawner.core.' + m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in "
        "('jupyterhub', 'kubespawner', 'kubernetes', 'kubernetes_asyncio', 'tornado', 'traitlets'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_importing_the_package_has_no_side_effects():
    """No handler on the audit logger, no metric registered, until a hub state exists."""
    code = (
        "import logging, prometheus_client\n"
        "import dcloud_spawner.cli, dcloud_spawner.kube, dcloud_spawner.local, dcloud_spawner.hub.admin\n"
        "names = prometheus_client.REGISTRY._names_to_collectors\n"
        "print(len(logging.getLogger('dcloud.audit').handlers), any(n.startswith('dcloud_') for n in names))\n"
        "from dcloud_spawner.hub.state import hub_state\n"
        "hub_state()\n"
        "print(len(logging.getLogger('dcloud.audit').handlers), any(n.startswith('dcloud_') for n in names))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:2] == ["0 False", "1 True"]

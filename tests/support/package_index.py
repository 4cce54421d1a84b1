"""A PEP 503 simple package index with a few wheels, served from this machine for the tests:
``dcloud-probe`` 1.0, and ``dcloud-extra`` 1.0 and 2.0 (a second package, in two versions, for
a set of packages that changes by one).

Pods on the test cluster's bridge reach it at the node's address, so the package init
container installs from here and the tests never depend on the public index.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

NAME = "dcloud-probe"
VERSION = "1.0"
MODULE = "dcloud_probe"
EXTRA_NAME = "dcloud-extra"
EXTRA_MODULE = "dcloud_extra"
EXTRA_VERSIONS = ("1.0", "2.0")
PROJECTS = {NAME: (MODULE, (VERSION,)), EXTRA_NAME: (EXTRA_MODULE, EXTRA_VERSIONS)}


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(folder: Path, name: str = NAME, version: str = VERSION, module: str = MODULE) -> Path:
    """A pure-Python wheel whose module says where it was installed from, and its version."""
    dist = f"{module}-{version}"
    files = {
        f"{module}/__init__.py": (
            f'"""Installed by DCloud\'s package init container from the tests\' own index."""\nVERSION = "{version}"\n'
        ).encode(),
        f"{dist}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: DCloud test probe\n"
        ).encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: dcloud-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[f"{dist}.dist-info/RECORD"] = (record + f"{dist}.dist-info/RECORD,,\n").encode()
    wheel = folder / f"{dist}-py3-none-any.whl"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    wheel.write_bytes(buffer.getvalue())
    return wheel


def build_index(root: Path) -> Path:
    """``root/simple/``: the index page, and each project's page linking its wheels with their hashes."""
    for name, (module, versions) in PROJECTS.items():
        project = root / "simple" / name
        project.mkdir(parents=True, exist_ok=True)
        links = []
        for version in versions:
            wheel = build_wheel(project, name, version, module)
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            links.append(f'<a href="{wheel.name}#sha256={digest}">{wheel.name}</a>')
        (project / "index.html").write_text(f"<!DOCTYPE html><html><body>{''.join(links)}</body></html>\n")
    names = "".join(f'<a href="{name}/">{name}</a>' for name in PROJECTS)
    (root / "simple" / "index.html").write_text(f"<!DOCTYPE html><html><body>{names}</body></html>\n")
    return root / "simple"


@dataclass(frozen=True)
class PackageIndex:
    url: str  # the simple index, e.g. http://192.0.2.2:40123/simple/
    requests: list[str] = field(default_factory=list)  # the paths asked for, in order: pip's visits


class _Quiet(http.server.SimpleHTTPRequestHandler):
    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve_index(root: Path, host: str) -> Iterator[PackageIndex]:
    """Serve the index on ``host`` (an address of this machine) and a free port."""
    build_index(root)
    requests: list[str] = []
    recording = type("Recording", (_Quiet,), {"seen": requests})
    handler = lambda *a, **kw: recording(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield PackageIndex(f"http://{host}:{server.server_address[1]}/simple/", requests)
    finally:
        server.shutdown()
        server.server_close()

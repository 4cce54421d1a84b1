"""Keycloak, a real OpenID Connect provider, for the login tests.

``python -m tests.support.idp fetch`` (run by ``.ci/setup``) takes ``org.keycloak:keycloak-quarkus-dist``
from Maven Central with ``mvn dependency:copy``, unpacks it into ``~/.cache/dcloud-idp`` and runs
Keycloak's one-time ``kc.sh build`` there (its in-memory database; about 20 s), so each test
session starts it with ``start --optimized``. Keycloak 26 needs Java 21 or newer: the first JDK
found at ``$DCLOUD_JAVA_HOME``, ``$JAVA_HOME`` or under ``/usr/lib/jvm`` that is new enough.

:class:`Keycloak` starts it on a free loopback port with a bootstrap admin and, through its
admin REST API, makes what a lab's administrator would: a realm, groups, users with passwords,
and a confidential client whose tokens carry a ``groups`` claim (a client scope ``groups`` with
the group membership mapper, as the values request it).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEYCLOAK_VERSION = "26.5.6"
ARTIFACT = f"org.keycloak:keycloak-quarkus-dist:{KEYCLOAK_VERSION}:tar.gz"
MIN_JAVA = 21
BUILD_OPTIONS = ("--db=dev-mem", "--health-enabled=true")


def cache_dir() -> Path:
    return Path(os.environ.get("DCLOUD_IDP_CACHE", Path.home() / ".cache" / "dcloud-idp"))


def home() -> Path:
    """Where Keycloak is unpacked."""
    return cache_dir() / f"keycloak-{KEYCLOAK_VERSION}"


def _java_major(java_home: Path) -> int:
    try:
        out = subprocess.run([str(java_home / "bin" / "java"), "-version"], capture_output=True, text=True,
                             timeout=30).stderr  # fmt: skip
    except OSError:
        return 0
    match = re.search(r'version "(\d+)', out)
    return int(match.group(1)) if match else 0


def java_home() -> Path | None:
    """A JDK new enough for Keycloak, or None."""
    candidates = [os.environ.get("DCLOUD_JAVA_HOME"), os.environ.get("JAVA_HOME")]
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        candidates += [str(p) for p in sorted(jvm.iterdir(), reverse=True)]
    for candidate in candidates:
        if candidate and _java_major(Path(candidate)) >= MIN_JAVA:
            return Path(candidate)
    return None


def _built_marker() -> Path:
    return home() / ".dcloud-built"


def missing() -> str | None:
    """Why Keycloak cannot start here, or None."""
    if java_home() is None:
        return f"no Java {MIN_JAVA}+ for Keycloak {KEYCLOAK_VERSION} (set DCLOUD_JAVA_HOME)"
    marker = _built_marker()
    if not marker.is_file() or marker.read_text().strip() != " ".join(BUILD_OPTIONS):
        return (f"Keycloak {KEYCLOAK_VERSION} is not fetched and built in {cache_dir()}: "
                "run `python -m tests.support.idp fetch`")
    return None


def fetch() -> Path:
    """Download, unpack and build Keycloak once; idempotent."""
    if missing() is None:
        return home()
    jdk = java_home()
    if jdk is None:
        raise SystemExit(f"no Java {MIN_JAVA}+ found for Keycloak (set DCLOUD_JAVA_HOME)")
    download = cache_dir() / "download"
    archive = download / f"keycloak-quarkus-dist-{KEYCLOAK_VERSION}.tar.gz"
    if not archive.is_file():
        download.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={ARTIFACT}",
                        f"-DoutputDirectory={download}"], check=True)  # fmt: skip
    shutil.rmtree(home(), ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(cache_dir(), filter="data")
    env = {**os.environ, "JAVA_HOME": str(jdk)}
    built = subprocess.run([str(home() / "bin" / "kc.sh"), "build", *BUILD_OPTIONS], env=env,
                           capture_output=True, text=True)  # fmt: skip
    if built.returncode != 0:
        raise SystemExit(f"kc.sh build failed: {(built.stdout + built.stderr)[-3000:]}")
    _built_marker().write_text(" ".join(BUILD_OPTIONS) + "\n")
    return home()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Keycloak:
    """A running Keycloak on 127.0.0.1 and its admin API."""

    port: int
    admin_password: str
    process: subprocess.Popen
    log: Path
    start_seconds: float = 0.0
    _token: str = field(default="", repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def realm_url(self, realm: str) -> str:
        return f"{self.url}/realms/{realm}/protocol/openid-connect"

    def _request(self, method: str, path: str, body: Any = None, form: dict | None = None) -> tuple[int, Any]:
        headers = {}
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._token and form is None:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw.strip() else None
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        """Call the admin REST API (``/admin/realms/...``); raise unless it succeeded."""
        if not self._token:
            status, token = self._request("POST", "/realms/master/protocol/openid-connect/token", form={
                "grant_type": "password", "client_id": "admin-cli", "username": "admin",
                "password": self.admin_password,
            })  # fmt: skip
            if status != 200:
                raise RuntimeError(f"Keycloak admin login failed: {status} {token}")
            self._token = token["access_token"]
        status, answer = self._request(method, f"/admin/realms{path}", body)
        if status == 401:  # the admin token expired: once more with a new one
            self._token = ""
            return self.admin(method, path, body)
        if status >= 300:
            raise RuntimeError(f"Keycloak {method} {path}: {status} {answer}")
        return answer

    def create_realm(
        self,
        realm: str,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        users: dict[str, list[str]],
        password: str,
    ) -> None:
        """A realm with ``users`` (name -> groups), all with ``password``, and the client."""
        self.admin("POST", "", {"realm": realm, "enabled": True})
        groups = sorted({g for user_groups in users.values() for g in user_groups} | {"students", "researchers",
                                                                                      "medical"})  # fmt: skip
        for group in groups:
            self.admin("POST", f"/{realm}/groups", {"name": group})
        self.admin("POST", f"/{realm}/client-scopes", {
            "name": "groups", "protocol": "openid-connect",
            "attributes": {"include.in.token.scope": "true"},
            "protocolMappers": [{
                "name": "groups", "protocol": "openid-connect", "protocolMapper": "oidc-group-membership-mapper",
                "config": {"claim.name": "groups", "full.path": "false", "id.token.claim": "true",
                           "access.token.claim": "true", "userinfo.token.claim": "true"},
            }],
        })  # fmt: skip
        self.admin("POST", f"/{realm}/clients", {
            "clientId": client_id, "enabled": True, "publicClient": False, "secret": client_secret,
            "standardFlowEnabled": True, "directAccessGrantsEnabled": False, "redirectUris": [redirect_uri],
            "defaultClientScopes": ["profile", "email", "groups"],
        })  # fmt: skip
        for user, user_groups in users.items():
            self.admin("POST", f"/{realm}/users", {
                "username": user, "enabled": True, "email": f"{user}@example.org", "emailVerified": True,
                "firstName": user.capitalize(), "lastName": "Tester", "groups": [f"/{g}" for g in user_groups],
                "credentials": [{"type": "password", "value": password, "temporary": False}],
            })  # fmt: skip

    def _user_id(self, realm: str, user: str) -> str:
        (found,) = self.admin("GET", f"/{realm}/users?exact=true&username={user}")
        return found["id"]

    def _group_id(self, realm: str, group: str) -> str:
        return next(g["id"] for g in self.admin("GET", f"/{realm}/groups?search={group}") if g["name"] == group)

    def add_to_group(self, realm: str, user: str, group: str) -> None:
        self.admin("PUT", f"/{realm}/users/{self._user_id(realm, user)}/groups/{self._group_id(realm, group)}")

    def user_groups(self, realm: str, user: str) -> list[str]:
        return sorted(g["name"] for g in self.admin("GET", f"/{realm}/users/{self._user_id(realm, user)}/groups"))


def start(log: Path, timeout: float = 180) -> Keycloak:
    """Start the built Keycloak on a free port; wait until its health endpoint says UP."""
    reason = missing()
    if reason:
        raise FileNotFoundError(reason)
    port, management = free_port(), free_port()
    password = secrets.token_urlsafe(12)
    env = {**os.environ, "JAVA_HOME": str(java_home()), "KC_BOOTSTRAP_ADMIN_USERNAME": "admin",
           "KC_BOOTSTRAP_ADMIN_PASSWORD": password}  # fmt: skip
    argv = [str(home() / "bin" / "kc.sh"), "start", "--optimized", "--http-enabled=true",
            "--http-host=127.0.0.1", f"--http-port={port}", f"--http-management-port={management}",
            "--hostname-strict=false"]  # fmt: skip
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    keycloak = Keycloak(port, password, process, log)
    deadline = started + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Keycloak exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{management}/health/ready", timeout=5) as response:
                if json.loads(response.read()).get("status") == "UP":
                    keycloak.start_seconds = time.monotonic() - started
                    return keycloak
        except (OSError, ValueError):
            pass
        time.sleep(1)
    stop(keycloak)
    raise RuntimeError(f"Keycloak did not get ready in {timeout:.0f} s: {log.read_text()[-3000:]}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(keycloak: Keycloak, timeout: float = 30) -> None:
    """Stop Keycloak and wait until its JVM is gone (kc.sh, the group's leader, exits first)."""
    pgid = keycloak.process.pid
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _group_alive(pgid) and time.monotonic() < deadline:
            keycloak.process.poll()  # reap the leader, or the group stays alive as a zombie
            time.sleep(0.2)
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
    keycloak.process.wait()


if __name__ == "__main__":
    if sys.argv[1:] != ["fetch"]:
        sys.exit("usage: python -m tests.support.idp fetch")
    print(fetch())

"""dcloud_spawner.hub.login: GenericOAuthenticator against a provider on loopback.

The provider here is a small tornado app with the token and userinfo endpoints of an OpenID
Connect provider, so that it can be absent, slow or behind a failing gateway on demand; the
real Keycloak logs users in through the chart's hub in tests/browser/test_oidc_login.py.
Both of tornado's HTTP clients are used: curl (the chart's hub selects it) and the default. The
same provider also serves HTTPS with a throwaway CA, for the hub's TLS settings.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from oauthenticator.generic import GenericOAuthenticator
from tornado import web
from tornado.curl_httpclient import CurlAsyncHTTPClient, CurlError
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.httpserver import HTTPServer
from tornado.simple_httpclient import SimpleAsyncHTTPClient
from traitlets.config import Config

from dcloud_spawner.hub.login import DCloudOAuthenticator, Failure, classify
from tests.cluster.pki import generate as generate_pki
from tests.support.hub import free_port

SENTENCE = "Keycloak could not be reached, so you could not be logged in: please try again in a few minutes."
MISCONFIGURED = (
    "Login through Keycloak is misconfigured on this hub, so you could not be logged in: "
    "please tell the hub's administrator."
)
MISSING_FILE = "/nonexistent/dcloud-login.pem"
GROUPS_ERROR = "auth_state_groups_key"  # what OAuthenticator's error about a missing groups claim names
USERS: dict[str, dict[str, Any]] = {
    "alice": {"preferred_username": "alice", "groups": ["students"]},
    "bob": {"preferred_username": "bob", "groups": ["researchers", "dcloud-admins"]},
    # as Keycloak answers for a user in no group: no `groups` claim at all
    "carol": {"preferred_username": "carol"},
    "dave": {"preferred_username": "dave", "groups": None},
}


class Token(web.RequestHandler):
    def post(self) -> None:
        code = self.get_body_argument("code")
        if code not in USERS:  # an unknown or used code, as a provider says it (RFC 6749 5.2)
            self.set_status(400)
            self.finish({"error": "invalid_grant"})
            return
        self.finish({"access_token": f"token-of-{code}", "token_type": "Bearer"})


class UserInfo(web.RequestHandler):
    def get(self) -> None:
        user = self.request.headers["Authorization"].removeprefix("Bearer token-of-")
        self.finish(json.dumps(USERS[user]))


class Gateway(web.RequestHandler):
    """A proxy in front of a provider that is down."""

    def post(self, code: str) -> None:
        self.set_status(int(code))
        self.finish("<html><body>Bad Gateway</body></html>")


def provider_app() -> web.Application:
    return web.Application([(r"/token", Token), (r"/userinfo", UserInfo), (r"/gateway/(\d+)", Gateway)])


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[str]:
    server = HTTPServer(provider_app())
    port = free_port()
    server.listen(port, "127.0.0.1")
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
async def tls_provider(tmp_path_factory) -> AsyncIterator[tuple[str, Path]]:
    """The provider over HTTPS, its certificate (for 127.0.0.1) signed by a throwaway CA: the
    URL, and the CA's certificate that a hub must be given to trust it."""
    pki = generate_pki(tmp_path_factory.mktemp("pki"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.serving_cert, pki.serving_key)
    server = HTTPServer(provider_app(), ssl_options=context)
    port = free_port()
    server.listen(port, "127.0.0.1")
    yield f"https://127.0.0.1:{port}", pki.ca_cert
    server.stop()


@pytest.fixture(params=["curl", "simple"])
async def http_client(request) -> AsyncIterator[AsyncHTTPClient]:
    # made on the running loop: tornado binds a client to the IOLoop current at creation, and
    # one bound to another loop never delivers its answers or its timeouts (the test hangs)
    client = (CurlAsyncHTTPClient if request.param == "curl" else SimpleAsyncHTTPClient)(force_instance=True)
    yield client
    client.close()


def authenticator(http_client: AsyncHTTPClient, base: str, groups_key: str = "oauth_user.groups",
                  token_url: str | None = None, request_kwargs: dict[str, Any] | None = None,
                  cls: type[GenericOAuthenticator] = DCloudOAuthenticator) -> DCloudOAuthenticator:  # fmt: skip
    """Configured as helm-values/values.yaml does, under the GenericOAuthenticator section."""
    c = Config()
    c.GenericOAuthenticator.update(
        login_service="Keycloak", client_id="dcloud", client_secret="s3cret",
        oauth_callback_url="http://127.0.0.1/hub/oauth_callback",
        token_url=token_url or f"{base}/token", userdata_url=f"{base}/userinfo",
        username_claim="preferred_username", manage_groups=True, auth_state_groups_key=groups_key,
        admin_groups={"dcloud-admins"}, allow_all=True,
        http_request_kwargs={"request_timeout": 2, **(request_kwargs or {})},
        # PKCE's verifier travels in the hub's state cookie, which needs a browser; the login
        # through Keycloak in tests/browser/test_oidc_login.py uses it
        enable_pkce=False,
    )  # fmt: skip
    return cls(config=c, http_client=http_client)


class Callback:
    """What OAuthenticator reads of the hub's /hub/oauth_callback request: the code."""

    def __init__(self, code: str) -> None:
        self.code = code

    def get_argument(self, name: str) -> str:
        assert name == "code"
        return self.code


def closed_port() -> int:
    """A loopback port where nothing listens: connections are refused."""
    return free_port()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


async def login(auth: DCloudOAuthenticator, code: str) -> dict[str, Any]:
    return await auth.authenticate(Callback(code))


def assert_readable_503(error: web.HTTPError, caplog) -> None:
    assert error.status_code == 503
    # JupyterHub's error page: the reason is the title, the message the one sentence below it
    assert error.reason == "Service Unavailable"
    assert error.get_message() == SENTENCE
    assert all(r.exc_info is None for r in caplog.records) and "Traceback" not in caplog.text


def assert_misconfigured(error: web.HTTPError, caplog, cause: str) -> None:
    """A page that sends the user to the admin, and a hub log that names the ``cause``."""
    assert error.status_code == 500
    assert error.reason == "Internal Server Error"
    assert error.get_message() == MISCONFIGURED
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(cause in message and "/token" in message for message in errors), errors
    assert all(r.exc_info is None for r in caplog.records) and "Traceback" not in caplog.text


# --- the provider cannot be reached -------------------------------------------------------


async def test_a_refused_connection_gives_one_sentence(http_client, provider, caplog):
    caplog.set_level(logging.DEBUG)
    auth = authenticator(http_client, provider, token_url=f"http://127.0.0.1:{closed_port()}/token")
    with pytest.raises(web.HTTPError) as raised:
        await login(auth, "alice")
    assert_readable_503(raised.value, caplog)
    # the hub's log says which request failed, in one line
    assert any("/token" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


async def test_a_provider_that_never_answers_gives_one_sentence(http_client, provider, silent_port, caplog):
    caplog.set_level(logging.DEBUG)
    auth = authenticator(http_client, provider, token_url=f"http://127.0.0.1:{silent_port}/token")
    with pytest.raises(web.HTTPError) as raised:
        await login(auth, "alice")
    assert_readable_503(raised.value, caplog)


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_a_gateway_before_a_provider_that_is_down_gives_one_sentence(http_client, provider, status, caplog):
    auth = authenticator(http_client, provider, token_url=f"{provider}/gateway/{status}")
    with pytest.raises(web.HTTPError) as raised:
        await login(auth, "alice")
    assert_readable_503(raised.value, caplog)


async def test_the_sentence_names_the_configured_service(http_client, provider):
    auth = authenticator(http_client, provider, token_url=f"http://127.0.0.1:{closed_port()}/token")
    auth.login_service = "Lab Login"
    auth.unreachable_message = "{login_service} is away."
    with pytest.raises(web.HTTPError) as raised:
        await login(auth, "alice")
    assert raised.value.get_message() == "Lab Login is away."


async def test_a_tls_provider_that_is_down_is_down(http_client, tls_provider, caplog):
    # TLS settings that are right do not make a refused connection a configuration error
    _, ca = tls_provider
    port = closed_port()
    auth = authenticator(http_client, f"https://127.0.0.1:{port}", request_kwargs={"ca_certs": str(ca)})
    with pytest.raises(web.HTTPError) as raised:
        await login(auth, "alice")
    assert_readable_503(raised.value, caplog)


# --- the hub's own TLS settings are wrong: the admin's to fix, not the user's to wait out ----


async def test_a_provider_the_hub_is_told_to_trust_logs_users_in(http_client, tls_provider):
    # the control for the tests below: this provider works over TLS when the hub trusts its CA
    url, ca = tls_provider
    model = await login(authenticator(http_client, url, request_kwargs={"ca_certs": str(ca)}), "alice")
    assert (model["name"], model["groups"]) == ("alice", ["students"])


async def test_a_certificate_the_hub_does_not_trust_is_reported_as_misconfigured(http_client, tls_provider, caplog):
    url, _ = tls_provider
    with pytest.raises(web.HTTPError) as raised:
        await login(authenticator(http_client, url), "alice")
    # curl: "SSL certificate problem: unable to get local issuer certificate";
    # Python's ssl: "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: ..."
    assert_misconfigured(raised.value, caplog, cause="certificate")


@pytest.mark.parametrize("setting", ["ca_certs", "client_cert"])
async def test_a_tls_file_that_does_not_exist_is_named_in_the_log(http_client, tls_provider, setting, caplog):
    url, ca = tls_provider
    kwargs = {"ca_certs": str(ca), setting: MISSING_FILE}
    with pytest.raises(web.HTTPError) as raised:
        await login(authenticator(http_client, url, request_kwargs=kwargs), "alice")
    assert_misconfigured(raised.value, caplog, cause=MISSING_FILE)


async def test_the_misconfigured_sentence_is_configurable(http_client, tls_provider):
    url, _ = tls_provider
    auth = authenticator(http_client, url)
    auth.login_service = "Lab Login"
    auth.misconfigured_message = "{login_service} needs the admin."
    with pytest.raises(web.HTTPError) as raised:
        await login(auth, "alice")
    assert raised.value.get_message() == "Lab Login needs the admin."


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        # curl: HTTP 599 with libcurl's error number
        (CurlError(7, "Failed to connect to 127.0.0.1 port 1: Connection refused"), Failure.UNREACHABLE),
        (CurlError(6, "Could not resolve host: keycloak.invalid"), Failure.UNREACHABLE),
        (CurlError(28, "Operation timed out after 2000 milliseconds"), Failure.UNREACHABLE),
        (CurlError(60, "SSL certificate problem: self-signed certificate"), Failure.MISCONFIGURED),
        (CurlError(77, "error setting certificate file: /etc/x.pem"), Failure.MISCONFIGURED),
        (CurlError(35, "OpenSSL/3.0: error:0A00010B:SSL routines::wrong version number"), Failure.MISCONFIGURED),
        # a TCP load balancer with no provider behind it closes the handshake: an outage
        (CurlError(35, "Recv failure: Connection reset by peer"), Failure.UNREACHABLE),
        (CurlError(35, "OpenSSL SSL_connect: SSL_ERROR_SYSCALL in connection to kc:443"), Failure.UNREACHABLE),
        (HTTPClientError(503), Failure.UNREACHABLE),
        (HTTPClientError(401), Failure.OTHER),
        (HTTPClientError(500), Failure.OTHER),
        # tornado's simple client: the socket's and ssl's own exceptions
        (ConnectionRefusedError(111, "Connection refused"), Failure.UNREACHABLE),
        (socket.gaierror(-2, "Name or service not known"), Failure.UNREACHABLE),
        (OSError(113, "No route to host"), Failure.UNREACHABLE),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), Failure.UNREACHABLE),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), Failure.MISCONFIGURED),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), Failure.MISCONFIGURED),
        (FileNotFoundError(2, "No such file or directory"), Failure.MISCONFIGURED),
        (PermissionError(13, "Permission denied"), Failure.MISCONFIGURED),
    ],
    ids=lambda value: value.name if isinstance(value, Failure) else f"{type(value).__name__}-{value}"[:60],
)
def test_how_each_client_s_failures_are_read(error, failure):
    assert classify(error) is failure


# --- requests that are not the provider's ----------------------------------------------------


def failing_service(kind: str, provider: str, tls_provider: tuple[str, Path]) -> str:
    """The URL of another service that an admin's hook calls, failing as ``kind`` says."""
    return {
        "refused": f"http://127.0.0.1:{closed_port()}/directory",
        "untrusted": f"{tls_provider[0]}/gateway/200",
        "unavailable": f"{provider}/gateway/503",
    }[kind]


@pytest.mark.parametrize("kind", ["refused", "untrusted", "unavailable"])
async def test_a_hook_handles_its_own_request_s_failure(http_client, provider, tls_provider, kind):
    # As with GenericOAuthenticator: a hook that calls another service and copes with its
    # failure logs the user in; the failure is not the provider's.
    url = failing_service(kind, provider, tls_provider)

    async def hook(auth: GenericOAuthenticator, auth_state: dict[str, Any]) -> dict[str, Any]:
        try:
            await auth.httpfetch(url, method="POST", body=b"")
        except (HTTPClientError, OSError) as error:
            auth_state["directory"] = type(error).__name__
        return auth_state

    auth = authenticator(http_client, provider)
    auth.modify_auth_state_hook = hook
    model = await login(auth, "alice")
    assert model["name"] == "alice" and model["auth_state"]["directory"]


@pytest.mark.parametrize("kind", ["refused", "untrusted", "unavailable"])
async def test_a_hook_s_unhandled_failure_is_raised_as_generic_oauthenticator_raises_it(
    http_client, provider, tls_provider, kind
):
    url = failing_service(kind, provider, tls_provider)

    async def hook(auth: GenericOAuthenticator, auth_state: dict[str, Any]) -> dict[str, Any]:
        await auth.httpfetch(url, method="POST", body=b"")
        return auth_state

    raised = []
    for cls in (GenericOAuthenticator, DCloudOAuthenticator):
        auth = authenticator(http_client, provider, cls=cls)
        auth.modify_auth_state_hook = hook
        with pytest.raises(Exception) as error:
            await login(auth, "alice")
        raised.append((type(error.value), getattr(error.value, "code", None)))
    assert raised[1] == raised[0]
    assert not issubclass(raised[1][0], web.HTTPError)


# --- the normal path, untouched --------------------------------------------------------------


async def test_a_user_logs_in_with_the_provider_s_groups(http_client, provider):
    auth = authenticator(http_client, provider)
    alice = await login(auth, "alice")
    assert (alice["name"], alice["groups"], alice["admin"]) == ("alice", ["students"], False)
    assert alice["auth_state"]["access_token"] == "token-of-alice"
    bob = await login(auth, "bob")
    assert (bob["groups"], bob["admin"]) == (["dcloud-admins", "researchers"], True)


async def test_the_provider_s_own_refusal_is_left_to_oauthenticator(http_client, provider):
    # An answer from the provider (a used code, here) is not an outage: no 503 page.
    auth = authenticator(http_client, provider)
    with pytest.raises(HTTPClientError) as raised:
        await login(auth, "mallory")
    assert raised.value.code == 400


# --- users in no group -------------------------------------------------------------------------


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("user", ["carol", "dave"])
async def test_a_user_without_a_groups_claim_is_in_no_group_without_an_error(http_client, provider, user, caplog):
    caplog.set_level(logging.DEBUG)
    auth = authenticator(http_client, provider)
    await login(auth, "alice")  # the claim has been seen: its name is right
    caplog.clear()
    model = await login(auth, user)
    assert (model["name"], model["groups"], model["admin"]) == (user, [], False)
    assert warnings(caplog) == []
    assert any("no group" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


async def test_a_null_groups_claim_shows_that_the_claim_s_name_is_right(http_client, provider, caplog):
    model = await login(authenticator(http_client, provider), "dave")
    assert model["groups"] == [] and warnings(caplog) == []


async def test_a_groups_claim_never_seen_is_warned_about_once(http_client, provider, caplog):
    # The first user may be in no group, or the key may be misspelt: the log cannot tell, and
    # says both, once.
    caplog.set_level(logging.DEBUG)
    auth = authenticator(http_client, provider)
    assert (await login(auth, "carol"))["groups"] == []
    [warning] = warnings(caplog)
    assert "oauth_user.groups" in warning and "misspelt" in warning
    caplog.clear()
    await login(auth, "carol")
    assert warnings(caplog) == []
    assert any("no group" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


async def test_a_misspelt_groups_key_is_warned_about_once(http_client, provider, caplog):
    auth = authenticator(http_client, provider, groups_key="oauth_user.grups")
    for user in ("alice", "bob", "carol"):
        assert (await login(auth, user))["groups"] == []
    [warning] = warnings(caplog)
    assert "oauth_user.grups" in warning and "misspelt" in warning
    # the claims the provider did send, to spot the right name among
    assert "groups" in warning.replace("oauth_user.grups", "")


async def test_a_wrong_groups_key_is_still_reported(http_client, provider, caplog):
    # A path that does not lead to the user's claims is a configuration mistake, not a user
    # without groups: OAuthenticator's error stays.
    model = await login(authenticator(http_client, provider, groups_key="userinfo.groups"), "alice")
    assert model["groups"] == []
    assert any(GROUPS_ERROR in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)

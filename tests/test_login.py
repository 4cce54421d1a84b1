"""dcloud_spawner.hub.login: GenericOAuthenticator against a provider on loopback.

The provider here is a small tornado app with the token and userinfo endpoints of an OpenID
Connect provider, so that it can be absent, slow or behind a failing gateway on demand; the
real Keycloak logs users in through the chart's hub in tests/browser/test_oidc_login.py.
Both of tornado's HTTP clients are used: curl (the chart's hub selects it) and the default.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from tornado import web
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.httpserver import HTTPServer
from tornado.simple_httpclient import SimpleAsyncHTTPClient
from traitlets.config import Config

from dcloud_spawner.hub.login import DCloudOAuthenticator
from tests.hub import free_port

SENTENCE = "Keycloak could not be reached, so you could not be logged in: please try again in a few minutes."
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


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[str]:
    app = web.Application([(r"/token", Token), (r"/userinfo", UserInfo), (r"/gateway/(\d+)", Gateway)])
    server = HTTPServer(app)
    port = free_port()
    server.listen(port, "127.0.0.1")
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(params=["curl", "simple"])
async def http_client(request) -> AsyncIterator[AsyncHTTPClient]:
    # made on the running loop: tornado binds a client to the IOLoop current at creation, and
    # one bound to another loop never delivers its answers or its timeouts (the test hangs)
    client = (CurlAsyncHTTPClient if request.param == "curl" else SimpleAsyncHTTPClient)(force_instance=True)
    yield client
    client.close()


def authenticator(http_client: AsyncHTTPClient, base: str, groups_key: str = "oauth_user.groups",
                  token_url: str | None = None) -> DCloudOAuthenticator:  # fmt: skip
    """Configured as helm-values/values.yaml does, under the GenericOAuthenticator section."""
    c = Config()
    c.GenericOAuthenticator.update(
        login_service="Keycloak", client_id="dcloud", client_secret="s3cret",
        oauth_callback_url="http://127.0.0.1/hub/oauth_callback",
        token_url=token_url or f"{base}/token", userdata_url=f"{base}/userinfo",
        username_claim="preferred_username", manage_groups=True, auth_state_groups_key=groups_key,
        admin_groups={"dcloud-admins"}, allow_all=True, http_request_kwargs={"request_timeout": 2},
        # PKCE's verifier travels in the hub's state cookie, which needs a browser; the login
        # through Keycloak in tests/browser/test_oidc_login.py uses it
        enable_pkce=False,
    )  # fmt: skip
    return DCloudOAuthenticator(config=c, http_client=http_client)


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


@pytest.mark.parametrize("user", ["carol", "dave"])
async def test_a_user_without_a_groups_claim_is_in_no_group_without_an_error(http_client, provider, user, caplog):
    caplog.set_level(logging.DEBUG)
    model = await login(authenticator(http_client, provider), user)
    assert (model["name"], model["groups"], model["admin"]) == (user, [], False)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("no group" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


async def test_a_wrong_groups_key_is_still_reported(http_client, provider, caplog):
    # A path that does not lead to the user's claims is a configuration mistake, not a user
    # without groups: OAuthenticator's error stays.
    model = await login(authenticator(http_client, provider, groups_key="userinfo.groups"), "alice")
    assert model["groups"] == []
    assert any(GROUPS_ERROR in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)

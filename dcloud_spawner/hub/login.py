"""Login through an OpenID Connect provider: OAuthenticator's ``GenericOAuthenticator``,
with three differences that users and operators notice.

- A provider that cannot be reached (down, or the network between) ends the login on a
  503 page with one sentence saying so, instead of "500 : Internal Server Error" and a
  traceback in the hub's log. Only the provider's own requests (``token_url``, also for a
  refresh, and ``userdata_url``) are treated so; a request that an admin's hook makes
  through ``httpfetch`` fails exactly as it would with ``GenericOAuthenticator``.
- The hub's own TLS settings being wrong (a provider certificate the hub does not trust, a
  ``ca_certs`` or ``client_cert`` in ``http_request_kwargs`` that does not exist) is not an
  outage that waiting fixes: the hub logs the cause, naming the file or the failed
  verification, and the user reads a 500 page saying that login is misconfigured and to
  tell the administrator.
- A user in no group logs in quietly. Keycloak, like other providers, leaves an empty
  ``groups`` claim out of the userinfo, which OAuthenticator logs as an ERROR at every
  login; here a missing (or null) claim means no groups, logged at INFO. Until the claim
  has appeared in some answer, its first absence is a WARNING (once per key and hub
  process), as a misspelt ``auth_state_groups_key`` looks the same.

Select it with ``c.JupyterHub.authenticator_class = "dcloud-oauth"`` (the
``jupyterhub.authenticators`` entry point). Every ``GenericOAuthenticator`` setting applies
to it unchanged, also when configured under ``c.GenericOAuthenticator``.

OAuthenticator is imported here only: the spawner runs without it (it is part of the
Zero to JupyterHub hub image, and of DCloud's ``test`` extra).
"""

from __future__ import annotations

import os
import ssl
from enum import Enum
from functools import reduce
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from oauthenticator.generic import GenericOAuthenticator
from tornado import web
from tornado.httpclient import HTTPClientError, HTTPRequest
from traitlets import Unicode

#: Answers that mean the provider itself was not reached: 599 is tornado's code for no
#: HTTP answer at all (refused, timed out, name not resolved); 502-504 come from a proxy
#: or ingress in front of a provider that is down.
UNREACHABLE_CODES = frozenset({502, 503, 504, 599})

#: libcurl's errors (``CurlError.errno``, behind an HTTP 599) that come from the hub's own
#: request settings or TLS, not from the provider being away: unsupported protocol (1),
#: malformed URL (3), TLS handshake refused (35, unless the connection just closed),
#: crypto engine (53, 54, 66), client certificate or key unusable (58), cipher (59),
#: server certificate not trusted (60), CA file unusable (77), TLS shutdown (80), CRL file
#: (82), issuer check (83), pinned key mismatch (90), certificate status (91).
CURL_MISCONFIGURED = frozenset({1, 3, 35, 53, 54, 58, 59, 60, 66, 77, 80, 82, 83, 90, 91})
#: How curl words a handshake (35) that ended because the other end went away, as a TCP
#: load balancer with no provider behind it does: an outage, not the hub's settings.
CURL_HANDSHAKE_CLOSED = ("reset by peer", "ssl_error_syscall", "eof")


class Failure(Enum):
    """What a failed request to the provider means for the user."""

    UNREACHABLE = "unreachable"  # try again later: the 503 page
    MISCONFIGURED = "misconfigured"  # the hub's settings: the 500 page that sends to the admin
    OTHER = "other"  # the provider answered: OAuthenticator's to handle


def classify(error: HTTPClientError | OSError) -> Failure:
    """What a failed request to the provider means. The two HTTP clients report the same
    failure differently: curl as HTTP 599 with its error number, tornado's simple client
    as the socket's or ssl's own exception (all of them ``OSError``). A failure to
    transport the request that is not recognised as the hub's settings counts as the
    provider not reached."""
    if isinstance(error, HTTPClientError):
        curl_errno = getattr(error, "errno", None) if error.code == 599 else None
        if curl_errno in CURL_MISCONFIGURED:
            closed = curl_errno == 35 and any(words in str(error).lower() for words in CURL_HANDSHAKE_CLOSED)
            return Failure.UNREACHABLE if closed else Failure.MISCONFIGURED
        return Failure.UNREACHABLE if error.code in UNREACHABLE_CODES else Failure.OTHER
    if isinstance(error, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return Failure.UNREACHABLE  # the other end closed during the handshake, as curl's 35 above
    # verification failed, wrong protocol (https to an http port), an unusable client
    # certificate: waiting does not change what the hub's TLS settings make of the provider
    if isinstance(error, ssl.SSLError):
        return Failure.MISCONFIGURED
    # a ca_certs / client_cert / client_key that is missing or unreadable
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return Failure.MISCONFIGURED
    return Failure.UNREACHABLE  # refused, reset, timed out, name not resolved, no route


def without_query(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(query="", fragment=""))


def missing_files(req: HTTPRequest) -> list[str]:
    """The request's TLS files that do not exist, as ``setting path`` (the simple client's
    FileNotFoundError names none)."""
    paths = {"ca_certs": req.ca_certs, "client_cert": req.client_cert, "client_key": req.client_key}
    return [f"{name} {path}" for name, path in paths.items() if path and not os.path.exists(path)]


class DCloudOAuthenticator(GenericOAuthenticator):
    """``GenericOAuthenticator`` that says so when the provider is down or the hub's TLS
    settings are wrong, and takes a missing groups claim as no groups."""

    unreachable_message = Unicode(
        "{login_service} could not be reached, so you could not be logged in: please try again in a few minutes.",
        config=True,
        help="""The sentence of the 503 page shown when the identity provider cannot be
        reached during a login (connection refused or timed out, its name not resolved, or
        a proxy in front of it answering 502-504). ``{login_service}`` is replaced by
        ``login_service``.""",
    )

    misconfigured_message = Unicode(
        "Login through {login_service} is misconfigured on this hub, so you could not be logged in: "
        "please tell the hub's administrator.",
        config=True,
        help="""The sentence of the 500 page shown when a request to the identity provider
        fails because of the hub's own settings: a provider certificate the hub does not
        trust, or a ``ca_certs`` / ``client_cert`` / ``client_key`` in
        ``http_request_kwargs`` that does not exist or cannot be used. The hub's log names
        the cause. ``{login_service}`` is replaced by ``login_service``.""",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The hub makes one authenticator: these hold for the hub process. Keys of
        # auth_state_groups_key whose claim some answer had, and those already warned about.
        self._groups_claims_seen: set[str] = set()
        self._groups_claims_warned: set[str] = set()

    def is_provider_request(self, req: HTTPRequest | str) -> bool:
        """Whether ``req`` goes to the provider's token or userinfo endpoint (a login or a
        refresh), rather than to a service that a hook calls through ``httpfetch``."""
        endpoints = {without_query(url) for url in (self.token_url, self.userdata_url) if url}
        return isinstance(req, HTTPRequest) and without_query(req.url) in endpoints

    async def fetch(self, req: HTTPRequest, label: str = "fetching", parse_json: bool = True, **kwargs: Any) -> Any:
        try:
            return await super().fetch(req, label=label, parse_json=parse_json, **kwargs)
        except (HTTPClientError, OSError) as error:
            if not self.is_provider_request(req):
                raise  # a hook's own request: the hook's to handle, as with GenericOAuthenticator
            failure = classify(error)
            if failure is Failure.OTHER:
                raise  # the provider answered: its answer is OAuthenticator's to handle
            url = without_query(req.url)
            if failure is Failure.MISCONFIGURED:
                files = missing_files(req)
                cause = f"{error}" + (f" (does not exist: {', '.join(files)})" if files else "")
                self.log.error(
                    "Error %s %s %s: %s. The hub's TLS or request settings (http_request_kwargs, "
                    "validate_server_cert) are wrong, not the provider: users are told to contact you.",
                    label, req.method, url, cause,
                )  # fmt: skip
                message = self.misconfigured_message.format(login_service=self.login_service)
                raise web.HTTPError(500, message, reason="Internal Server Error") from None
            if not isinstance(error, HTTPClientError):
                # OAuthenticator logs failed HTTP requests only; name the cause of this one
                self.log.warning("Error %s %s %s: %s", label, req.method, url, error)
            message = self.unreachable_message.format(login_service=self.login_service)
            # A short reason makes the page's title; the sentence is its body, once.
            raise web.HTTPError(503, message, reason="Service Unavailable") from None

    async def get_user_groups(self, auth_state: dict[str, Any]) -> set[str]:
        # OAuthenticator's documented hook for the groups of `manage_groups`.
        key = self.auth_state_groups_key
        if isinstance(key, str) and key:
            *path, claim = key.split(".")
            holder = reduce(lambda d, k: d.get(k) if isinstance(d, dict) else None, path, auth_state)
            if isinstance(holder, dict):
                if claim in holder:
                    self._groups_claims_seen.add(key)  # even null: the name is right
                if holder.get(claim) is None:
                    # Providers omit an empty groups claim; a wrong path above the claim
                    # (holder missing) still reaches OAuthenticator's error below.
                    self._log_no_groups(key, claim, holder)
                    return set()
        return await super().get_user_groups(auth_state)

    def _log_no_groups(self, key: str, claim: str, holder: dict[str, Any]) -> None:
        if key in self._groups_claims_seen or key in self._groups_claims_warned:
            self.log.info("No %s in the provider's answer: a user in no group", key)
            return
        # A misspelt key looks like a user in no group; until some answer has had the
        # claim, say both, once.
        self._groups_claims_warned.add(key)
        self.log.warning(
            "No %r claim in any answer from %s so far (auth_state_groups_key %r): either this user "
            "is in no group, or the key is misspelt; the answer's claims are %s. Later misses are "
            "logged at INFO.",
            claim, self.login_service, key, ", ".join(sorted(holder)) or "none",
        )  # fmt: skip

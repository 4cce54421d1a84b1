"""Login through an OpenID Connect provider: OAuthenticator's ``GenericOAuthenticator``,
with two differences that users and operators notice.

- A provider that cannot be reached (down, or the network between) ends the login on a
  503 page with one sentence saying so, instead of "500 : Internal Server Error" and a
  traceback in the hub's log.
- A user in no group logs in quietly. Keycloak, like other providers, leaves an empty
  ``groups`` claim out of the userinfo, which OAuthenticator logs as an ERROR at every
  login; here a missing (or null) claim means no groups.

Select it with ``c.JupyterHub.authenticator_class = "dcloud-oauth"`` (the
``jupyterhub.authenticators`` entry point). Every ``GenericOAuthenticator`` setting applies
to it unchanged, also when configured under ``c.GenericOAuthenticator``.

OAuthenticator is imported here only: the spawner runs without it (it is part of the
Zero to JupyterHub hub image, and of DCloud's ``test`` extra).
"""

from __future__ import annotations

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


def provider_unreachable(error: Exception) -> bool:
    """Whether a failed request to the provider means that the provider was not reached."""
    if isinstance(error, HTTPClientError):
        return error.code in UNREACHABLE_CODES
    # tornado's simple client raises socket errors (refused, DNS, TLS) as they are
    return isinstance(error, OSError)


class DCloudOAuthenticator(GenericOAuthenticator):
    """``GenericOAuthenticator`` that says so when the provider is down and takes a missing
    groups claim as no groups."""

    unreachable_message = Unicode(
        "{login_service} could not be reached, so you could not be logged in: please try again in a few minutes.",
        config=True,
        help="""The sentence of the 503 page shown when the identity provider cannot be
        reached during a login. ``{login_service}`` is replaced by ``login_service``.""",
    )

    async def fetch(self, req: HTTPRequest, label: str = "fetching", parse_json: bool = True, **kwargs: Any) -> Any:
        # Every request to the provider (token, userinfo, refresh) goes through here.
        try:
            return await super().fetch(req, label=label, parse_json=parse_json, **kwargs)
        except (HTTPClientError, OSError) as error:
            if not provider_unreachable(error):
                raise  # the provider answered: its answer is OAuthenticator's to handle
            if not isinstance(error, HTTPClientError):
                # OAuthenticator logs failed HTTP requests only; name the cause of this one
                url = urlunsplit(urlsplit(req.url)._replace(query=""))
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
            if isinstance(holder, dict) and holder.get(claim) is None:
                # Providers omit an empty groups claim; a wrong path above the claim
                # (holder missing) still reaches OAuthenticator's error below.
                self.log.info("No %s in the provider's answer: a user in no group", key)
                return set()
        return await super().get_user_groups(auth_state)

"""Logging in through a real OpenID Connect provider (Keycloak), in Chromium.

The hub is the chart's own (tests/support/helm_release.py): helm-values/values.yaml with only the
site's addresses filled in (the provider's URLs, the callback, the client), so the login goes
through GenericOAuthenticator exactly as the values configure it. Keycloak (tests/support/idp.py) holds
the realm `lab` that the test setup makes: `alice` in `students`, `bob` in `researchers` and
`medical`, `carol` in no group. Users type their password into Keycloak's own login page; their
groups come from the provider's `groups` claim at every login.
"""

from __future__ import annotations

import re
import secrets

import pytest

from tests.browser.conftest import shot
from tests.support import idp
from tests.support.helm_release import Release, release_namespace

pytestmark = [pytest.mark.browser, pytest.mark.cluster]

NAMESPACE = "dcloud-oidc"
REALM = "lab"
CLIENT_ID = "dcloud"
USERS = {"alice": ["students"], "bob": ["researchers", "medical"], "carol": []}
PASSWORD = secrets.token_urlsafe(10)


@pytest.fixture(scope="module")
def keycloak(tmp_path_factory):
    reason = idp.missing()
    if reason:
        from tests.support.helm import unavailable

        unavailable(reason)
    keycloak = idp.start(tmp_path_factory.mktemp("keycloak") / "keycloak.log")
    print(f"\nKeycloak {idp.KEYCLOAK_VERSION} ready in {keycloak.start_seconds:.1f} s")
    yield keycloak
    idp.stop(keycloak)


@pytest.fixture(scope="module")
def hub(kube_cluster, keycloak, tmp_path_factory):
    """The chart's hub with the site's OIDC addresses, and the realm that serves it."""
    client_secret = secrets.token_urlsafe(24)
    with release_namespace(kube_cluster, NAMESPACE):
        release = Release(kube_cluster, NAMESPACE, tmp_path_factory.mktemp("oidc-release"),
                          secrets={"dcloud-oidc": {"client-secret": client_secret}})  # fmt: skip
        callback = f"{release.url}/hub/oauth_callback"
        endpoints = keycloak.realm_url(REALM)
        release.add_values({"hub": {"config": {"GenericOAuthenticator": {
            "client_id": CLIENT_ID, "oauth_callback_url": callback, "authorize_url": f"{endpoints}/auth",
            "token_url": f"{endpoints}/token", "userdata_url": f"{endpoints}/userinfo",
        }}}})  # fmt: skip
        keycloak.create_realm(REALM, CLIENT_ID, client_secret, callback, USERS, PASSWORD)
        release.upgrade()
        try:
            yield release.start_hub()
        finally:
            release.stop_hub()


@pytest.fixture
def context(browser):
    """A fresh browser profile per login: no cookie of the hub or of the provider."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    yield context
    context.close()


def open_provider_login(page, hub, keycloak, user: str, password: str = PASSWORD) -> None:
    """From the hub's login page to the provider's, with the user's name and password typed in."""
    page.goto(f"{hub.url}/hub/login")
    page.get_by_text("Sign in with Keycloak").click()
    page.wait_for_url(f"{keycloak.url}/realms/{REALM}/**")
    page.fill("#username", user)
    page.fill("#password", password)


def login_at_provider(page, hub, keycloak, user: str, password: str = PASSWORD) -> None:
    open_provider_login(page, hub, keycloak, user, password)
    page.click("#kc-login")


def form_choices(page) -> tuple[list[str], list[str]]:
    """The GPU classes and datasets the form offers (option values, "" being CPU only)."""
    page.locator("#dcloud-form").wait_for()
    gpus = page.eval_on_selector_all("#dcloud-gpu-type option", "os => os.map(o => o.value)")
    datasets = page.eval_on_selector_all('input[name="datasets"]', "es => es.map(e => e.value)")
    return gpus, datasets


def test_alice_logs_in_at_the_provider_and_gets_the_student_s_form(context, hub, keycloak):
    page = context.new_page()
    login_at_provider(page, hub, keycloak, "alice")
    page.wait_for_url(re.compile(rf"{re.escape(hub.url)}/hub/spawn.*"))
    gpus, datasets = form_choices(page)
    assert gpus == ["", "t4"]
    assert "medical-scans" not in datasets and "imagenet" in datasets
    shot(page, "oidc-01-alice-form")


def test_bob_sees_every_class_and_the_medical_dataset(context, hub, keycloak):
    page = context.new_page()
    login_at_provider(page, hub, keycloak, "bob")
    gpus, datasets = form_choices(page)
    assert gpus == ["", "a100", "t4", "a100-mig-1g"]
    assert "medical-scans" in datasets


def test_carol_in_no_group_gets_cpu_only(context, hub, keycloak):
    hub_log = hub.state / "hub.log"
    logged_before = hub_log.stat().st_size
    page = context.new_page()
    login_at_provider(page, hub, keycloak, "carol")
    gpus, datasets = form_choices(page)
    assert gpus == [""]
    assert page.is_disabled("#dcloud-gpu-type")
    assert "medical-scans" not in datasets
    # Keycloak sends no groups claim for her: no groups, and no error in the hub's log
    with hub_log.open("rb") as log:
        log.seek(logged_before)
        login_log = log.read().decode(errors="replace")
    assert "No oauth_user.groups in the provider's answer" in login_log
    assert [line for line in login_log.splitlines() if line.startswith(("[E", "[W"))] == [], login_log
    assert hub.api("GET", "/users/carol")[1]["groups"] == []


def test_groups_changed_at_the_provider_count_at_the_next_login(browser, hub, keycloak):
    keycloak.add_to_group(REALM, "alice", "researchers")
    context = browser.new_context()
    try:
        page = context.new_page()
        login_at_provider(page, hub, keycloak, "alice")
        gpus, _ = form_choices(page)
        assert gpus == ["", "a100", "t4", "a100-mig-1g"]
        shot(page, "oidc-02-alice-researcher-form")
    finally:
        context.close()
    status, model = hub.api("GET", "/users/alice")
    assert status == 200 and sorted(model["groups"]) == ["researchers", "students"]


def test_a_wrong_password_stays_at_the_provider(context, hub, keycloak):
    def hub_logins() -> int:
        return (hub.state / "hub.log").read_text(errors="replace").count("User logged in: dave")

    keycloak.admin("POST", f"/{REALM}/users", {
        "username": "dave", "enabled": True, "email": "dave@example.org", "emailVerified": True,
        "firstName": "Dave", "lastName": "Tester",
        "credentials": [{"type": "password", "value": PASSWORD, "temporary": False}],
    })  # fmt: skip
    page = context.new_page()
    login_at_provider(page, hub, keycloak, "dave", password="not-" + PASSWORD)
    page.locator("#input-error, .kc-feedback-text, [id*=error]").first.wait_for()
    assert page.url.startswith(f"{keycloak.url}/realms/{REALM}/")
    assert "Invalid username or password." in page.inner_text("body")
    assert page.input_value("#username") == "dave"
    # The hub never heard of dave; with the right password he gets in.
    assert hub.api("GET", "/users/dave")[0] == 404 and hub_logins() == 0
    page.fill("#password", PASSWORD)
    page.click("#kc-login")
    page.locator("#dcloud-form").wait_for()
    assert hub_logins() == 1


def test_a_provider_that_is_down_gives_a_readable_error_page(context, hub, keycloak):
    """Keycloak stops after it sent the browser back with a code: the hub cannot redeem it.
    Runs last: the provider stays down."""
    page = context.new_page()

    def provider_goes_down(route):
        # Keycloak checks the password and answers with the redirect to the hub's callback;
        # the browser gets that answer only once Keycloak is gone. (Playwright routes no
        # request that follows a redirect, so the provider's answer is where to step in.)
        answer = route.fetch(max_redirects=0)
        idp.stop(keycloak)
        route.fulfill(response=answer)

    page.route(re.compile(r".*/login-actions/authenticate.*"), provider_goes_down)
    open_provider_login(page, hub, keycloak, "carol")
    with page.expect_response(re.compile(r".*/hub/oauth_callback.*"), timeout=90_000) as callback:
        page.click("#kc-login")
    page.wait_for_load_state()
    shot(page, "oidc-03-provider-down")
    body = page.inner_text("body")
    assert callback.value.status == 503
    # the page's title says what failed, and the sentence below it why, once
    assert page.inner_text("h1").strip() == "503 : Service Unavailable"
    sentence = "Keycloak could not be reached, so you could not be logged in: please try again in a few minutes."
    assert body.count(sentence) == 1 and body.count("could not be reached") == 1, body
    assert "Traceback" not in body and 'File "' not in body, body
    assert page.url.startswith(f"{hub.url}/hub/oauth_callback")
    assert hub.api("GET", "/")[0] == 200  # the hub itself is fine

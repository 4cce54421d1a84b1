"""Upstream tests DCloud fails, each with why. tests/upstream/test_upstream.py fails when a test
not listed here fails, and when a listed one passes, no longer exists, or fails with upstream's
own class too (so the list stays true). Tests that fail with upstream's own class as well (the
suite's own incompatibilities at the installed versions) are left out: they are not judged, and
the test prints them.

Keys: the suite's name (tests/upstream/sources.py), then the upstream's node id."""

from __future__ import annotations

JH = "jupyterhub/tests/test_spawner.py::"
OAUTH = "oauthenticator/tests/test_generic.py::"
# traitlets names the class of the instance in its messages; these tests match the literal text
CLASS_NAME = "the message names DCloudOAuthenticator where the test matches the literal 'GenericOAuthenticator'"

# Legitimate differences: DCloud means to behave otherwise than upstream here.
DELIBERATE: dict[str, dict[str, str]] = {
    "jupyterhub": {
        f"{JH}test_predefined_options_from_form[default]": (
            "DCloud's default options_from_form is its form parser: form fields are validated against the catalog "
            "into normalised options, never passed through unchanged (every entry point goes through one gate)"
        ),
    },
    "oauthenticator": {
        f"{OAUTH}test_deprecated_config[claim_groups_key-class_config0-expect_config0-30-expect_message0]": CLASS_NAME,
        f"{OAUTH}test_generic_manage_groups_required[admin_groups-value1]": CLASS_NAME,
        f"{OAUTH}test_generic_manage_groups_required[allowed_groups-value2]": CLASS_NAME,
        f"{OAUTH}test_generic_manage_groups_required[auth_state_groups_key-oauth_user.permissions.groups]": CLASS_NAME,
    },
}

# DCloud defects being fixed right now: the fixers delete an entry when its test passes.
DEFECTS_BEING_FIXED: dict[str, dict[str, str]] = {
    "jupyterhub": {
        f"{JH}test_popen_kwargs": "DCloudLocalSpawner ignores Spawner.cmd (always python -m jupyterhub.singleuser)",
        f"{JH}test_apply_user_options_dict": (
            "an admin's own apply_user_options (here a dict) is not what applies the options: DCloud's validation "
            "still refuses them (400 Unknown field 'cpu_limit')"
        ),
    },
}

# Upstream tests that skip here, and why that is right (in CI any other skip is a failure).
EXPECTED_SKIPS: dict[str, dict[str, str]] = {}

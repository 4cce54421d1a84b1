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

KS = "tests/test_profile.py::"
KSS = "tests/test_spawner.py::"
# the catalog replaces KubeSpawner's profile_list: DCloud's options are the catalog's fields
PROFILES = "profile_list/profile_options are replaced by the catalog; DCloud validates its own option fields"
# (KubeSpawner's profiles; with list and dict forms of the same profiles)
PROFILE_TESTS = ("test_user_options_set_from_form", "test_user_options_set_from_form_choices",
                 "test_user_options_set_from_form_unlisted_choice", "test_user_options_set_from_form_invalid_regex",
                 "test_user_options_set_from_form_no_regex", "test_kubespawner_override", "test_user_options_api",
                 "test_default_profile")  # fmt: skip

# Legitimate differences: DCloud means to behave otherwise than upstream here.
DELIBERATE: dict[str, dict[str, str]] = {
    "jupyterhub": {
        f"{JH}test_predefined_options_from_form[default]": (
            "DCloud's default options_from_form is its form parser: form fields are validated against the catalog "
            "into normalised options, never passed through unchanged (every entry point goes through one gate)"
        ),
        f"{JH}test_apply_user_options_dict": (
            "an option field neither the catalog nor the site's hook declares ('cpu_limit' here) is refused with a "
            "400 naming it, where JupyterHub ignores it with a warning: a user's request never silently differs "
            "from what starts. The dict's own fields are applied as upstream does, then the catalog gate runs"
        ),
    },
    "oauthenticator": {
        f"{OAUTH}test_deprecated_config[claim_groups_key-class_config0-expect_config0-30-expect_message0]": CLASS_NAME,
        f"{OAUTH}test_generic_manage_groups_required[admin_groups-value1]": CLASS_NAME,
        f"{OAUTH}test_generic_manage_groups_required[allowed_groups-value2]": CLASS_NAME,
        f"{OAUTH}test_generic_manage_groups_required[auth_state_groups_key-oauth_user.permissions.groups]": CLASS_NAME,
    },
    "kubespawner": {
        # the pod's image comes from the catalog's default environment, not the profile's choice
        f"{KS}test_empty_user_options_and_profile_options_api": PROFILES,
        f"{KS}test_profile_slug_and_option_slug_mixup[profile_list0-formdata0]": PROFILES,
        # 'image--unlisted-choice' is refused as an unknown field, in one sentence naming the allowed ones
        f"{KS}test_unlisted_choice_non_string_override": PROFILES,
        # the form gives the catalog's fields (environment, ...), not 'profile'; the REST 'profile' is
        # refused as an unknown field; the image is the catalog's default environment's
        **{f"{KSS}{test}[test_profiles{n}]": PROFILES for test in PROFILE_TESTS for n in (0, 1)},
        # on real-0: a 'profile' naming another namespace is refused as an unknown field (a 400)
        f"{KSS}test_spawn_start_profile_list_override_namespace": PROFILES,
        f"{KSS}test_spawn_start_profile_callback_override_namespace": PROFILES,
        f"{KSS}test_spawner_values": (
            "DCloud runs notebooks as uid 1000 with fs_gid 100 by default (Docker Stacks' jovyan/users, and "
            "the restricted Pod Security the chart's namespace enforces needs a non-root uid), where KubeSpawner "
            "leaves uid and fs_gid unset (None); set values are kept as upstream does"
        ),
        f"{KSS}test_get_pod_manifest_tolerates_mixed_input": (
            "its init container runs as root (run_as_user 0, privileged) in a pod whose default security context "
            "is restricted (runAsNonRoot): Kubernetes would never start it, so DCloud refuses the manifest in one "
            "sentence (a 400 naming the container) before anything is created, where KubeSpawner builds it"
        ),
    },
}

# DCloud defects being fixed: an entry goes when its test passes (none left).
DEFECTS_BEING_FIXED: dict[str, dict[str, str]] = {}

# Upstream tests that skip here, and why that is right (in CI any other skip is a failure).
EXPECTED_SKIPS: dict[str, dict[str, str]] = {}

# Upstream tests not run at all (deselected), and why. KubeSpawner's tests that use the cluster
# run on node real-0 of DCloud's test cluster (tests/upstream/cluster.py): a real kubelet, pods on
# a bridge that reach each other by IP, exec through the API server. That cluster has no
# kube-proxy and no cluster DNS (tests/cluster/README.md), so Service IPs and names resolve nowhere.
NOT_RUN: dict[str, dict[str, str]] = {
    "kubespawner": {
        "tests/test_spawner.py::test_spawn_internal_ssl": (
            "needs cluster DNS and Service routing: the hub-ssl pod is reached at hub-ssl.<namespace> and "
            "checks the user's server at its Service's name jupyter-ssl.<namespace>.svc.cluster.local"
        ),
    },
}

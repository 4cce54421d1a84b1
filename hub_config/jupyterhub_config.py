"""Example JupyterHub configuration for DCloud.

Run it:  jupyterhub -f hub_config/jupyterhub_config.py

Environment variables choose the parts:

- DCLOUD_BACKEND   ``local`` (default: servers are local processes) or ``kube`` (pods,
                   with the hub's kubeconfig or in-cluster credentials)
- DCLOUD_CATALOG   catalog path (default: catalog.yaml beside this file)
- DCLOUD_AUTH      ``shared-password`` (default: the listed users, password DCLOUD_PASSWORD;
                   ``admin`` with DCLOUD_ADMIN_PASSWORD, 32 characters or more) or
                   ``oidc`` (Keycloak or any OpenID Connect provider with a groups claim)

For the Zero to JupyterHub chart, helm-values/values.yaml carries the same settings.
"""

import os
from pathlib import Path

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

here = Path(__file__).resolve().parent
backend = os.environ.get("DCLOUD_BACKEND", "local")
catalog = os.environ.get("DCLOUD_CATALOG", str(here / "catalog.yaml"))

# -- spawner ------------------------------------------------------------------------
if backend == "kube":
    c.JupyterHub.spawner_class = "dcloud"
    c.DCloudSpawner.catalog_path = catalog
    c.DCloudSpawner.namespace = os.environ.get("DCLOUD_NAMESPACE", "dcloud")
    # a pod the scheduler cannot place is refused after this long, with the reason
    c.DCloudSpawner.unschedulable_grace_seconds = 3
else:
    c.JupyterHub.spawner_class = "dcloud-local"
    c.DCloudLocalSpawner.catalog_path = catalog
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 3

# -- who logs in, and their groups ---------------------------------------------------
oidc = os.environ.get("DCLOUD_AUTH", "shared-password") == "oidc"
if oidc:
    # Keycloak realm "lab"; the client maps group membership into a "groups" claim.
    issuer = os.environ.get("OIDC_ISSUER", "https://keycloak.example.org/realms/lab")
    # GenericOAuthenticator with a readable page when the provider is down and no error
    # for a user in no group (dcloud_spawner/hub/login.py); its settings apply to it.
    c.JupyterHub.authenticator_class = "dcloud-oauth"
    c.GenericOAuthenticator.client_id = os.environ.get("OAUTH_CLIENT_ID", "dcloud")
    # client secret: OAUTH_CLIENT_SECRET in the environment
    c.GenericOAuthenticator.oauth_callback_url = os.environ.get(
        "OAUTH_CALLBACK_URL", "https://hub.example.org/hub/oauth_callback"
    )
    c.GenericOAuthenticator.authorize_url = f"{issuer}/protocol/openid-connect/auth"
    c.GenericOAuthenticator.token_url = f"{issuer}/protocol/openid-connect/token"
    c.GenericOAuthenticator.userdata_url = f"{issuer}/protocol/openid-connect/userinfo"
    c.GenericOAuthenticator.scope = ["openid", "profile", "email", "groups"]
    c.GenericOAuthenticator.username_claim = "preferred_username"
    # JupyterHub groups follow the identity provider's groups at every login;
    # DCloud's catalog policies are keyed by these group names.
    c.GenericOAuthenticator.manage_groups = True
    c.GenericOAuthenticator.auth_state_groups_key = "oauth_user.groups"
    c.GenericOAuthenticator.allow_all = True
    c.GenericOAuthenticator.admin_groups = {"dcloud-admins"}
else:
    # One password for the listed users; the admin has one of its own (JupyterHub keeps them apart).
    c.JupyterHub.authenticator_class = "shared-password"
    c.SharedPasswordAuthenticator.user_password = os.environ.get("DCLOUD_PASSWORD", "change-me")
    if os.environ.get("DCLOUD_ADMIN_PASSWORD"):
        c.SharedPasswordAuthenticator.admin_password = os.environ["DCLOUD_ADMIN_PASSWORD"]
    c.Authenticator.allowed_users = {"student", "researcher", "guest", "admin"}
    c.Authenticator.admin_users = {"admin"}
    c.JupyterHub.load_groups = {
        "students": {"users": ["student"]},
        "researchers": {"users": ["researcher"]},
        "medical": {"users": ["researcher"]},
    }

# -- DCloud's admin pages: GPU allocations by class, user and group, at /services/dcloud/allocations
# A JupyterHub service whose server runs in this hub process (it reads the hub's live state); the
# hub logs browsers in to it and lets in holders of custom:dcloud-admin:read (docs/admin-service.md).
from dcloud_spawner.hub.service import admin_role, admin_service  # noqa: E402

admin_service(c)
c.JupyterHub.load_roles.append(admin_role(groups=["dcloud-admins"]) if oidc else admin_role(users=["admin"]))

# -- idle culling: GPUs come back --------------------------------------------------
# jupyterhub-idle-culler runs as a hub-managed service with idle_culler_config.py
# beside this file: servers holding a GPU are stopped after DCLOUD_CULL_GPU_TIMEOUT
# idle seconds (default 1 h), all others after DCLOUD_CULL_TIMEOUT (default 8 h).
# Services see only the environment they are given, so those two are passed on.
import sys  # noqa: E402

from dcloud_spawner.hub.culler import CULLER_SCOPES  # noqa: E402

c.JupyterHub.services.append({
    "name": "dcloud-idle-culler",
    "command": [sys.executable, "-m", "jupyterhub_idle_culler", f"--config={here / 'idle_culler_config.py'}"],
    "environment": {
        name: os.environ[name] for name in ("DCLOUD_CULL_TIMEOUT", "DCLOUD_CULL_GPU_TIMEOUT") if name in os.environ
    },
})
c.JupyterHub.load_roles.append({
    "name": "dcloud-idle-culler",
    "description": "Stop idle servers: list users, read their activity and servers, stop servers",
    "scopes": list(CULLER_SCOPES),
    "services": ["dcloud-idle-culler"],
})

# -- at hub start: warn about KubeSpawner settings DCloud ignores (profile_list), and stop
# with one sentence on security settings Kubernetes would refuse (`dcloud check --hub-config`)
if backend == "kube":
    from dcloud_spawner.kube import DCloudSpawner

    DCloudSpawner.check_hub_config(c)

"""The notebook pod's security settings: Pod Security "restricted" unless the admin says otherwise.

DCloud's defaults for ``container_security_context`` and ``pod_security_context`` are
callables (KubeSpawner accepts them) evaluated when the pod is built, from KubeSpawner's own
settings as the config and this start's hooks left them: an explicit ``uid = 0`` drops
``runAsNonRoot``, ``allow_privilege_escalation`` and ``privileged`` are honoured. An admin's
own security context wins over both, as in KubeSpawner. What Kubernetes would refuse to run
(a root user with ``runAsNonRoot``, a privileged container that may not escalate) is found in
the built pod and refused in one sentence, before anything is created.
"""

from __future__ import annotations

import copy
from typing import Any

# Pod Security Standard "restricted" for every container, init containers included.
RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}

NOBODY = 65534  # the package installer's user when the notebook runs as root: pip needs no root


def container_context(spawner: Any) -> dict[str, Any]:
    """The notebook container's security context for ``spawner``'s settings now."""
    context = copy.deepcopy(RESTRICTED_CONTAINER)
    if _uid(spawner) == 0:
        del context["runAsNonRoot"]
    if spawner.privileged:
        # Kubernetes refuses privileged with allowPrivilegeEscalation false; all capabilities come with it
        context["privileged"] = True
        del context["allowPrivilegeEscalation"]
        del context["capabilities"]
    elif spawner.allow_privilege_escalation is None:  # KubeSpawner: leave it to the cluster
        del context["allowPrivilegeEscalation"]
    else:
        context["allowPrivilegeEscalation"] = bool(spawner.allow_privilege_escalation)
    return context


def pod_context(spawner: Any) -> dict[str, Any]:
    context = copy.deepcopy(RESTRICTED_POD)
    if _uid(spawner) == 0:
        del context["runAsNonRoot"]
    return context


def installer_uid(uid: Any) -> int | None:
    """The package init container's user: the notebook's, but never root."""
    if not isinstance(uid, int):
        return None
    return NOBODY if uid == 0 else uid


def _uid(spawner: Any) -> Any:
    uid = spawner.uid
    return uid(spawner) if callable(uid) else uid


def contradiction(pod: Any) -> str | None:
    """One sentence naming a security setting of the built pod (a ``V1Pod``) that Kubernetes
    would refuse to run; None when there is none."""
    spec = pod.spec
    pod_level = spec.security_context
    for container in [*(spec.init_containers or []), *(spec.containers or [])]:
        context = container.security_context
        user = _field(context, pod_level, "run_as_user")
        non_root = _field(context, pod_level, "run_as_non_root")
        if user == 0 and non_root:
            return (f"The hub's configuration runs container {container.name} as root (uid 0) and also "
                    "requires it not to run as root (runAsNonRoot), so Kubernetes could not start it; the "
                    "administrator must change one of the two (KubeSpawner.uid or the security context).")
        if _field(context, None, "privileged") and _field(context, None, "allow_privilege_escalation") is False:
            return (f"The hub's configuration makes container {container.name} privileged but forbids "
                    "privilege escalation, which Kubernetes refuses; the administrator must change one of the two.")
    return None


def _field(container_level: Any, pod_level: Any, name: str) -> Any:
    """A container's setting, else the pod's (KubeSpawner gives dicts or models)."""
    for level in (container_level, pod_level):
        if level is None:
            continue
        if isinstance(level, dict):
            camel = "".join(w if i == 0 else w.capitalize() for i, w in enumerate(name.split("_")))
            value = level.get(camel)
        else:
            value = getattr(level, name, None)
        if value is not None:
            return value
    return None


def static_contradiction(spawner: Any) -> str | None:
    """:func:`contradiction` of the settings alone, for the hub's start (callables are judged
    when the pod is built)."""
    uid, csc, psc = spawner.uid, spawner.container_security_context, spawner.pod_security_context
    if callable(uid) or (callable(csc) and callable(psc)):
        return None
    non_root = [c.get("runAsNonRoot") for c in (csc, psc) if isinstance(c, dict)]
    user = next((c["runAsUser"] for c in (csc, psc) if isinstance(c, dict) and "runAsUser" in c), uid)
    if user == 0 and any(non_root):
        return ("The hub's configuration runs notebooks as root (uid 0) and also requires them not to run as "
                "root (runAsNonRoot), so Kubernetes could not start them; change one of the two "
                "(KubeSpawner.uid or the security context).")
    if isinstance(csc, dict) and (csc.get("privileged") or spawner.privileged is True) and \
            csc.get("allowPrivilegeEscalation") is False:
        return ("The hub's configuration makes notebooks privileged but forbids privilege escalation, "
                "which Kubernetes refuses; change one of the two.")
    return None

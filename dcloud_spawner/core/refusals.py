"""The refusals a backend meets while a server starts, each sentence in one place.

Validation, quota and GPU-count refusals are made where their rules live (``validation.py``,
``quotas.py``, :class:`~.errors.CapacityRefusal`); these are the rest: what the cluster, the
queue, the package install or the datasets' folder answered, said in the user's terms. Each
function returns the :class:`~.errors.Refusal` with its field and its ``reason`` (the label of
DCloud's ``dcloud_spawns_refused_total`` and of JupyterHub's ``server_spawn_duration_seconds``);
a backend hands it to the spawner's ``refuse()``, the one way out.
"""

from __future__ import annotations

from collections.abc import Iterable

from .catalog import duration_words
from .errors import CapacityRefusal, QuotaExceeded, Refusal, clip
from .plan import Plan
from .quantity import format_memory
from .queueing import ordinal

UNREACHABLE = ("The cluster's API server does not answer right now, so nothing was started; "
               "try again in a minute.")
QUEUE_DOWN = ("The queue for GPUs (Kueue) is unavailable right now, so nothing was started; try again in a "
              "few minutes, and tell the administrators if it lasts.")


# -- the hub and the cluster ------------------------------------------------------------

def options_not_applied(error: str) -> Refusal:
    """The site's own ``apply_user_options`` failed on these options."""
    return Refusal(f"These options could not be applied: {clip(error, 200)}", reason="invalid_options")


def configuration(problem: str) -> Refusal:
    """The site's settings contradict each other for this pod (see ``kube/security.py``)."""
    return Refusal(problem, reason="configuration")


def cluster_unreachable() -> Refusal:
    return Refusal(UNREACHABLE, reason="cluster_unreachable")


def queue_unavailable() -> Refusal:
    return Refusal(QUEUE_DOWN, reason="queue_unavailable")


def namespace_quota(name: str, asks: Iterable[tuple[str, str, str, str]]) -> CapacityRefusal:
    """A namespace ResourceQuota refused the pod: (resource, asked, in use, limit) each."""
    parts = [f"{resource}: this server asks for {asked}, {used} already in use, limit {limit}"
             for resource, asked, used, limit in asks]
    return CapacityRefusal(f"The namespace quota '{name}' does not allow this server ({'; '.join(parts)}).",
                           reason="resourcequota")


# -- the scheduler --------------------------------------------------------------------

def unschedulable(plan: Plan | None, missing: set[str], wrong_node: bool, message: str) -> CapacityRefusal:
    """The scheduler's verdict in terms of the choice: ``missing`` resources it named,
    ``wrong_node`` when no node of the kind exists or accepts the pod, else its ``message``."""
    if plan and plan.gpu and plan.gpu.resource in missing:
        sentence = CapacityRefusal.no_free_gpus(plan.gpu.display_name, plan.gpu_count).sentence
    elif plan and ("cpu" in missing or "memory" in missing):
        what = " and ".join(part for part, key in (
            (f"{plan.cpu_request:g} CPU cores", "cpu"),
            (f"{format_memory(plan.memory_request)} of memory", "memory"),
        ) if key in missing)
        sentence = f"No node has {what} free right now; ask for less, or try again later."
    elif wrong_node:
        sentence = "No node of the chosen kind exists or accepts this server right now."
    else:
        sentence = f"The cluster cannot place this server: {message}."
    return CapacityRefusal(sentence, reason="unschedulable")


# -- Kueue's line -----------------------------------------------------------------------

def too_many_waiting(waiting: int, limit: int) -> CapacityRefusal:
    """The user already has the catalog's ``max_queued_per_user`` servers waiting in line."""
    return CapacityRefusal(
        f"You already have {waiting} server{'s' if waiting != 1 else ''} waiting in line, "
        f"and at most {limit} may wait at once; stop {'it' if waiting == 1 else 'one'} or let "
        "it start before queueing another.", field="wait", reason="queue_limit")


def _asked(plan: Plan) -> tuple[str, int]:
    return (plan.gpu.display_name, plan.gpu_count) if plan.gpu else (f"{plan.cpu_limit:g} CPU", 1)


def queue_timeout(plan: Plan, max_wait: float, place: int | None) -> CapacityRefusal:
    """It waited in line (``wait`` ticked) for the catalog's ``max_wait``."""
    what, count = _asked(plan)
    within = duration_words(max_wait)
    where = f"; you were {ordinal(place)} in line" if place is not None else ""
    sentence = (f"No {what} became free within {within}{where}." if count == 1 else
                f"{count} × {what} did not become free within {within}{where}.")
    return CapacityRefusal(sentence, field="wait", reason="queue_timeout")


def queue_full(plan: Plan, who: str, held_because: str, max_wait: float) -> CapacityRefusal:
    """The queue held it past ``refuse_after`` and the user did not ask to wait."""
    what, count = _asked(plan)
    why = f" (the queue says: {held_because})" if held_because else ""
    return CapacityRefusal(
        f"{count} × {what} cannot start for {who} right now{why}; tick 'Wait in line' to wait up "
        f"to {duration_words(max_wait)} for {'it' if count == 1 else 'them'}.",
        field="wait", reason="queue_full")


# -- packages and datasets --------------------------------------------------------------

def packages_failed(sentence: str) -> Refusal:
    """pip failed; ``sentence`` is the plan's ``install_failure`` of pip's output."""
    return Refusal(sentence, field="packages", reason="packages")


def packages_too_slow(seconds: float) -> Refusal:
    return Refusal(f"Installing the extra packages took longer than {seconds:g} seconds and was stopped; "
                   "ask for fewer or smaller packages.", field="packages", reason="packages")


def packages_too_big(size: str) -> Refusal:
    return Refusal(f"The extra packages need more than the {size} this server may use for them; "
                   "ask for fewer or smaller packages.", field="packages", reason="packages")


def dataset_folders_taken(names: Iterable[str]) -> Refusal:
    """Every folder name the dataset views may use holds the user's own files."""
    return Refusal(
        f"Your working directory already has {' and '.join(names)} of your own, so the chosen "
        f"datasets have nowhere to appear; rename one of them (nothing in them was touched) or start "
        f"without datasets.", field="datasets", reason="datasets")


def dataset_folder_changed() -> Refusal:
    return Refusal("The folder for your datasets changed while the server started; start again.",
                   field="datasets", reason="datasets")


# -- the home volume ------------------------------------------------------------------------

def home_only_grows(asked: int, current: int, most: int | None) -> Refusal:
    upper = f" (up to {format_memory(most)})" if most is not None else ""
    return Refusal(f"Home size {format_memory(asked)} is smaller than your home volume, which is "
                   f"{format_memory(current)} and only grows; ask for {format_memory(current)} or more{upper}.",
                   field="home", reason="storage")


def home_cannot_grow(current: int, storage_class: str | None) -> Refusal:
    where = (f"storage class '{clip(storage_class, 80)}'" if storage_class
             else "the cluster's default storage class")
    return Refusal(f"Home size: your home volume is {format_memory(current)} and {where} cannot grow volumes, so "
                   f"nothing was changed; ask for {format_memory(current)}, or ask the administrators for more room.",
                   field="home", reason="storage")


def group_home_quota(group: str, held: int, most: int, asked: int, current: int,
                     own_most: int | None = None) -> QuotaExceeded:
    """Growing (or making) a home volume to ``asked`` would take ``group`` past its ``max_home``;
    its other members' volumes hold ``held``, this one is ``current`` now (0: none yet), and its
    owner may have at most ``own_most`` (their policies' ``max_home``; None: no such limit)."""
    room = most - held if own_most is None else min(most - held, own_most)  # never more than they may ask
    if room > current:
        allowed = f"ask for at most {format_memory(room)}"
    elif current:
        allowed = f"your home cannot grow now, so ask for {format_memory(current)}, its size now"
    else:
        allowed = "there is no room for a new one, so ask the administrators for more"
    return QuotaExceeded(f"Home size {format_memory(asked)} would take group '{clip(group, 60)}' past its "
                         f"{format_memory(most)} of home volumes, since its other members already hold "
                         f"{format_memory(held)}; {allowed}.", field="home", reason="quota")


_VOLUMES = {"home": ("Home size", "your home volume"), "scratch": ("Scratch size", "your scratch disk")}


def storage_class_missing(field: str, storage_class: str) -> Refusal:
    """The catalog's ``storage.<field>.storage_class`` does not exist on the cluster; nothing was made."""
    label, volume = _VOLUMES[field]
    return Refusal(f"{label}: the storage class '{clip(storage_class, 80)}' that {volume} is made on does not "
                   f"exist on this cluster, so nothing was created; tell the administrators (catalog "
                   f"storage.{field}.storage_class).", field=field, reason="storage")


def volume_pending(field: str, storage_class: str | None, seconds: float) -> Refusal:
    """The claim of the home volume or scratch disk stayed Pending (no volume was provisioned)
    for the grace time; the pod is deleted, a home volume's claim kept."""
    label, volume = _VOLUMES[field]
    where = f"storage class '{clip(storage_class, 80)}'" if storage_class else "the cluster's default storage class"
    kept = " (its claim is kept for your next start)" if field == "home" else ""
    return Refusal(f"{label}: {where} did not provision {volume} within {duration_words(seconds)}, so the server "
                   f"was not started{kept}; try again later, and tell the administrators if it lasts.",
                   field=field, reason="storage")


def home_not_bound(asked: int, current: int) -> Refusal:
    """Growing a claim no volume is bound to yet: the API server refuses to resize unbound claims
    (with WaitForFirstConsumer a claim binds at its first pod); nothing was changed."""
    return Refusal(f"Home size: your home volume is {format_memory(current)} and has no disk bound to it yet, and "
                   f"Kubernetes grows only bound volumes, so nothing was changed; start with {format_memory(current)} "
                   f"(which binds it), then ask for {format_memory(asked)}.", field="home", reason="storage")


def volume_api_error(field: str, doing: str, answer: str) -> Refusal:
    """The API server answered an error (``answer``, e.g. "HTTP 403 (Forbidden)") while DCloud was
    ``doing`` something for the home volume or scratch disk (e.g. "reading your home volume")."""
    label, _ = _VOLUMES[field]
    return Refusal(f"{label}: the cluster answered {clip(answer, 80)} to {doing}, so the server was not started; "
                   "try again in a minute, and tell the administrators if it lasts.", field=field,
                   reason="cluster_error")

"""A workaround for KubeSpawner 7.1.0: a reflector whose first list was cut short is kept.

KubeSpawner registers a shared reflector in ``KubeSpawner.reflectors`` *before* its first
list, and every later ``_start_reflector`` call for the same key waits for that reflector's
``first_load_future``. When the events reflector fails first (the API server is down),
KubeSpawner's start cancels the pods reflector's start mid-list; the half-started reflector
stays registered, its first list never finishes, and every later start and stop of the
namespace waits on it forever (a refused spawn's REST call hung the hub).

:class:`DropsHalfStartedReflectors` removes a reflector whose start ended (failed or was
cancelled) before its first list finished, and wakes whoever waits for it, so the next call
lists afresh. Delete this module when upstream fixes the defect: the test
``tests/kube/test_reflector_compat.py::test_upstream_kubespawner_still_keeps_a_half_started_reflector``
fails on that day. The upstream report: ``docs/kubespawner-reflector-defect.md``.
"""

from __future__ import annotations

from typing import Any


class DropsHalfStartedReflectors:
    """Mix in before KubeSpawner: its ``_start_reflector``, minus the defect above."""

    async def _start_reflector(self, kind: str, reflector_class: Any, replace: bool = False, **kwargs: Any) -> Any:
        key = self._get_reflector_key(kind)  # type: ignore[attr-defined]
        reflectors = self.__class__.reflectors  # type: ignore[attr-defined]
        before = reflectors.get(key)
        try:
            return await super()._start_reflector(  # type: ignore[misc]
                kind, reflector_class, replace=replace, **kwargs)
        except BaseException:
            mine = reflectors.get(key)
            if mine is not None and mine is not before:  # this call made it, and its start ended here
                del reflectors[key]
                loaded = mine.first_load_future
                if not loaded.done():  # wake whoever waits for it: they fail as this start did
                    loaded.set_exception(RuntimeError(f"the {kind} reflector did not finish its first list"))
                    loaded.exception()  # retrieved: not logged as never retrieved
            raise

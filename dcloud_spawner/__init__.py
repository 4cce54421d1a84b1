"""DCloud: a JupyterHub spawner for shared GPU clusters.

An admin describes what exists and who may use what in one catalog; every request
(form, REST ``user_options``, uploaded file, CLI) is validated against it into a
:class:`~dcloud_spawner.core.plan.Plan`, which a backend (Kubernetes or local) turns into a
running notebook server.
"""

__version__ = "0.1.0"

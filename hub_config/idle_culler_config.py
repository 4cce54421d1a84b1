# jupyterhub-idle-culler configuration for DCloud: idle GPU servers are stopped sooner.
#
# Run by JupyterHub as a managed service (see jupyterhub_config.py, and
# hub.extraFiles.dcloud-idle-culler in helm-values/values.yaml, which carries this file):
#   python -m jupyterhub_idle_culler --config=idle_culler_config.py
# Environment (seconds):
#   DCLOUD_CULL_TIMEOUT      servers without a GPU, idle this long, are stopped (default 8 h)
#   DCLOUD_CULL_GPU_TIMEOUT  servers holding a GPU, idle this long, are stopped (default 1 h);
#                            must be shorter than DCLOUD_CULL_TIMEOUT
from dcloud_spawner.hub.culler import gpu_aware_arbiter, require_arbiter_hook, seconds_from_env

c = get_config()  # noqa: F821 - provided by the culler when it loads this file

# The culler only logs an exception raised by its config file, then runs on its
# defaults (every server stopped after 10 idle minutes); exit instead, saying why.
try:
    require_arbiter_hook()
    cpu_timeout = seconds_from_env("DCLOUD_CULL_TIMEOUT", 8 * 3600)
    gpu_timeout = seconds_from_env("DCLOUD_CULL_GPU_TIMEOUT", 3600)
    arbiter = gpu_aware_arbiter(gpu_timeout, cpu_timeout=cpu_timeout)
except (RuntimeError, ValueError) as exc:
    raise SystemExit(f"dcloud idle culler: {exc}") from None

c.IdleCuller.timeout = cpu_timeout
c.IdleCuller.cull_arbiter_hook = arbiter
# Look every 5 minutes: a GPU server is stopped at most 5 minutes after its timeout.
c.IdleCuller.cull_every = 300

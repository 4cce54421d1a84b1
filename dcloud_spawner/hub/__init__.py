"""The JupyterHub side shared by both backends: spawner mixin, form, hub state, metrics,
admin page, idle-culler arbiter."""

"""The read-only status page and JSON API served beside /healthz, /readyz and /metrics.

`routes.install()` adds them to the HTTP app; `readmodel` queries the store, `auth` checks
credentials, `views` shapes rows for the templates. Nothing here writes to the store.
"""

"""The read-only status page and JSON API served beside /healthz, /readyz and /metrics.

`page.install()` adds them to the HTTP app, importing `routes` only then; `readmodel` queries
the store, `auth` checks credentials, `views` shapes rows for the templates. Nothing here
writes to the store.
"""

"""HTML and JSON bodies for the status page: Jinja2 templates shipped in the package.

Autoescaping is on for every template, so a `voice_name` of `<script>` shows as text; JSON
escapes `<`, `>` and `&` too, so no API value can become markup wherever it is pasted.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import jinja2

from watcher.web.views import state_class

__all__ = ["STATIC", "render_html", "render_json"]

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("watcher.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters["state_class"] = state_class

_STATIC_TYPES = {
    "app.css": "text/css",
    "app.js": "text/javascript",
    "icon.svg": "image/svg+xml",
}
# Read once: three small files, served from memory (no path from a request reaches the disk).
STATIC: dict[str, tuple[bytes, str]] = {
    name: (resources.files("watcher.web").joinpath("static", name).read_bytes(), kind)
    for name, kind in _STATIC_TYPES.items()
}


def render_html(template: str, **context: Any) -> str:
    return _ENV.get_template(template).render(**context)


def render_json(data: Any) -> str:
    text = json.dumps(data, ensure_ascii=False, sort_keys=False, indent=1)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") + "\n"

"""HTML and JSON bodies for the status page: Jinja2 templates shipped in the package.

Autoescaping is on for every template, so a `voice_name` of `<script>` shows as text; JSON
escapes `<`, `>` and `&` too, so no API value can become markup wherever it is pasted.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from watcher.web.views import state_class

# jinja2 and the package's files are loaded on the first page served: a daemon without the
# status page, and every `once`, never pay for them.
if TYPE_CHECKING:
    import jinja2

__all__ = ["STATIC", "render_html", "render_json"]


@functools.cache
def _env() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("watcher.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["state_class"] = state_class
    return env


_STATIC_TYPES = {
    "app.css": "text/css",
    "app.js": "text/javascript",
    "icon.svg": "image/svg+xml",
}


class _Static(Mapping[str, tuple[bytes, str]]):
    """Three small files, read once on first use and served from memory (no path from a
    request reaches the disk)."""

    @functools.cached_property
    def _files(self) -> dict[str, tuple[bytes, str]]:
        from importlib import resources

        return {
            name: (resources.files("watcher.web").joinpath("static", name).read_bytes(), kind)
            for name, kind in _STATIC_TYPES.items()
        }

    def __getitem__(self, name: str) -> tuple[bytes, str]:
        return self._files[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


STATIC: Mapping[str, tuple[bytes, str]] = _Static()


def render_html(template: str, **context: Any) -> str:
    return _env().get_template(template).render(**context)


def render_json(data: Any) -> str:
    text = json.dumps(data, ensure_ascii=False, sort_keys=False, indent=1)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") + "\n"

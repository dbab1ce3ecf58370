"""The status page as the daemon wires it: what the routes read (`StatusPage`) and `install`.

Light on purpose: the routes, the read model, the views and jinja2 are imported by `install`,
so a daemon without `http.listen`, and every `once`, never load them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from watcher.model import Config

if TYPE_CHECKING:
    from aiohttp import web

    from watcher.web.auth import Verifier
    from watcher.web.readmodel import ReadModel
    from watcher.web.views import SourceInfo

__all__ = ["StatusPage", "install"]


@dataclass
class StatusPage:
    """What the routes need: the state file, the config of the moment, a clock."""

    config: Callable[[], Config]
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    refresh_seconds: int = 5
    model: ReadModel = field(init=False)
    verifier: Verifier | None = field(init=False)

    def __post_init__(self) -> None:
        from watcher.web.auth import Verifier
        from watcher.web.readmodel import ReadModel

        config = self.config()
        self.model = ReadModel(config.storage)
        # Credentials are fixed at start-up, like http.listen: a reload cannot open the door.
        self.verifier = Verifier(config.http_auth) if config.http_auth else None

    def infos(self) -> list[SourceInfo]:
        from watcher.web.views import SourceInfo

        return [
            SourceInfo(s.name, s.poll_interval, s.full_scan_every) for s in self.config().sources
        ]

    def scrub(self, value: Any) -> Any:
        from watcher.web.views import scrub

        return scrub(value, self.config().secrets)


def install(app: web.Application, page: StatusPage) -> None:
    """Add the page, the API and the guards (credentials, headers) to `app`."""
    from watcher.web import routes

    routes.install(app, page)

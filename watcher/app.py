"""The composition root: the one place `run`, `once`, `demo` and a reload wire the app.

Owns the process's log redactor (secrets are registered here and only here, and only added),
and builds from a Config the store, HTTP session, notifier, metrics and Watcher.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from watcher.config import load_config
from watcher.logs import Redactor
from watcher.model import Config
from watcher.store import Store

# aiohttp, apprise (watcher.notify) and the daemon are imported where they are used: every
# command builds a Root, and `health` must stay cheap.
if TYPE_CHECKING:
    import aiohttp

    from watcher.daemon import Watcher
    from watcher.dispatch import DeliveryMemory
    from watcher.notify import Notifier
    from watcher.recorder import Recorder


# Python's cyclic collector by default starts a collection every 700 net allocations and a
# full one every 100 of those; each walks what is alive. A cycle allocates in bulk (100k
# compact rows read from the store, a page of decoded jobs every few milliseconds, a
# baseline's 100k `Job`s), so the defaults walk the same objects over and over: measured at
# 100k jobs, 10 % of a steady `once` and 20 % of a first baseline. What a cycle leaves is
# freed by reference counting as ever; the few reference cycles it makes wait at most
# 50,000 allocations, and a full collection still comes every 10 of the middle ones.
COLLECTOR_THRESHOLDS = (50_000, 20, 10)


# glibc gives each thread that allocates its own malloc arena, and what is freed in one is
# not reused by another. A cycle's engine pass and commit run in a worker thread (see
# `watcher.daemon._off_loop`): a 1M-job daemon peaked at 710 MB against 665 MB with one
# arena. The threads allocate holding the GIL, so they would hardly contend for one lock.
_M_ARENA_MAX = -8  # glibc's malloc.h


def tune_memory() -> None:
    """For the processes that poll (`run`, `once`, `demo`), before any thread starts: the
    collector's thresholds (see COLLECTOR_THRESHOLDS) and, on glibc, one malloc arena
    (unless the operator set MALLOC_ARENA_MAX, which glibc reads itself)."""
    gc.set_threshold(*COLLECTOR_THRESHOLDS)
    if os.environ.get("MALLOC_ARENA_MAX") or sys.platform != "linux":
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return
    if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt"):
        libc.mallopt(_M_ARENA_MAX, 1)  # musl and others: their own allocator, left alone


class Root:
    """One per process. Whatever reaches a log line is masked by `redactor`, which grows with
    every config loaded and every notifier built, and never forgets: after a reload an alert
    or a retry in flight may still carry the old config's tokens."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        self.redactor = redactor or Redactor()

    def register(self, config: Config) -> Config:
        """Mask this config's secrets (AK, SK, tokens, channel URLs) from now on, too."""
        self.redactor.add(config.secrets)
        return config

    def load(
        self, path: str, env: Mapping[str, str] | None = None, *, validate_urls: bool = True
    ) -> Config:
        """Read and validate a config (apprise checks channel URLs) and register its secrets."""
        validate = None
        if validate_urls:
            from watcher.notify import check_url

            validate = check_url
        return self.register(load_config(path, env, validate_url=validate))

    def notifier(self, config: Config, channels: Collection[str] | None = None) -> Notifier:
        """A notifier for the config's channels (or just `channels`), with the token-like
        parts of their URLs registered first: apprise and urllib3 print them at DEBUG.
        Deferred: apprise is imported on the first send, so a `once` with nothing to deliver
        never pays for it (the URLs were checked when the config was loaded, except by
        `once`, where a URL apprise refuses fails its sends and the alerts stay queued)."""
        from watcher.notify import Notifier, url_secrets

        chosen = {
            n: urls for n, urls in config.channels.items() if channels is None or n in channels
        }
        self.redactor.add(
            part for urls in chosen.values() for url in urls for part in url_secrets(url.reveal())
        )
        return Notifier(
            chosen, send_timeout=config.delivery.send_timeout.total_seconds(), deferred=True
        )

    def open_store(self, config: Config) -> Store:
        """The state file, locked for this process alone (one daemon per state file)."""
        return Store.open(config.storage, exclusive=True)

    @contextlib.asynccontextmanager
    async def session(self, config: Config) -> AsyncIterator[aiohttp.ClientSession]:
        """The HTTP session every source's client shares; no request may hang forever."""
        import aiohttp

        from watcher.daemon import session_timeout

        async with aiohttp.ClientSession(timeout=session_timeout(config)) as session:
            yield session

    def build_app(
        self,
        config: Config,
        store: Store,
        session: aiohttp.ClientSession,
        *,
        metrics: Recorder,
    ) -> App:
        """The app for `config`: a new notifier (raises WatcherError if a channel has no URLs)
        and retry memory, reporting to `metrics` (the daemon's, behind /metrics; `once`'s,
        `Unrecorded`, since nothing scrapes it)."""
        from watcher.dispatch import DeliveryMemory

        self.register(config)
        notifier = self.notifier(config)
        return App(
            root=self,
            config=config,
            store=store,
            session=session,
            notifier=notifier,
            metrics=metrics,
            memory=DeliveryMemory(),
        )


@dataclass
class App:
    """One configuration's wiring. A reload `rebuild`s the parts a config decides (notifier,
    Watcher) and hands on the ones that outlive it (store, session, metrics, retry memory)."""

    root: Root
    config: Config
    store: Store
    session: aiohttp.ClientSession
    notifier: Notifier
    metrics: Recorder
    memory: DeliveryMemory
    _closed: bool = field(default=False, repr=False)

    @cached_property
    def watcher(self) -> Watcher:
        """Built on first use: a reload builds the next one only once the old one stopped,
        so the two never share the metrics at once."""
        from watcher.daemon import Watcher

        return Watcher(
            self.config,
            self.store,
            self.notifier,
            self.session,
            metrics=self.metrics,
            memory=self.memory,
        )

    def rebuild(self, config: Config) -> App:
        """The app for a reloaded config; this one is untouched (and keeps running) if the new
        config's channels are refused. Its secrets join the redactor's; none leave it."""
        self.root.register(config)
        notifier = self.root.notifier(config)
        return App(
            root=self.root,
            config=config,
            store=self.store,
            session=self.session,
            notifier=notifier,
            metrics=self.metrics,
            memory=self.memory,
        )

    def close(self) -> None:
        """Retire this config's notifier (the store and session belong to whoever opened them)."""
        if not self._closed:
            self._closed = True
            self.notifier.close()

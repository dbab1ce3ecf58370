"""The `http:` section: where the status page, API and /metrics listen, and who may read
them (a bearer token, a token file, basic auth with an scrypt hash); off loopback, auth is a must.
"""

from __future__ import annotations

from typing import Any

from watcher.config.credentials import CredentialsSection
from watcher.config.ranges import MIN_TOKEN_LENGTH
from watcher.config.scalars import parse_listen
from watcher.config.yaml_loader import at_key
from watcher.model import HttpAuth, Secret

HTTP_KEYS = ("listen", "auth")
HTTP_AUTH_KEYS = ("token", "token_file", "basic")
HTTP_BASIC_KEYS = ("user", "password_hash")
# Where `http:` listens when it names no `listen:` (no `http:` at all: no HTTP server).
DEFAULT_LISTEN = "127.0.0.1:9464"


class HttpSection(CredentialsSection):
    """Reads `http:` into the listen address and its `HttpAuth`."""

    def http(self, value: Any, path: str) -> tuple[str, HttpAuth | None]:
        # The status page's auth module (hashing, ipaddress) loads only for configs with http:.
        from watcher.web.auth import is_loopback

        http = self.mapping(value, path, "a mapping of HTTP settings", HTTP_KEYS)
        listen_path = at_key(path, "listen")
        listen = DEFAULT_LISTEN
        if "listen" in http:
            listen = self.nonempty(http["listen"], listen_path, "HOST:PORT").value
        try:
            host, _ = parse_listen(listen)
        except ValueError as exc:
            self.fail(listen_path, str(exc))
        auth = None
        if "auth" in http:
            auth = self.http_auth(http["auth"], at_key(path, "auth"))
        elif not is_loopback(host):
            # The page shows job names, batches and failures: not for everyone on the network.
            self.fail(
                listen_path,
                f"listening on {host} (not loopback) needs http.auth: set auth.token or "
                "auth.token_file (or auth.basic), or listen on 127.0.0.1",
            )
        return listen, auth

    def http_auth(self, value: Any, path: str) -> HttpAuth:
        auth = self.mapping(value, path, "a mapping of HTTP credentials", HTTP_AUTH_KEYS)
        if "token" in auth and "token_file" in auth:
            self.fail(at_key(path, "token_file"), "set either 'token' or 'token_file', not both")
        token = None
        if "token" in auth or "token_file" in auth:
            key = "token" if "token" in auth else "token_file"
            key_path = at_key(path, key)
            if key == "token":
                text = self.text(auth[key], key_path).value
            else:
                name = self.nonempty(auth[key], key_path, "a file name").value
                text = self.read_credential(self.credential_path(name), key_path)
            self.secret(text)
            if len(text) < MIN_TOKEN_LENGTH or any(c.isspace() for c in text):
                self.fail(
                    key_path,
                    f"the token must be at least {MIN_TOKEN_LENGTH} characters without spaces "
                    "(make one with: openssl rand -hex 32)",
                )
            token = Secret(text)
        user = password_hash = None
        if "basic" in auth:
            basic_path = at_key(path, "basic")
            basic = self.mapping(
                auth["basic"], basic_path, "user and password_hash", HTTP_BASIC_KEYS
            )
            user_path = at_key(basic_path, "user")
            user = self.nonempty(self.require(basic, basic_path, "user"), user_path).value
            if ":" in user or not user.isprintable():
                self.fail(
                    user_path, "a basic-auth user name cannot contain ':' or control characters"
                )
            hash_path = at_key(basic_path, "password_hash")
            hashed = self.nonempty(
                self.require(basic, basic_path, "password_hash"), hash_path, "an scrypt hash"
            ).value
            from watcher.web.auth import parse_password_hash

            try:
                parse_password_hash(hashed)
            except ValueError as exc:
                self.fail(hash_path, str(exc))
            self.secret(hashed)
            password_hash = Secret(hashed)
        if token is None and user is None:
            self.fail(path, "expected 'token', 'token_file' or 'basic' (or drop http.auth)")
        return HttpAuth(token=token, basic_user=user, basic_password_hash=password_hash)

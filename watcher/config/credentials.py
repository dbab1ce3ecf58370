"""Where a source's AK, SK and security token come from: the config, a `_file` (relative to
$CREDENTIALS_DIRECTORY), or the environment; every value read is registered as a secret.
"""

from __future__ import annotations

import os

from watcher.config.ranges import MAX_CREDENTIAL_FILE
from watcher.config.reader import Reader
from watcher.config.yaml_loader import Map, at_key
from watcher.model import Config, Credential, Secret

# (config key, environment fallback, words for messages)
CREDENTIALS = (
    ("ak", "CLOUD_SDK_AK", "access key"),
    ("sk", "CLOUD_SDK_SK", "secret key"),
    ("security_token", "CLOUD_SDK_SECURITY_TOKEN", "security token"),
)


def describe_credentials(config: Config) -> list[str]:
    """Where each source's credentials come from, for `check` (never the values)."""
    out = []
    for source in config.sources:
        parts = [f"ak from {source.ak.origin}", f"sk from {source.sk.origin}"]
        if source.security_token is not None:
            parts.append(f"security token from {source.security_token.origin}")
        out.append(f"source {source.name}: {', '.join(parts)}")
    return out


class CredentialsSection(Reader):
    """Reads credentials and credential files (also the HTTP token file)."""

    def credentials(
        self, source: Map, path: str
    ) -> tuple[Credential, Credential, Credential | None]:
        found: dict[str, Credential | None] = {}
        for key, env_name, words in CREDENTIALS:
            found[key] = self.credential(source, path, key, env_name, words)
        ak, sk = found["ak"], found["sk"]
        if ak is None or sk is None:
            raise AssertionError("credential() fails when ak or sk is missing")
        return ak, sk, found["security_token"]

    def credential(
        self, source: Map, path: str, key: str, env_name: str, words: str
    ) -> Credential | None:
        file_key = f"{key}_file"
        if key in source and file_key in source:
            self.fail(at_key(path, file_key), f"set either {key!r} or {file_key!r}, not both")
        if key in source:
            key_path = at_key(path, key)
            text = self.text(source[key], key_path)
            origin = f"config ${{{text.pure_var}}}" if text.pure_var else "config"
            return self.checked_credential(text.value, origin, key_path, words)
        if file_key in source:
            file_path = at_key(path, file_key)
            name = self.nonempty(source[file_key], file_path, "a file name").value
            full = self.credential_path(name)
            value = self.read_credential(full, file_path)
            return self.checked_credential(value, f"file {full}", file_path, words)
        if key == "security_token" and names_key_pair(source):
            return None  # a temporary token only pairs with the key pair it was issued with
        from_env = self.env.get(env_name)
        if from_env is None:
            if key == "security_token":
                return None
            self.fail(
                at_key(path, key),
                f"no {words}: set {key!r} or {file_key!r}, or the environment variable {env_name}",
            )
        return self.checked_credential(from_env, f"env {env_name}", at_key(path, key), words)

    def checked_credential(self, value: str, origin: str, path: str, words: str) -> Credential:
        self.secret(value)
        if not value:
            self.fail(path, f"the {words} from {origin} is empty")
        if any(char.isspace() or not char.isprintable() for char in value):
            self.fail(path, f"the {words} from {origin} contains whitespace or control characters")
        return Credential(Secret(value), origin)

    def credential_path(self, name: str) -> str:
        if os.path.isabs(name):
            return name
        base = self.env.get("CREDENTIALS_DIRECTORY") or self.base_dir
        return os.path.normpath(os.path.join(base, name))

    def read_credential(self, full: str, path: str) -> str:
        try:
            with open(full, encoding="utf-8") as stream:
                content = stream.read(MAX_CREDENTIAL_FILE + 1)
        except UnicodeDecodeError:
            self.fail(path, f"credential file {full} is not UTF-8 text")
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            self.fail(path, f"cannot read credential file {full}: {reason}")
        if len(content) > MAX_CREDENTIAL_FILE:
            self.fail(path, f"credential file {full} is too large to hold a credential")
        return content.rstrip("\r\n")


def names_key_pair(source: Map) -> bool:
    return any(key in source for key in ("ak", "ak_file", "sk", "sk_file"))

"""http.auth in the config: who may read the status page, and loopback as the only default."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_config import SRC, load
from watcher.cli import main
from watcher.config import DEFAULT_LISTEN
from watcher.errors import ConfigError
from watcher.web.auth import hash_password

TOKEN = "t" * 16
HASH = hash_password("a long password", ln=10)


def test_http_without_listen_serves_on_loopback_only() -> None:
    config = load(SRC + "http: {}\n")
    assert config.http_listen == DEFAULT_LISTEN == "127.0.0.1:9464"
    assert config.http_auth is None


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "127.8.8.8:9464", "'[::1]:9464'", "localhost:1"])
def test_loopback_listen_needs_no_auth(listen: str) -> None:
    assert load(SRC + f"http:\n  listen: {listen}\n").http_auth is None


def test_token_auth_is_a_secret() -> None:
    config = load(SRC + f"http:\n  listen: 0.0.0.0:9464\n  auth:\n    token: {TOKEN}\n")
    assert config.http_auth is not None and config.http_auth.token is not None
    assert config.http_auth.token.reveal() == TOKEN
    assert TOKEN in config.secrets
    assert TOKEN not in repr(config)


def test_token_from_a_file_and_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "http-token").write_text(TOKEN + "x\n")
    text = SRC + "http:\n  listen: 0.0.0.0:1\n  auth:\n    token_file: http-token\n"
    path = tmp_path / "w.yaml"
    path.write_text(text)
    from watcher.config import load_config

    config = load_config(str(path), env={"CLOUD_SDK_AK": "a", "CLOUD_SDK_SK": "b"})
    assert config.http_auth is not None and config.http_auth.token is not None
    assert config.http_auth.token.reveal() == TOKEN + "x"
    from_env = load(
        SRC + "http:\n  listen: 0.0.0.0:1\n  auth:\n    token: ${WEB_TOKEN}\n",
        env={"CLOUD_SDK_AK": "a", "CLOUD_SDK_SK": "b", "WEB_TOKEN": TOKEN},
    )
    assert from_env.http_auth is not None and from_env.http_auth.token is not None


def test_basic_auth_keeps_the_hash() -> None:
    config = load(
        SRC + f"http:\n  listen: 10.0.0.1:9464\n  auth:\n    basic:\n      user: ops\n"
        f"      password_hash: '{HASH}'\n"
    )
    assert config.http_auth is not None
    assert config.http_auth.basic_user == "ops"
    assert config.http_auth.basic_password_hash is not None
    assert config.http_auth.token is None


BAD: list[tuple[str, str, str]] = [
    (
        "wildcard_without_auth",
        "http:\n  listen: 0.0.0.0:9464\n",
        "w.yaml:6: http.listen: listening on 0.0.0.0 (not loopback) needs http.auth: set "
        "auth.token or auth.token_file (or auth.basic), or listen on 127.0.0.1",
    ),
    (
        "host_name_without_auth",
        "http:\n  listen: watcher.example.com:9464\n",
        "w.yaml:6: http.listen: listening on watcher.example.com (not loopback) needs http.auth",
    ),
    (
        "short_token",
        "http:\n  listen: 0.0.0.0:1\n  auth:\n    token: short\n",
        "w.yaml:8: http.auth.token: the token must be at least 16 characters without spaces",
    ),
    (
        "token_and_file",
        f"http:\n  auth:\n    token: {TOKEN}\n    token_file: x\n",
        "w.yaml:8: http.auth.token_file: set either 'token' or 'token_file', not both",
    ),
    (
        "missing_token_file",
        "http:\n  auth:\n    token_file: /nonexistent/token\n",
        "w.yaml:7: http.auth.token_file: cannot read credential file /nonexistent/token",
    ),
    (
        "empty_auth",
        "http:\n  listen: 0.0.0.0:1\n  auth: {}\n",
        "w.yaml:7: http.auth: expected 'token', 'token_file' or 'basic' (or drop http.auth)",
    ),
    (
        "unknown_auth_key",
        "http:\n  auth:\n    password: x\n",
        "w.yaml:7: http.auth.password: unknown key 'password'",
    ),
    (
        "plain_password_as_hash",
        "http:\n  auth:\n    basic:\n      user: ops\n      password_hash: hunter2hunter2\n",
        "w.yaml:9: http.auth.basic.password_hash: expected an scrypt hash like "
        "$scrypt$ln=15,r=8,p=1$SALT$KEY (make one with: python -m watcher.web.auth)",
    ),
    (
        "basic_without_user",
        f"http:\n  auth:\n    basic:\n      password_hash: '{HASH}'\n",
        "w.yaml:7: http.auth.basic: missing required key 'user'",
    ),
    (
        "user_with_colon",
        f"http:\n  auth:\n    basic:\n      user: a:b\n      password_hash: '{HASH}'\n",
        "w.yaml:8: http.auth.basic.user: a basic-auth user name cannot contain ':'",
    ),
]


@pytest.mark.parametrize(("case", "text", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_http_auth_says_file_line_key(case: str, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(SRC + text)
    assert str(info.value).startswith(message)
    assert "hunter2" not in str(info.value)


def test_check_refuses_a_public_listen_without_auth_with_exit_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUD_SDK_AK", "a")
    monkeypatch.setenv("CLOUD_SDK_SK", "b")
    path = tmp_path / "w.yaml"
    path.write_text(SRC + "http:\n  listen: 0.0.0.0:9464\n")
    assert main(["check", "-c", str(path)]) == 78
    err = capsys.readouterr().err
    assert f"{path}:6: http.listen: listening on 0.0.0.0 (not loopback) needs http.auth" in err
    assert "Traceback" not in err
    path.write_text(SRC + f"http:\n  listen: 0.0.0.0:9464\n  auth:\n    token: {TOKEN}\n")
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "http auth: bearer token; /healthz and /readyz stay open" in out
    assert TOKEN not in out


def test_the_example_http_block_is_valid_once_uncommented() -> None:
    example = (Path(__file__).resolve().parent.parent / "config.example.yaml").read_text()
    lines = example.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# http:"))
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[2:].split("  #")[0].rstrip())
    text = "\n".join(b for b in block if b.strip() and not b.lstrip().startswith("#"))
    text = text.replace('"$scrypt$ln=15,r=8,p=1$…"', f"'{HASH}'")
    config = load(
        SRC + text + "\n",
        env={"CLOUD_SDK_AK": "a", "CLOUD_SDK_SK": "b", "WATCHER_HTTP_TOKEN": TOKEN},
    )
    assert config.http_listen == "127.0.0.1:9464"
    assert config.http_auth is not None
    assert config.http_auth.token is not None and config.http_auth.basic_user == "ops"

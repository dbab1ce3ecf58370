"""watcher.web.auth: scrypt hashes, the credential check, loopback detection (pure)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.model import HttpAuth, Secret
from watcher.web.auth import Verifier, hash_password, is_loopback, parse_password_hash

TOKEN = "0123456789abcdef-token"
HASH = hash_password("s3cret pass", ln=10)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@settings(max_examples=15, deadline=None)
@given(st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s))
def test_any_password_matches_its_own_hash_only(password: str) -> None:
    parsed = parse_password_hash(hash_password(password, ln=10))
    assert parsed.matches(password)
    assert not parsed.matches(password + "x")


def test_two_hashes_of_one_password_differ_by_salt() -> None:
    assert hash_password("pw", ln=10) != hash_password("pw", ln=10)


def test_hash_format_is_phc_scrypt() -> None:
    text = hash_password("pw")
    assert text.startswith("$scrypt$ln=15,r=8,p=1$")
    parsed = parse_password_hash(text)
    assert (parsed.ln, parsed.r, parsed.p, len(parsed.salt), len(parsed.key)) == (15, 8, 1, 16, 32)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("hunter2", "expected an scrypt hash"),
        ("$scrypt$ln=30,r=8,p=1$c2FsdHNhbHRzYWx0$" + "A" * 43, "out of range"),
        ("$pbkdf2$ln=14,r=8,p=1$c2FsdHNhbHRzYWx0$" + "A" * 43, "expected an scrypt hash"),
    ],
)
def test_bad_hashes_are_refused_without_echoing_them(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        parse_password_hash(text)
    assert text not in str(info.value)


def test_bearer_token_and_basic_auth() -> None:
    verifier = Verifier(
        HttpAuth(token=Secret(TOKEN), basic_user="ops", basic_password_hash=Secret(HASH))
    )
    assert verifier.allows(f"Bearer {TOKEN}")
    assert verifier.allows(f"bearer   {TOKEN}  ")
    assert verifier.allows(basic("ops", "s3cret pass"))
    assert verifier.allows(basic("whoever", TOKEN))  # the token works as a password
    for bad in (
        None,
        "",
        "Bearer",
        f"Bearer {TOKEN[:-1]}",
        f"Digest {TOKEN}",
        basic("ops", "wrong"),
        basic("root", "s3cret pass"),
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic %%%",
    ):
        assert not verifier.allows(bad), bad


def test_token_only_refuses_basic_with_a_password() -> None:
    verifier = Verifier(HttpAuth(token=Secret(TOKEN)))
    assert not verifier.allows(basic("ops", "s3cret pass"))
    assert not verifier.allows(basic("ops", ""))


def test_basic_only_refuses_bearer() -> None:
    verifier = Verifier(HttpAuth(basic_user="ops", basic_password_hash=Secret(HASH)))
    assert not verifier.allows("Bearer s3cret pass")
    assert verifier.allows(basic("ops", "s3cret pass"))


def test_remembered_headers_are_bounded() -> None:
    verifier = Verifier(HttpAuth(token=Secret(TOKEN)), remember=2)
    for user in ("a", "b", "c"):
        assert verifier.allows(basic(user, TOKEN))
    assert len(verifier._passed) == 2


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("watcher.example.com", False),
    ],
)
def test_loopback_hosts(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected

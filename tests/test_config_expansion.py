"""watcher.config.expansion as a pure function: `${VAR}` substitution, `$$`, and URL parts
that get back exactly the value substituted into them, whatever characters it holds.
"""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.config.expansion import ExpansionError, Text, expand

values = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=30)


@given(st.text(max_size=40).filter(lambda text: "$" not in text))
def test_text_without_dollar_is_left_alone(text: str) -> None:
    assert expand(text, {}) == Text(text, text)


def test_dollar_forms() -> None:
    env = {"A": "x", "EMPTY": ""}
    assert expand("$$A ${A} $A ${MISSING:-d} ${EMPTY:-e}", env).value == "$A x $A d e"
    assert expand("${A}", env).pure_var == "A"
    assert expand("p${A}", env).pure_var is None
    assert expand("${A}-${A}", env).substituted == ("x", "x")


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("${NOPE}", "environment variable NOPE is not set"),
        ("${1BAD}", "malformed ${...} reference (write $$ for a literal $)"),
        ("${A", "malformed ${...} reference (write $$ for a literal $)"),
    ],
)
def test_bad_references_say_what_is_wrong(raw: str, problem: str) -> None:
    with pytest.raises(ExpansionError) as caught:
        expand(raw, {"A": "x"})
    assert str(caught.value) == problem


@given(values)
def test_a_value_in_userinfo_query_and_path_comes_back_unchanged(secret: str) -> None:
    env = {"S": secret}
    url = expand("json://user:${S}@example.com/a/${S}?token=${S}", env, in_url=True).value
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname == "example.com"
    assert urllib.parse.unquote(parts.password or "") == secret
    assert urllib.parse.unquote(parts.path) == f"/a/{secret}"
    assert urllib.parse.parse_qs(parts.query)["token"] == [secret]


@given(values)
def test_a_whole_url_from_one_variable_is_not_quoted(value: str) -> None:
    assert expand("${U}", {"U": value}, in_url=True).value == value

"""The signer must agree with the official SDK's Signer on every request we could send.

Cross-checked with hypothesis against `huaweicloudsdkcore`, plus one fixed vector.
"""

from __future__ import annotations

from datetime import UTC, datetime

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.metastudio.signer import (
    canonical_query,
    canonical_uri,
    parse_authorization,
    sign_request,
    verify,
)

NOW = datetime(2024, 12, 12, 8, 30, 5, tzinfo=UTC)
ENDPOINT = "https://metastudio.cn-north-4.myhuaweicloud.com"
PATH = "/v1/0a1b2c/voice-training-manage/user/jobs"

_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
    max_size=12,
)
_tricky = st.one_of(
    _text,
    st.sampled_from(["FAILED,WAITING", "a b", "2021-01-10T08:43:17Z", "女声", "~-._", "a&b=c"]),
)
_keys = st.one_of(st.sampled_from(["state", "tag", "job_id", "limit"]), _text.filter(bool))
_segment = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\x00"),
    min_size=1,
    max_size=10,
)
_header_name = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1
).filter(
    lambda n: (
        n.lower()
        not in {"host", "x-sdk-date", "content-type", "user-agent", "x-project-id", "authorization"}
    )
)
_header_value = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20
).map(lambda v: f" {v} ")


def _sdk_authorization(
    host: str, path: str, query: list[tuple[str, str]], headers: dict[str, str]
) -> str:
    sdk_headers = {k: v for k, v in headers.items() if k != "Authorization"}
    request = SdkRequest(
        method="GET",
        schema="https",
        host=host,
        resource_path=path,
        query_params=list(query),
        header_params=sdk_headers,
    )
    Signer(BasicCredentials("AKEXAMPLE", "SKEXAMPLE")).sign(request)
    auth: str = request.header_params["Authorization"]
    return auth


@settings(max_examples=200, deadline=None)
@given(
    segments=st.lists(_segment, min_size=1, max_size=4),
    query=st.lists(st.tuples(_keys, _tricky), max_size=6),
    extra=st.dictionaries(_header_name, _header_value, max_size=3),
    token=st.one_of(st.none(), st.text(alphabet="abcXYZ012=+/", min_size=1, max_size=20)),
)
def test_signature_matches_the_official_sdk(
    segments: list[str],
    query: list[tuple[str, str]],
    extra: dict[str, str],
    token: str | None,
) -> None:
    path = "/v1/" + "/".join(segments)
    signed = sign_request(
        method="GET",
        endpoint=ENDPOINT,
        path=path,
        query=query,
        ak="AKEXAMPLE",
        sk="SKEXAMPLE",
        now=NOW,
        project_id="0a1b2c",
        security_token=token,
        app_user_id="user-1",
        extra_headers=extra,
    )
    host = "metastudio.cn-north-4.myhuaweicloud.com"
    assert signed.headers["Authorization"] == _sdk_authorization(host, path, query, signed.headers)


@given(query=st.lists(st.tuples(_keys, _tricky), max_size=6))
def test_url_carries_the_canonical_query_the_sdk_sends(query: list[tuple[str, str]]) -> None:
    request = SdkRequest(resource_path=PATH, query_params=list(query))
    Signer.process_request_uri(request)
    signed = sign_request(
        method="GET", endpoint=ENDPOINT, path=PATH, query=query, ak="a", sk="s", now=NOW
    )
    assert signed.url == ENDPOINT + request.uri


def test_known_vector() -> None:
    signed = sign_request(
        method="GET",
        endpoint=ENDPOINT,
        path="/v1/p1/voice-training-manage/user/jobs",
        query=[("state", "FAILED,WAITING"), ("limit", "100"), ("voice_name", "女 声")],
        ak="AK",
        sk="SK",
        now=datetime(2024, 12, 12, 8, 0, 0, tzinfo=UTC),
        project_id="p1",
    )
    assert signed.url == (
        "https://metastudio.cn-north-4.myhuaweicloud.com/v1/p1/voice-training-manage/user/jobs"
        "?limit=100&state=FAILED%2CWAITING&voice_name=%E5%A5%B3%20%E5%A3%B0"
    )
    assert signed.headers["X-Sdk-Date"] == "20241212T080000Z"
    assert signed.headers["Authorization"] == (
        "SDK-HMAC-SHA256 Access=AK, "
        "SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-date, "
        "Signature=6d5b867dd9f2a53542a9faacb4773a5c054ff5c1bf42afde253a3831535e070f"
    )


def test_host_header_keeps_an_explicit_port_like_the_sdk() -> None:
    signed = sign_request(
        method="GET", endpoint="http://127.0.0.1:8080", path=PATH, query=[], ak="a", sk="s", now=NOW
    )
    assert signed.headers["Host"] == "127.0.0.1:8080"
    assert signed.url == "http://127.0.0.1:8080" + PATH


def test_canonical_query_sorts_pairs_and_escapes_commas_and_spaces() -> None:
    assert canonical_query([("state", "A,B"), ("limit", "1"), ("q", "a b:c")]) == (
        "limit=1&q=a%20b%3Ac&state=A%2CB"
    )
    assert canonical_query([("k", "b"), ("k", "a")]) == "k=a&k=b"


def test_canonical_uri_always_ends_with_a_slash() -> None:
    assert canonical_uri("/v1/p/jobs") == "/v1/p/jobs/"
    assert canonical_uri("/v1/a b") == "/v1/a%20b/"


def test_verify_accepts_own_signature_and_rejects_tampering() -> None:
    query = [("state", "FAILED,WAITING")]
    signed = sign_request(
        method="GET", endpoint=ENDPOINT, path=PATH, query=query, ak="AK", sk="SK", now=NOW
    )

    def check(
        *,
        sk: str = "SK",
        ak: str = "AK",
        q: list[tuple[str, str]] = query,
        headers: dict[str, str] = signed.headers,
    ) -> bool:
        return verify(method="GET", path=PATH, query=q, headers=headers, ak=ak, sk=sk)

    assert check()
    assert not check(sk="other")
    assert not check(ak="other")
    assert not check(q=[("state", "FAILED")])
    assert not check(headers=dict(signed.headers, **{"X-Sdk-Date": "20241212T083006Z"}))
    assert not check(headers={k: v for k, v in signed.headers.items() if k != "Authorization"})


def test_parse_authorization_rejects_other_schemes() -> None:
    assert parse_authorization("Bearer abc") is None
    assert parse_authorization("SDK-HMAC-SHA256 Access=a") is None
    auth = parse_authorization(
        "SDK-HMAC-SHA256 Access=a, SignedHeaders=host;x-sdk-date, Signature=f"
    )
    assert auth is not None
    assert auth.signed_headers == ("host", "x-sdk-date")

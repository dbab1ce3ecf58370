"""SDK-HMAC-SHA256 request signing, byte for byte as `huaweicloudsdkcore.signer.Signer` does it.

Pure functions: the client signs with them and the simulator verifies with them.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote, urlsplit

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
USER_AGENT = "metastudio-watcher/0.1"
_EMPTY_HASH = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What to send: the exact URL (canonical query included) and every header that was signed."""

    url: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Authorization:
    """The parts of an `Authorization: SDK-HMAC-SHA256 ...` header."""

    access_key: str
    signed_headers: tuple[str, ...]
    signature: str


@functools.lru_cache(maxsize=4096)
def _encode(value: str) -> str:
    # Cached: a scan signs a thousand requests whose names, path segments and most values
    # repeat, and urllib's quote costs a tenth of the signing (profiled at 100k jobs).
    return quote(value, safe="~")


def canonical_query(params: Sequence[tuple[str, str]]) -> str:
    """Sorted `k=v` pairs, both sides percent-encoded (`,` -> `%2C`, space -> `%20`)."""
    # The SDK sorts the raw pairs before encoding them; sorting encoded pairs could differ.
    return "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(params))


def canonical_uri(path: str) -> str:
    """Each segment percent-encoded, always ending in `/` (the request itself goes without)."""
    uri = "/".join(_encode(segment) for segment in unquote(path).split("/"))
    return uri if uri.endswith("/") else uri + "/"


def signed_header_names(headers: Mapping[str, str]) -> list[str]:
    """Lower-cased, sorted names of the headers to sign: the SDK skips names with `_`."""
    return sorted(name.lower() for name in headers if "_" not in name)


def canonical_request(
    *,
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    signed_headers: Sequence[str],
    body: bytes = b"",
) -> str:
    lowered = {name.lower(): value.strip() for name, value in headers.items()}
    lines = "".join(f"{name}:{lowered.get(name, '')}\n" for name in signed_headers)
    payload_hash = hashlib.sha256(body).hexdigest() if body else _EMPTY_HASH
    return "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            canonical_query(query),
            lines,
            ";".join(signed_headers),
            payload_hash,
        ]
    )


def compute_signature(*, canonical: str, sdk_date: str, sk: str) -> str:
    """Hex HMAC-SHA256 over the string to sign, keyed with the SK."""
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    string_to_sign = f"{ALGORITHM}\n{sdk_date}\n{digest}"
    return hmac.new(sk.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def sign_request(
    *,
    method: str,
    endpoint: str,
    path: str,
    query: Sequence[tuple[str, str]],
    ak: str,
    sk: str,
    now: datetime,
    project_id: str | None = None,
    security_token: str | None = None,
    app_user_id: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    body: bytes = b"",
) -> SignedRequest:
    """Sign one request as the SDK would, with `now` as its `X-Sdk-Date`."""
    # The SDK takes Host from the endpoint's netloc as written, port included when present.
    host = urlsplit(endpoint).netloc
    headers: dict[str, str] = {
        "Host": host,
        "X-Sdk-Date": now.astimezone(UTC).strftime(DATE_FORMAT),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
    if project_id:
        headers["X-Project-Id"] = project_id
    if security_token:
        headers["X-Security-Token"] = security_token
    if app_user_id:
        headers["X-App-UserId"] = app_user_id
    headers.update(extra_headers or {})
    # The SDK strips values before signing and sends the stripped values.
    headers = {name: value.strip() for name, value in headers.items()}
    names = signed_header_names(headers)
    canonical = canonical_request(
        method=method, path=path, query=query, headers=headers, signed_headers=names, body=body
    )
    signature = compute_signature(canonical=canonical, sdk_date=headers["X-Sdk-Date"], sk=sk)
    headers["Authorization"] = (
        f"{ALGORITHM} Access={ak}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    query_string = canonical_query(query)
    url = endpoint.rstrip("/") + canonical_uri(path).rstrip("/")
    if query_string:
        url += "?" + query_string
    return SignedRequest(url=url, headers=headers)


def parse_authorization(value: str) -> Authorization | None:
    """Split an Authorization header; None when it is not a well-formed SDK-HMAC-SHA256 one."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        return None
    parts: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            return None
        parts[key] = val
    try:
        access, signed, signature = parts["Access"], parts["SignedHeaders"], parts["Signature"]
    except KeyError:
        return None
    if not access or not signed or not signature:
        return None
    return Authorization(access, tuple(signed.split(";")), signature)


def expected_signature(
    *,
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    signed_headers: Sequence[str],
    sk: str,
    body: bytes = b"",
) -> str:
    """The signature a request must carry: what a gateway recomputes from what it received.

    `path` may be percent-encoded or not; `query` is the decoded pairs; `headers` needs at least
    the `signed_headers` (any case) and `X-Sdk-Date`.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    canonical = canonical_request(
        method=method,
        path=path,
        query=query,
        headers=lowered,
        signed_headers=list(signed_headers),
        body=body,
    )
    return compute_signature(
        canonical=canonical, sdk_date=lowered.get("x-sdk-date", "").strip(), sk=sk
    )


def verify(
    *,
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    ak: str,
    sk: str,
    body: bytes = b"",
) -> bool:
    """True when the request is signed with this AK/SK (the date is not checked here)."""
    auth_value = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    if auth_value is None:
        return False
    auth = parse_authorization(auth_value)
    if auth is None or auth.access_key != ak:
        return False
    if "x-sdk-date" not in auth.signed_headers or "host" not in auth.signed_headers:
        return False
    wanted = expected_signature(
        method=method,
        path=path,
        query=query,
        headers=headers,
        signed_headers=auth.signed_headers,
        sk=sk,
        body=body,
    )
    return hmac.compare_digest(wanted, auth.signature)

"""Webhook signatures: foreman's `X-Foreman-Signature` and the Standard Webhooks scheme.

Both are HMAC-SHA256 under one key. `X-Foreman-Signature` signs the raw body alone;
`webhook-signature` signs `"<webhook-id>.<webhook-timestamp>.<raw body>"`, so a receiver can
also reject replays by the timestamp (see docs/webhooks.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

STANDARD_PREFIX = "whsec_"
FOREMAN_SIGNATURE = "X-Foreman-Signature"
WEBHOOK_ID = "webhook-id"
WEBHOOK_TIMESTAMP = "webhook-timestamp"
WEBHOOK_SIGNATURE = "webhook-signature"
DEFAULT_TOLERANCE = 300
"""Seconds a Standard Webhooks timestamp may be off from now (as its libraries allow)."""


def signing_key(secret: str) -> bytes:
    """The HMAC key: the decoded bytes of a `whsec_<base64>` secret, else the secret's UTF-8."""
    if secret.startswith(STANDARD_PREFIX):
        encoded = secret[len(STANDARD_PREFIX) :]
        try:
            # Standard Webhooks libraries accept unpadded base64, so pad before decoding.
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if key:
            return key
    return secret.encode()


def foreman_signature(key: bytes, body: bytes) -> str:
    """The value of `X-Foreman-Signature`: `sha256=<hex HMAC-SHA256(key, body)>`."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def standard_signature(key: bytes, event_id: str, timestamp: str, body: bytes) -> bytes:
    """The raw Standard Webhooks HMAC of `"<id>.<timestamp>.<body>"`."""
    signed = f"{event_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign_headers(secret: str, event_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The signature headers of one delivery attempt made at `timestamp` (unix seconds)."""
    key = signing_key(secret)
    stamp = str(timestamp)
    standard = base64.b64encode(standard_signature(key, event_id, stamp, body)).decode()
    return {
        FOREMAN_SIGNATURE: foreman_signature(key, body),
        WEBHOOK_ID: event_id,
        WEBHOOK_TIMESTAMP: stamp,
        WEBHOOK_SIGNATURE: f"v1,{standard}",
    }


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: int | None = None,
) -> bool:
    """Whether a received webhook is signed with `secret` (for receivers).

    When any `webhook-*` header is present the Standard Webhooks scheme must verify in full,
    timestamp within `tolerance` seconds of `now` included; otherwise `X-Foreman-Signature`
    must match. Header names are case-insensitive; comparisons are constant-time.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    key = signing_key(secret)
    if any(name in lowered for name in (WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE)):
        current = int(time.time()) if now is None else now
        return _verify_standard(key, lowered, body, tolerance, current)
    given = lowered.get(FOREMAN_SIGNATURE.lower())
    if given is None or not given.isascii():
        return False
    return hmac.compare_digest(foreman_signature(key, body).encode(), given.strip().encode())


def _verify_standard(
    key: bytes, headers: Mapping[str, str], body: bytes, tolerance: int, now: int
) -> bool:
    event_id = headers.get(WEBHOOK_ID)
    stamp = headers.get(WEBHOOK_TIMESTAMP)
    signatures = headers.get(WEBHOOK_SIGNATURE)
    if not (event_id and stamp and signatures) or not (stamp.isascii() and stamp.isdigit()):
        return False
    if abs(now - int(stamp)) > tolerance:
        return False
    expected = standard_signature(key, event_id, stamp, body)
    return any(hmac.compare_digest(expected, given) for given in _v1_signatures(signatures))


def _v1_signatures(header: str) -> list[bytes]:
    """The decodable `v1,<base64>` entries of a space-separated `webhook-signature` header."""
    found = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found

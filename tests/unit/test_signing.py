"""Webhook signatures verify with the Standard Webhooks library and with a plain HMAC."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from foreman_core.signing import sign_headers, signing_key, verify_signature

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z

plain_secrets = st.text(min_size=1, max_size=64).filter(lambda s: not s.startswith("whsec_"))
key_bytes = st.binary(min_size=1, max_size=64)
standard_secrets = key_bytes.map(lambda key: "whsec_" + base64.b64encode(key).decode())
secrets = plain_secrets | standard_secrets
event_ids = st.text(
    alphabet="0123456789ABCDEFGHJKMNPQRSTVWXYZ", min_size=26, max_size=26
)  # what UlidGenerator makes
json_like_bodies = st.text(max_size=512).map(str.encode)
bodies = st.binary(max_size=512)


def library_key(secret: str) -> str:
    """The secret as the standardwebhooks library takes it: whsec_ or the base64 of the bytes."""
    if secret.startswith("whsec_"):
        return secret
    return base64.b64encode(secret.encode()).decode()


@given(secret=secrets, event_id=event_ids, body=json_like_bodies)
def test_standard_webhooks_library_verifies_our_headers(
    secret: str, event_id: str, body: bytes
) -> None:
    headers = sign_headers(secret, event_id, body, int(time.time()))

    Webhook(library_key(secret)).verify(body, headers, json_parse=False)


@given(secret=secrets, event_id=event_ids, body=json_like_bodies)
def test_standard_webhooks_library_rejects_a_tampered_body(
    secret: str, event_id: str, body: bytes
) -> None:
    headers = sign_headers(secret, event_id, body, int(time.time()))

    with pytest.raises(WebhookVerificationError):
        Webhook(library_key(secret)).verify(body + b" ", headers, json_parse=False)


@given(secret=secrets, event_id=event_ids, body=bodies)
def test_foreman_signature_is_the_hex_hmac_of_the_raw_body(
    secret: str, event_id: str, body: bytes
) -> None:
    key = (
        base64.b64decode(secret.removeprefix("whsec_"))
        if secret.startswith("whsec_")
        else secret.encode()
    )
    expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()

    assert sign_headers(secret, event_id, body, NOW)["X-Foreman-Signature"] == expected


@given(secret=secrets, event_id=event_ids, body=bodies)
def test_our_headers_verify_under_both_schemes(secret: str, event_id: str, body: bytes) -> None:
    headers = sign_headers(secret, event_id, body, NOW)
    foreman_only = {"X-Foreman-Signature": headers["X-Foreman-Signature"]}

    assert verify_signature(secret, headers, body, now=NOW)
    assert verify_signature(secret, foreman_only, body, now=NOW)


@given(secret=secrets, event_id=event_ids, body=bodies, flip=st.integers(min_value=0))
def test_tampering_with_the_body_fails_both_schemes(
    secret: str, event_id: str, body: bytes, flip: int
) -> None:
    headers = sign_headers(secret, event_id, body, NOW)
    tampered = _flip_one_byte(body, flip)
    foreman_only = {"X-Foreman-Signature": headers["X-Foreman-Signature"]}

    assert not verify_signature(secret, headers, tampered, now=NOW)
    assert not verify_signature(secret, foreman_only, tampered, now=NOW)


@given(secret=secrets, other=secrets, event_id=event_ids, body=bodies)
def test_another_secret_does_not_verify(
    secret: str, other: str, event_id: str, body: bytes
) -> None:
    if signing_key(secret) == signing_key(other):
        return
    headers = sign_headers(secret, event_id, body, NOW)

    assert not verify_signature(other, headers, body, now=NOW)


def _flip_one_byte(body: bytes, index: int) -> bytes:
    if not body:
        return b"x"
    position = index % len(body)
    return body[:position] + bytes([body[position] ^ 0x01]) + body[position + 1 :]


def test_a_whsec_secret_signs_with_its_decoded_bytes() -> None:
    assert signing_key("whsec_" + base64.b64encode(b"\x00key\xff").decode()) == b"\x00key\xff"


def test_a_whsec_secret_without_padding_is_decoded_as_the_library_does() -> None:
    assert signing_key("whsec_a2V5") == b"key"
    assert signing_key("whsec_a2V5MQ") == b"key1"


def test_a_plain_or_undecodable_secret_signs_with_its_utf8_bytes() -> None:
    assert signing_key("s3cret-ü") == "s3cret-ü".encode()
    assert signing_key("whsec_not base64!") == b"whsec_not base64!"


def test_header_names_are_case_insensitive() -> None:
    headers = sign_headers("secret", "01JABCDEFGHJKMNPQRSTVWXYZ0", b"{}", NOW)
    shouted = {name.upper(): value for name, value in headers.items()}

    assert verify_signature("secret", shouted, b"{}", now=NOW)
    assert verify_signature(
        "secret", {"x-foreman-signature": headers["X-Foreman-Signature"]}, b"{}"
    )


def test_timestamps_outside_the_tolerance_are_rejected_as_replays() -> None:
    headers = sign_headers("secret", "01JABCDEFGHJKMNPQRSTVWXYZ0", b"{}", NOW)

    assert verify_signature("secret", headers, b"{}", now=NOW + 300)
    assert not verify_signature("secret", headers, b"{}", now=NOW + 301)
    assert not verify_signature("secret", headers, b"{}", now=NOW - 301)
    assert verify_signature("secret", headers, b"{}", now=NOW + 3000, tolerance=3600)


def test_any_of_several_v1_signatures_may_match() -> None:
    headers = sign_headers("new", "01JABCDEFGHJKMNPQRSTVWXYZ0", b"{}", NOW)
    old = sign_headers("old", "01JABCDEFGHJKMNPQRSTVWXYZ0", b"{}", NOW)
    rotated = {
        **headers,
        "webhook-signature": f"v2,zzz {old['webhook-signature']} {headers['webhook-signature']}",
    }

    assert verify_signature("new", rotated, b"{}", now=NOW)
    assert verify_signature("old", rotated, b"{}", now=NOW)
    assert not verify_signature("other", rotated, b"{}", now=NOW)


def test_a_changed_id_or_timestamp_breaks_the_standard_signature() -> None:
    headers = sign_headers("secret", "01JABCDEFGHJKMNPQRSTVWXYZ0", b"{}", NOW)

    assert not verify_signature(
        "secret", {**headers, "webhook-id": "01JABCDEFGHJKMNPQRSTVWXYZ1"}, b"{}", now=NOW
    )
    assert not verify_signature(
        "secret", {**headers, "webhook-timestamp": str(NOW + 1)}, b"{}", now=NOW
    )


@pytest.mark.parametrize(
    "broken",
    [
        {"webhook-timestamp": "soon"},
        {"webhook-timestamp": "\uff11\uff12\uff13"},  # fullwidth digits
        {"webhook-signature": "v1,not-base64!"},
        {"webhook-signature": ""},
        {"webhook-id": ""},
    ],
)
def test_malformed_standard_headers_are_rejected(broken: dict[str, str]) -> None:
    headers = {**sign_headers("secret", "01JABCDEFGHJKMNPQRSTVWXYZ0", b"{}", NOW), **broken}

    assert not verify_signature("secret", headers, b"{}", now=NOW)


def test_a_partial_standard_header_set_does_not_fall_back_to_the_foreman_signature() -> None:
    headers = sign_headers("secret", "01JABCDEFGHJKMNPQRSTVWXYZ0", b"{}", NOW)
    without_timestamp = {k: v for k, v in headers.items() if k != "webhook-timestamp"}

    assert not verify_signature("secret", without_timestamp, b"{}", now=NOW)


def test_no_signature_at_all_is_rejected() -> None:
    assert not verify_signature("secret", {}, b"{}", now=NOW)
    assert not verify_signature("secret", {"X-Foreman-Signature": "sha256=ü"}, b"{}", now=NOW)

"""Webhook signatures: the documented scheme, with several v1= values during a rotation."""

from __future__ import annotations

import json

import pytest
from clipia.webhooks import verify_signature as sdk_verify

from clipia_tasks.callbacks import sign
from clipia_tasks.webhooks import verify_signature

NOW = 1_800_000_000
OLD, NEW = "whsec_old", "whsec_new"
BODY = json.dumps({"request_id": "764cabcf-b745-4b3e-ae38-1200304cf45b", "status": "OK"}).encode()


def v1(secret: str, body: bytes = BODY, t: int = NOW) -> str:
    return sign(secret, body, t).split("v1=")[1]


def header(*values: str, t: int = NOW) -> dict[str, str]:
    return {"X-Clipia-Signature": ",".join([f"t={t}", *(f"v1={v}" for v in values)])}


@pytest.mark.parametrize("secret", [OLD, NEW])
def test_a_rotation_header_is_valid_for_either_secret(secret: str) -> None:
    # Given Clipia signing with the old and the new secret during a rotation
    rotated = header(v1(OLD), v1(NEW))
    # Then a receiver holding either one accepts the delivery
    assert verify_signature(secret, rotated, BODY, now=NOW)
    # (the SDK alone reads only the last v1: it rejects the old secret)
    assert sdk_verify(secret, rotated, BODY, now=NOW) == (secret == NEW)


def test_tampered_stale_and_foreign_deliveries_are_rejected() -> None:
    assert verify_signature(NEW, header(v1(NEW)), BODY, now=NOW)
    assert not verify_signature(NEW, header(v1(NEW)), BODY.replace(b"OK", b"ERROR"), now=NOW)
    assert not verify_signature(NEW, header(v1(NEW, t=NOW - 301), t=NOW - 301), BODY, now=NOW)
    assert verify_signature(NEW, header(v1(NEW, t=NOW - 299), t=NOW - 299), BODY, now=NOW)
    assert not verify_signature(NEW, header(v1("someone_else")), BODY, now=NOW)
    assert not verify_signature(NEW, header(), BODY, now=NOW)
    assert not verify_signature(NEW, {}, BODY, now=NOW)
    assert not verify_signature(NEW, {"X-Clipia-Signature": "garbage"}, BODY, now=NOW)
    assert not verify_signature(NEW, header(v1(NEW)), b"\xff\xfe", now=NOW)


def test_the_timestamp_comes_only_from_the_signed_header() -> None:
    stale = NOW - 1000
    headers = {**header(v1(NEW, t=stale), t=stale), "X-Clipia-Timestamp": str(NOW)}
    assert not verify_signature(NEW, headers, BODY, now=NOW)


@pytest.mark.parametrize("name", ["x-clipia-signature", "X-CLIPIA-SIGNATURE", "X-Clipia-Signature"])
def test_header_names_match_in_any_case(name: str) -> None:
    assert verify_signature(NEW, {name: f"t={NOW},v1={v1(NEW)}"}, BODY, now=NOW)
    assert verify_signature(NEW, {name: f"t={NOW}, v1={v1(OLD)} , v1={v1(NEW)}"}, BODY.decode(),
                            now=NOW)

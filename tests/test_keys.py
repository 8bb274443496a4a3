"""Signing keys: creation, storage rights, rotation."""

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jwcrypto import jwk, jws

from broker.keys import KeyStore, KeyStoreError


def verify_with_jwks(token: str, jwks: dict) -> dict:  # type: ignore[type-arg]
    """Verify as a holder would: kid from the header, ES256 only, against the published set."""
    parsed = jws.JWS()
    parsed.deserialize(token)
    kid = parsed.jose_header["kid"]
    keyset = jwk.JWKSet.from_json(json.dumps(jwks))
    key = keyset.get_key(kid)
    if key is None:
        raise LookupError(kid)
    parsed.allowed_algs = ["ES256"]
    parsed.verify(key)
    return json.loads(parsed.payload)


def test_create_is_idempotent_and_private(key_dir: Path) -> None:
    store = KeyStore(key_dir)
    first = store.create()
    assert first is not None
    assert store.create() is None
    assert key_dir.stat().st_mode & 0o777 == 0o700
    for path in key_dir.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
    # kid is the RFC 7638 thumbprint of the key
    public = store.public_key(first.kid)
    assert jwk.JWK(**public).thumbprint() == first.kid
    assert "d" not in public


def test_load_without_keys_says_what_to_do(key_dir: Path) -> None:
    with pytest.raises(KeyStoreError, match="broker keys create"):
        KeyStore(key_dir).load()


def test_rotation_keeps_previous_public_key_until_its_window_ends(key_dir: Path) -> None:
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    store = KeyStore(key_dir)
    old = store.create(now)
    assert old is not None
    token = store.sign({"sub": "x", "iat": 1}, typ="at+jwt")
    new = store.rotate(timedelta(hours=1), now)
    assert store.active_kid == new.kid != old.kid
    jwks = store.public_jwks(now + timedelta(minutes=59))
    assert {k["kid"] for k in jwks["keys"]} == {old.kid, new.kid}
    assert verify_with_jwks(token, jwks) == {"sub": "x", "iat": 1}
    # new tokens are signed with the new key
    fresh = store.sign({"sub": "y"}, typ="at+jwt")
    assert verify_with_jwks(fresh, jwks)["sub"] == "y"
    # after the window the old key leaves the JWKS, and its tokens no longer verify
    later = store.public_jwks(now + timedelta(hours=2))
    assert {k["kid"] for k in later["keys"]} == {new.kid}
    with pytest.raises(LookupError):
        verify_with_jwks(token, later)


def test_refresh_sees_a_rotation_made_by_another_process(key_dir: Path) -> None:
    serving = KeyStore(key_dir)
    serving.create()
    other = KeyStore(key_dir)
    import os
    import time

    time.sleep(0.01)
    new = other.rotate(timedelta(hours=1))
    # make sure the mtime differs even on coarse file systems
    os.utime(key_dir / "keyring.json", (time.time() + 1, time.time() + 1))
    serving.refresh()
    assert serving.active_kid == new.kid


def test_tampered_key_file_is_refused(key_dir: Path) -> None:
    store = KeyStore(key_dir)
    info = store.create()
    assert info is not None
    (key_dir / f"{info.kid}.jwk").write_text(jwk.JWK.generate(kty="EC", crv="P-256").export_private())
    with pytest.raises(KeyStoreError, match="does not match"):
        KeyStore(key_dir).load()


def test_every_node_signs_with_a_rotated_key_within_a_second(tmp_path: Path, monkeypatch: Any) -> None:
    """Two nodes share one key directory: a rotation made through one is used by the other."""
    import broker.keys

    node_a = KeyStore(tmp_path)
    node_a.create()
    node_b = KeyStore(tmp_path).load()
    first = node_b.active_kid

    def kid_of(token: str) -> str:
        header = token.split(".")[0]
        return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])

    assert kid_of(node_b.sign({"n": 1}, "at+jwt")) == first
    new = node_a.rotate(timedelta(minutes=10))
    monkeypatch.setattr(broker.keys, "REFRESH_SECONDS", 0.0)  # instead of waiting a second
    assert kid_of(node_b.sign({"n": 2}, "at+jwt")) == new.kid != first

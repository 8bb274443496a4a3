"""private_key_jwt client assertions (RFC 7523 §3), each rule failing alone."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jwcrypto import jwk

from broker.consent.proofs import (
    CLIENT_ASSERTION_TYPE,
    BadSignature,
    ClaimError,
    ExpiredToken,
    MemoryReplayCache,
    ReplayedToken,
    UnknownKey,
    WrongType,
    verify_client_assertion,
)
from tests.consent.proofs.forge import ec_key, public, sign

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T = int(NOW.timestamp())
CLIENT_ID = "app_3f9c2a"
ISSUER = "https://broker.example"
TOKEN_ENDPOINT = "https://broker.example/oauth/token"
AUDIENCES = (ISSUER, TOKEN_ENDPOINT)


@pytest.fixture(scope="module")
def key() -> jwk.JWK:
    return ec_key()


@pytest.fixture(scope="module")
def jwks(key: jwk.JWK) -> dict[str, Any]:
    return {"keys": [public(key, kid="app-key-1", use="sig", alg="ES256"), public(ec_key(), kid="app-key-2")]}


def assertion(key: jwk.JWK, header: dict[str, Any] | None = None, **claims: Any) -> str:
    head = {"alg": "ES256", "kid": "app-key-1", "typ": "JWT"}
    head.update(header or {})
    body = {
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "aud": ISSUER,
        "iat": T,
        "exp": T + 60,
        "jti": uuid.uuid4().hex,
    }
    body.update(claims)
    return sign(
        {k: v for k, v in head.items() if v is not None},
        {k: v for k, v in body.items() if v is not None},
        key,
    )


def check(token: str, jwks: dict[str, Any], **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_jwks": jwks,
        "audiences": AUDIENCES,
        "now": NOW,
        "replay": MemoryReplayCache(clock=lambda: NOW),
    }
    options.update(overrides)
    return verify_client_assertion(token, **options)


def test_assertion_type_constant() -> None:
    assert CLIENT_ASSERTION_TYPE == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def test_valid_assertion(key: jwk.JWK, jwks: dict[str, Any]) -> None:
    result = check(assertion(key), jwks)
    assert result.client_id == CLIENT_ID
    assert result.kid == "app-key-1"
    assert result.alg == "ES256"
    assert result.expires_at == NOW + timedelta(seconds=60)
    assert result.issued_at == NOW


@pytest.mark.parametrize("aud", [TOKEN_ENDPOINT, [TOKEN_ENDPOINT], ["https://other.example", ISSUER]])
def test_accepted_audiences(aud: Any, key: jwk.JWK, jwks: dict[str, Any]) -> None:
    assert check(assertion(key, aud=aud), jwks)


@pytest.mark.parametrize(
    "aud",
    [
        "https://broker.example/",
        "https://broker.example/oauth",
        "https://broker.example/oauth/token/x",
        "https://broker.example.evil",
        "https://other.example/token",  # audience injection: another server's endpoint
        [],
        None,
    ],
)
def test_wrong_audience(aud: Any, key: jwk.JWK, jwks: dict[str, Any]) -> None:
    with pytest.raises(ClaimError):
        check(assertion(key, aud=aud), jwks)


@pytest.mark.parametrize(
    "claims", [{"iss": "app_3f9c2"}, {"iss": "app_3f9c2a "}, {"sub": "other"}, {"iss": None}, {"sub": None}]
)
def test_iss_and_sub_are_the_client_id(claims: dict[str, Any], key: jwk.JWK, jwks: dict[str, Any]) -> None:
    with pytest.raises(ClaimError):
        check(assertion(key, **claims), jwks)


def test_exp_required_and_checked(key: jwk.JWK, jwks: dict[str, Any]) -> None:
    with pytest.raises(ClaimError, match="exp"):
        check(assertion(key, exp=None), jwks)
    with pytest.raises(ExpiredToken):
        check(assertion(key, iat=T - 120, exp=T - 31), jwks)
    assert check(assertion(key, iat=T - 120, exp=T - 29), jwks)


def test_lifetime_cap(key: jwk.JWK, jwks: dict[str, Any]) -> None:
    with pytest.raises(ClaimError, match="too far"):
        check(assertion(key, iat=None, exp=T + 3600), jwks)
    with pytest.raises(ClaimError, match="lifetime"):
        check(assertion(key, iat=T - 250, exp=T + 60), jwks)
    assert check(assertion(key, iat=T, exp=T + 300), jwks)
    assert check(assertion(key, iat=None, exp=T + 300), jwks)


def test_iat_and_nbf_not_in_the_future(key: jwk.JWK, jwks: dict[str, Any]) -> None:
    with pytest.raises(ClaimError, match="future"):
        check(assertion(key, iat=T + 120, exp=T + 180), jwks)
    with pytest.raises(ClaimError, match="future"):
        check(assertion(key, nbf=T + 120), jwks)


def test_jti_required(key: jwk.JWK, jwks: dict[str, Any]) -> None:
    for jti in (None, "", "x" * 257, 42):
        with pytest.raises(ClaimError):
            check(assertion(key, jti=jti), jwks)


def test_replay_refused(key: jwk.JWK, jwks: dict[str, Any]) -> None:
    replay = MemoryReplayCache(clock=lambda: NOW)
    token = assertion(key)
    check(token, jwks, replay=replay)
    with pytest.raises(ReplayedToken):
        check(token, jwks, replay=replay)
    # A fresh assertion with another jti is fine.
    assert check(assertion(key), jwks, replay=replay)


def test_replay_cache_keyed_by_client(key: jwk.JWK, jwks: dict[str, Any]) -> None:
    replay = MemoryReplayCache(clock=lambda: NOW)
    check(assertion(key, jti="shared"), jwks, replay=replay)
    other_id = "app_other"
    other = assertion(key, jti="shared", iss=other_id, sub=other_id)
    assert check(other, jwks, replay=replay, client_id=other_id)


def test_failed_assertion_does_not_spend_the_jti(key: jwk.JWK, jwks: dict[str, Any]) -> None:
    replay = MemoryReplayCache(clock=lambda: NOW)
    with pytest.raises(ClaimError):
        check(assertion(key, jti="j", aud="https://wrong.example"), jwks, replay=replay)
    assert check(assertion(key, jti="j"), jwks, replay=replay)


def test_keys_only_from_the_clients_jwks(key: jwk.JWK, jwks: dict[str, Any]) -> None:
    stranger = ec_key()
    with pytest.raises(BadSignature):
        check(assertion(stranger, {"jwk": public(stranger)}), jwks)
    with pytest.raises(UnknownKey):
        check(assertion(key, {"kid": "not-registered"}), jwks)
    with pytest.raises(BadSignature, match="kid is required"):
        check(assertion(key, {"kid": None}), jwks)


def test_another_clients_key_does_not_authenticate(key: jwk.JWK) -> None:
    other_jwks = {"keys": [public(ec_key(), kid="app-key-1")]}
    with pytest.raises(BadSignature):
        check(assertion(key), other_jwks)


@pytest.mark.parametrize("typ", ["at+jwt", "dpop+jwt", "statuslist+jwt", "logout+jwt"])
def test_other_token_types_refused(typ: str, key: jwk.JWK, jwks: dict[str, Any]) -> None:
    with pytest.raises(WrongType):
        check(assertion(key, {"typ": typ}), jwks)


@pytest.mark.parametrize(
    "typ", [None, "JWT", "jwt", "client-authentication+jwt", "application/client-authentication+jwt"]
)
def test_accepted_types(typ: str | None, key: jwk.JWK, jwks: dict[str, Any]) -> None:
    assert check(assertion(key, {"typ": typ}), jwks)


@pytest.mark.parametrize("alg", ["none", "None", "HS256", "RS256", "RSA1_5"])
def test_algorithms_allow_listed(alg: str, key: jwk.JWK, jwks: dict[str, Any]) -> None:
    head = {"alg": alg, "kid": "app-key-1"}
    body = {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": ISSUER, "exp": T + 60, "jti": "j"}
    with pytest.raises(WrongType):
        check(sign(head, body, None) + "c2lnbmF0dXJl", jwks)


def test_rsa_client_key() -> None:
    rsa_key = jwk.JWK.generate(kty="RSA", size=2048)
    jwks = {"keys": [public(rsa_key, kid="app-key-1")]}
    assert check(assertion(rsa_key, {"alg": "PS256"}), jwks).alg == "PS256"
    with pytest.raises(WrongType):
        check(assertion(rsa_key, {"alg": "RS256"}), jwks)
    assert check(assertion(rsa_key, {"alg": "RS256"}), jwks, algorithms=("RS256",)).alg == "RS256"


def test_arguments_are_checked(key: jwk.JWK, jwks: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        check(assertion(key), jwks, client_id="")
    with pytest.raises(ValueError):
        check(assertion(key), jwks, audiences=ISSUER)  # a bare string would allow substrings

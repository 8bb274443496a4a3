"""DPoP proofs (RFC 9449): the RFC's own examples, then each check of §4.3 failing alone."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jwcrypto import jwk

from broker.consent.proofs import (
    BadSignature,
    ClaimError,
    ExpiredToken,
    MalformedToken,
    MemoryReplayCache,
    ReplayedToken,
    UseDPoPNonce,
    WrongType,
    access_token_hash,
    normalize_htu,
    verify_dpop_proof,
)
from tests.consent.proofs.forge import ec_key, public, sign

# RFC 9449 §4.1 Figure 4 (token request) and §7.1 Figure 13 (resource request), one key.
RFC_TOKEN_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19"
    ".eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ"
    ".2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg"
)
RFC_RESOURCE_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19"
    ".eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9"
    ".2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA"
)
RFC_ACCESS_TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
RFC_ATH = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
RFC_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"  # §6.1
RFC_TIME = datetime.fromtimestamp(1562262616, UTC)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
URL = "https://broker.example/token"


def cache(now: datetime = NOW) -> MemoryReplayCache:
    return MemoryReplayCache(clock=lambda: now)


def test_rfc9449_token_request_example() -> None:
    replay = cache(RFC_TIME)
    proof = verify_dpop_proof(
        RFC_TOKEN_PROOF,
        method="POST",
        url="https://server.example.com/token",
        now=RFC_TIME + timedelta(seconds=2),
        replay=replay,
        expected_jkt=RFC_JKT,
    )
    assert (proof.jkt, proof.jti, proof.htm) == (RFC_JKT, "-BwC3ESc6acc2lTc", "POST")
    assert proof.issued_at == RFC_TIME
    assert proof.public_jwk["x"] == "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs"
    # §11.1: the same proof a second time is a replay.
    with pytest.raises(ReplayedToken):
        verify_dpop_proof(
            RFC_TOKEN_PROOF,
            method="POST",
            url="https://server.example.com/token",
            now=RFC_TIME,
            replay=replay,
        )


def test_rfc9449_resource_request_example() -> None:
    assert access_token_hash(RFC_ACCESS_TOKEN) == RFC_ATH
    proof = verify_dpop_proof(
        RFC_RESOURCE_PROOF,
        method="GET",
        url="https://resource.example.org/protectedresource?x=1",  # the query is ignored
        now=RFC_TIME + timedelta(seconds=3),
        replay=cache(RFC_TIME),
        access_token=RFC_ACCESS_TOKEN,
        expected_jkt=RFC_JKT,
    )
    assert proof.claims["ath"] == RFC_ATH
    with pytest.raises(ClaimError, match="ath"):
        verify_dpop_proof(
            RFC_RESOURCE_PROOF,
            method="GET",
            url="https://resource.example.org/protectedresource",
            now=RFC_TIME + timedelta(seconds=3),
            replay=cache(RFC_TIME),
            access_token=RFC_ACCESS_TOKEN + "x",
        )


def test_rfc9449_example_is_too_old_today() -> None:
    with pytest.raises(ExpiredToken):
        verify_dpop_proof(
            RFC_TOKEN_PROOF, method="POST", url="https://server.example.com/token", now=NOW, replay=cache()
        )


# -- Proofs we make, each check failing alone -------------------------------------------------


@pytest.fixture(scope="module")
def client_key() -> jwk.JWK:
    return ec_key()


def make_proof(key: jwk.JWK, header_extra: dict[str, Any] | None = None, **claims: Any) -> str:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": public(key)}
    header.update(header_extra or {})
    body: dict[str, Any] = {"jti": uuid.uuid4().hex, "htm": "POST", "htu": URL, "iat": int(NOW.timestamp())}
    body.update(claims)
    return sign(
        {k: v for k, v in header.items() if v is not None},
        {k: v for k, v in body.items() if v is not None},
        key,
    )


def check(proof: str, **overrides: Any) -> Any:
    options: dict[str, Any] = {"method": "POST", "url": URL, "now": NOW, "replay": cache()}
    options.update(overrides)
    return verify_dpop_proof(proof, **options)


def test_valid_proof(client_key: jwk.JWK) -> None:
    proof = check(make_proof(client_key), expected_jkt=client_key.thumbprint())
    assert proof.jkt == client_key.thumbprint()
    assert "d" not in proof.public_jwk


@pytest.mark.parametrize("typ", ["jwt", "at+jwt", None, "dpop"])
def test_typ_must_be_dpop_jwt(typ: str | None, client_key: jwk.JWK) -> None:
    with pytest.raises(WrongType):
        check(make_proof(client_key, {"typ": typ}))


def test_typ_case_insensitive(client_key: jwk.JWK) -> None:
    assert check(make_proof(client_key, {"typ": "application/DPoP+JWT"}))


def test_jwk_header_required(client_key: jwk.JWK) -> None:
    with pytest.raises(MalformedToken, match="jwk"):
        check(make_proof(client_key, {"jwk": None}))


def test_jwk_must_be_public(client_key: jwk.JWK) -> None:
    private = client_key.export_private(as_dict=True)
    with pytest.raises(BadSignature, match="private"):
        check(make_proof(client_key, {"jwk": private}))


def test_signature_by_the_embedded_key(client_key: jwk.JWK) -> None:
    # A proof carrying someone else's public key, signed by the attacker, does not verify.
    attacker = ec_key()
    with pytest.raises(BadSignature):
        check(make_proof(attacker, {"jwk": public(client_key)}))


def test_symmetric_embedded_key_refused(client_key: jwk.JWK) -> None:
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": "c2VjcmV0"}}
    body = {"jti": "j", "htm": "POST", "htu": URL, "iat": int(NOW.timestamp())}
    with pytest.raises(WrongType):
        check(sign(header, body, None) + "c2lnbmF0dXJl")


def test_alg_none_refused(client_key: jwk.JWK) -> None:
    proof = make_proof(client_key, {"alg": "none"})
    with pytest.raises(WrongType):
        check(proof.rsplit(".", 1)[0] + ".")


@pytest.mark.parametrize("name", ["jti", "htm", "htu", "iat"])
def test_required_claims(name: str, client_key: jwk.JWK) -> None:
    with pytest.raises(ClaimError):
        check(make_proof(client_key, **{name: None}))


@pytest.mark.parametrize("htm", ["GET", "post", "PUT"])
def test_htm_must_match(htm: str, client_key: jwk.JWK) -> None:
    with pytest.raises(ClaimError, match="htm"):
        check(make_proof(client_key, htm=htm))


@pytest.mark.parametrize(
    "htu",
    [
        "https://broker.example/token/",
        "https://broker.example/tokens",
        "http://broker.example/token",
        "https://broker.example:8443/token",
        "https://evil.example/token",
        "https://broker.example.evil/token",
        "https://user@broker.example/token",
        "ftp://broker.example/token",
        "/token",
    ],
)
def test_htu_must_match(htu: str, client_key: jwk.JWK) -> None:
    with pytest.raises(ClaimError, match="htu"):
        check(make_proof(client_key, htu=htu))


@pytest.mark.parametrize(
    "htu",
    [
        "https://broker.example/token",
        "HTTPS://Broker.Example/token",
        "https://broker.example:443/token",
        "https://broker.example/a/../token",
        "https://broker.example/./token",
        "https://broker.example/%74oken",
        "https://broker.example/token?query=1",
        "https://broker.example/token#fragment",
    ],
)
def test_htu_normalised_per_rfc3986(htu: str, client_key: jwk.JWK) -> None:
    assert check(make_proof(client_key, htu=htu)).htu == htu


def test_normalize_htu() -> None:
    assert normalize_htu("HTTPS://Example.COM:443") == "https://example.com/"
    assert normalize_htu("http://example.com:80/a/b/../c/./d?q#f") == "http://example.com/a/c/d"
    assert normalize_htu("https://example.com/%7e%2f") == "https://example.com/~%2F"
    assert normalize_htu("https://[::1]:8443/x") == "https://[::1]:8443/x"
    with pytest.raises(ClaimError):
        normalize_htu("https://example.com:99999/")


def test_iat_window(client_key: jwk.JWK) -> None:
    t = int(NOW.timestamp())
    assert check(make_proof(client_key, iat=t - 59))
    assert check(make_proof(client_key, iat=t + 9))
    with pytest.raises(ExpiredToken):
        check(make_proof(client_key, iat=t - 61))
    with pytest.raises(ClaimError, match="future"):
        check(make_proof(client_key, iat=t + 11))


def test_exp_if_present_is_checked(client_key: jwk.JWK) -> None:
    with pytest.raises(ExpiredToken):
        check(make_proof(client_key, exp=int(NOW.timestamp()) - 60))


def test_ath_required_with_access_token(client_key: jwk.JWK) -> None:
    with pytest.raises(ClaimError, match="ath"):
        check(make_proof(client_key), access_token="token-value")
    assert check(make_proof(client_key, ath=access_token_hash("token-value")), access_token="token-value")
    with pytest.raises(ClaimError, match="ath"):
        check(make_proof(client_key, ath=access_token_hash("other")), access_token="token-value")


def test_cnf_jkt_binding(client_key: jwk.JWK) -> None:
    other = ec_key()
    with pytest.raises(ClaimError, match=r"cnf\.jkt"):
        check(make_proof(client_key), expected_jkt=other.thumbprint())


def test_nonce(client_key: jwk.JWK) -> None:
    with pytest.raises(UseDPoPNonce):
        check(make_proof(client_key), nonce="n-1")
    with pytest.raises(UseDPoPNonce):
        check(make_proof(client_key, nonce="n-0"), nonce="n-1")
    assert check(make_proof(client_key, nonce="n-1"), nonce="n-1")


def test_replay_refused_and_scoped_by_key(client_key: jwk.JWK) -> None:
    replay = cache()
    proof = make_proof(client_key, jti="same")
    check(proof, replay=replay)
    with pytest.raises(ReplayedToken):
        check(proof, replay=replay)
    # Another key's proof with the same jti is not blocked: jti values are scoped by jkt.
    assert check(make_proof(ec_key(), jti="same"), replay=replay)


def test_replay_after_window_is_refused_by_time(client_key: jwk.JWK) -> None:
    # Once the cache forgets a jti, the iat window refuses the proof anyway.
    proof = make_proof(client_key)
    later = NOW + timedelta(seconds=71)
    check(proof, replay=cache())
    with pytest.raises(ExpiredToken):
        check(proof, now=later, replay=cache(later))


def test_jti_bounds(client_key: jwk.JWK) -> None:
    for jti in ("", "x" * 257, 5):
        with pytest.raises(ClaimError):
            check(make_proof(client_key, jti=jti))


def test_rsa_and_eddsa_proofs() -> None:
    for key, alg in (
        (jwk.JWK.generate(kty="RSA", size=2048), "PS256"),
        (jwk.JWK.generate(kty="OKP", crv="Ed25519"), "EdDSA"),
    ):
        proof = check(make_proof(key, {"alg": alg}))
        assert proof.jkt == key.thumbprint()


def test_rs256_only_when_allowed() -> None:
    key = jwk.JWK.generate(kty="RSA", size=2048)
    proof = make_proof(key, {"alg": "RS256"})
    with pytest.raises(WrongType):
        check(proof)
    assert check(proof, algorithms=("RS256",))


def test_access_token_must_be_ascii() -> None:
    with pytest.raises(ClaimError):
        access_token_hash("tökén")

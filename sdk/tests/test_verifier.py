"""The holder verifier against a live broker: real tokens, and tokens forged every way.

Each forged token is refused with the right typed error; the exact class is asserted (a
``TokenExpired`` is also a ``TokenInvalid``, so ``pytest.raises`` alone would not tell).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from jwcrypto import jwe, jwk
from sdk_support import Broker, Browser, grant, new_key

from broker_sdk import (
    AppSuspended,
    BrokerUnavailable,
    DPoPKey,
    DPoPProofInvalid,
    HolderVerifier,
    InsufficientScope,
    TokenExpired,
    TokenInvalid,
    TokenRevoked,
    VerificationError,
)
from broker_sdk._jose import sign


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)])


def raw_sign(header: dict[str, Any], claims: dict[str, Any], key: jwk.JWK) -> str:
    """ES256 by hand, for headers jwcrypto refuses to produce."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(
        key.get_op_key("sign").sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    )
    return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def payload(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))))


class Recorder:
    """Every request the verifier's HTTP client sends."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, request: httpx.Request) -> None:
        self.urls.append(str(request.url))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def verifier(live_broker: Broker, recorder: Recorder) -> Iterator[HolderVerifier]:
    http = httpx.Client(timeout=5, trust_env=False, event_hooks={"request": [recorder]})
    holder = live_broker.holders["labo-a"]
    with HolderVerifier(live_broker.issuer, holder.base_url, holder_id="labo-a", http=http) as v:
        yield v
    http.close()


@pytest.fixture
def token(live_broker: Broker, browser: Browser) -> dict[str, Any]:
    return grant(live_broker, browser)


def refused(verifier: HolderVerifier, token: str, expected: type[VerificationError], **kw: Any) -> str:
    with pytest.raises(VerificationError) as caught:
        verifier.verify(token, **kw)
    assert type(caught.value) is expected, f"{type(caught.value).__name__}: {caught.value}"
    return caught.value.reason


def forged(
    broker: Broker,
    token: str,
    key: jwk.JWK | None = None,
    header: dict[str, Any] | None = None,
    **changes: Any,
) -> str:
    """The real token's claims, changed, signed again with the broker's key (or ``key``)."""
    claims = {**payload(token), **changes}
    for name, value in changes.items():
        if value is None:
            del claims[name]
    signer = key or broker.signing_key
    extra = dict(header or {})
    typ = extra.pop("typ", "at+jwt")
    kid = extra.pop("kid", None)
    return sign(claims, signer, typ=typ, kid=kid, **extra)


def test_a_real_token_passes_and_says_what_it_grants(
    verifier: HolderVerifier, token: dict[str, Any], live_broker: Broker
) -> None:
    verified = verifier.verify(token["access_token"], categories=["lab_results"])
    assert verified.consent_id == token["consent_id"]
    assert verified.client_id == live_broker.client_id
    assert verified.categories == {"lab_results"}
    assert verified.purposes == {"chronic_disease_followup"}
    assert verified.link_handle
    assert verified.subject.startswith("p_")
    assert verified.audience == live_broker.holders["labo-a"].base_url
    # seen before: the same answer, without a second JWKS or status fetch
    fetches = (verifier.status_lists.fetch_count, verifier._issuers[live_broker.issuer].keys.fetch_count)
    assert verifier.verify(token["access_token"]) is verified
    assert fetches == (
        verifier.status_lists.fetch_count,
        verifier._issuers[live_broker.issuer].keys.fetch_count,
    )
    assert verifier.verify_authorization(f"Bearer {token['access_token']}") is verified


def test_a_category_outside_the_consent(verifier: HolderVerifier, token: dict[str, Any]) -> None:
    with pytest.raises(InsufficientScope) as caught:
        verifier.verify(token["access_token"], categories=["lab_results", "identity"])
    assert caught.value.missing == {"identity"}
    assert caught.value.status_code == 403


def test_alg_none_in_every_casing(
    verifier: HolderVerifier, token: dict[str, Any], live_broker: Broker
) -> None:
    claims = payload(token["access_token"])
    kid = live_broker.signing_key.get("kid")
    for alg in ("none", "None", "NONE", "nOnE"):
        for signature in (b"", b"garbage"):
            forged_token = raw_token({"alg": alg, "typ": "at+jwt", "kid": kid}, claims, signature)
            assert refused(verifier, forged_token, TokenInvalid) == "alg"


def test_null_signature_and_psychic_signature(
    verifier: HolderVerifier, token: dict[str, Any], live_broker: Broker
) -> None:
    header, body, _ = token["access_token"].split(".")
    assert refused(verifier, f"{header}.{body}.", TokenInvalid) == "signature"
    assert refused(verifier, f"{header}.{body}.{b64(bytes(64))}", TokenInvalid) == "signature"
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    rs = order.to_bytes(32, "big") * 2
    assert refused(verifier, f"{header}.{body}.{b64(rs)}", TokenInvalid) == "signature"


def test_hs256_with_the_public_key_as_secret(
    verifier: HolderVerifier, token: dict[str, Any], live_broker: Broker
) -> None:
    public = live_broker.signing_key.export_public(as_dict=True)
    pem = live_broker.signing_key.export_to_pem()
    claims = payload(token["access_token"])
    for secret in (pem, json.dumps(public).encode(), b""):
        header = {"alg": "HS256", "typ": "at+jwt", "kid": public["kid"]}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert refused(verifier, f"{signing_input}.{b64(mac)}", TokenInvalid) == "alg"


def test_unknown_kid_refetches_once_then_refuses(
    verifier: HolderVerifier, token: dict[str, Any], live_broker: Broker, recorder: Recorder
) -> None:
    verifier.verify(token["access_token"])  # keys cached
    attacker = new_key("unknown-kid")
    first = forged(live_broker, token["access_token"], key=attacker)
    jwks_before = sum(u.endswith("/jwks.json") for u in recorder.urls)
    assert refused(verifier, first, TokenInvalid) == "kid"
    assert refused(verifier, forged(live_broker, token["access_token"], key=attacker), TokenInvalid) == "kid"
    # the first unknown kid triggered no refetch either: the JWKS was fetched under a minute ago
    assert sum(u.endswith("/jwks.json") for u in recorder.urls) == jwks_before


def test_unknown_kid_refetch_is_rate_limited(
    live_broker: Broker, token: dict[str, Any], recorder: Recorder
) -> None:
    now = [time.time()]
    http = httpx.Client(trust_env=False, event_hooks={"request": [recorder]})
    holder = live_broker.holders["labo-a"]
    with HolderVerifier(live_broker.issuer, holder.base_url, http=http, clock=lambda: now[0]) as verifier:
        verifier.verify(token["access_token"])
        attacker = new_key("rotated-maybe")
        now[0] += 61
        for _ in range(5):
            refused(verifier, forged(live_broker, token["access_token"], key=attacker), TokenInvalid)
        assert sum(u.endswith("/jwks.json") for u in recorder.urls) == 2  # first fetch + one refetch


def test_missing_or_blank_kid(verifier: HolderVerifier, token: dict[str, Any], live_broker: Broker) -> None:
    claims = payload(token["access_token"])
    no_kid = sign(
        claims,
        jwk.JWK(**{k: v for k, v in live_broker.signing_key.export(as_dict=True).items() if k != "kid"}),
        typ="at+jwt",
    )
    assert refused(verifier, no_kid, TokenInvalid) == "kid"
    for kid in ("", "../../dev/null", "' UNION SELECT '1", "; sleep 10"):
        assert refused(
            verifier, forged(live_broker, token["access_token"], header={"kid": kid}), TokenInvalid
        ) in ("kid",)


def test_key_carrying_headers_are_refused_without_any_request(
    verifier: HolderVerifier, token: dict[str, Any], live_broker: Broker, recorder: Recorder
) -> None:
    verifier.verify(token["access_token"])
    before = list(recorder.urls)
    attacker = new_key()
    attacker_public = attacker.export_public(as_dict=True)
    for header in (
        {"jku": "http://127.0.0.1:9/jwks.json"},
        {"x5u": "http://127.0.0.1:9/cert.pem"},
        {"jwk": attacker_public},
        {"x5c": ["MIIB"]},
    ):
        # signed by the attacker's key, carried or pointed at by the header
        bad = forged(live_broker, token["access_token"], key=attacker, header=dict(header))
        assert refused(verifier, bad, TokenInvalid) == "header"
        # even signed by the real key, the header alone is refused
        bad = forged(live_broker, token["access_token"], header=dict(header))
        assert refused(verifier, bad, TokenInvalid) == "header"
    assert recorder.urls == before  # J6: zero outbound requests


def test_wrong_typ(verifier: HolderVerifier, token: dict[str, Any], live_broker: Broker) -> None:
    for typ in ("JWT", "dpop+jwt", "statuslist+jwt", "link+jwt", "application/jwt"):
        assert (
            refused(verifier, forged(live_broker, token["access_token"], header={"typ": typ}), TokenInvalid)
            == "typ"
        )
    # case and the application/ prefix do not matter (RFC 7515 §4.1.9)
    verifier.verify(forged(live_broker, token["access_token"], header={"typ": "application/AT+JWT"}))


def test_wrong_issuer_even_a_prefix(
    verifier: HolderVerifier, token: dict[str, Any], live_broker: Broker
) -> None:
    for iss in ("http://evil.example", live_broker.issuer + "/", live_broker.issuer[:-1], "http://127.0.0.1"):
        assert refused(verifier, forged(live_broker, token["access_token"], iss=iss), TokenInvalid) == "iss"


def test_a_token_for_holder_a_at_holder_b(live_broker: Broker, token: dict[str, Any]) -> None:
    holder_b = live_broker.holders["labo-b"]
    with HolderVerifier(live_broker.issuer, holder_b.base_url, holder_id="labo-b") as verifier_b:
        assert refused(verifier_b, token["access_token"], TokenInvalid) == "aud"
        bad = forged(live_broker, token["access_token"], aud=["https://other.example", "x"])
        assert refused(verifier_b, bad, TokenInvalid) == "aud"


def test_expired_and_not_yet_valid(
    verifier: HolderVerifier, token: dict[str, Any], live_broker: Broker
) -> None:
    now = int(time.time())
    expired = forged(live_broker, token["access_token"], iat=now - 400, nbf=now - 400, exp=now - 100)
    assert refused(verifier, expired, TokenExpired) == "exp"
    early = forged(live_broker, token["access_token"], iat=now, nbf=now + 300, exp=now + 300)
    assert refused(verifier, early, TokenInvalid) == "nbf"
    future = forged(live_broker, token["access_token"], iat=now + 200, nbf=now, exp=now + 250)
    assert refused(verifier, future, TokenInvalid) == "iat"
    too_long = forged(live_broker, token["access_token"], iat=now, nbf=now, exp=now + 3600)
    assert refused(verifier, too_long, TokenInvalid) == "exp"
    no_exp = forged(live_broker, token["access_token"], exp=None)
    assert refused(verifier, no_exp, TokenInvalid) == "claims"
    # within the leeway (30 s) a just-expired token still passes
    verifier.verify(forged(live_broker, token["access_token"], iat=now - 280, nbf=now - 280, exp=now - 10))


def test_a_cached_token_expires(live_broker: Broker, token: dict[str, Any]) -> None:
    now = [time.time()]
    holder = live_broker.holders["labo-a"]
    with HolderVerifier(live_broker.issuer, holder.base_url, clock=lambda: now[0], leeway=5) as verifier:
        verified = verifier.verify(token["access_token"])
        now[0] = verified.expires_at + 6
        assert refused(verifier, token["access_token"], TokenExpired) == "exp"


def test_tampered_payload(verifier: HolderVerifier, token: dict[str, Any]) -> None:
    header, body, signature = token["access_token"].split(".")
    claims = payload(token["access_token"])
    claims["scope"] = "lab_results identity"
    claims["authorization_details"][0]["categories"].append("identity")
    tampered = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
    assert refused(verifier, tampered, TokenInvalid) == "signature"
    # a non-canonical base64url spelling of the same bytes is refused too
    last = body[-1]
    if len(body) % 4 in (2, 3):
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        twin = body[:-1] + alphabet[alphabet.index(last) | 1]
        if twin != body:
            assert refused(verifier, f"{header}.{twin}.{signature}", TokenInvalid) == "malformed"


def test_duplicate_members_crit_and_oversize(
    verifier: HolderVerifier, token: dict[str, Any], live_broker: Broker
) -> None:
    _header, body, signature = token["access_token"].split(".")
    duplicated = b64(b'{"alg":"ES256","alg":"none","typ":"at+jwt","kid":"x"}')
    assert refused(verifier, f"{duplicated}.{body}.{signature}", TokenInvalid) == "malformed"
    key = live_broker.signing_key
    crit_header = {"alg": "ES256", "typ": "at+jwt", "kid": key.get("kid"), "crit": ["x-foo"], "x-foo": 1}
    crit = raw_sign(crit_header, payload(token["access_token"]), key)
    assert refused(verifier, crit, TokenInvalid) == "header"
    started = time.perf_counter()
    assert refused(verifier, "a" * 10_000_000, TokenInvalid) == "size"
    assert time.perf_counter() - started < 1  # refused before any decoding (not a timing assertion of speed)


def test_jwe_instead_of_jws(verifier: HolderVerifier, token: dict[str, Any], live_broker: Broker) -> None:
    public = jwk.JWK(**live_broker.signing_key.export_public(as_dict=True))
    encrypted = jwe.JWE(
        json.dumps(payload(token["access_token"])).encode(),
        protected={"alg": "ECDH-ES", "enc": "A256GCM", "typ": "at+jwt", "kid": public.get("kid")},
    )
    encrypted.add_recipient(public)
    assert refused(verifier, encrypted.serialize(compact=True), TokenInvalid) == "jwe"
    json_serialization = json.dumps({"payload": token["access_token"].split(".")[1]})
    assert refused(verifier, json_serialization, TokenInvalid) == "malformed"


def test_revoked_consent_through_the_status_list(
    live_broker: Broker, browser: Browser, verifier: HolderVerifier
) -> None:
    token = grant(live_broker, browser)
    verifier.verify(token["access_token"])
    browser.revoke(token["consent_id"])
    # the cached status list is still fresh: the token passes until its ttl ends
    entry = verifier.status_lists._entries[payload(token["access_token"])["status"]["status_list"]["uri"]]
    entry.fresh_until = 0  # as if the ttl had run out
    assert refused(verifier, token["access_token"], TokenRevoked) == "revoked"


def test_suspended_app(live_broker: Broker, browser: Browser, verifier: HolderVerifier) -> None:
    token = grant(live_broker, browser)
    verifier.verify(token["access_token"])
    live_broker.sql("UPDATE apps SET status = 'suspended' WHERE client_id = :c", c=live_broker.client_id)
    try:
        for entry in verifier.status_lists._entries.values():
            entry.fresh_until = 0
        assert refused(verifier, token["access_token"], AppSuspended) == "suspended"
    finally:
        live_broker.sql("UPDATE apps SET status = 'approved' WHERE client_id = :c", c=live_broker.client_id)


def test_revocation_by_push_is_immediate(live_broker: Broker, browser: Browser) -> None:
    holder = live_broker.holders["labo-a"]
    with HolderVerifier(
        live_broker.issuer, holder.base_url, holder_id="labo-a", holder_key=holder.key
    ) as verifier:
        assert verifier.start_push(wait=10)
        token = grant(live_broker, browser)
        verifier.verify(token["access_token"])
        browser.revoke(token["consent_id"])
        started = time.monotonic()
        while time.monotonic() - started < 3:
            try:
                verifier.verify(token["access_token"])
            except TokenRevoked:
                break
            time.sleep(0.02)
        took = time.monotonic() - started
        assert refused(verifier, token["access_token"], TokenRevoked) == "revoked"
        print(f"revocation seen by push after {took:.2f} s")
        # the patient grants the app again: the new token passes, the old one stays refused
        again = grant(live_broker, browser)
        assert again["consent_id"] == token["consent_id"]
        time.sleep(1.1)  # iat is in whole seconds: a token issued after the withdrawal's second
        newer = grant(live_broker, browser)
        verifier.verify(newer["access_token"])
        assert refused(verifier, token["access_token"], TokenRevoked) == "revoked"


def test_stale_status_list_with_the_broker_down_fails_closed(live_broker: Broker, browser: Browser) -> None:
    token = grant(live_broker, browser)
    holder = live_broker.holders["labo-a"]
    now = [time.time()]
    with HolderVerifier(
        live_broker.issuer,
        holder.base_url,
        clock=lambda: now[0],
        status_max_age=90,
        status_retry_interval=0,
        timeout=1,
    ) as verifier:
        verifier.verify(token["access_token"])
        live_broker.stop()
        try:
            now[0] += 60  # past the list's ttl (30 s), within the bound: the copy is still used
            verifier.verify(token["access_token"])
            now[0] += 40  # past the bound of 90 s with the broker still down
            assert refused(verifier, token["access_token"], BrokerUnavailable) == "status_stale"
        finally:
            live_broker.start()
        verifier.verify(token["access_token"])  # the broker is back: the status is known again


def test_a_forged_status_list_is_never_trusted(live_broker: Broker, token: dict[str, Any]) -> None:
    """A status list signed by another key (or unsigned) counts as no status at all."""
    from sdk_support import LocalServer

    claims = payload(token["access_token"])
    uri = claims["status"]["status_list"]["uri"]
    attacker = new_key(live_broker.signing_key.get("kid"))
    real_jwks = httpx.get(f"{live_broker.issuer}/jwks.json").text

    def serve(
        method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if path.endswith("/jwks.json"):
            return 200, {"Content-Type": "application/json"}, real_jwks.encode()
        forged_list = sign(
            {
                "sub": uri,
                "iss": live_broker.issuer,
                "iat": int(time.time()),
                "exp": int(time.time()) + 60,
                "ttl": 30,
                "status_list": {"bits": 2, "lst": "eNrt"},
            },
            attacker,
            typ="statuslist+jwt",
        )
        return 200, {"Content-Type": "application/statuslist+jwt"}, forged_list.encode()

    server = LocalServer(serve)
    try:
        holder = live_broker.holders["labo-a"]

        def to_fake(request: httpx.Request) -> None:
            request.url = request.url.copy_with(port=server.port)

        http = httpx.Client(trust_env=False, event_hooks={"request": [to_fake]})
        with HolderVerifier(
            live_broker.issuer,
            holder.base_url,
            http=http,
            jwks_uris={live_broker.issuer: f"{live_broker.issuer}/jwks.json"},
        ) as verifier:
            assert refused(verifier, token["access_token"], BrokerUnavailable) == "status_forged"
    finally:
        server.close()


def test_dpop_bound_token(live_broker: Broker, browser: Browser, verifier: HolderVerifier) -> None:
    key = DPoPKey()
    token = grant(live_broker, browser, dpop=key)
    assert token["token_type"] == "DPoP"
    access = token["access_token"]
    url = live_broker.holders["labo-a"].base_url + "/Observation?code=4548-4"
    proof = key.proof("GET", url, access_token=access)
    verified = verifier.verify(access, scheme="DPoP", dpop=proof, method="GET", url=url)
    assert verified.jkt == key.jkt
    # replayed proof, no proof, bearer downgrade, another key, wrong method, wrong URL, no ath
    assert (
        refused(verifier, access, DPoPProofInvalid, scheme="DPoP", dpop=proof, method="GET", url=url)
        == "dpop_replay"
    )
    assert refused(verifier, access, DPoPProofInvalid, scheme="DPoP", method="GET", url=url) == "dpop"
    assert refused(verifier, access, TokenInvalid, scheme="Bearer") == "scheme"
    other = DPoPKey().proof("GET", url, access_token=access)
    assert (
        refused(verifier, access, DPoPProofInvalid, scheme="DPoP", dpop=other, method="GET", url=url)
        == "dpop_jkt"
    )
    wrong_method = key.proof("POST", url, access_token=access)
    assert (
        refused(verifier, access, DPoPProofInvalid, scheme="DPoP", dpop=wrong_method, method="GET", url=url)
        == "dpop_htm"
    )
    wrong_url = key.proof("GET", live_broker.holders["labo-b"].base_url, access_token=access)
    assert (
        refused(verifier, access, DPoPProofInvalid, scheme="DPoP", dpop=wrong_url, method="GET", url=url)
        == "dpop_htu"
    )
    no_ath = key.proof("GET", url)
    assert (
        refused(verifier, access, DPoPProofInvalid, scheme="DPoP", dpop=no_ath, method="GET", url=url)
        == "dpop_ath"
    )
    # a bearer token presented as DPoP is refused
    bearer = grant(live_broker, browser)["access_token"]
    assert (
        refused(
            verifier,
            bearer,
            TokenInvalid,
            scheme="DPoP",
            dpop=key.proof("GET", url, access_token=bearer),
            method="GET",
            url=url,
        )
        == "scheme"
    )

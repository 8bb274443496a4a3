"""Explain a token or a holder's configuration, check by check (the ``broker-sdk`` command).

Unlike :meth:`HolderVerifier.verify`, which stops at the first failed check, these functions
run every check they can and report each one, so that a developer sees everything wrong at
once. They use the verifier's own primitives, so what they accept is what it accepts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import httpx
from jwcrypto import jwk

from broker_sdk import _jose
from broker_sdk.errors import BrokerSDKError, VerificationError
from broker_sdk.events import client_assertion
from broker_sdk.verifier import ACCESS_TOKEN_TYP, HolderVerifier, granted_categories

__all__ = ["Check", "check_holder", "inspect_token"]


@dataclass(frozen=True)
class Check:
    """One check: ``ok`` True (passed), False (failed) or None (information only)."""

    name: str
    ok: bool | None
    detail: str


def _run(checks: list[Check], name: str, action: Callable[[], str]) -> bool:
    try:
        checks.append(Check(name, True, action()))
        return True
    except (BrokerSDKError, ValueError, KeyError, TypeError, httpx.HTTPError) as exc:
        detail = exc.description if isinstance(exc, VerificationError) else str(exc)
        checks.append(Check(name, False, detail))
        return False


def inspect_token(
    token: str,
    *,
    issuer: str,
    audience: str | None = None,
    holder_id: str | None = None,
    categories: Collection[str] = (),
    http: httpx.Client | None = None,
    leeway: float = 30.0,
) -> list[Check]:
    """Decode ``token`` and check it against the broker ``issuer``, explaining every step."""
    checks: list[Check] = []
    token = token.strip()
    parsed: list[_jose.Parsed] = []

    def shape() -> str:
        parsed.append(_jose.parse(token, max_length=8 * 1024))
        return f"compact JWS, {len(token)} characters"

    if not _run(checks, "format", shape):
        return checks
    header, claims = parsed[0].header, parsed[0].claims

    def alg() -> str:
        value = header.get("alg")
        if value not in _jose.ALGORITHMS:
            raise ValueError(f"algorithm {value!r} is not accepted (asymmetric algorithms only)")
        return str(value)

    def typ() -> str:
        value = header.get("typ")
        if not isinstance(value, str) or _jose.normalize_typ(value) != ACCESS_TOKEN_TYP:
            raise ValueError(f"typ {value!r}: an access token says {ACCESS_TOKEN_TYP!r} (RFC 9068)")
        return value

    def kid() -> str:
        value = header.get("kid")
        if not isinstance(value, str) or not value:
            raise ValueError("no kid: the broker always names its key")
        return value

    def extra_headers() -> str:
        bad = [n for n in (*_jose.KEY_HEADERS, "b64", "zip", "enc", "crit") if n in header]
        if bad:
            raise ValueError(f"refused header parameters: {', '.join(bad)} (keys come only from the JWKS)")
        return "no jku, jwk, x5u, x5c, crit"

    header_ok = all(
        [
            _run(checks, "alg", alg),
            _run(checks, "typ", typ),
            _run(checks, "kid", kid),
            _run(checks, "header", extra_headers),
        ]
    )

    def iss() -> str:
        if claims.get("iss") != issuer:
            raise ValueError(f"iss {claims.get('iss')!r} is not {issuer!r} (compared exactly)")
        return issuer

    issuer_ok = _run(checks, "iss", iss)
    verifier = HolderVerifier(
        issuer, audience or _first_aud(claims), holder_id=holder_id, http=http, leeway=leeway
    )
    try:
        if header_ok and issuer_ok:

            def signature() -> str:
                key = verifier._issuers[issuer].keys.get(header["kid"])
                if key.alg != header["alg"]:
                    raise ValueError(f"the key {key.kid!r} is for {key.alg}, the token says {header['alg']}")
                key.verify(parsed[0].signing_input, parsed[0].signature)
                return f"verified with the broker key {key.kid!r} ({key.alg})"

            _run(checks, "signature", signature)
        else:
            checks.append(Check("signature", False, "not checked: the header or the issuer is refused"))

        def aud() -> str:
            values = claims.get("aud")
            if audience is None:
                raise LookupError
            listed = [values] if isinstance(values, str) else values
            if not isinstance(listed, list) or audience not in listed:
                raise ValueError(f"aud {values!r} does not name {audience!r} (a token for another holder)")
            return audience

        try:
            _run(checks, "aud", aud)
        except LookupError:
            checks.append(Check("aud", None, f"{claims.get('aud')!r} (give --audience to check it)"))

        now = time.time()

        def exp() -> str:
            value = claims.get("exp")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError("exp is missing")
            if value <= now - leeway:
                raise ValueError(f"expired {int(now - value)} s ago")
            return f"expires in {int(value - now)} s"

        def nbf_iat() -> str:
            iat, nbf = claims.get("iat"), claims.get("nbf", claims.get("iat"))
            if isinstance(iat, bool) or not isinstance(iat, int | float):
                raise ValueError("iat is missing")
            if not isinstance(nbf, int | float) or nbf > now + leeway or iat > now + leeway:
                raise ValueError("not valid yet (nbf or iat in the future)")
            lifetime = claims.get("exp", iat) - iat
            if lifetime > verifier.max_token_lifetime:
                raise ValueError(f"lives {lifetime} s, more than {int(verifier.max_token_lifetime)} s")
            return f"issued {int(now - iat)} s ago, lifetime {lifetime} s (leeway {int(leeway)} s)"

        _run(checks, "exp", exp)
        _run(checks, "nbf/iat", nbf_iat)

        def required() -> str:
            names = ("iss", "sub", "aud", "exp", "iat", "jti", "client_id", "consent_id", "status")
            missing = [n for n in names if n not in claims]
            if missing:
                raise ValueError(f"missing: {', '.join(missing)}")
            return f"client {claims['client_id']}, consent {claims['consent_id']}, subject {claims['sub']}"

        _run(checks, "claims", required)

        def status() -> str:
            reference = claims["status"]["status_list"]
            uri, idx = reference["uri"], reference["idx"]
            if not isinstance(uri, str) or not uri.startswith(issuer + "/"):
                raise ValueError(f"the status list {uri!r} is not the issuer's")
            entry = verifier.status_lists.get(uri, issuer, verifier._issuers[issuer].keys)
            value = entry.value(idx)
            names = {0: "VALID", 1: "INVALID (consent withdrawn or expired)", 2: "SUSPENDED (app suspended)"}
            if value != 0:
                raise ValueError(f"{uri} #{idx}: {names.get(value, value)}")
            return f"{uri} #{idx}: VALID (signed list, fetched now)"

        _run(checks, "status", status)

        cnf = claims.get("cnf")
        if isinstance(cnf, dict) and "jkt" in cnf:
            checks.append(Check("dpop", None, f"bound to the DPoP key {cnf['jkt']} (a proof is needed)"))
        else:
            checks.append(Check("dpop", None, "a bearer token (not sender-constrained)"))

        def scope() -> str:
            granted, purposes = granted_categories(claims, holder_id)
            missing = set(categories) - granted
            if missing:
                raise ValueError(f"grants {sorted(granted)}; not {sorted(missing)}")
            return (
                f"grants {', '.join(sorted(granted)) or 'nothing'} for {', '.join(sorted(purposes)) or '-'}"
            )

        _run(checks, "categories", scope)
    finally:
        verifier.close()
    return checks


def _first_aud(claims: dict[str, Any]) -> str:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return aud
    if isinstance(aud, list) and aud and isinstance(aud[0], str):
        return aud[0]
    return "-"


def check_holder(
    *,
    issuer: str,
    holder_id: str,
    key: jwk.JWK | None,
    audience: str | None = None,
    http: httpx.Client | None = None,
) -> list[Check]:
    """Is this holder's configuration right: broker reachable and well-formed, holder
    approved, key usable and the one the broker registered, status list and push stream."""
    client = http or httpx.Client(timeout=5, trust_env=False, follow_redirects=False)
    checks: list[Check] = []
    metadata: dict[str, Any] = {}

    def discovery() -> str:
        response = client.get(f"{issuer}/.well-known/oauth-authorization-server")
        response.raise_for_status()
        metadata.update(response.json())
        if metadata.get("issuer") != issuer:
            raise ValueError(f"the metadata names issuer {metadata.get('issuer')!r}")
        return "RFC 8414 metadata names this issuer"

    if not _run(checks, "broker metadata", discovery):
        return checks
    verifier = HolderVerifier(issuer, audience or "-", holder_id=holder_id, http=client)
    try:

        def keys() -> str:
            keyset = verifier._issuers[issuer].keys
            keyset.get("\0")  # forces the fetch; an unknown kid is expected here
            return ""

        def jwks() -> str:
            try:
                keys()
            except VerificationError as exc:
                if exc.reason != "kid":
                    raise
            found = verifier._issuers[issuer].keys._keys
            if not found:
                raise ValueError("the JWKS has no usable signing key")
            return f"{len(found)} usable key(s): " + ", ".join(f"{k} ({v.alg})" for k, v in found.items())

        _run(checks, "broker JWKS", jwks)

        def status() -> str:
            uri = f"{issuer}/status/0"
            entry = verifier.status_lists.get(uri, issuer, verifier._issuers[issuer].keys)
            cached = int(entry.fresh_until - entry.fetched_at)
            return f"{uri}: signed statuslist+jwt, {entry.bits} bits, cached {cached} s"

        _run(checks, "status list", status)

        holder: dict[str, Any] = {}

        def listed() -> str:
            response = client.get(f"{issuer}/api/catalog/holders")
            response.raise_for_status()
            for item in response.json():
                if item.get("identifier") == holder_id:
                    holder.update(item)
                    served = ", ".join(item.get("categories", []))
                    return f"approved: {item.get('legal_name')}, categories {served}"
            raise ValueError(f"{holder_id!r} is not among the broker's approved holders")

        if _run(checks, "holder approved", listed):
            base = holder.get("base_url")
            if audience is None:
                checks.append(Check("audience", None, f"tokens for this holder carry aud {base!r}"))
            elif base == audience:
                checks.append(Check("audience", True, f"{base} (the tokens' aud)"))
            else:
                checks.append(
                    Check("audience", False, f"the broker has {base!r}, you configured {audience!r}")
                )
            link = holder.get("link_endpoint")
            checks.append(
                Check("link endpoint", None, link or "none registered (links come from the operator)")
            )

        if key is None:
            checks.append(Check("holder key", None, "give --key to check the holder's signing key"))
            return checks

        def key_file() -> str:
            if not key.has_private:
                raise ValueError("not a private key")
            return f"kid {key.get('kid')!r}, {_jose.signing_alg(key)}"

        if not _run(checks, "holder key", key_file):
            return checks

        def registered() -> str:
            endpoint = metadata.get("introspection_endpoint") or f"{issuer}/introspect"
            response = client.post(
                endpoint,
                data={
                    "token": "probe",
                    "client_id": holder_id,
                    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": client_assertion(key, client_id=holder_id, audience=issuer),
                },
            )
            if response.status_code == 200:
                return "the broker accepts an assertion signed with this key (it is registered)"
            raise ValueError(
                f"the broker refused this key ({response.status_code}): it is not the registered one"
            )

        _run(checks, "key registered", registered)

        def push() -> str:
            endpoint = metadata.get("revocation_events_endpoint") or f"{issuer}/events/revocations"
            assertion = client_assertion(key, client_id=holder_id, audience=issuer)
            with client.stream(
                "GET",
                endpoint,
                params={"holder": holder_id},
                headers={"Authorization": f"Bearer {assertion}"},
            ) as response:
                if response.status_code != 200:
                    raise ValueError(f"subscription refused ({response.status_code})")
            return "subscription accepted"

        _run(checks, "push stream", push)

        def receipts() -> str:
            response = client.post(
                f"{issuer}/receipts", content=b"", headers={"Content-Type": "application/jwt"}
            )
            if response.status_code in (404, 405):
                raise ValueError("the broker does not take access receipts yet")
            return f"{issuer}/receipts answers"

        _run(checks, "receipts endpoint", receipts)
    finally:
        verifier.close()
        if http is None:
            client.close()
    return checks

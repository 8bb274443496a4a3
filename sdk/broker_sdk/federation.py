"""Trusted brokers resolved through OpenID Federation 1.0: a holder that trusts several brokers.

A holder names the brokers it accepts tokens from by their entity ids (their issuer URLs).
Each one is *resolved* before its keys are used:

* its **entity configuration** (``/.well-known/openid-federation``) is fetched and must be
  signed by a key of its own ``jwks``, with ``iss == sub ==`` the entity id (§3.1);
* with a **trust anchor** pinned (entity id and JWKS, obtained out of band), the anchor's
  configuration must verify with the pinned keys, the anchor's subordinate statement about the
  broker must verify with the anchor's keys, the broker's configuration must verify with the
  keys that statement vouches for, and the broker must name the anchor in its
  ``authority_hints`` (§4, §10.2): a broker the anchor does not vouch for is refused;
* the broker's ``oauth_authorization_server`` metadata then gives the ``jwks_uri`` (on the
  broker's own origin) that :class:`~broker_sdk.verifier.HolderVerifier` reads keys from.

Resolutions are cached per broker until the earliest ``exp`` of the statements they rest on.
The verifier keeps, as ever, one key cache and one status list cache per issuer; this module
only decides which issuers and which ``jwks_uri`` it is built with::

    resolver = IssuerResolver(trust_anchor="https://anchor.example", anchor_jwks=pinned)
    verifier = federated_verifier(["https://a.example", "https://b.example"], audience, resolver=resolver)

A broker that cannot be resolved raises :class:`~broker_sdk.errors.BrokerUnavailable` with
``reason="federation"`` and a message saying which check failed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from broker_sdk import _jose
from broker_sdk._fetch import get_bounded
from broker_sdk.errors import BrokerUnavailable, TokenInvalid
from broker_sdk.verifier import HolderVerifier

__all__ = ["ENTITY_STATEMENT_TYP", "IssuerResolver", "ResolvedIssuer", "federated_verifier"]

ENTITY_STATEMENT_TYP = "entity-statement+jwt"
MAX_STATEMENT_LENGTH = 64 * 1024  # as the broker's own federation verifier
MAX_STATEMENT_BYTES = 256 * 1024
_ACCEPT = "application/entity-statement+jwt"


@dataclass(frozen=True)
class ResolvedIssuer:
    """A broker whose configuration (and chain to the anchor, if pinned) verified."""

    issuer: str
    jwks: dict[str, Any]  # the keys its configuration lists (and the anchor vouches for)
    jwks_uri: str
    expires_at: float
    anchor: str | None
    metadata: dict[str, Any]


def _refused(entity_id: str, why: str) -> BrokerUnavailable:
    return BrokerUnavailable(f"{entity_id} cannot be trusted: {why}", reason="federation")


class IssuerResolver:
    """Resolves and caches brokers' entity configurations (and their chain to one anchor)."""

    def __init__(
        self,
        *,
        trust_anchor: str | None = None,
        anchor_jwks: Mapping[str, Any] | None = None,
        http: httpx.Client | None = None,
        timeout: float = 5.0,
        leeway: float = 60.0,
        algorithms: Sequence[str] = ("ES256", "ES384", "EdDSA"),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (trust_anchor is None) != (anchor_jwks is None):
            raise ValueError("a trust anchor needs its JWKS pinned, and pinned keys need the anchor's id")
        self.trust_anchor = trust_anchor
        self.anchor_jwks = dict(anchor_jwks) if anchor_jwks is not None else None
        self.http = http or httpx.Client(timeout=timeout, trust_env=False, follow_redirects=False)
        self.leeway = leeway
        self.algorithms = tuple(algorithms)
        self.clock = clock
        self._cache: dict[str, ResolvedIssuer] = {}
        self._lock = threading.Lock()

    # -- documents ------------------------------------------------------------------------

    def _get(self, entity_id: str, url: str) -> str:
        try:
            response = get_bounded(self.http, url, limit=MAX_STATEMENT_BYTES, accept=_ACCEPT)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise BrokerUnavailable(f"{url} could not be fetched: {exc}", reason="federation") from exc
        media_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type not in (_ACCEPT, "application/jwt"):
            raise _refused(entity_id, f"{url} answered {media_type!r}, not an entity statement")
        return response.text.strip()

    def _verified(
        self, token: str, keys: Mapping[str, Any], *, iss: str, sub: str, what: str
    ) -> dict[str, Any]:
        """A statement signed by one of ``keys``, by ``iss`` about ``sub``, and within its time."""
        try:
            parsed = _jose.parse(token, max_length=MAX_STATEMENT_LENGTH)
            alg = _jose.check_header(parsed.header, algorithms=self.algorithms, typ=ENTITY_STATEMENT_TYP)
        except TokenInvalid as exc:
            raise _refused(sub, f"{what}: {exc}") from exc
        kid = parsed.header["kid"]
        candidates = [k for k in keys.get("keys", []) if isinstance(k, Mapping) and k.get("kid") == kid]
        if len(candidates) != 1:
            raise _refused(sub, f"{what}: no key {kid!r} among the keys that vouch for it")
        try:
            _jose.import_public_jwk(candidates[0], alg=alg).verify(parsed.signing_input, parsed.signature)
        except (TokenInvalid, ValueError) as exc:
            raise _refused(sub, f"{what}: {exc}") from exc
        claims = parsed.claims
        if claims.get("iss") != iss or claims.get("sub") != sub:
            raise _refused(sub, f"{what}: issued by {claims.get('iss')!r} about {claims.get('sub')!r}")
        now = self.clock()
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int | float) or not isinstance(iat, int | float):
            raise _refused(sub, f"{what}: iat and exp are required")
        if exp <= now - self.leeway:
            raise _refused(sub, f"{what}: expired")
        if iat > now + self.leeway:
            raise _refused(sub, f"{what}: issued in the future")
        return claims

    @staticmethod
    def _unverified_jwks(token: str, entity_id: str) -> dict[str, Any]:
        try:
            claims = _jose.parse(token, max_length=MAX_STATEMENT_LENGTH).claims
        except TokenInvalid as exc:
            raise _refused(entity_id, f"entity configuration: {exc}") from exc
        jwks = claims.get("jwks")
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise _refused(entity_id, "entity configuration: no jwks")
        return jwks

    # -- resolution -----------------------------------------------------------------------

    def resolve(self, entity_id: str) -> ResolvedIssuer:
        """The broker's verified metadata and keys; cached until its statements expire."""
        with self._lock:
            cached = self._cache.get(entity_id)
        if cached is not None and cached.expires_at > self.clock():
            return cached
        resolved = self._resolve(entity_id)
        with self._lock:
            self._cache[entity_id] = resolved
        return resolved

    def forget(self, entity_id: str | None = None) -> None:
        with self._lock:
            if entity_id is None:
                self._cache.clear()
            else:
                self._cache.pop(entity_id, None)

    def _resolve(self, entity_id: str) -> ResolvedIssuer:
        token = self._get(entity_id, f"{entity_id}/.well-known/openid-federation")
        own = self._unverified_jwks(token, entity_id)
        config = self._verified(token, own, iss=entity_id, sub=entity_id, what="entity configuration")
        expires = float(config["exp"])
        if self.trust_anchor is not None and self.anchor_jwks is not None and entity_id != self.trust_anchor:
            anchor = self.trust_anchor
            anchor_token = self._get(anchor, f"{anchor}/.well-known/openid-federation")
            anchor_config = self._verified(
                anchor_token, self.anchor_jwks, iss=anchor, sub=anchor, what="the anchor's configuration"
            )
            endpoint = (
                (anchor_config.get("metadata") or {})
                .get("federation_entity", {})
                .get("federation_fetch_endpoint")
            )
            if not isinstance(endpoint, str) or not endpoint.startswith(anchor + "/"):
                raise _refused(entity_id, "the anchor publishes no fetch endpoint of its own")
            about_token = self._get(entity_id, f"{endpoint}?sub={quote(entity_id, safe='')}")
            about = self._verified(
                about_token, anchor_config["jwks"], iss=anchor, sub=entity_id, what="the anchor's statement"
            )
            vouched = about.get("jwks")
            if not isinstance(vouched, dict):
                raise _refused(entity_id, "the anchor's statement names no keys")
            # The configuration must be signed by a key the anchor vouches for (§10.2).
            self._verified(token, vouched, iss=entity_id, sub=entity_id, what="entity configuration")
            if anchor not in (config.get("authority_hints") or []):
                raise _refused(entity_id, f"{anchor!r} is not among its authority_hints")
            expires = min(expires, float(about["exp"]), float(anchor_config["exp"]))
        metadata = (config.get("metadata") or {}).get("oauth_authorization_server")
        if not isinstance(metadata, dict) or metadata.get("issuer") != entity_id:
            raise _refused(entity_id, "its authorization server metadata names another issuer")
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(entity_id + "/"):
            raise _refused(entity_id, "no jwks_uri on its own origin")
        return ResolvedIssuer(entity_id, own, jwks_uri, expires, self.trust_anchor, dict(metadata))


def federated_verifier(
    issuers: Sequence[str], audience: str, *, resolver: IssuerResolver, **options: Any
) -> HolderVerifier:
    """A :class:`HolderVerifier` for the brokers in ``issuers``, each resolved first.

    ``options`` are the verifier's own (``holder_id``, ``leeway``, ``require_status`` …); the
    verifier shares the resolver's HTTP client unless one is given.
    """
    resolved = [resolver.resolve(issuer) for issuer in issuers]
    options.setdefault("http", resolver.http)
    return HolderVerifier(
        list(issuers), audience, jwks_uris={r.issuer: r.jwks_uri for r in resolved}, **options
    )

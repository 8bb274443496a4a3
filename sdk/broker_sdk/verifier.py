"""The holder's verifier of broker access tokens (DESIGN step 7).

``HolderVerifier.verify`` checks a presented token completely and answers with a
:class:`VerifiedToken` or one of the typed errors of :mod:`broker_sdk.errors`:

1. shape and size before any decoding; compact JWS only (JWE refused);
2. header: ``alg`` from an asymmetric allow-list, ``typ`` ``at+jwt``, ``kid`` present, no
   ``jku``/``jwk``/``x5u``/``x5c``/``crit`` — keys come only from the trusted issuer's JWKS,
   refetched once (rate-limited) for an unknown ``kid``;
3. signature, with the key named by ``kid`` of the issuer named by ``iss`` (exactly one of
   the trusted issuers);
4. claims: ``aud`` names this holder, ``exp``/``nbf``/``iat`` within an explicit leeway,
   a bounded lifetime, the RFC 9068 claims and the broker's own present;
5. consent status: withdrawn through the push stream (when enabled), or the Token Status
   List entry (cached for its ``ttl``; when the broker cannot be reached, a copy is used up
   to ``status_max_age`` after it was fetched, then the verifier fails closed);
6. DPoP proof when the token is sender-constrained (``cnf.jkt``);
7. the requested categories within the granted ones.

A token seen before skips steps 1–4: it costs a dictionary lookup, the time check, the
status check and step 7.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import httpx
from jwcrypto import jwk

from broker_sdk import _jose
from broker_sdk._fetch import KeySet, StatusEntry, StatusLists
from broker_sdk.dpop import DPOP_ALGORITHMS, MemoryReplayCache, ReplayCache, verify_dpop_proof
from broker_sdk.errors import (
    AppSuspended,
    BrokerUnavailable,
    DPoPProofInvalid,
    InsufficientScope,
    TokenExpired,
    TokenInvalid,
    TokenRevoked,
)
from broker_sdk.events import RevocationListener

__all__ = ["AUTH_SCHEMES", "HolderVerifier", "VerifiedToken", "verify_token"]

ACCESS_TOKEN_TYP = "at+jwt"  # noqa: S105 (a media type, not a secret)
# The broker's own client for a patient's download of their data (issue 10); its tokens are
# typed "download+jwt" and accepted only by a holder's download endpoint (broker_sdk.download).
DOWNLOAD_CLIENT_ID = "broker-download"
MAX_TOKEN_LENGTH = 8 * 1024  # J13
MAX_LEEWAY = 60.0  # J11, FAPI2
AUTH_SCHEMES = ("Bearer", "DPoP")
_VALID, _INVALID, _SUSPENDED = 0, 1, 2
_REQUIRED = ("iss", "sub", "aud", "exp", "iat", "jti", "client_id", "consent_id")
_REQUIRED_SET = frozenset(_REQUIRED)
_STRINGS = ("sub", "jti", "client_id", "consent_id")


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """What a holder may rely on once a token passed every check."""

    issuer: str
    subject: str  # the pairwise pseudonym of the patient for this app
    audience: str  # this holder
    client_id: str  # the app
    consent_id: str
    link_handle: str | None  # the holder's own handle for the patient (the link step)
    categories: frozenset[str]  # granted at this holder
    purposes: frozenset[str]
    token_id: str  # the token's jti (access receipts name it)
    issued_at: float
    expires_at: float
    jkt: str | None  # the DPoP key thumbprint the token is bound to, if any
    status_uri: str | None
    status_idx: int | None
    claims: Mapping[str, Any] = field(repr=False)
    # Precomputed for the hot path.
    _expired_after: float = field(repr=False, default=0.0)
    _valid_from: float = field(repr=False, default=0.0)
    _revocation_key: str = field(repr=False, default="")

    @property
    def sender_constrained(self) -> bool:
        return self.jkt is not None


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise TokenInvalid(f"claim {name!r} is missing or not a NumericDate", reason="claims")
    return float(value)


def granted_categories(
    claims: Mapping[str, Any], holder_id: str | None
) -> tuple[frozenset[str], frozenset[str]]:
    """Categories (and purposes) granted at this holder: ``authorization_details`` of type
    ``health_data`` (only those naming this holder when its identifier is known), intersected
    with ``scope`` when both are present."""
    details = claims.get("authorization_details")
    scope = claims.get("scope")
    scoped = frozenset(scope.split()) if isinstance(scope, str) else None
    if details is None:
        if scoped is None:
            raise TokenInvalid("the token grants nothing (no scope, no details)", reason="claims")
        return scoped, frozenset()
    if not isinstance(details, list):
        raise TokenInvalid("authorization_details is not a list", reason="claims")
    categories: set[str] = set()
    purposes: set[str] = set()
    for detail in details:
        if not isinstance(detail, dict) or detail.get("type") != "health_data":
            continue
        if holder_id is not None and detail.get("holder") not in (None, holder_id):
            continue
        values = detail.get("categories")
        if isinstance(values, list):
            for value in values:
                if type(value) is str:
                    categories.add(value)
        if isinstance(detail.get("purpose"), str):
            purposes.add(detail["purpose"])
    granted = frozenset(categories)
    return (granted & scoped if scoped is not None else granted), frozenset(purposes)


class _Issuer:
    """A trusted broker: metadata (lazily), keys and the push stream."""

    def __init__(self, verifier: HolderVerifier, issuer: str, jwks_uri: str | None) -> None:
        self.issuer = issuer
        self._verifier = verifier
        self._jwks_uri = jwks_uri
        self._keys: KeySet | None = None
        self._lock = threading.Lock()
        self.metadata: dict[str, Any] | None = None
        self.listener: RevocationListener | None = None

    def fetch_metadata(self) -> dict[str, Any]:
        if self.metadata is None:
            url = f"{self.issuer}/.well-known/oauth-authorization-server"
            try:
                response = self._verifier.http.get(url, follow_redirects=False)
                response.raise_for_status()
                document = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise BrokerUnavailable(
                    f"the broker's metadata could not be fetched: {exc}", reason="metadata"
                ) from exc
            if not isinstance(document, dict) or document.get("issuer") != self.issuer:
                # RFC 8414 §3.3: the metadata must name the issuer it was fetched for.
                raise BrokerUnavailable("the broker's metadata names another issuer", reason="metadata")
            self.metadata = document
        return self.metadata

    @property
    def keys(self) -> KeySet:
        if self._keys is None:
            with self._lock:
                if self._keys is None:
                    uri = self._jwks_uri
                    if uri is None:
                        uri = self.fetch_metadata().get("jwks_uri")
                        if not isinstance(uri, str) or not uri.startswith(self.issuer + "/"):
                            raise BrokerUnavailable("no usable jwks_uri in the metadata", reason="metadata")
                    v = self._verifier
                    self._keys = KeySet(
                        uri,
                        v.http,
                        algorithms=v.algorithms,
                        refetch_interval=v.jwks_refetch_interval,
                        clock=v.clock,
                    )
        return self._keys


class HolderVerifier:
    """Verifies broker access tokens presented to one holder.

    ``issuers``: the broker issuer URL(s) this holder trusts, compared exactly with ``iss``.
    ``audience``: this holder's API base URL as registered at the broker (the tokens' ``aud``).
    ``holder_id``: this holder's identifier at the broker (filters ``authorization_details``;
    needed with ``holder_key`` for the push stream).
    """

    def __init__(
        self,
        issuers: str | Sequence[str],
        audience: str,
        *,
        holder_id: str | None = None,
        holder_key: jwk.JWK | None = None,
        leeway: float = 30.0,
        max_token_lifetime: float = 300.0,
        algorithms: Sequence[str] = ("ES256", "ES384", "EdDSA"),
        require_status: bool = True,
        status_max_ttl: float = 300.0,
        status_max_age: float = 90.0,
        status_retry_interval: float = 2.0,
        jwks_refetch_interval: float = 60.0,
        jwks_uris: Mapping[str, str] | None = None,
        token_cache_size: int = 10_000,
        dpop_max_age: float = 60.0,
        dpop_algorithms: Sequence[str] = DPOP_ALGORITHMS,
        replay_cache: ReplayCache | None = None,
        http: httpx.Client | None = None,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        token_type: str = ACCESS_TOKEN_TYP,
    ) -> None:
        names = [issuers] if isinstance(issuers, str) else list(issuers)
        if not names or not all(isinstance(i, str) and i for i in names):
            raise ValueError("name at least one trusted issuer")
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")
        if not set(algorithms) <= set(_jose.ALGORITHMS) or not algorithms:
            raise ValueError(f"algorithms must be among {sorted(_jose.ALGORITHMS)}")
        if status_max_age < 0:
            raise ValueError("status_max_age must not be negative")
        self.audience = audience
        self.token_type = token_type  # the JWS typ accepted: access tokens unless told
        self.holder_id = holder_id
        self.holder_key = holder_key
        self.leeway = float(leeway)
        self.max_token_lifetime = float(max_token_lifetime)
        self.algorithms = tuple(algorithms)
        self.require_status = require_status
        self.jwks_refetch_interval = jwks_refetch_interval
        self.dpop_max_age = dpop_max_age
        self.dpop_algorithms = tuple(dpop_algorithms)
        self.clock = clock
        self._owns_http = http is None
        self.http = http or httpx.Client(timeout=timeout, trust_env=False, follow_redirects=False)
        self.replay_cache: ReplayCache = replay_cache or MemoryReplayCache(clock=clock)
        jwks_uris = jwks_uris or {}
        self._issuers = {name: _Issuer(self, name, jwks_uris.get(name)) for name in names}
        self.status_lists = StatusLists(
            self.http,
            clock=clock,
            max_ttl=status_max_ttl,
            max_age=status_max_age,
            retry_interval=status_retry_interval,
            leeway=self.leeway,
        )
        self._cache: dict[str, VerifiedToken] = {}
        self._headers: dict[str, tuple[str, str]] = {}
        self._cache_size = token_cache_size
        self._revoked: dict[str, float] = {}  # "issuer consent_id" -> withdrawn at (epoch)
        self._suspended: set[str] = set()  # "issuer consent_id" of apps suspended (pushed)

    # -- life cycle ----------------------------------------------------------------------

    def __enter__(self) -> HolderVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for issuer in self._issuers.values():
            if issuer.listener is not None:
                issuer.listener.close()
                issuer.listener = None
        if self._owns_http:
            self.http.close()

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(self._issuers)

    def start_push(self, *, wait: float | None = 10.0) -> bool:
        """Subscribe to each issuer's push stream of revocations (needs ``holder_id`` and
        ``holder_key``). Returns whether every stream is connected after ``wait`` seconds."""
        if self.holder_id is None or self.holder_key is None:
            raise ValueError("the push stream needs holder_id and holder_key")
        for issuer in self._issuers.values():
            if issuer.listener is None:
                try:
                    endpoint = issuer.fetch_metadata().get("revocation_events_endpoint")
                except BrokerUnavailable:
                    endpoint = None
                issuer.listener = RevocationListener(
                    issuer.issuer,
                    holder_id=self.holder_id,
                    holder_key=self.holder_key,
                    endpoint=endpoint if isinstance(endpoint, str) else None,
                    on_revoked=functools.partial(self._pushed, issuer.issuer),
                    on_suspended=functools.partial(self._pushed_suspension, issuer.issuer),
                ).start()
        if wait is None:
            return False
        deadline = time.monotonic() + wait
        return all(
            i.listener is not None and i.listener.wait_connected(max(0.0, deadline - time.monotonic()))
            for i in self._issuers.values()
        )

    def _pushed(self, issuer: str, consent_id: str, at: float) -> None:
        self.mark_revoked(consent_id, at, issuer=issuer)

    def _pushed_suspension(self, issuer: str, consent_id: str, suspended: bool, _at: float) -> None:
        key = f"{issuer} {consent_id}"
        if suspended:
            self._suspended.add(key)
        else:
            self._suspended.discard(key)

    def mark_revoked(self, consent_id: str, at: float | None = None, *, issuer: str | None = None) -> None:
        """Refuse, from now on, every token of ``consent_id`` issued up to ``at``.

        Tokens issued later (the patient granted the app again) are judged by the status
        list as usual.
        """
        at = self.clock() if at is None else at
        for name in [issuer] if issuer is not None else list(self._issuers):
            key = f"{name} {consent_id}"
            self._revoked[key] = max(at, self._revoked.get(key, at))

    # -- verification --------------------------------------------------------------------

    def verify(
        self,
        token: str,
        *,
        categories: Iterable[str] = (),
        scheme: str | None = None,
        dpop: str | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> VerifiedToken:
        """Check ``token`` completely for a request needing ``categories``.

        ``scheme`` is the HTTP authentication scheme it came with (``Bearer`` or ``DPoP``;
        ``None`` when the caller does not know). For a sender-constrained token, ``dpop``
        (the ``DPoP`` header), ``method`` and ``url`` (the request's absolute URL) are
        required.
        """
        now = self.clock()
        verified = self._cache.get(token)
        if verified is None:
            verified = self._first_sight(token, now)
        elif now >= verified._expired_after:
            self._cache.pop(token, None)
            raise TokenExpired("the token has expired", reason="exp")
        if now < verified._valid_from:
            raise TokenInvalid("the token is not valid yet (nbf)", reason="nbf")
        if verified.jkt is not None or scheme == "DPoP" or dpop is not None:
            self._check_binding(verified, token, scheme, dpop, method, url, now)
        elif scheme is not None and scheme != "Bearer":
            raise TokenInvalid(f"unsupported authentication scheme {scheme!r}", reason="scheme")
        if self._revoked:
            withdrawn = self._revoked.get(verified._revocation_key)
            if withdrawn is not None and verified.issued_at <= withdrawn:
                raise TokenRevoked("the patient withdrew this consent", reason="revoked")
        if self._suspended and verified._revocation_key in self._suspended:
            raise AppSuspended("the app is suspended under the charter", reason="suspended")
        if verified.status_uri is not None:
            self._check_status(verified, now)
        if categories:
            wanted = frozenset([categories] if isinstance(categories, str) else categories)
            if not wanted <= verified.categories:
                missing = wanted - verified.categories
                raise InsufficientScope(
                    f"the consent does not grant {', '.join(sorted(missing))}", missing=missing
                )
        return verified

    def verify_authorization(
        self,
        authorization: str | None,
        *,
        categories: Iterable[str] = (),
        dpop: str | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> VerifiedToken:
        """Verify the token of an ``Authorization`` header value (``Bearer`` or ``DPoP``)."""
        scheme, token = parse_authorization(authorization)
        return self.verify(token, categories=categories, scheme=scheme, dpop=dpop, method=method, url=url)

    def is_warm(self, token: str) -> bool:
        """True when ``verify(token)`` would need no network: seen before, status fresh."""
        verified = self._cache.get(token)
        if verified is None:
            return False
        return verified.status_uri is None or self.status_lists.fresh(verified.status_uri) is not None

    def _first_sight(self, token: str, now: float) -> VerifiedToken:
        header_b64, payload_b64, signature_b64 = _jose.split_compact(token, MAX_TOKEN_LENGTH)
        # A broker signs every token with the same few headers: a header already checked is
        # not parsed again (only headers that passed every check are remembered, at most 64).
        known = self._headers.get(header_b64)
        if known is None:
            header = _jose.json_object(_jose.b64url_decode(header_b64, "header"), "header")
            alg = _jose.check_header(header, algorithms=self.algorithms, typ=self.token_type)
            known = (alg, header["kid"])
            if len(self._headers) < 64:
                self._headers[header_b64] = known
        alg, kid = known
        if not payload_b64:
            raise TokenInvalid(
                "the payload is empty (detached payloads are not accepted)", reason="malformed"
            )
        claims = _jose.json_object(_jose.b64url_decode(payload_b64, "payload"), "payload")
        signature = _jose.b64url_decode(signature_b64, "signature")
        iss = claims.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None  # exact match (J11)
        if issuer is None:
            raise TokenInvalid("the token's issuer is not trusted", reason="iss")
        key = issuer.keys.get(kid)
        if key.alg != alg:  # J17: the key's algorithm binds it
            raise TokenInvalid("the key is not for this algorithm", reason="alg")
        key.verify(f"{header_b64}.{payload_b64}".encode("ascii"), signature)
        verified = self._check_claims(claims, issuer.issuer, now)
        if len(self._cache) >= self._cache_size:
            self._evict(now)
        self._cache[token] = verified
        return verified

    def _evict(self, now: float) -> None:
        live = {t: v for t, v in self._cache.items() if v._expired_after > now}
        if len(live) >= self._cache_size:  # still full: keep the newer half
            live = dict(list(live.items())[len(live) // 2 :])
        self._cache = live

    def _check_claims(self, claims: dict[str, Any], issuer: str, now: float) -> VerifiedToken:
        if not _REQUIRED_SET.issubset(claims):
            missing = next(name for name in _REQUIRED if name not in claims)
            raise TokenInvalid(f"claim {missing!r} is required", reason="claims")
        aud = claims["aud"]
        if type(aud) is not str:  # the broker's tokens name one audience; a list is read too
            if not isinstance(aud, list) or not all(type(a) is str for a in aud):
                raise TokenInvalid("aud is not a string or a list of strings", reason="aud")
            if self.audience not in aud:  # whole strings only
                raise TokenInvalid("the token is meant for another holder (aud)", reason="aud")
        elif aud != self.audience:
            raise TokenInvalid("the token is meant for another holder (aud)", reason="aud")
        exp, iat = _number(claims, "exp"), _number(claims, "iat")
        nbf = _number(claims, "nbf") if "nbf" in claims else iat
        if exp <= now - self.leeway:
            raise TokenExpired("the token has expired", reason="exp")
        if nbf > now + self.leeway:
            raise TokenInvalid("the token is not valid yet (nbf)", reason="nbf")
        if iat > now + self.leeway:
            raise TokenInvalid("the token was issued in the future (iat)", reason="iat")
        if exp - iat > self.max_token_lifetime:
            raise TokenInvalid("the token lives longer than an access token may", reason="exp")
        for name in _STRINGS:
            value = claims[name]
            if type(value) is not str or not value:
                raise TokenInvalid(f"claim {name!r} is not a non-empty string", reason="claims")
        if claims["client_id"] == DOWNLOAD_CLIENT_ID and self.token_type == ACCESS_TOKEN_TYP:
            # Belt and braces beside typ: a download token is no access token for any API.
            raise TokenInvalid("a download token is accepted at the download endpoint only", reason="client")
        consent_id = claims["consent_id"]
        handle = claims.get("link_handle")
        if handle is not None and not isinstance(handle, str):
            raise TokenInvalid("link_handle is not a string", reason="claims")
        status_uri: str | None = None
        status_idx: int | None = None
        status = claims.get("status")
        if status is not None or self.require_status:
            reference = status.get("status_list") if isinstance(status, dict) else None
            if not isinstance(reference, dict):
                raise TokenInvalid("the token has no status list reference", reason="status")
            status_uri, status_idx = reference.get("uri"), reference.get("idx")
            if not isinstance(status_uri, str) or not status_uri.startswith(issuer + "/"):
                raise TokenInvalid("the status list is not the issuer's", reason="status")
            if isinstance(status_idx, bool) or not isinstance(status_idx, int) or status_idx < 0:
                raise TokenInvalid("the status index is not a non-negative integer", reason="status")
        jkt: str | None = None
        cnf = claims.get("cnf")
        if cnf is not None:
            if not isinstance(cnf, dict) or set(cnf) != {"jkt"} or not isinstance(cnf["jkt"], str):
                raise TokenInvalid("cnf: only a DPoP key binding (jkt) is supported", reason="cnf")
            jkt = cnf["jkt"]
        categories, purposes = granted_categories(claims, self.holder_id)
        return VerifiedToken(
            issuer=issuer,
            subject=claims["sub"],
            audience=self.audience,
            client_id=claims["client_id"],
            consent_id=consent_id,
            link_handle=handle,
            categories=categories,
            purposes=purposes,
            token_id=claims["jti"],
            issued_at=iat,
            expires_at=exp,
            jkt=jkt,
            status_uri=status_uri,
            status_idx=status_idx,
            claims=MappingProxyType(claims),  # read-only: the cached result is shared
            _expired_after=exp + self.leeway,
            _valid_from=nbf - self.leeway,
            _revocation_key=f"{issuer} {consent_id}",
        )

    def _check_binding(
        self,
        verified: VerifiedToken,
        token: str,
        scheme: str | None,
        dpop: str | None,
        method: str | None,
        url: str | None,
        now: float,
    ) -> None:
        if verified.jkt is None:
            raise TokenInvalid("a bearer token cannot be presented with DPoP", reason="scheme")
        if scheme == "Bearer":  # RFC 9449 §7.1: no downgrade of a bound token
            raise TokenInvalid("this token is DPoP-bound: present it with the DPoP scheme", reason="scheme")
        if not dpop or method is None or url is None:
            raise DPoPProofInvalid("this token is DPoP-bound: a DPoP proof is required", reason="dpop")
        verify_dpop_proof(
            dpop,
            method=method,
            url=url,
            access_token=token,
            expected_jkt=verified.jkt,
            replay=self.replay_cache,
            now=now,
            max_age=self.dpop_max_age,
            algorithms=self.dpop_algorithms,
        )

    def _check_status(self, verified: VerifiedToken, now: float) -> None:
        uri = verified.status_uri
        assert uri is not None and verified.status_idx is not None
        entry: StatusEntry | None = self.status_lists._entries.get(uri)
        if entry is None or now >= entry.fresh_until:
            entry = self.status_lists.get(uri, verified.issuer, self._issuers[verified.issuer].keys)
        value = entry.value(verified.status_idx)
        if value == _VALID:
            return
        if value == _SUSPENDED:
            raise AppSuspended("the app is suspended under the charter", reason="suspended")
        if value == _INVALID:
            raise TokenRevoked("the consent was withdrawn or has expired", reason="revoked")
        raise TokenRevoked(f"the consent's status is {value}", reason="status")


def parse_authorization(authorization: str | None) -> tuple[str, str]:
    """``(scheme, token)`` of an ``Authorization`` header value; the scheme is case-insensitive."""
    if not authorization:
        raise TokenInvalid("no access token", reason="missing")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    for known in AUTH_SCHEMES:
        if scheme.lower() == known.lower():
            if not token or " " in token:
                raise TokenInvalid("malformed Authorization header", reason="malformed")
            return known, token
    raise TokenInvalid(f"unsupported authentication scheme {scheme!r}", reason="scheme")


def verify_token(
    token: str,
    *,
    issuer: str | Sequence[str],
    audience: str,
    categories: Collection[str] = (),
    **options: Any,
) -> VerifiedToken:
    """One-shot verification (no cache survives the call); holders serving many requests
    keep one :class:`HolderVerifier` instead."""
    with HolderVerifier(issuer, audience, **options) as verifier:
        return verifier.verify(token, categories=categories)

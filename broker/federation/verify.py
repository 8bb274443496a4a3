"""Verification of federation documents, pure: no database, no network, no clock of its own.

The documents (entity configurations, subordinate statements, trust marks, trust mark status
responses) are passed in as compact JWTs, already fetched by the caller; the trust anchor is
configured (entity id and pinned JWKS). Names follow OpenID Federation 1.0 (final): the
``typ`` values ``entity-statement+jwt``, ``trust-mark+jwt`` and
``trust-mark-status-response+jwt``, the claim ``trust_mark_type`` (drafts before 41 called it
``id``) and the trust chain order of §4: leaf first, trust anchor's configuration last.

Every signature goes through :func:`broker.consent.proofs.jose.verify_jwt`, with the keys of
the document that vouches for the signer, never with keys named by a header. Each refusal is a
:class:`FederationRefused` carrying a :class:`Refusal` reason that callers (the catalog import,
the operator commands, the tests) can act on.

A broker's apps and holders publish no entity configuration of their own: their chain starts
with the broker's subordinate statement about them. :func:`resolve_trust_chain` accepts that
first element as well as a leaf's own configuration.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from broker.consent.proofs.jose import (
    FAPI2_ALGORITHMS,
    BadSignature,
    ClaimError,
    ExpiredToken,
    JoseError,
    MalformedToken,
    WrongType,
    b64url_decode,
    verify_jwt,
)
from broker.strictjson import json_depth

__all__ = [
    "ENTITY_STATEMENT_TYP",
    "FEDERATION_ALGORITHMS",
    "MAX_CHAIN_LENGTH",
    "MAX_DEPTH",
    "MAX_DOCUMENT_LENGTH",
    "TRUST_MARK_STATUS_TYP",
    "TRUST_MARK_TYP",
    "EntityStatement",
    "FederationRefused",
    "Refusal",
    "TrustAnchor",
    "TrustChain",
    "TrustMark",
    "json_depth",
    "resolve_trust_chain",
    "verify_entity_configuration",
    "verify_key_rollover",
    "verify_subordinate_statement",
    "verify_trust_mark",
    "verify_trust_mark_status",
]

ENTITY_STATEMENT_TYP = "entity-statement+jwt"
TRUST_MARK_TYP = "trust-mark+jwt"
TRUST_MARK_STATUS_TYP = "trust-mark-status-response+jwt"

# Asymmetric algorithms only (SECURITY A4 J1-J4); the FAPI 2.0 set covers what brokers use.
FEDERATION_ALGORITHMS: tuple[str, ...] = FAPI2_ALGORITHMS

# Bounds on what a peer may make us parse. A subordinate statement carries an app's whole
# registration metadata and its trust mark (a few KiB); 64 KiB leaves room and no more.
MAX_DOCUMENT_LENGTH = 64 * 1024
# JSON nesting of a payload: registration metadata nests about 5 deep; 16 is generous and
# far below the parser's recursion limit.
MAX_DEPTH = 16
MAX_KEYS = 16
MAX_AUTHORITY_HINTS = 16
MAX_TRUST_MARKS = 32
# leaf, a few intermediates, the anchor: longer chains are refused before any signature.
MAX_CHAIN_LENGTH = 8
# Clock skew tolerated on iat/exp (never more than jose.MAX_LEEWAY).
DEFAULT_LEEWAY = timedelta(seconds=60)


class Refusal(StrEnum):
    """Why a federation document was refused: stable values, safe to log and to show."""

    MALFORMED = "malformed"  # not a compact JWS with a JSON object payload, or a bad member
    OVERSIZED = "oversized"  # longer than the cap, or too many keys/hints/marks
    TOO_DEEP = "too_deep"  # JSON nested deeper than MAX_DEPTH
    WRONG_TYPE = "wrong_type"  # typ or alg not the expected ones
    BAD_SIGNATURE = "bad_signature"  # no trusted key verifies it
    EXPIRED = "expired"  # exp passed (beyond leeway)
    NOT_YET_VALID = "not_yet_valid"  # iat in the future
    MISSING_CLAIM = "missing_claim"
    WRONG_ISSUER = "wrong_issuer"
    WRONG_SUBJECT = "wrong_subject"
    TRUST_MARK_OTHER_SUBJECT = "trust_mark_other_subject"  # a trust mark for another entity
    TRUST_MARK_OTHER_TYPE = "trust_mark_other_type"
    TRUST_MARK_REVOKED = "trust_mark_revoked"  # its issuer says it is no longer active
    CHAIN_BROKEN = "chain_broken"  # statement j is not about statement j+1's issuer
    CHAIN_NOT_ANCHORED = "chain_not_anchored"  # the chain does not end at the trust anchor
    KEY_ROLLOVER_UNSIGNED = "key_rollover_unsigned"  # new keys not vouched for by the old ones
    PEER_UNREACHABLE = "peer_unreachable"  # the fetch failed or was refused by the outbound guard


class FederationRefused(Exception):
    """A federation document that must not be trusted, with the reason and the details."""

    def __init__(self, reason: Refusal, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TrustAnchor:
    """A configured trust anchor: its entity id and the JWKS pinned out of band."""

    entity_id: str
    jwks: Mapping[str, Any]


@dataclass(frozen=True)
class EntityStatement:
    """A verified entity statement: a configuration (``iss == sub``) or a subordinate one."""

    token: str
    claims: dict[str, Any]
    kid: str | None

    @property
    def iss(self) -> str:
        return str(self.claims["iss"])

    @property
    def sub(self) -> str:
        return str(self.claims["sub"])

    @property
    def jwks(self) -> dict[str, Any]:
        return dict(self.claims.get("jwks") or {"keys": []})

    @property
    def exp(self) -> int:
        return int(self.claims["exp"])

    @property
    def is_configuration(self) -> bool:
        return self.iss == self.sub

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.claims.get("metadata") or {})


@dataclass(frozen=True)
class TrustMark:
    token: str
    claims: dict[str, Any]

    @property
    def trust_mark_type(self) -> str:
        return str(self.claims["trust_mark_type"])


@dataclass(frozen=True)
class TrustChain:
    """A resolved chain: who it is about, its statements leaf first, when it stops being valid."""

    subject: str
    anchor: str
    statements: tuple[EntityStatement, ...]
    expires_at: int

    @property
    def leaf(self) -> EntityStatement:
        return self.statements[0]

    @property
    def metadata(self) -> dict[str, Any]:
        """The leaf's metadata as its immediate superior states it (metadata_policy unsupported)."""
        return self.statements[0].metadata


# -- bounds --------------------------------------------------------------------------------


def _check_bounds(token: Any, what: str, max_length: int) -> None:
    if not isinstance(token, str):
        raise FederationRefused(Refusal.MALFORMED, f"{what} is not a string")
    if len(token) > max_length:
        raise FederationRefused(Refusal.OVERSIZED, f"{what} is longer than {max_length} characters")
    segments = token.split(".")
    if len(segments) != 3:
        raise FederationRefused(Refusal.MALFORMED, f"{what} is not a compact JWS")
    for index, segment in enumerate(segments[:2]):
        try:
            text = b64url_decode(segment, what).decode("utf-8")
        except (JoseError, UnicodeDecodeError) as exc:
            raise FederationRefused(Refusal.MALFORMED, f"{what}: {exc}") from exc
        if json_depth(text) > MAX_DEPTH:
            part = "header" if index == 0 else "payload"
            raise FederationRefused(Refusal.TOO_DEEP, f"{what} {part} nests deeper than {MAX_DEPTH}")


def _verify(
    token: Any,
    *,
    what: str,
    keys: Mapping[str, Any],
    typ: str,
    required: Sequence[str],
    now: datetime,
    leeway: timedelta,
    max_length: int = MAX_DOCUMENT_LENGTH,
) -> tuple[dict[str, Any], str | None]:
    _check_bounds(token, what, max_length)
    try:
        verified = verify_jwt(
            token,
            keys=keys,
            algorithms=FEDERATION_ALGORITHMS,  # asymmetric only, no "none", no HMAC
            types=(typ,),  # each federation document has its own typ (J10)
            typ_required=True,  # OpenID Federation 1.0 requires typ on every one of them
            issuer=None,  # compared below, so that a wrong issuer has its own reason
            audiences=None,  # entity statements and trust marks have no audience
            required_claims=required,
            now=now,
            leeway=leeway,
            max_length=max_length,
        )
    except ExpiredToken as exc:
        raise FederationRefused(Refusal.EXPIRED, f"{what}: {exc}") from exc
    except WrongType as exc:
        raise FederationRefused(Refusal.WRONG_TYPE, f"{what}: {exc}") from exc
    except BadSignature as exc:  # UnknownKey included: no key of the vouching party signed it
        raise FederationRefused(Refusal.BAD_SIGNATURE, f"{what}: {exc}") from exc
    except ClaimError as exc:
        reason = Refusal.NOT_YET_VALID if "future" in str(exc) else Refusal.MISSING_CLAIM
        raise FederationRefused(reason, f"{what}: {exc}") from exc
    except MalformedToken as exc:
        raise FederationRefused(Refusal.MALFORMED, f"{what}: {exc}") from exc
    return verified.claims, verified.kid


def _check_jwks(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not isinstance(value.get("keys"), list) or not value["keys"]:
        raise FederationRefused(Refusal.MALFORMED, f"{what}: jwks must be a JWKS with at least one key")
    keys = value["keys"]
    if len(keys) > MAX_KEYS:
        raise FederationRefused(Refusal.OVERSIZED, f"{what}: jwks holds more than {MAX_KEYS} keys")
    kids = [k.get("kid") if isinstance(k, Mapping) else None for k in keys]
    if not all(isinstance(kid, str) and kid for kid in kids) or len(set(kids)) != len(kids):
        raise FederationRefused(Refusal.MALFORMED, f"{what}: every key needs a distinct kid")
    return dict(value)


def _check_statement_claims(claims: dict[str, Any], what: str) -> None:
    for name in ("iss", "sub"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise FederationRefused(Refusal.MALFORMED, f"{what}: {name} must be a non-empty string")
    if "metadata" in claims and not isinstance(claims["metadata"], Mapping):
        raise FederationRefused(Refusal.MALFORMED, f"{what}: metadata must be an object")
    hints = claims.get("authority_hints", [])
    if not isinstance(hints, list) or not all(isinstance(h, str) for h in hints):
        raise FederationRefused(Refusal.MALFORMED, f"{what}: authority_hints must be a list of strings")
    if len(hints) > MAX_AUTHORITY_HINTS:
        raise FederationRefused(Refusal.OVERSIZED, f"{what}: more than {MAX_AUTHORITY_HINTS} authority hints")
    marks = claims.get("trust_marks", [])
    if not isinstance(marks, list) or not all(isinstance(m, Mapping) for m in marks):
        raise FederationRefused(Refusal.MALFORMED, f"{what}: trust_marks must be a list of objects")
    if len(marks) > MAX_TRUST_MARKS:
        raise FederationRefused(Refusal.OVERSIZED, f"{what}: more than {MAX_TRUST_MARKS} trust marks")


def _unverified_claims(token: Any, what: str) -> dict[str, Any]:
    """The payload, read only to learn whose keys to verify it with (after the bounds)."""
    _check_bounds(token, what, MAX_DOCUMENT_LENGTH)
    try:
        payload = b64url_decode(token.split(".")[1], what)
        claims = json.loads(payload)
    except (JoseError, ValueError) as exc:
        raise FederationRefused(Refusal.MALFORMED, f"{what}: payload is not JSON") from exc
    if not isinstance(claims, dict):
        raise FederationRefused(Refusal.MALFORMED, f"{what}: payload is not a JSON object")
    return claims


# -- single documents ------------------------------------------------------------------------


def verify_entity_configuration(
    token: Any,
    *,
    entity_id: str | None,
    now: datetime,
    leeway: timedelta = DEFAULT_LEEWAY,
    trusted_jwks: Mapping[str, Any] | None = None,
) -> EntityStatement:
    """§3.1: a configuration is signed by a key of its own ``jwks``, and ``iss == sub``.

    ``entity_id`` is the entity the caller asked for (``None``: whichever). ``trusted_jwks``,
    when given, must also verify it: a superior's statement about the entity, or keys pinned
    before (a trust anchor's).
    """
    what = "entity configuration"
    claims = _unverified_claims(token, what)
    own = _check_jwks(claims.get("jwks"), what)
    claims, kid = _verify(
        token,
        what=what,
        keys=own,
        typ=ENTITY_STATEMENT_TYP,
        required=("iss", "sub", "iat", "exp", "jwks"),
        now=now,
        leeway=leeway,
    )
    _check_statement_claims(claims, what)
    if claims["iss"] != claims["sub"]:
        raise FederationRefused(Refusal.WRONG_SUBJECT, f"{what}: iss and sub differ")
    if entity_id is not None and claims["sub"] != entity_id:
        raise FederationRefused(
            Refusal.WRONG_SUBJECT, f"{what}: it is about {claims['sub']!r}, not {entity_id!r}"
        )
    if trusted_jwks is not None:
        _verify(
            token,
            what=what,
            keys=trusted_jwks,
            typ=ENTITY_STATEMENT_TYP,
            required=(),
            now=now,
            leeway=leeway,
        )
    return EntityStatement(token, claims, kid)


def verify_subordinate_statement(
    token: Any,
    *,
    superior: EntityStatement,
    subject: str | None,
    now: datetime,
    leeway: timedelta = DEFAULT_LEEWAY,
) -> EntityStatement:
    """§3.1 / §8.1.2: issued by ``superior`` about ``subject``, signed by a superior's key."""
    what = "subordinate statement"
    claims, kid = _verify(
        token,
        what=what,
        keys=superior.jwks,
        typ=ENTITY_STATEMENT_TYP,
        required=("iss", "sub", "iat", "exp"),
        now=now,
        leeway=leeway,
    )
    _check_statement_claims(claims, what)
    if "jwks" in claims:
        _check_jwks(claims["jwks"], what)
    if claims["iss"] != superior.sub:
        raise FederationRefused(
            Refusal.WRONG_ISSUER, f"{what}: issued by {claims['iss']!r}, not {superior.sub!r}"
        )
    if claims["sub"] == claims["iss"]:
        raise FederationRefused(Refusal.WRONG_SUBJECT, f"{what}: an entity cannot be its own subordinate")
    if subject is not None and claims["sub"] != subject:
        raise FederationRefused(Refusal.WRONG_SUBJECT, f"{what}: about {claims['sub']!r}, not {subject!r}")
    return EntityStatement(token, claims, kid)


def verify_trust_mark(
    token: Any,
    *,
    issuer: str,
    issuer_jwks: Mapping[str, Any],
    subject: str | None,
    trust_mark_type: str | None,
    now: datetime,
    status: str | None = None,
    leeway: timedelta = DEFAULT_LEEWAY,
) -> TrustMark:
    """§7: a trust mark by ``issuer`` about ``subject``; ``status`` is its issuer's answer.

    ``subject`` and ``trust_mark_type`` say what the caller expects; ``None`` accepts any (only
    the issuer's own status endpoint, which looks the subject up afterwards, passes ``None``).

    ``status`` comes from the issuer's trust mark status endpoint (see
    :func:`verify_trust_mark_status`); anything but ``active`` refuses the mark.
    """
    what = "trust mark"
    claims, _ = _verify(
        token,
        what=what,
        keys=issuer_jwks,
        typ=TRUST_MARK_TYP,
        required=("iss", "sub", "iat", "trust_mark_type"),
        now=now,
        leeway=leeway,
    )
    if claims["iss"] != issuer:
        raise FederationRefused(Refusal.WRONG_ISSUER, f"{what}: issued by {claims['iss']!r}, not {issuer!r}")
    if not isinstance(claims["sub"], str) or not isinstance(claims["trust_mark_type"], str):
        raise FederationRefused(Refusal.MALFORMED, f"{what}: sub and trust_mark_type must be strings")
    if subject is not None and claims["sub"] != subject:
        raise FederationRefused(
            Refusal.TRUST_MARK_OTHER_SUBJECT, f"{what}: it is for {claims['sub']!r}, not {subject!r}"
        )
    if trust_mark_type is not None and claims["trust_mark_type"] != trust_mark_type:
        raise FederationRefused(
            Refusal.TRUST_MARK_OTHER_TYPE,
            f"{what}: its type is {claims['trust_mark_type']!r}, not {trust_mark_type!r}",
        )
    if status is not None and status != "active":
        raise FederationRefused(Refusal.TRUST_MARK_REVOKED, f"{what}: its issuer says {status!r}")
    return TrustMark(token, claims)


def verify_trust_mark_status(
    token: Any,
    *,
    issuer: str,
    issuer_jwks: Mapping[str, Any],
    trust_mark: str,
    now: datetime,
    leeway: timedelta = DEFAULT_LEEWAY,
) -> str:
    """§8.4.2: the issuer's signed answer about ``trust_mark``; returns its ``status``."""
    what = "trust mark status"
    claims, _ = _verify(
        token,
        what=what,
        keys=issuer_jwks,
        typ=TRUST_MARK_STATUS_TYP,
        required=("iss", "iat", "trust_mark", "status"),
        now=now,
        leeway=leeway,
        max_length=2 * MAX_DOCUMENT_LENGTH,
    )
    if claims["iss"] != issuer:
        raise FederationRefused(Refusal.WRONG_ISSUER, f"{what}: issued by {claims['iss']!r}, not {issuer!r}")
    if claims["trust_mark"] != trust_mark:
        raise FederationRefused(Refusal.WRONG_SUBJECT, f"{what}: it answers about another trust mark")
    if not isinstance(claims["status"], str):
        raise FederationRefused(Refusal.MALFORMED, f"{what}: status is not a string")
    return claims["status"]


# -- chains ------------------------------------------------------------------------------------


def resolve_trust_chain(
    chain: Sequence[str],
    *,
    anchor: TrustAnchor,
    now: datetime,
    leeway: timedelta = DEFAULT_LEEWAY,
) -> TrustChain:
    """§10.2: validate ``chain`` (leaf first, the anchor's configuration last) against ``anchor``.

    The last statement must be the anchor's own configuration, signed by a pinned key. Then,
    from the anchor down, statement ``j`` must be issued by the subject of statement ``j+1``
    and signed by a key that statement ``j+1`` publishes (for a configuration: its own keys;
    for a subordinate statement: the keys its issuer vouches for). A configuration followed by
    a superior's statement must name that superior in its ``authority_hints``.
    """
    if isinstance(chain, str) or not isinstance(chain, Sequence) or not chain:
        raise FederationRefused(Refusal.MALFORMED, "a trust chain is a non-empty list of statements")
    if len(chain) > MAX_CHAIN_LENGTH:
        raise FederationRefused(Refusal.OVERSIZED, f"a trust chain has at most {MAX_CHAIN_LENGTH} statements")

    top_claims = _unverified_claims(chain[-1], "trust anchor configuration")
    if top_claims.get("iss") != anchor.entity_id or top_claims.get("sub") != anchor.entity_id:
        raise FederationRefused(
            Refusal.CHAIN_NOT_ANCHORED,
            f"the chain ends at {top_claims.get('sub')!r}, not at the trust anchor {anchor.entity_id!r}",
        )
    try:
        top = verify_entity_configuration(
            chain[-1], entity_id=anchor.entity_id, now=now, leeway=leeway, trusted_jwks=anchor.jwks
        )
    except FederationRefused as exc:
        if exc.reason is Refusal.BAD_SIGNATURE:
            raise FederationRefused(
                Refusal.CHAIN_NOT_ANCHORED,
                f"the anchor's configuration is not signed by a pinned key: {exc.detail}",
            ) from exc
        raise

    verified = [top]
    for index in range(len(chain) - 2, -1, -1):
        above = verified[0]
        claims = _unverified_claims(chain[index], f"statement {index}")
        if claims.get("iss") != above.sub:
            raise FederationRefused(
                Refusal.CHAIN_BROKEN,
                f"statement {index} is issued by {claims.get('iss')!r}; the next one is about {above.sub!r}",
            )
        keys = above.jwks
        what = f"statement {index}"
        if claims.get("iss") == claims.get("sub"):
            statement = verify_entity_configuration(
                chain[index], entity_id=above.sub, now=now, leeway=leeway, trusted_jwks=keys
            )
        else:
            try:
                statement = verify_subordinate_statement(
                    chain[index], superior=above, subject=None, now=now, leeway=leeway
                )
            except FederationRefused as exc:
                raise FederationRefused(exc.reason, f"{what}: {exc.detail}") from exc
        # A configuration vouched for by a superior's statement must name that superior (§4).
        hints = statement.claims.get("authority_hints", [])
        if statement.is_configuration and not above.is_configuration and above.iss not in hints:
            raise FederationRefused(
                Refusal.CHAIN_BROKEN, f"{what}: {above.iss!r} is not among its authority_hints"
            )
        verified.insert(0, statement)
    expires = min(s.exp for s in verified)
    return TrustChain(verified[0].sub, anchor.entity_id, tuple(verified), expires)


def verify_key_rollover(
    previous_jwks: Mapping[str, Any],
    configuration: str,
    *,
    entity_id: str,
    now: datetime,
    leeway: timedelta = DEFAULT_LEEWAY,
) -> EntityStatement:
    """A peer's new configuration, accepted only if a key trusted before signed it.

    A peer pinned without an anchor may change keys only by publishing, while its previous key
    still signs, a configuration that lists the new one; a configuration signed by a key we
    have never trusted is refused, whatever keys it lists.
    """
    try:
        return verify_entity_configuration(
            configuration, entity_id=entity_id, now=now, leeway=leeway, trusted_jwks=previous_jwks
        )
    except FederationRefused as exc:
        if exc.reason is Refusal.BAD_SIGNATURE:
            raise FederationRefused(
                Refusal.KEY_ROLLOVER_UNSIGNED,
                f"the configuration of {entity_id!r} is not signed by a key trusted before: {exc.detail}",
            ) from exc
        raise

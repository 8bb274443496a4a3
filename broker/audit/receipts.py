"""Access receipts from holders (DESIGN step 8): a holder reports each release of data.

The contract, which the holder SDK follows: ``POST /receipts`` with ``Content-Type:
application/jwt`` and a compact JWS as the body; header ``alg`` ES256, ``kid`` of a key in
the holder's registered ``jwks``, ``typ`` ``access-receipt+jwt``; claims ``iss`` (the
holder's identifier), ``aud`` (the broker's issuer), ``iat``, ``exp`` (at most seven days
after ``iat``, so that receipts queued during an outage are still accepted), ``jti`` (the
receipt's id, url-safe, at most 64 characters), ``consent_id``, ``token_jti``,
``client_id``, ``categories``, ``record_count``, ``released_at`` (epoch seconds).

A receipt is recorded once per (holder, ``jti``): a retry answers ``recorded: false``, so
that every release appears in the log exactly once. A receipt naming categories the consent
did not grant at this holder, or a release after the consent ended, is recorded *and*
flagged: it is evidence of misuse that the patient must see.

This module reads holders and consents to check a receipt against them; the log itself
(``broker.audit.log``) depends on no other domain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from broker import strictjson
from broker.audit.log import append_event
from broker.audit.models import AccessReceipt
from broker.audit.tags import EventTag
from broker.catalog.models import Holder
from broker.consent.download import DOWNLOAD_CLIENT_ID, DownloadConsent, end_download
from broker.consent.download import granted_at as download_granted_at
from broker.consent.models import ConsentRecord
from broker.consent.proofs import JoseError, MalformedToken, b64url_decode, verify_jwt
from broker.consent.proofs.jose import BadSignature, WrongType
from broker.errors import BrokerError

RECEIPT_TYP = "access-receipt+jwt"
RECEIPT_MEDIA_TYPE = "application/jwt"
MAX_RECEIPT_LENGTH = 16 * 1024
MAX_LIFETIME = timedelta(days=7)
LEEWAY = timedelta(seconds=60)
REQUIRED = (
    "iss",
    "aud",
    "iat",
    "exp",
    "jti",
    "consent_id",
    "token_jti",
    "client_id",
    "categories",
    "record_count",
    "released_at",
)
_JTI = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ReceiptInvalid(BrokerError):
    status = 400
    slug = "receipt-invalid"
    title = "The access receipt is not valid"


class ReceiptMediaType(BrokerError):
    status = 415
    slug = "receipt-media-type"
    title = "An access receipt is sent as application/jwt"


class ReceiptUnauthenticated(BrokerError):
    status = 401
    slug = "receipt-unauthenticated"
    title = "The access receipt is not signed by an approved holder"


class ReceiptNotCovered(BrokerError):
    status = 403
    slug = "receipt-not-covered"
    title = "The access receipt names a consent that does not cover this release"


@dataclass(frozen=True)
class ReceiptOutcome:
    jti: str
    recorded: bool
    flagged: bool

    def to_json(self) -> dict[str, Any]:
        return {"receipt": self.jti, "recorded": self.recorded}


def _issuer_of(token: str) -> str:
    """The unverified ``iss``, only to choose whose keys verify the token next."""
    if len(token) > MAX_RECEIPT_LENGTH:
        raise ReceiptInvalid(f"the receipt is longer than {MAX_RECEIPT_LENGTH} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise ReceiptInvalid("the body is not a compact JWS")
    try:
        claims = strictjson.loads(b64url_decode(parts[1], "payload"))
    except (JoseError, ValueError, UnicodeDecodeError):
        raise ReceiptInvalid("the receipt's payload is not a JSON object") from None
    iss = claims.get("iss") if isinstance(claims, dict) else None
    if not isinstance(iss, str) or not iss:
        raise ReceiptInvalid("the receipt has no iss")
    return iss


def _string(claims: dict[str, Any], name: str, limit: int) -> str:
    value = claims[name]
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ReceiptInvalid(f"{name}: a string of 1 to {limit} characters")
    return value


def _integer(claims: dict[str, Any], name: str) -> int:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ReceiptInvalid(f"{name}: a non-negative integer")
    return value


def _granted_at(consent: ConsentRecord, holder_id: str) -> set[str] | None:
    """The categories the consent grants at this holder; None if it grants nothing there."""
    found: set[str] | None = None
    for grant in consent.grants or []:
        if grant.get("holder") == holder_id:
            found = (found or set()) | set(grant.get("categories") or [])
    return found


def _insert_once(session: Session, values: dict[str, Any]) -> bool:
    """Insert the receipt's row unless (holder, jti) is there; True when this call inserted.

    ON CONFLICT DO NOTHING: two copies of one receipt arriving together are recorded once
    (the second waits for the first's commit, then does nothing).
    """
    dialect = session.get_bind().dialect.name
    table = cast(Table, AccessReceipt.__table__)
    module: Any = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(table).values(values).on_conflict_do_nothing().returning(table.c.jti)
    return session.execute(statement).first() is not None


def record_receipt(session: Session, *, token: str, issuer: str, now: datetime) -> ReceiptOutcome:
    """Verify a holder's access receipt and enter it in the patient's log (once)."""
    holder = session.get(Holder, _issuer_of(token))
    if holder is None or holder.status != "approved" or not holder.jwks:
        raise ReceiptUnauthenticated("the receipt's iss is not an approved holder with registered keys")
    try:
        # Every check spelled out (STYLE 6): ES256 only, the receipt's own typ (a token of
        # another kind is refused), the holder as issuer and this broker as audience, every
        # claim of the contract present, and a 60 s leeway on the times.
        verified = verify_jwt(
            token,
            keys=holder.jwks,
            algorithms=("ES256",),
            types=(RECEIPT_TYP,),
            typ_required=True,
            issuer=holder.identifier,
            audiences=(issuer,),
            required_claims=REQUIRED,
            now=now,
            leeway=LEEWAY,
            max_length=MAX_RECEIPT_LENGTH,
        )
    except (BadSignature, WrongType) as exc:
        raise ReceiptUnauthenticated(f"the receipt's signature was refused: {exc}") from None
    except MalformedToken as exc:
        raise ReceiptInvalid(f"the receipt is malformed: {exc}") from None
    except JoseError as exc:
        raise ReceiptInvalid(f"the receipt was refused: {exc}") from None
    claims = verified.claims
    jti = claims["jti"]
    if not isinstance(jti, str) or not _JTI.match(jti):
        raise ReceiptInvalid("jti: 1 to 64 letters, digits, - or _")
    iat, exp = claims["iat"], claims["exp"]
    if exp - iat > MAX_LIFETIME.total_seconds():
        raise ReceiptInvalid("exp: at most seven days after iat")
    consent_id = _string(claims, "consent_id", 40)
    token_jti = _string(claims, "token_jti", 128)
    client_id = _string(claims, "client_id", 64)
    categories = claims["categories"]
    if (
        not isinstance(categories, list)
        or len(categories) > 64
        or not all(isinstance(c, str) and 0 < len(c) <= 64 for c in categories)
    ):
        raise ReceiptInvalid("categories: a list of at most 64 category ids")
    record_count = _integer(claims, "record_count")
    released_ts = _integer(claims, "released_at")
    released_at = datetime.fromtimestamp(released_ts, UTC)
    if released_at > now + LEEWAY:
        raise ReceiptInvalid("released_at is in the future")

    consent: ConsentRecord | DownloadConsent | None
    if client_id == DOWNLOAD_CLIENT_ID:  # the patient's own download (issue 10)
        consent = session.get(DownloadConsent, consent_id, with_for_update=True)
        granted = download_granted_at(consent, holder.identifier) if consent is not None else None
    else:
        consent = session.get(ConsentRecord, consent_id)
        granted = _granted_at(consent, holder.identifier) if consent is not None else None
    if consent is None or granted is None:
        # One answer for both: a holder learns nothing about consents that are not its own.
        raise ReceiptNotCovered("no consent with this id grants anything at this holder")
    if isinstance(consent, ConsentRecord) and client_id != consent.client_id:
        raise ReceiptNotCovered("client_id is not the app this consent was given to")

    outside = sorted(set(categories) - granted)
    if isinstance(consent, DownloadConsent):
        # A download ends with its first use; the receipt of a second one is evidence too.
        ended = consent.used_at if consent.used_at is not None else consent.expires_at
        after_end = released_at > ended
        end_download(session, consent, now)
    else:
        ended = consent.revoked_at if consent.revoked_at is not None else consent.expires_at
        after_end = released_at > ended
    flagged = bool(outside) or after_end
    if not _insert_once(
        session,
        {
            "holder_id": holder.identifier,
            "jti": jti,
            "patient_id": consent.patient_id,
            "consent_id": consent.id,
            "received_at": now,
            "flagged": flagged,
        },
    ):
        return ReceiptOutcome(jti, recorded=False, flagged=flagged)
    append_event(
        session,
        tag=EventTag.DATA_RELEASED,
        patient_id=consent.patient_id,
        actor=f"holder:{holder.identifier}",
        details={
            "holder": holder.identifier,
            "app": client_id,
            "categories": sorted(set(categories)),
            "record_count": record_count,
            "released_at": released_ts,
            "consent_id": consent.id,
            "token_jti": token_jti,
            "receipt": jti,
            "flagged": flagged,
            "outside_consent": outside,
            "after_consent_ended": after_end,
        },
        at=released_at,
    )
    return ReceiptOutcome(jti, recorded=True, flagged=flagged)

"""Signed receipts of a patient's consent and of its withdrawal (DESIGN, "Records").

A receipt is made from one status record of a consent (``consent_events``): the latest grant
or change for a *consent receipt*, the latest withdrawal for a *withdrawal receipt*. Its
content is one JSON object, built only from what the broker recorded at that moment, so it
is the same every time it is downloaded:

- it is a Kantara Consent Receipt v1.1 (``version``, ``jurisdiction``, ``consentTimestamp``,
  ``collectionMethod``, ``consentReceiptID``, ``piiPrincipalId``, ``piiControllers``,
  ``policyUrl``, ``services`` with their ``purposes``, ``sensitive``, ``spiCat``), served as
  ``receipt.kantara.json``;
- it carries the JWT claims ``iss`` (the broker), ``sub`` (the patient), ``iat`` (the time
  of the record) and ``jti`` (= ``consentReceiptID``), and the broker's own record under
  ``consent`` (consent id, action, grants per holder, dates, charter version, manifest hash);
- signed by the broker's key it is ``receipt.jwt``: a compact JWS, header ``alg`` ES256,
  ``kid``, ``typ`` ``consent-receipt+jwt``; its payload is exactly the Kantara document;
- ``receipt.fhir.json`` says the same as a FHIR R4 ``Consent`` resource (``fhir_consent``).

Verifying a receipt needs nothing but the broker's public keys, published at
``{issuer}/jwks.json`` (RFC 7517): take the key named by the header's ``kid``, accept only
ES256 and the ``typ`` above, check ``iss`` is the broker. With PyJWT::

    key = jwt.PyJWKClient(f"{issuer}/jwks.json").get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key, algorithms=["ES256"], issuer=issuer,
                        options={"require": ["iss", "sub", "iat", "jti"], "verify_aud": False})

There is no ``exp``: a receipt records a past fact and stays true; whether the consent is
still in force is what the status list and the patient's page say.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.catalog.models import App, Holder
from broker.charter import Charter
from broker.consent.models import ConsentEvent, ConsentRecord
from broker.errors import NotFound

__all__ = [
    "CONSENT_RECEIPT_TYP",
    "DOCUMENTS",
    "KANTARA_VERSION",
    "ReceiptDocument",
    "consent_receipt_claims",
    "fhir_consent",
    "parse_document",
]

CONSENT_RECEIPT_TYP = "consent-receipt+jwt"
KANTARA_VERSION = "KI-CR-v1.1.0"
JURISDICTION = "FR"
# The name space of receipt ids: uuid5(issuer + consent + record) is the same at every download.
_RECEIPT_NAMESPACE = uuid.UUID("6f1c2a8e-3b7d-5c4e-9a10-2f6b8d4e7c31")

Kind = Literal["receipt", "withdrawal"]
Format = Literal["jwt", "kantara.json", "fhir.json"]
DOCUMENTS: dict[str, tuple[Kind, Format]] = {
    f"{kind}.{fmt}": (kind, fmt)
    for kind in ("receipt", "withdrawal")
    for fmt in ("jwt", "kantara.json", "fhir.json")
}
MEDIA_TYPES = {
    "jwt": "application/jwt",
    "kantara.json": "application/json",
    "fhir.json": "application/fhir+json",
}
_GRANT_ACTIONS = ("granted", "changed")


@dataclass(frozen=True)
class ReceiptDocument:
    kind: Kind
    format: Format

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]

    def filename(self, consent_id: str) -> str:
        stem = "recu-accord" if self.kind == "receipt" else "recu-retrait"
        return f"{stem}-{consent_id}.{self.format}"


def parse_document(name: str) -> ReceiptDocument:
    """``receipt.jwt``, ``withdrawal.fhir.json`` … ; anything else is not found."""
    found = DOCUMENTS.get(name)
    if found is None:
        raise NotFound("no such document")
    return ReceiptDocument(*found)


def _ts(at: datetime) -> int:
    return int(at.timestamp())


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _record(session: Session, consent: ConsentRecord, kind: Kind) -> ConsentEvent:
    actions = _GRANT_ACTIONS if kind == "receipt" else ("revoked",)
    record = session.scalars(
        select(ConsentEvent)
        .where(ConsentEvent.consent_id == consent.id, ConsentEvent.action.in_(actions))
        .order_by(ConsentEvent.at.desc(), ConsentEvent.id.desc())
        .limit(1)
    ).first()
    if record is None:
        raise NotFound(
            "this consent has no such receipt" if kind == "receipt" else "this consent was not withdrawn"
        )
    return record


def _grant_record(session: Session, consent: ConsentRecord, before: ConsentEvent) -> ConsentEvent | None:
    """The grant or change a withdrawal ended (to say what was withdrawn, and since when)."""
    return session.scalars(
        select(ConsentEvent)
        .where(
            ConsentEvent.consent_id == consent.id,
            ConsentEvent.action.in_(_GRANT_ACTIONS),
            ConsentEvent.id < before.id,
        )
        .order_by(ConsentEvent.id.desc())
        .limit(1)
    ).first()


def consent_receipt_claims(
    session: Session,
    *,
    patient_id: str,
    consent_id: str,
    kind: Kind,
    issuer: str,
    charter: Charter,
) -> dict[str, Any]:
    """The receipt's content (see the module's docstring); another patient's consent is not found."""
    consent = session.get(ConsentRecord, consent_id)
    if consent is None or consent.patient_id != patient_id:
        raise NotFound("no such consent")  # the same answer as an id that does not exist
    app = session.get(App, consent.client_id)
    assert app is not None  # a foreign key
    record = _record(session, consent, kind)
    grants: list[dict[str, Any]] = list(record.grants or consent.grants or [])
    granted = record if kind == "receipt" else _grant_record(session, consent, record)
    holder_ids = sorted({g["holder"] for g in grants})
    holders = {
        h.identifier: h.legal_name
        for h in session.scalars(select(Holder).where(Holder.identifier.in_(holder_ids)))
    }
    metadata = app.client_metadata
    manifest = metadata.get("charter_manifest", {})
    publisher = manifest.get("publisher") or {}
    third_parties = [t.get("name") for t in manifest.get("third_parties") or [] if t.get("name")]
    category_ids = sorted({c for g in grants for c in g.get("categories", [])})
    categories = []
    for category_id in category_ids:
        entry = charter.categories.get(category_id)
        categories.append(
            {
                "id": category_id,
                "label": entry.label("fr") if entry else category_id,
                "fhir": list(entry.fhir) if entry else [],
                "sensitive": bool(entry and entry.sensitive),
            }
        )
    labels = {c["id"]: c["label"] for c in categories}
    receipt_id = str(uuid.uuid5(_RECEIPT_NAMESPACE, f"{issuer}|{consent.id}|{record.id}"))
    expires_at = consent.expires_at
    if kind == "receipt":
        termination = (
            f"Jusqu'au {_iso(expires_at)}, ou plus tôt si la personne retire son accord "
            f"(à tout moment, sur {issuer}/my/consents)."
        )
        method = "Écran de consentement du courtier, après connexion de la personne (OAuth 2.0, RFC 6749)"
    else:
        termination = f"Accord retiré le {_iso(record.at)} ; aucune nouvelle lecture n'est permise."
        method = "Retrait par la personne sur la page « Mes accords » du courtier, ou par son API"
    purposes = []
    for purpose_id in sorted({g["purpose"] for g in grants}):
        purpose = charter.purposes.get(purpose_id)
        purposes.append(
            {
                "purpose": purpose.label("fr") if purpose else purpose_id,
                "purposeCategory": [purpose_id],
                "consentType": "EXPLICIT",
                "piiCategory": sorted(
                    {labels[c] for g in grants if g["purpose"] == purpose_id for c in g["categories"]}
                ),
                "primaryPurpose": True,
                "termination": termination,
                "thirdPartyDisclosure": bool(third_parties),
                **({"thirdPartyName": ", ".join(third_parties)} if third_parties else {}),
            }
        )
    sensitive = [c["label"] for c in categories if c["sensitive"]]
    return {
        # JWT claims (RFC 7519 §4.1): who signed, about whom, when, which receipt.
        "iss": issuer,
        "sub": patient_id,
        "iat": _ts(record.at),
        "jti": receipt_id,
        # Kantara Consent Receipt v1.1, §4 fields.
        "version": KANTARA_VERSION,
        "jurisdiction": JURISDICTION,
        "consentTimestamp": _ts(record.at),
        "collectionMethod": method,
        "consentReceiptID": receipt_id,
        "language": "fr",
        "piiPrincipalId": patient_id,
        "piiControllers": [
            {
                "piiController": publisher.get("legal_name") or app.publisher_name,
                "onBehalf": False,
                "contact": publisher.get("dpo_email") or publisher.get("contact_email") or "",
                "address": publisher.get("address") or "",
                "email": publisher.get("contact_email") or publisher.get("dpo_email") or "",
                "phone": publisher.get("phone") or "",
                **({"piiControllerUrl": metadata["client_uri"]} if metadata.get("client_uri") else {}),
            }
        ],
        "policyUrl": metadata.get("policy_uri") or f"{issuer}/apps/{app.client_id}",
        "services": [{"service": app.client_name, "purposes": purposes}],
        "sensitive": bool(sensitive),
        "spiCat": sensitive,
        # The broker's own record of this consent at this moment.
        "consent": {
            "consent_id": consent.id,
            "record_id": record.id,
            "action": record.action,
            "status": "active" if kind == "receipt" else "withdrawn",
            "by": record.by,
            "reason": record.reason,
            "client_id": app.client_id,
            "client_name": app.client_name,
            "grants": [{**g, "holder_name": holders.get(g["holder"], g["holder"])} for g in grants],
            "categories": categories,
            "granted_at": _iso(granted.at) if granted is not None else None,
            "expires_at": _iso(expires_at),
            "withdrawn_at": _iso(record.at) if kind == "withdrawal" else None,
            "charter_version": consent.charter_version,
            "manifest_sha256": consent.manifest_sha256,
        },
    }


def fhir_consent(claims: dict[str, Any]) -> dict[str, Any]:
    """The receipt as a FHIR R4 ``Consent`` resource (a pure function of the claims)."""
    issuer = claims["iss"]
    record = claims["consent"]
    withdrawn = record["status"] == "withdrawn"
    period: dict[str, str] = {}
    if record["granted_at"]:
        period["start"] = record["granted_at"]
    period["end"] = record["withdrawn_at"] if withdrawn else record["expires_at"]
    by_category = {c["id"]: c for c in record["categories"]}
    provisions = []
    for grant in record["grants"]:
        fhir_types = sorted({t for c in grant["categories"] for t in by_category.get(c, {}).get("fhir", [])})
        provisions.append(
            {
                "type": "permit",
                "actor": [
                    {
                        "role": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                    "code": "CST",
                                    "display": "custodian",
                                }
                            ]
                        },
                        "reference": {
                            "identifier": {"system": f"{issuer}/holders", "value": grant["holder"]},
                            "display": grant["holder_name"],
                        },
                    }
                ],
                "purpose": [
                    {"system": f"{issuer}/charter/purposes", "code": grant["purpose"]},
                ],
                "class": [{"system": "http://hl7.org/fhir/resource-types", "code": t} for t in fhir_types],
                "code": [
                    {
                        "coding": [
                            {
                                "system": f"{issuer}/charter/categories",
                                "code": c,
                                "display": by_category.get(c, {}).get("label", c),
                            }
                        ]
                    }
                    for c in grant["categories"]
                ],
            }
        )
    return {
        "resourceType": "Consent",
        "id": claims["consentReceiptID"],
        "identifier": [
            {"system": f"{issuer}/consent-receipts", "value": claims["consentReceiptID"]},
            {"system": f"{issuer}/consents", "value": record["consent_id"]},
        ],
        # R4 Consent.status: a withdrawn consent is no longer in force.
        "status": "inactive" if withdrawn else "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                    "display": "Privacy Consent",
                }
            ]
        },
        "category": [
            {"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}
        ],
        "patient": {"identifier": {"system": f"{issuer}/patients", "value": claims["piiPrincipalId"]}},
        "dateTime": datetime.fromtimestamp(claims["consentTimestamp"], UTC)
        .isoformat()
        .replace("+00:00", "Z"),
        "performer": [{"identifier": {"system": f"{issuer}/patients", "value": claims["piiPrincipalId"]}}],
        "organization": [{"identifier": {"system": "urn:ietf:rfc:3986", "value": issuer}}],
        "policy": [
            {"authority": issuer, "uri": f"{issuer}/charter/{record['charter_version']}"},
            {"uri": claims["policyUrl"]},
        ],
        "provision": {
            # What was permitted, and for when: a withdrawal ends the period (and the status).
            "type": "permit",
            "period": period,
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "IRCP",
                                "display": "information recipient",
                            }
                        ]
                    },
                    "reference": {
                        "identifier": {"system": f"{issuer}/apps", "value": record["client_id"]},
                        "display": record["client_name"],
                    },
                }
            ],
            "action": [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}
                    ]
                }
            ],
            "provision": provisions,
        },
    }

"""The insurer's own records: members and their reimbursements as FHIR R4 ExplanationOfBenefit.

Deterministic and validated with ``fhir.resources``, like the laboratory's data.
"""

from __future__ import annotations

import functools
import hmac
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.explanationofbenefit import ExplanationOfBenefit

from examples.common.values import between


@dataclass(frozen=True)
class Member:
    record_id: str  # the insurer's member number
    nir: str  # a synthetic social-security-like number: must never reach the broker
    family: str
    given: str
    username: str
    password: str

    @property
    def display(self) -> str:
        return f"{self.given} {self.family.upper()}"


MEMBERS: tuple[Member, ...] = (
    Member("ADM-2231-0457", "2710569123456", "Martin", "Gaëlle", "gaelle.martin", "assurance-gaelle-2026"),
    Member("ADM-2231-0912", "1641175234567", "Dubois", "Antoine", "antoine.dubois", "assurance-antoine-2026"),
)

# (label, billing code of the French nomenclature (NABM / CCAM-like), price low, high)
ACTS = (
    ("Consultation de médecine générale", "GS", 26.5, 30.0),
    ("Bilan glycémique (glycémie, HbA1c)", "B0552", 18.9, 24.7),
    ("Bandelettes d'autosurveillance glycémique", "LPP-1110", 31.4, 44.8),
    ("Consultation d'endocrinologie", "APC", 52.3, 61.9),
)
FIRST = date(2025, 1, 10)
CLAIMS = 10


def _cents(value: float) -> float:
    """Two decimals, the last one not zero: served as written, found as written by the test."""
    value = round(value, 2)
    return value if f"{value:.2f}" == str(value) else round(value + 0.01, 2)


def _claim(member: Member, n: int) -> dict[str, Any]:
    label, code, low, high = ACTS[n % len(ACTS)]
    charged = _cents(between(low, high, 2, member.record_id, n, "charged"))
    rate = 0.7 if n % len(ACTS) != 2 else 0.6
    paid = _cents(charged * rate - (1.0 if code in ("GS", "APC") else 0.0))
    day = FIRST + timedelta(days=33 * n + int(between(0, 9, 0, member.record_id, n)))
    return {
        "resourceType": "ExplanationOfBenefit",
        "id": f"{member.record_id}-{n:03d}",
        "status": "active",
        "type": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]
        },
        "use": "claim",
        "patient": {"reference": f"Patient/{member.record_id}", "display": member.display},
        "identifier": [{"system": "urn:oid:1.2.250.1.999.33.1", "value": f"{member.record_id}-{n:03d}"}],
        "created": day.isoformat(),
        "insurer": {"display": "Assurance Démo"},
        "provider": {"display": "Professionnel de santé (fictif)"},
        "outcome": "complete",
        "insurance": [{"focal": True, "coverage": {"display": f"Contrat santé {member.record_id}"}}],
        "billablePeriod": {"start": day.isoformat(), "end": day.isoformat()},
        "item": [
            {
                "sequence": 1,
                "productOrService": {
                    "coding": [{"system": "urn:oid:1.2.250.1.213.2.5", "code": code}],
                    "text": label,
                },
                "servicedDate": day.isoformat(),
                "net": {"value": charged, "currency": "EUR"},
            }
        ],
        "total": [
            {
                "category": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/adjudication", "code": "submitted"}
                    ]
                },
                "amount": {"value": charged, "currency": "EUR"},
            },
            {
                "category": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/adjudication", "code": "benefit"}
                    ]
                },
                "amount": {"value": paid, "currency": "EUR"},
            },
        ],
        "payment": {
            "amount": {"value": paid, "currency": "EUR"},
            "date": (day + timedelta(days=4)).isoformat(),
        },
    }


@functools.cache
def claims(record_id: str) -> tuple[dict[str, Any], ...]:
    member = next(m for m in MEMBERS if m.record_id == record_id)
    out = []
    for n in range(CLAIMS):
        resource = _claim(member, n)
        ExplanationOfBenefit.model_validate(resource)
        out.append(resource)
    return tuple(out)


def searchset(resources: list[dict[str, Any]], base_url: str) -> dict[str, Any]:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {
                "fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }
    Bundle.model_validate(bundle)
    return bundle


def find_by_login(username: str, password: str) -> Member | None:
    for member in MEMBERS:
        same_user = hmac.compare_digest(member.username.encode(), username.strip().lower().encode())
        same_password = hmac.compare_digest(member.password.encode(), password.encode())
        if same_user and same_password:
            return member
    return None


def served_values() -> dict[str, set[str]]:
    values: set[str] = set()
    codes: set[str] = set()
    names: set[str] = set()
    for member in MEMBERS:
        names |= {member.display, member.record_id, member.nir}
        for claim in claims(member.record_id):
            values |= {str(t["amount"]["value"]) for t in claim["total"]}
            code = claim["item"][0]["productOrService"]["coding"][0]["code"]
            if len(code) >= 5:  # "GS" is in too many unrelated strings to be searched for
                codes.add(code)
    return {"values": values, "codes": codes, "names": names}

"""Factories for registration requests and holder declarations (one place for all tests)."""

from __future__ import annotations

import copy
from typing import Any

from jwcrypto import jwk

from broker.demo import DEMO_APP

COMPLIANT_APP: dict[str, Any] = copy.deepcopy(DEMO_APP)
COMPLIANT_APP["redirect_uris"] = ["https://glycemie.example/callback"]


def app_registration(name: str = "Suivi Glycémie", **changes: Any) -> dict[str, Any]:
    """A compliant registration request; keyword arguments replace top-level fields."""
    body = copy.deepcopy(COMPLIANT_APP)
    body["client_name"] = name
    body.update(copy.deepcopy(changes))
    return body


def public_jwk(kid: str = "holder-key-1") -> dict[str, Any]:
    key = jwk.JWK.generate(kty="EC", crv="P-256")
    public: dict[str, Any] = key.export_public(as_dict=True)
    public.update(kid=kid, alg="ES256", use="sig")
    return public


def holder_declaration(identifier: str = "labo-test", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "identifier": identifier,
        "legal_name": "Laboratoire Test",
        "base_url": "https://labo-test.example/fhir",
        "categories": ["lab_results", "identity"],
        "release_step_categories": [],
        "jwks": {"keys": [public_jwk()]},
    }
    body.update(copy.deepcopy(changes))
    return body


# Two approved holders: a lab (lab results, identity) and a pharmacy (lab results, medications).
TWO_HOLDERS = {
    "labo-test": "https://labo-test.example/fhir",
    "pharma-test": "https://pharma-test.example/fhir",
}


def seed_two_holders(session: Any, charter: Any, now: Any) -> dict[str, str]:
    """Register and approve ``TWO_HOLDERS``; returns identifier → API base URL."""
    from broker.catalog import service

    service.add_holder(session, body=holder_declaration("labo-test"), charter=charter, dev_mode=True, now=now)
    service.add_holder(
        session,
        body=holder_declaration(
            "pharma-test",
            legal_name="Pharmacie Test",
            base_url=TWO_HOLDERS["pharma-test"],
            categories=["lab_results", "medications"],
        ),
        charter=charter,
        dev_mode=True,
        now=now,
    )
    for identifier in TWO_HOLDERS:
        service.approve_holder(session, identifier=identifier, operator="test", now=now)
    return dict(TWO_HOLDERS)


def linked_patient(session: Any, *, email: str, password: str, holders: list[str], now: Any) -> str:
    """A local patient account (French, display name Gaëlle) linked to ``holders``; its id."""
    from argon2 import PasswordHasher

    from broker.consent.patients.service import create_local_account
    from broker.consent.service import link_patient

    patient = create_local_account(
        session,
        email=email,
        display_name="Gaëlle",
        password_hash=PasswordHasher().hash(password),
        language="fr",
        now=now,
    )
    assert patient is not None
    for identifier in holders:
        link_patient(session, patient_id=patient.id, holder_id=identifier, now=now)
    return str(patient.id)

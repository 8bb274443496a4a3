"""The demo: a demo holder and a demo app, so that a newcomer can try the broker at once.

Seeding is idempotent: `make run` may start the broker any number of times.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

from jwcrypto import jwk
from sqlalchemy.orm import Session

from broker.catalog import repository, service
from broker.catalog.schemas import fold
from broker.db import utcnow
from broker.settings import Settings

log = logging.getLogger("broker.demo")

DEMO_HOLDER_ID = "labo-demo"
DEMO_APP_NAME = "Suivi Glycémie"

DEMO_APP: dict[str, Any] = {
    "client_name": DEMO_APP_NAME,
    "client_uri": "https://glycemie.example",
    "redirect_uris": ["http://127.0.0.1:8001/callback"],
    "grant_types": ["authorization_code", "refresh_token"],
    "response_types": ["code"],
    "token_endpoint_auth_method": "none",
    "policy_uri": "https://glycemie.example/privacy",
    "contacts": ["dpo@glycemie.example"],
    "software_version": "1.4.0",
    "charter_manifest": {
        "publisher": {
            "legal_name": "Glycémie SAS",
            "registration_number": "RCS Lyon 912 345 678",
            "country": "FR",
            "address": "12 rue de la Santé, 69003 Lyon",
            "contact_email": "contact@glycemie.example",
            "dpo_email": "dpo@glycemie.example",
        },
        "business_model": {
            "model": "subscription",
            "description": "4 € par mois, payés par l'utilisateur ; aucun autre revenu.",
            "funding_sources": [
                {"name": "Fondateurs et subvention publique d'innovation", "kind": "equity_and_grant"}
            ],
        },
        "purposes": [
            {
                "id": "chronic_disease_followup",
                "description": "Suivre sa glycémie et son HbA1c dans le temps.",
            }
        ],
        "data_requests": [
            {
                "category": "lab_results",
                "purpose": "chronic_disease_followup",
                "optional": False,
                "justification": "L'HbA1c et la glycémie à jeun sont les mesures du graphique.",
            },
            {
                "category": "device_measurements",
                "purpose": "chronic_disease_followup",
                "optional": True,
                "justification": "Les mesures d'un lecteur de glycémie connecté, si vous en avez un.",
            },
        ],
        "retention": {
            "days": 730,
            "description": "Effacées deux ans après la dernière utilisation, ou sur demande.",
        },
        "rights": {
            "access": "https://glycemie.example/account/export",
            "rectification": "mailto:dpo@glycemie.example",
            "erasure": "https://glycemie.example/account/delete",
            "portability": "https://glycemie.example/account/export",
        },
        "hosting": {
            "provider": "Hébergeur Santé SA",
            "country": "FR",
            "health_data_certification": "HDS",
            "certificate_id": "HDS-2025-0042",
        },
        "third_parties": [],
        "data_leaves_eu": False,
    },
}


def _demo_holder_key(settings: Settings) -> dict[str, Any]:
    """The demo holder's receipt-signing key, kept beside the broker's keys (private 0600)."""
    path = settings.key_dir / "demo-holder.jwk"
    if not path.exists():
        settings.key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = jwk.JWK.generate(kty="EC", crv="P-256")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key.export_private())
    key = jwk.JWK.from_json(path.read_text())
    public: dict[str, Any] = key.export_public(as_dict=True)
    public.update(kid=key.thumbprint(), alg="ES256", use="sig")
    return public


def seed_demo(session: Session, settings: Settings) -> None:
    from broker.catalog.enforcement import CharterInForce
    from broker.consent.patients import seed_demo_patients

    now = utcnow()
    charter = CharterInForce(settings.charter_version).current(session)
    if repository.get_holder(session, DEMO_HOLDER_ID) is None:
        service.add_holder(
            session,
            body={
                "identifier": DEMO_HOLDER_ID,
                "legal_name": "Laboratoire Démo",
                "base_url": "http://127.0.0.1:8002/fhir",
                "categories": ["lab_results", "identity"],
                "release_step_categories": [],
                "jwks": {"keys": [_demo_holder_key(settings)]},
            },
            charter=charter,
            dev_mode=True,
            now=now,
        )
        service.approve_holder(session, identifier=DEMO_HOLDER_ID, operator="demo", now=now)
    if repository.app_by_name_key(session, fold(DEMO_APP_NAME)) is None:
        service.register_app(
            session,
            body=copy.deepcopy(DEMO_APP),
            charter=charter,
            secret_key=settings.secret_key,
            dev_mode=True,
            now=now,
        )
    # Demo patients have published passwords: development mode only (they refuse otherwise).
    if settings.dev_mode:
        from broker.consent.service import link_patient

        for patient in seed_demo_patients(session, settings):
            # The demo holder has no link step of its own yet: the operator import's path.
            link_patient(session, patient_id=patient.id, holder_id=DEMO_HOLDER_ID, now=now)
    else:
        log.warning("BROKER_DEMO without BROKER_DEV_MODE: the demo patients are not created")

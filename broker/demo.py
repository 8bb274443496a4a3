"""The demo: two demo holders and a demo app, so that a newcomer can try the broker at once.

The holders and the app run as their own servers (``examples/``; ``make run`` starts them all).
Seeding is idempotent: `make run` may start the broker any number of times.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# What the demo app seeded by ``make run`` declares beyond DEMO_APP (which tests use as their
# compliant base): the reimbursements the demo insurer serves, optional, for a second purpose.
DEMO_APP_SEEDED: dict[str, Any] = copy.deepcopy(DEMO_APP)
DEMO_APP_SEEDED["client_uri"] = "http://127.0.0.1:8001"  # the example app (examples/diabetes_app)
DEMO_APP_SEEDED["charter_manifest"]["purposes"].append(
    {
        "id": "health_budget",
        "description": "Voir ce que coûte votre suivi et ce qui vous est remboursé.",
    }
)
DEMO_APP_SEEDED["charter_manifest"]["data_requests"].append(
    {
        "category": "reimbursements",
        "purpose": "health_budget",
        "optional": True,
        "justification": "Les remboursements de vos analyses et consultations, pour le coût de votre suivi.",
    }
)


@dataclass(frozen=True)
class DemoHolder:
    identifier: str
    legal_name: str
    origin: str  # where the example server listens (examples/lab_holder, examples/insurer_holder)
    categories: tuple[str, ...]

    def document(self, jwks: dict[str, Any] | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "identifier": self.identifier,
            "legal_name": self.legal_name,
            "base_url": f"{self.origin}/fhir",
            "categories": list(self.categories),
            "release_step_categories": [],
            "link_endpoint": f"{self.origin}/link",
            "download_endpoint": f"{self.origin}/download",
        }
        if jwks is not None:
            body["jwks"] = jwks
        else:
            # The example has not made its key yet: its published JWKS stands in until the
            # next start finds the file (the link step and receipts need the key itself).
            body["jwks_uri"] = f"{self.origin}/.well-known/jwks.json"
        return body


DEMO_HOLDERS = (
    DemoHolder("labo-demo", "Laboratoire Démo", "http://127.0.0.1:8002", ("lab_results", "identity")),
    DemoHolder("assurance-demo", "Assurance Démo", "http://127.0.0.1:8003", ("reimbursements",)),
)


def examples_dir(settings: Settings) -> Path:
    """Where the example holders keep their keys: ``var/examples`` beside ``var/keys``."""
    return settings.key_dir.parent / "examples"


def _public_jwks(settings: Settings, holder_id: str) -> dict[str, Any] | None:
    """The public JWKS the example holder wrote beside its private key (never the key itself).

    Each example holder owns its signing key (``var/examples/<id>/signing-key.jwk``, 0600) and
    writes the public half as ``jwks.json``; the broker reads that file only.
    """
    path = examples_dir(settings) / holder_id / "jwks.json"
    if not path.is_file():
        return None
    document = json.loads(path.read_text())
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or any(not isinstance(k, dict) or "d" in k for k in keys):
        log.warning("%s is not a public JWKS: ignored", path)
        return None
    return {"keys": keys}


def _seed_holder(session: Session, settings: Settings, holder: DemoHolder, charter: Any, now: Any) -> None:
    jwks = _public_jwks(settings, holder.identifier)
    existing = repository.get_holder(session, holder.identifier)
    if existing is None:
        service.add_holder(session, body=holder.document(jwks), charter=charter, dev_mode=True, now=now)
        service.approve_holder(session, identifier=holder.identifier, operator="demo", now=now)
        return
    # Seeding runs at every start: follow the example's key if it was made (or remade) since.
    if jwks is not None and existing.jwks != jwks:
        existing.jwks = jwks
        existing.jwks_uri = None
    if existing.link_endpoint is None:
        existing.link_endpoint = f"{holder.origin}/link"
    if existing.download_endpoint is None:
        existing.download_endpoint = f"{holder.origin}/download"


def seed_demo(session: Session, settings: Settings) -> None:
    from broker.catalog.enforcement import CharterInForce
    from broker.consent.patients import seed_demo_patients

    now = utcnow()
    charter = CharterInForce(settings.charter_version).current(session)
    for holder in DEMO_HOLDERS:
        _seed_holder(session, settings, holder, charter, now)
    app = repository.app_by_name_key(session, fold(DEMO_APP_NAME))
    if app is None:
        service.register_app(
            session,
            body=copy.deepcopy(DEMO_APP_SEEDED),
            charter=charter,
            secret_key=settings.secret_key,
            dev_mode=True,
            now=now,
        )
    elif app.client_metadata.get("charter_manifest") != DEMO_APP_SEEDED["charter_manifest"]:
        # A database seeded by an older version: bring the demo app's manifest up to date.
        service.update_app(
            session,
            app=app,
            body={**copy.deepcopy(DEMO_APP_SEEDED), "client_id": app.client_id},
            charter=charter,
            secret_key=settings.secret_key,
            dev_mode=True,
            now=now,
        )
    # Demo patients have published passwords: development mode only (they refuse otherwise).
    # They are not linked to the demo holders here: linking is the patient's first step, done
    # at the holder's own log-in page (examples/lab_holder), which gives the broker a handle.
    if settings.dev_mode:
        seed_demo_patients(session, settings)
    else:
        log.warning("BROKER_DEMO without BROKER_DEV_MODE: the demo patients are not created")

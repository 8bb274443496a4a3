"""Demo patients for a local try (``make run``): two accounts with known passwords.

Gaëlle and Antoine are the patients of the founding document. Their passwords are printed in
the README, so these accounts exist only in development mode: seeding them anywhere else is
refused.
"""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from broker.consent.patients import repository
from broker.consent.patients.models import Patient
from broker.consent.patients.passwords import PasswordHashing
from broker.consent.patients.service import fold_email
from broker.db import utcnow
from broker.settings import Settings

DEMO_PATIENTS = (
    {
        "email": "gaelle@demo.example",
        "display_name": "Gaëlle Martin",
        "password": "gaelle-demo-patiente-2026",
    },
    {
        "email": "antoine@demo.example",
        "display_name": "Antoine Dubois",
        "password": "antoine-demo-patient-2026",
    },
)


class DemoRefused(RuntimeError):
    """Demo accounts with published passwords were asked for outside development mode."""


def seed_demo_patients(session: Session, settings: Settings) -> list[Patient]:
    """Create the demo patients once; later calls change nothing. Returns them."""
    if not settings.dev_mode:
        raise DemoRefused(
            "demo patients have published passwords: they are seeded only with BROKER_DEV_MODE=true"
        )
    hashing: PasswordHashing | None = None
    patients = []
    now = utcnow()
    for entry in DEMO_PATIENTS:
        patient = repository.patient_by_email_key(session, fold_email(entry["email"]))
        if patient is None:
            hashing = hashing or PasswordHashing(
                memory_kib=settings.argon2_memory_kib,
                time_cost=settings.argon2_time_cost,
                parallelism=settings.argon2_parallelism,
                concurrency=1,
            )
            patient = Patient(
                id=str(uuid.uuid4()),
                email=entry["email"],
                email_key=fold_email(entry["email"]),
                password_hash=hashing.hash_now(entry["password"]),
                display_name=entry["display_name"],
                preferred_language="fr",
                is_demo=True,
                created_at=now,
                password_changed_at=now,
            )
            repository.add(session, patient)
        patients.append(patient)
    return patients

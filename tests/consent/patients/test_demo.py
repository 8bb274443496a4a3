"""Demo patients: idempotent, able to log in, and refused outside development mode."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.app import create_app
from broker.consent.patients import DemoRefused, seed_demo_patients
from broker.consent.patients.demo import DEMO_PATIENTS
from broker.consent.patients.models import Patient
from broker.consent.patients.passwords import password_problem
from broker.settings import Settings
from tests.consent.patients.browser import log_in


def _patients(db: sessionmaker[Session]) -> list[Patient]:
    with db() as session:
        return list(session.scalars(select(Patient).order_by(Patient.email_key)))


def test_seeding_twice_creates_the_demo_patients_once(settings: Settings, db: sessionmaker[Session]) -> None:
    with db.begin() as session:
        first = [p.id for p in seed_demo_patients(session, settings)]
    with db.begin() as session:
        again = [p.id for p in seed_demo_patients(session, settings)]
    assert first == again
    patients = _patients(db)
    assert [p.display_name for p in patients] == ["Antoine Dubois", "Gaëlle Martin"]
    assert all(p.is_demo for p in patients)


def test_demo_passwords_pass_the_policy_and_log_in(settings: Settings) -> None:
    for entry in DEMO_PATIENTS:
        assert password_problem(entry["password"]) is None
    with TestClient(app=create_app(replace(settings, demo=True))) as client:
        for entry in DEMO_PATIENTS:
            client.cookies.clear()
            assert log_in(client, email=entry["email"], password=entry["password"]).status_code == 303
            assert entry["display_name"] in client.get("/account").text


def test_demo_patients_are_refused_outside_development(settings: Settings, db: sessionmaker[Session]) -> None:
    production = replace(settings, dev_mode=False)
    with db.begin() as session, pytest.raises(DemoRefused):
        seed_demo_patients(session, production)
    assert _patients(db) == []


def test_a_demo_broker_outside_development_starts_without_them(settings: Settings, db: Any) -> None:
    with TestClient(app=create_app(replace(settings, demo=True, dev_mode=False))) as client:
        assert client.get("/login").status_code == 200
    assert _patients(db) == []

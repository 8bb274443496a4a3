"""Races on one consent, on PostgreSQL (real row locks): grant vs revoke, refresh vs revoke.

Whatever the interleaving, the end state is consistent and no token is valid once the
revocation has committed: its status entry is INVALID, its refresh tokens are dead, and
introspection says inactive.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from broker.catalog import service as catalog
from broker.catalog.models import App, Holder
from broker.charter import load_charter
from broker.consent import oauth
from broker.consent.models import ConsentEvent, ConsentRecord, RefreshToken, StatusEntry
from broker.consent.patients.service import create_local_account
from broker.consent.service import (
    INVALID,
    VALID,
    Grant,
    grant_consent,
    link_patient,
    patient_consent,
    revoke_consent,
)
from broker.db import make_engine, make_session_factory, transaction, utcnow
from broker.errors import InvalidGrant
from broker.keys import KeyStore
from broker.opaque import new_secret
from tests.factories import app_registration, holder_declaration

ROUNDS = 15


@pytest.fixture
def pg(settings: Any) -> Any:
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("row-lock races are a PostgreSQL matter; SQLite serialises writers")
    engine = make_engine(settings.database_url, pool_size=8)
    factory = make_session_factory(engine)
    charter = load_charter()
    with transaction(factory) as session:
        now = utcnow()
        catalog.add_holder(
            session, body=holder_declaration("labo-test"), charter=charter, dev_mode=True, now=now
        )
        catalog.approve_holder(session, identifier="labo-test", operator="t", now=now)
        app = catalog.register_app(
            session,
            body=app_registration(),
            charter=charter,
            secret_key=settings.secret_key,
            dev_mode=True,
            now=now,
        ).app
        patient = create_local_account(
            session,
            email="race@example.org",
            display_name="R",
            password_hash=PasswordHasher().hash("x" * 20),
            language="fr",
            now=now,
        )
        assert patient is not None
        link_patient(session, patient_id=patient.id, holder_id="labo-test", now=now)
        ids = (app.client_id, patient.id)
    KeyStore(settings.key_dir).create()
    yield factory, ids, charter
    engine.dispose()


def _grant(factory: Any, client_id: str, patient_id: str, charter: Any) -> str:
    with transaction(factory) as session:
        app = session.get(App, client_id)
        consent = grant_consent(
            session,
            patient_id=patient_id,
            app=app,
            grants=[Grant("labo-test", "chronic_disease_followup", ("lab_results",))],
            days=30,
            charter_version=charter.version,
            by="patient",
            now=utcnow(),
        )
        return consent.id


def _race(first: Callable[[], Any], second: Callable[[], Any]) -> list[Any]:
    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]

    def run(index: int, work: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[index] = work()
        except Exception as exc:  # noqa: BLE001 (the outcome is what the test examines)
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i, w)) for i, w in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def _assert_consistent(factory: Any, consent_id: str) -> ConsentRecord:
    with transaction(factory) as session:
        consent = session.get(ConsentRecord, consent_id)
        assert consent is not None
        entry = session.get(StatusEntry, consent.status_entry_id)
        last = session.scalars(
            select(ConsentEvent)
            .where(ConsentEvent.consent_id == consent_id)
            .order_by(ConsentEvent.id.desc())
            .limit(1)
        ).first()
        assert last is not None and last.status == consent.status
        live = session.scalars(
            select(RefreshToken).where(
                RefreshToken.consent_id == consent_id,
                RefreshToken.revoked_at.is_(None),
                RefreshToken.used_at.is_(None),
            )
        ).all()
        if consent.status == "revoked":
            assert entry is not None and entry.status == INVALID
            assert live == []
        else:
            assert consent.status == "active"
            assert entry is not None and entry.status == VALID
        # every entry of an earlier grant is INVALID: no old token comes back to life
        others = session.scalars(
            select(StatusEntry).where(StatusEntry.id != consent.status_entry_id, StatusEntry.status == VALID)
        ).all()
        assert others == []
        return consent


def test_grant_racing_revoke(pg: Any) -> None:
    factory, (client_id, patient_id), charter = pg
    consent_id = _grant(factory, client_id, patient_id, charter)
    outcomes = set()
    for _ in range(ROUNDS):

        def revoke() -> str:
            with transaction(factory) as session:
                consent = patient_consent(session, patient_id=patient_id, consent_id=consent_id)
                return revoke_consent(
                    session, consent=consent, by="patient", reason=None, now=utcnow()
                ).status

        results = _race(lambda: _grant(factory, client_id, patient_id, charter), revoke)
        assert not any(isinstance(r, Exception) for r in results), results
        outcomes.add(_assert_consistent(factory, consent_id).status)
    assert outcomes <= {"active", "revoked"}


def test_refresh_racing_revoke(pg: Any, settings: Any) -> None:
    factory, (client_id, patient_id), charter = pg
    keystore = KeyStore(settings.key_dir).load()
    for _ in range(ROUNDS):
        consent_id = _grant(factory, client_id, patient_id, charter)
        with transaction(factory) as session:
            consent = session.get(ConsentRecord, consent_id)
            ctx = oauth.TokenContext(settings=settings, keystore=keystore, now=utcnow(), authenticate=None)
            refresh = oauth._store_refresh_token(
                session, ctx, consent, "fam_" + secrets.token_hex(4), new_secret("hcb_rt")
            )

        def do_refresh(refresh: str = refresh) -> Any:
            with transaction(factory) as session:
                app = session.get(App, client_id)
                ctx = oauth.TokenContext(
                    settings=settings, keystore=keystore, now=utcnow(), authenticate=lambda s, f: app
                )
                return oauth.token_request(
                    session, {"grant_type": "refresh_token", "refresh_token": refresh}, ctx
                )

        def do_revoke(consent_id: str = consent_id) -> str:
            with transaction(factory) as session:
                consent = patient_consent(session, patient_id=patient_id, consent_id=consent_id)
                revoke_consent(session, consent=consent, by="patient", reason=None, now=utcnow())
                return "revoked"

        refreshed, revoked = _race(do_refresh, do_revoke)
        assert revoked == "revoked", revoked
        assert isinstance(refreshed, dict) or isinstance(refreshed, InvalidGrant), refreshed
        consent = _assert_consistent(factory, consent_id)
        assert consent.status == "revoked"
        if isinstance(refreshed, dict):
            # a token issued just before the revocation committed is no longer honoured
            with transaction(factory) as session:
                holder = session.get(Holder, "labo-test")
                answer = oauth.introspect_token(
                    session,
                    refreshed["access_token"],
                    holder=holder,
                    keystore=keystore,
                    issuer=settings.issuer,
                    now=utcnow(),
                )
            assert answer == {"active": False}
            with transaction(factory) as session:
                app = session.get(App, client_id)
                ctx = oauth.TokenContext(
                    settings=settings, keystore=keystore, now=utcnow(), authenticate=lambda s, f, app=app: app
                )
                with pytest.raises(InvalidGrant):
                    oauth.token_request(
                        session,
                        {"grant_type": "refresh_token", "refresh_token": refreshed["refresh_token"]},
                        ctx,
                    )

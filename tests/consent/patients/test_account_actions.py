"""The account page's actions: change the password, log out everywhere, download everything,
delete the account (GDPR art. 15, 17 and 20), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.audit.models import AuditEvent, AuditSalt
from broker.audit.tags import EventTag
from broker.catalog.models import App
from broker.consent.models import ConsentRecord, HolderLink
from broker.consent.patients.models import Patient, PatientSession
from broker.consent.service import LIST_SIZE, VALID, Grant, grant_consent, link_patient, status_list_values
from broker.db import make_engine, make_session_factory, transaction, utcnow
from broker.keys import KeyStore
from broker.settings import Settings
from tests.audit.conftest import HOLDERS, World, verify
from tests.audit.conftest import world as world  # a fixture, used by name
from tests.consent.patients.browser import PASSWORD, log_in, page_token, session_cookie, sign_up

NEW_PASSWORD = "un tout nouveau mot de passe assez long"
FORMS = ("/account/password", "/account/logout-everywhere", "/account/export", "/account/delete")


@pytest.fixture
def factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def keystore(client: Any, key_dir: Any) -> KeyStore:
    return KeyStore(key_dir).load()  # the broker's own, made when it started


def _signed_up(client: Any, world: World, name: str, *, consent: bool = True) -> str:
    """A patient with a real password, linked to both holders and consenting to the app."""
    email = f"{name}@example.org"
    assert sign_up(client, email=email, display_name=name.capitalize()).status_code == 303
    with transaction(world.factory) as session:
        patient = session.scalars(select(Patient).where(Patient.email_key == email)).one()
        now = utcnow()
        for holder in HOLDERS:
            link_patient(session, patient_id=patient.id, holder_id=holder, now=now)
        if consent:
            app = session.get(App, world.client_id)
            assert app is not None
            record = grant_consent(
                session, patient_id=patient.id, app=app,
                grants=[Grant("labo-test", "chronic_disease_followup", ("lab_results",))],
                days=30, charter_version="1.0", by=f"patient:{patient.id}", now=now,
            )
            world.consents[name] = record.id
        world.patients[name] = patient.id
    return patient.id


def _logged_in(client: Any, name: str, password: str = PASSWORD) -> str:
    client.cookies.clear()
    assert log_in(client, email=f"{name}@example.org", password=password).status_code == 303
    session_id = session_cookie(client)
    assert session_id
    return session_id


def _as(client: Any, session_id: str) -> None:
    client.cookies.clear()
    client.cookies.set("broker_session", session_id)


def _is_logged_in(client: Any, session_id: str) -> bool:
    _as(client, session_id)
    return bool(client.get("/account", follow_redirects=False).status_code == 200)


def _post(client: Any, path: str, **data: str) -> Any:
    token = page_token(client, "/account/delete" if path == "/account/delete" else "/account")
    return client.post(path, data={"csrf_token": token, **data}, follow_redirects=False)


def _export(client: Any) -> dict[str, Any]:
    answer = _post(client, "/account/export")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-disposition"].startswith("attachment;")
    assert answer.headers["cache-control"] == "no-store"
    body: dict[str, Any] = answer.json()
    return body


def _hash(db: sessionmaker[Session], patient_id: str) -> str | None:
    with db() as session:
        patient = session.get(Patient, patient_id)
        return patient.password_hash if patient else None


# -- CSRF ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", FORMS)
@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_every_form_refuses_a_missing_or_wrong_token(
    client: Any, world: World, path: str, token: str | None
) -> None:
    patient_id = _signed_up(client, world, "camille")
    session_id = _logged_in(client, "camille")
    before = _hash(world.factory, patient_id)
    data = {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "password": PASSWORD,
            "understood": "yes"}
    if token is not None:
        data["csrf_token"] = token
    answer = client.post(path, data=data, follow_redirects=False)
    assert answer.status_code == 403
    assert "application/json" not in answer.headers["content-type"]
    assert world.patients["camille"] not in answer.text
    assert _hash(world.factory, patient_id) == before
    assert _is_logged_in(client, session_id)


def test_the_account_page_has_the_four_forms_with_labels(client: Any, world: World) -> None:
    _signed_up(client, world, "camille")
    _logged_in(client, "camille")
    page = client.get("/account").text
    for path in FORMS[:3]:
        assert f'action="{path}"' in page
    assert 'href="/account/delete"' in page
    assert page.count('name="csrf_token"') == 4  # with the log-out form
    for field in ("current_password", "new_password"):
        assert f'<label for="{field}">' in page
    confirm = client.get("/account/delete").text
    assert '<label for="understood">' in confirm and '<label for="password">' in confirm
    assert "Tous vos accords sont retirés" in confirm
    client.cookies.set("broker_lang", "en")
    assert "Delete my account" in client.get("/account").text


# -- password -----------------------------------------------------------------------------------


def test_a_wrong_current_password_changes_nothing(client: Any, world: World) -> None:
    patient_id = _signed_up(client, world, "camille")
    other = _logged_in(client, "camille")
    this = _logged_in(client, "camille")
    before = _hash(world.factory, patient_id)
    answer = _post(client, "/account/password", current_password="pas le bon mot de passe", new_password=NEW_PASSWORD)
    assert answer.status_code == 400
    assert "Ce n'est pas votre mot de passe actuel." in answer.text
    assert _hash(world.factory, patient_id) == before
    assert _is_logged_in(client, other) and _is_logged_in(client, this)
    client.cookies.clear()
    assert log_in(client, email="camille@example.org", password=NEW_PASSWORD).status_code == 400


def test_a_new_password_follows_the_sign_up_rules(client: Any, world: World) -> None:
    patient_id = _signed_up(client, world, "camille")
    _logged_in(client, "camille")
    before = _hash(world.factory, patient_id)
    answer = _post(client, "/account/password", current_password=PASSWORD, new_password="trop court")
    assert answer.status_code == 400
    assert "au moins 15 caractères" in answer.text
    answer = _post(client, "/account/password", current_password=PASSWORD,
                   new_password="camille@example.orgcamille@example.org")
    assert answer.status_code == 400 and "votre adresse e-mail" in answer.text
    assert _hash(world.factory, patient_id) == before


def test_changing_the_password_logs_other_sessions_out(client: Any, world: World) -> None:
    patient_id = _signed_up(client, world, "camille")
    other = _logged_in(client, "camille")
    this = _logged_in(client, "camille")
    answer = _post(client, "/account/password", current_password=PASSWORD, new_password=NEW_PASSWORD)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/account?done=password_changed"
    stored = _hash(world.factory, patient_id)
    assert stored and stored.startswith("$argon2id$") and NEW_PASSWORD not in stored
    assert "Votre mot de passe est changé" in client.get("/account?done=password_changed").text
    assert not _is_logged_in(client, other)
    assert _is_logged_in(client, this)
    client.cookies.clear()
    assert log_in(client, email="camille@example.org", password=PASSWORD).status_code == 400
    client.cookies.clear()
    assert log_in(client, email="camille@example.org", password=NEW_PASSWORD).status_code == 303


# -- log out everywhere ---------------------------------------------------------------------------


def test_log_out_everywhere_ends_every_session(client: Any, world: World) -> None:
    _signed_up(client, world, "camille")
    _signed_up(client, world, "antoine", consent=False)
    bystander = _logged_in(client, "antoine")
    first = _logged_in(client, "camille")
    second = _logged_in(client, "camille")
    answer = _post(client, "/account/logout-everywhere")
    assert answer.status_code == 303 and answer.headers["location"] == "/login?logged_out=1"
    assert not _is_logged_in(client, first)
    assert not _is_logged_in(client, second)
    assert _is_logged_in(client, bystander)  # another patient's session is not touched
    with world.factory() as session:
        rows = session.scalars(
            select(PatientSession).where(PatientSession.patient_id == world.patients["camille"])
        ).all()
        assert len(rows) == 2 and all(row.revoked_at is not None for row in rows)


# -- export -------------------------------------------------------------------------------------


def test_the_export_holds_my_consents_and_events_and_nothing_of_another(client: Any, world: World) -> None:
    mine = _signed_up(client, world, "camille")
    theirs = _signed_up(client, world, "antoine")
    _logged_in(client, "camille")
    answer = _post(client, "/account/export")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.headers["content-disposition"].startswith('attachment; filename="mes-donnees-')
    export = json.loads(answer.content)
    assert export["format"] == "broker-patient-export/1"
    assert export["account"]["id"] == mine and export["account"]["email"] == "camille@example.org"
    assert "password_hash" not in export["account"]
    assert "$argon2" not in answer.text
    assert sorted(link["holder"] for link in export["links"]) == sorted(HOLDERS)
    assert all(link["handle"] and link["created_at"] for link in export["links"])
    [consent] = export["consents"]
    assert consent["id"] == world.consents["camille"] and consent["status"] == "active"
    assert [step["action"] for step in consent["history"]] == ["granted"]
    audit = export["audit"]
    assert audit["format"] == "broker-audit-export/1" and audit["patient_id"] == mine
    tags = [entry["tag"] for entry in audit["entries"]]
    assert audit["pending"] == []  # placed in the tree before the export, with proofs
    assert EventTag.CONSENT_GRANTED in tags and tags.count(EventTag.LINK_CREATED) == 2
    assert all(entry["patient"] == mine for entry in audit["entries"])
    assert theirs not in answer.text and world.consents["antoine"] not in answer.text
    assert "antoine" not in answer.text.lower()


def test_the_export_needs_a_logged_in_patient(client: Any, world: World) -> None:
    token = page_token(client, "/login")  # a pre-session token: valid, but nobody is logged in
    answer = client.post("/account/export", data={"csrf_token": token}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=")


# -- deletion -----------------------------------------------------------------------------------


def test_deletion_needs_the_box_ticked_and_the_password(client: Any, world: World) -> None:
    patient_id = _signed_up(client, world, "camille")
    session_id = _logged_in(client, "camille")
    answer = _post(client, "/account/delete", password=PASSWORD)
    assert answer.status_code == 400 and "Cochez la case pour confirmer." in answer.text
    answer = _post(client, "/account/delete", understood="yes", password="pas le bon mot de passe")
    assert answer.status_code == 400 and "Ce n'est pas votre mot de passe actuel." in answer.text
    with world.factory() as session:
        assert session.get(Patient, patient_id) is not None
        consent = session.get(ConsentRecord, world.consents["camille"])
        assert consent is not None and consent.status == "active"
    assert _is_logged_in(client, session_id)


def test_deleting_the_account_revokes_erases_and_removes(
    client: Any, world: World, keystore: KeyStore, settings: Settings
) -> None:
    mine = _signed_up(client, world, "camille")
    _signed_up(client, world, "antoine")
    _logged_in(client, "antoine")
    theirs_before = _export(client)
    other_device = _logged_in(client, "camille")
    _logged_in(client, "camille")
    assert _export(client)["audit"]["entries"]  # camille's events are in the tree already
    with world.factory() as session:
        consent = session.get(ConsentRecord, world.consents["camille"])
        assert consent is not None
        entry_id = consent.status_entry_id

    answer = _post(client, "/account/delete", understood="yes", password=PASSWORD)
    assert answer.status_code == 303 and answer.headers["location"] == "/account/deleted"
    assert not session_cookie(client)
    done = client.get("/account/deleted")
    assert done.status_code == 200 and "Votre compte est supprimé" in done.text

    with world.factory() as session:
        # Revoked first: tokens issued under the consent are refused from now on.
        values = status_list_values(session, entry_id // LIST_SIZE, utcnow())
        assert values.get(entry_id % LIST_SIZE, VALID) != VALID
        # Then unlinked, erased, removed.
        assert session.get(Patient, mine) is None
        assert session.scalars(select(PatientSession).where(PatientSession.patient_id == mine)).all() == []
        assert session.scalars(select(HolderLink).where(HolderLink.patient_id == mine)).all() == []
        assert session.scalars(select(ConsentRecord).where(ConsentRecord.patient_id == mine)).all() == []
        assert session.get(AuditSalt, mine) is None
        assert session.scalars(select(AuditEvent).where(AuditEvent.patient_id == mine)).all() == []
        # The revocation and the unlinks were placed in the log before the erasure: their
        # leaves stay, their readable details are gone.
        erased = session.scalars(select(AuditEvent).where(AuditEvent.erased_at.is_not(None))).all()
        erased_tags = [event.tag for event in erased]
        assert EventTag.CONSENT_REVOKED in erased_tags and erased_tags.count(EventTag.LINK_REMOVED) == 2
        assert all(event.details is None and event.actor is None for event in erased)
        assert all(event.leaf_index is not None for event in erased)
    assert verify(world.factory, keystore, settings).ok

    assert not _is_logged_in(client, other_device)
    client.cookies.clear()
    assert log_in(client, email="camille@example.org").status_code == 400

    _logged_in(client, "antoine")
    theirs_after = _export(client)
    for part in ("account", "links", "consents"):
        assert theirs_after[part] == theirs_before[part]

    def facts(export: dict[str, Any]) -> list[tuple[Any, ...]]:
        entries = export["audit"]["entries"]
        return [(e["id"], e["leaf_index"], e["tag"], e["details"], e["commitment"]) for e in entries]

    assert facts(theirs_after) == facts(theirs_before)


# -- wrong passwords on the account forms are throttled like the log-in (SECURITY W7) ---------


@pytest.mark.parametrize("path", ["/account/password", "/account/delete"])
def test_wrong_passwords_on_account_forms_are_throttled(client: Any, world: World, path: str) -> None:
    patient_id = _signed_up(client, world, "camille")
    _logged_in(client, "camille")
    before = _hash(world.factory, patient_id)
    field = "current_password" if path == "/account/password" else "password"

    def attempt(password: str) -> Any:
        return _post(client, path, **{field: password, "new_password": NEW_PASSWORD, "understood": "yes"})

    for _ in range(5):  # the log-in's free failures
        wrong = attempt("not my password at all, sorry")
        assert wrong.status_code == 400 and "Ce n'est pas votre mot de passe actuel." in wrong.text
    blocked = attempt(PASSWORD)  # even the right one waits now
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) > 0
    assert "Trop d'essais de mot de passe" in blocked.text and "réessayez dans 1 minute" in blocked.text
    assert _hash(world.factory, patient_id) == before
    with world.factory() as session:
        assert session.get(Patient, patient_id) is not None  # not deleted
    client.cookies.set("broker_lang", "en")
    assert "Too many password attempts" in attempt(PASSWORD).text
    # The same counter as the log-in page: guessing here does not buy more guesses there.
    client.cookies.clear()
    assert log_in(client, email="camille@example.org").status_code == 429


def test_a_right_password_clears_the_account_forms_count(client: Any, world: World) -> None:
    patient_id = _signed_up(client, world, "camille")
    _logged_in(client, "camille")
    before = _hash(world.factory, patient_id)
    for _ in range(4):
        assert _post(client, "/account/delete", password="wrong password here").status_code == 400
    answer = _post(client, "/account/password", current_password=PASSWORD, new_password=NEW_PASSWORD)
    assert answer.status_code == 303
    assert _hash(world.factory, patient_id) != before
    for _ in range(4):  # counted from zero again
        assert _post(client, "/account/delete", password="wrong password here").status_code == 400

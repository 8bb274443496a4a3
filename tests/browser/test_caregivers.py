"""Caregivers in Chromium, in French and in English: a patient invites a caregiver, who
accepts, switches to her and withdraws one of her consents; her history marks that act as
the caregiver's; an attempt beyond the rights she gave and one after she stopped the help are
refused and appear in her history. Every page passes axe-core, fits a 360-pixel screen and is
photographed into docs/screenshots/."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.audit.history import TIMEZONE
from broker.audit.models import AuditEvent
from broker.audit.tags import EventTag
from broker.catalog import repository
from broker.catalog.schemas import fold
from broker.consent.models import ConsentRecord
from broker.consent.patients.models import Patient
from broker.consent.service import Grant, grant_consent, link_patient
from broker.db import make_engine, make_session_factory, transaction, utcnow
from broker.demo import DEMO_APP_NAME, DEMO_HOLDER_ID
from tests.browser.conftest import Broker
from tests.browser.test_catalog_pages import check_page, shoot

PASSWORD = "une longue phrase de passe pour les aidants"
TEXTS = {
    "fr": {
        "signup": "Créer mon compte",
        "login": "Se connecter",
        "caregivers": "Mes proches aidants",
        "send": "Envoyer l'invitation",
        "revoke_rights": "Voir mes accords et les retirer",
        "view_rights": "Voir mes accords seulement",
        "accept": "Accepter d'aider {name}",
        "act": "Agir pour {name}",
        "acting": "Vous agissez pour {name}.",
        "withdraw": f"Retirer l'accord de {{name}} à {DEMO_APP_NAME}",
        "done": "C'est fait : l'accord est retiré.",
        "marked": f"{{caregiver}}, qui vous aide, a retiré pour vous votre accord à {DEMO_APP_NAME}",
        "stop": "Arrêter l'aide de {name}",
        "refused": "Ce n'est pas possible",
        "beyond": "{caregiver} a essayé de faire pour vous plus que ce que vous avez permis",
        "after": "{caregiver} a essayé d'agir pour vous alors que son aide était terminée",
    },
    "en": {
        "signup": "Create my account",
        "login": "Log in",
        "caregivers": "My caregivers",
        "send": "Send the invitation",
        "revoke_rights": "See my consents and withdraw them",
        "view_rights": "See my consents only",
        "accept": "Agree to help {name}",
        "act": "Act for {name}",
        "acting": "You are acting for {name}.",
        "withdraw": f"Withdraw {{name}}'s consent to {DEMO_APP_NAME}",
        "done": "Done: the consent is withdrawn.",
        "marked": f"{{caregiver}}, who helps you, withdrew your consent to {DEMO_APP_NAME}",
        "stop": "Stop {name}'s help",
        "refused": "This is not possible",
        "beyond": "{caregiver} tried to do more for you than you allowed",
        "after": "{caregiver} tried to act for you after their help had ended",
    },
}


def _sign_up(page: Any, broker: Broker, email: str, name: str, texts: dict[str, str]) -> None:
    page.goto(f"{broker.url}/signup")
    page.locator("#email").fill(email)
    page.locator("#display_name").fill(name)
    page.locator("#password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name=texts["signup"]).click()
    page.locator("#email").fill(email)
    page.locator("#password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name=texts["login"], exact=True).click()


@contextmanager
def _database(broker: Broker) -> Iterator[sessionmaker[Session]]:
    """The broker's own database, opened from the test (the broker process keeps running)."""
    engine = make_engine(broker.env["BROKER_DATABASE_URL"])
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def _with_a_consent(broker: Broker, email: str) -> str:
    """The patient is linked to the demo laboratory and has consented to the demo app (what
    the consent journey, tested elsewhere, would have left)."""
    with _database(broker) as factory, transaction(factory) as session:
        patient = session.scalars(select(Patient).where(Patient.email_key == email)).one()
        app = repository.app_by_name_key(session, fold(DEMO_APP_NAME))
        assert app is not None
        now = utcnow()
        link_patient(session, patient_id=patient.id, holder_id=DEMO_HOLDER_ID, now=now)
        consent = grant_consent(
            session,
            patient_id=patient.id,
            app=app,
            grants=[Grant(DEMO_HOLDER_ID, "chronic_disease_followup", ("lab_results",))],
            days=30,
            charter_version="test",
            by=f"patient:{patient.id}",
            now=now,
        )
        return consent.id


def _recorded(broker: Broker, consent_id: str) -> tuple[str, list[str]]:
    with _database(broker) as factory, factory() as session:
        consent = session.get(ConsentRecord, consent_id)
        assert consent is not None
        reasons = [
            (event.details or {}).get("reason", "")
            for event in session.scalars(
                select(AuditEvent)
                .where(
                    AuditEvent.patient_id == consent.patient_id,
                    AuditEvent.tag == EventTag.CAREGIVER_REFUSED.value,
                )
                .order_by(AuditEvent.id)
            )
        ]
        return consent.status, reasons


def _invite(page: Any, broker: Broker, email: str, rights: str, texts: dict[str, str]) -> None:
    page.goto(f"{broker.url}/my/caregivers")
    page.locator("#invite-email").fill(email)
    page.get_by_label(texts[rights], exact=True).check()
    ends_on = (utcnow().astimezone(TIMEZONE).date() + timedelta(days=20)).isoformat()
    page.locator("#invite-ends").fill(ends_on)
    with page.expect_navigation():
        page.get_by_role("button", name=texts["send"]).click()
    assert page.locator(".notice").count() == 1, page.locator("main").inner_text()


def _accept(page: Any, broker: Broker, patient_name: str, texts: dict[str, str], shot: str | None) -> None:
    page.goto(f"{broker.url}/my/caregivers")
    if shot:
        shoot(page, shot)
    with page.expect_navigation():
        page.get_by_role("button", name=texts["accept"].format(name=patient_name)).click()


def _main(page: Any) -> str:
    return " ".join(page.locator("main").inner_text().split())


@pytest.mark.parametrize("language", ["fr", "en"])
def test_a_caregiver_helps_within_the_limits_set(
    broker: Broker, new_page: Any, axe: str, language: str
) -> None:
    texts = TEXTS[language]
    patient_email, patient_name = f"patiente-{language}@example.org", "Élise Fournier"
    helper_email, helper_name = f"aidant-{language}@example.org", "Paul Fournier"
    patient, helper = new_page(language), new_page(language)
    _sign_up(patient, broker, patient_email, patient_name, texts)
    _sign_up(helper, broker, helper_email, helper_name, texts)
    consent_id = _with_a_consent(broker, patient_email)

    # She invites him: he may see her consents and withdraw them.
    patient.goto(f"{broker.url}/my/caregivers")
    assert patient.get_by_role("link", name=texts["caregivers"]).count() == 1
    check_page(patient, axe, language)
    shoot(patient, f"caregivers-invite-{language}")
    _invite(patient, broker, helper_email, "revoke_rights", texts)
    check_page(patient, axe, language)

    # He accepts, switches to her, and withdraws her consent (the confirmation says what follows).
    _accept(helper, broker, patient_name, texts, f"caregivers-invitation-{language}")
    check_page(helper, axe, language)
    shoot(helper, f"caregivers-helping-list-{language}")
    with helper.expect_navigation():
        helper.get_by_role("link", name=texts["act"].format(name=patient_name)).click()
    assert texts["acting"].format(name=patient_name) in _main(helper)
    check_page(helper, axe, language)
    shoot(helper, f"caregivers-acting-for-{language}")
    with helper.expect_navigation():
        helper.get_by_role("button", name=texts["withdraw"].format(name=patient_name)).click()
    assert texts["done"] in _main(helper)
    assert texts["acting"].format(name=patient_name) in _main(helper)  # still clear for whom
    assert _recorded(broker, consent_id) == ("revoked", [])

    # Her history marks the act as his.
    patient.goto(f"{broker.url}/my/history")
    assert texts["marked"].format(caregiver=helper_name) in _main(patient)
    check_page(patient, axe, language)
    shoot(patient, f"caregivers-history-{language}")
    patient.goto(f"{broker.url}/my/caregivers")
    check_page(patient, axe, language)
    shoot(patient, f"caregivers-helpers-{language}")

    # She now lets him only look. He tries to withdraw anyway, with a form of his own making:
    # refused, nothing changed, recorded.
    with patient.expect_navigation():
        patient.get_by_role("button", name=texts["stop"].format(name=helper_name)).click()
    _invite(patient, broker, helper_email, "view_rights", texts)
    _accept(helper, broker, patient_name, texts, None)
    with helper.expect_navigation():
        helper.get_by_role("link", name=texts["act"].format(name=patient_name)).click()
    assert helper.locator("form[action$='/revoke']").count() == 0
    delegation_path = helper.url.removeprefix(broker.url)
    _recorded_before = _recorded(broker, consent_id)
    token = _csrf(helper, broker)
    # The submission navigates: wait for that navigation itself, not for the current page.
    with helper.expect_navigation():
        helper.evaluate(
            """([action, token]) => {
                const form = document.createElement("form");
                form.method = "post";
                form.action = action;
                const input = document.createElement("input");
                input.type = "hidden"; input.name = "csrf_token"; input.value = token;
                form.appendChild(input);
                document.body.appendChild(form);
                form.submit();
            }""",
            [f"{delegation_path}/consents/{consent_id}/revoke", token],
        )
    assert helper.locator("h1").inner_text() == texts["refused"]
    check_page(helper, axe, language)
    shoot(helper, f"caregivers-refused-{language}")
    assert _recorded(broker, consent_id) == ("revoked", [*_recorded_before[1], "not_allowed"])

    # She stops his help; his next look is refused and recorded too.
    patient.goto(f"{broker.url}/my/caregivers")
    with patient.expect_navigation():
        patient.get_by_role("button", name=texts["stop"].format(name=helper_name)).click()
    response = helper.goto(f"{broker.url}{delegation_path}")
    assert response is not None and response.status == 403
    assert re.search(patient_name, _main(helper))
    assert _recorded(broker, consent_id)[1][-1] == "withdrawn"
    patient.goto(f"{broker.url}/my/history")
    history = _main(patient)
    assert texts["beyond"].format(caregiver=helper_name) in history
    assert texts["after"].format(caregiver=helper_name) in history


def _csrf(page: Any, broker: Broker) -> str:
    """The CSRF token of the caregiver's own session, as any form of his pages carries it."""
    other = page.context.new_page()
    try:
        other.goto(f"{broker.url}/my/caregivers")
        return str(other.locator("input[name=csrf_token]").first.get_attribute("value"))
    finally:
        other.close()


CONSENT_TEXTS = {
    "fr": {"for": "Répondre pour {name}", "accept": "J'accepte"},
    "en": {"for": "Answer for {name}", "accept": "I agree"},
}


def _demo_app_id(broker: Broker) -> str:
    with _database(broker) as factory, factory() as session:
        app = repository.app_by_name_key(session, fold(DEMO_APP_NAME))
        assert app is not None
        return app.client_id


def _last_grant_actor(broker: Broker, consent_id: str) -> str | None:
    with _database(broker) as factory, factory() as session:
        consent = session.get(ConsentRecord, consent_id)
        assert consent is not None
        return session.scalars(
            select(AuditEvent.actor)
            .where(
                AuditEvent.patient_id == consent.patient_id,
                AuditEvent.tag.in_([EventTag.CONSENT_GRANTED.value, EventTag.CONSENT_CHANGED.value]),
            )
            .order_by(AuditEvent.id.desc())
        ).first()


@pytest.mark.parametrize("language", ["fr", "en"])
def test_a_caregiver_answers_an_apps_request_for_the_person_helped(
    broker: Broker, new_page: Any, axe: str, language: str
) -> None:
    texts, words = TEXTS[language], CONSENT_TEXTS[language]
    patient_email, patient_name = f"patiente2-{language}@example.org", "Jeanne Morel"
    helper_email, helper_name = f"aidant2-{language}@example.org", "Luc Morel"
    patient, helper = new_page(language), new_page(language)
    _sign_up(patient, broker, patient_email, patient_name, texts)
    _sign_up(helper, broker, helper_email, helper_name, texts)
    consent_id = _with_a_consent(broker, patient_email)

    # She lets him consent for her, to laboratory results from the demo laboratory only.
    patient.goto(f"{broker.url}/my/caregivers")
    patient.locator("#invite-email").fill(helper_email)
    patient.locator("#rights-grant").check()
    patient.locator("input[name=categories][value=lab_results]").check()
    patient.locator(f"input[name=holders][value={DEMO_HOLDER_ID}]").check()
    with patient.expect_navigation():
        patient.get_by_role("button", name=texts["send"]).click()
    _accept(helper, broker, patient_name, texts, None)

    # The app asks; he answers for her.
    client_id = _demo_app_id(broker)
    query = (
        f"response_type=code&client_id={client_id}&redirect_uri=http%3A%2F%2F127.0.0.1%3A8001%2Fcallback"
        "&state=st-aidant&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256"
    )
    helper.goto(f"{broker.url}/authorize?{query}")
    with helper.expect_navigation():
        helper.get_by_role("link", name=words["for"].format(name=patient_name)).click()
    assert texts["acting"].format(name=patient_name) in _main(helper)
    check_page(helper, axe, language)
    shoot(helper, f"caregivers-consent-for-{language}")
    # The app is not running here: the browser's request to its address is what counts.
    with helper.expect_request(lambda r: r.url.startswith("http://127.0.0.1:8001/")) as sent:
        helper.get_by_role("button", name=words["accept"], exact=True).click()
    assert sent.value.url.startswith("http://127.0.0.1:8001/callback?code="), sent.value.url
    with _database(broker) as factory, factory() as session:
        helper_id = session.scalars(select(Patient.id).where(Patient.email_key == helper_email)).one()
    assert _last_grant_actor(broker, consent_id) == f"caregiver:{helper_id}"

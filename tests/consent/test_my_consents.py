"""«Mes accords»: what each app may read where, since and until when, its last read (from the
holders' access receipts), changing the end date within what the app declared, reminders of
consents that end soon, and the revoke page that says what will happen. SQLite and PostgreSQL.
"""

from __future__ import annotations

import html as html_text
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from broker.audit.history import TIMEZONE
from broker.audit.models import AuditEvent
from broker.audit.tags import EventTag
from broker.catalog.models import App
from broker.consent.models import ConsentRecord, RefreshToken
from broker.consent.service import (
    EXPIRY_REMINDER_DAYS,
    INVALID,
    MAX_CONSENT_DAYS,
    VALID,
    ConsentEndRefused,
    change_consent_end,
    effective_status,
    longest_consent_days,
)
from broker.db import make_engine, make_session_factory, transaction, utcnow
from broker.settings import Settings
from tests.audit.conftest import World
from tests.audit.conftest import world as world  # a fixture, used by name
from tests.consent.patients.browser import form_token

JWT = {"Content-Type": "application/jwt"}


@pytest.fixture
def factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _consent(world: World, name: str) -> ConsentRecord:
    with world.factory() as session:
        consent = session.get(ConsentRecord, world.consents[name])
        assert consent is not None
        session.expunge(consent)
        return consent


def _changed_events(world: World, name: str) -> list[AuditEvent]:
    with world.factory() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(
                    AuditEvent.patient_id == world.patients[name],
                    AuditEvent.tag == EventTag.CONSENT_CHANGED.value,
                )
            )
        )


def _post_end(client: Any, consent_id: str, ends_on: str) -> Any:
    data = {"ends_on": ends_on, "csrf_token": form_token(client.get("/my/consents").text)}
    return client.post(f"/my/consents/{consent_id}/end", data=data, follow_redirects=False)


def _today() -> date:
    return utcnow().astimezone(TIMEZONE).date()


def _text(html: str) -> str:
    return html_text.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


def test_the_page_says_what_where_since_until_and_the_last_read(client: Any, world: World) -> None:
    world.patient("gaelle")
    world.log_in(client, "gaelle")
    page = _text(client.get("/my/consents").text)
    assert "Suivi Glycémie" in page
    assert "chez labo-test : Résultats d'analyses" in page, page
    assert "Accord donné le" in page and "actif jusqu'au" in page
    assert "Dernière lecture : aucune pour l'instant." in page

    # The laboratory reports a release: it becomes the app's last read, in the patient's words.
    released = world.receipt("gaelle")
    assert client.post("/receipts", content=released, headers=JWT).status_code == 201
    page = _text(client.get("/my/consents").text)
    assert "Dernière lecture : le" in page and "aucune pour l'instant" not in page
    client.cookies.set("broker_lang", "en")
    page = _text(client.get("/my/consents").text)
    assert "Last read: on" in page and "at labo-test: " in page and "What the app can read:" in page


def test_a_receipt_for_another_patient_is_not_her_last_read(client: Any, world: World) -> None:
    world.patient("gaelle")
    world.patient("bruno")
    assert client.post("/receipts", content=world.receipt("bruno"), headers=JWT).status_code == 201
    world.log_in(client, "gaelle")
    assert "Dernière lecture : aucune pour l'instant." in _text(client.get("/my/consents").text)


def test_shortening_the_consent_is_recorded_and_reaches_the_status(client: Any, world: World) -> None:
    world.patient("gaelle")
    world.log_in(client, "gaelle")
    consent_id = world.consents["gaelle"]
    before = _consent(world, "gaelle")
    ends_on = _today() + timedelta(days=3)
    answer = _post_end(client, consent_id, ends_on.isoformat())
    assert answer.status_code == 303 and answer.headers["location"] == "/my/consents?done=end_changed"
    after = _consent(world, "gaelle")
    assert after.expires_at < before.expires_at
    assert after.expires_at.astimezone(TIMEZONE).date() == ends_on
    assert after.expires_at.astimezone(TIMEZONE).hour == 23  # the whole of the chosen day
    events = _changed_events(world, "gaelle")
    assert len(events) == 1 and events[0].actor == f"patient:{world.patients['gaelle']}"
    assert events[0].details is not None
    assert datetime.fromisoformat(events[0].details["expires_at"]) == after.expires_at
    page = client.get(answer.headers["location"]).text
    assert "La date de fin de votre accord est changée." in page
    assert f'value="{ends_on.isoformat()}"' in page
    # The status its tokens carry follows the new end (the status list reads expires_at).
    with world.factory() as session:
        app = session.get(App, world.client_id)
        assert app is not None
        assert effective_status(after, app, after.expires_at - timedelta(seconds=1)) == VALID
        assert effective_status(after, app, after.expires_at + timedelta(seconds=1)) == INVALID
    # The history tells it in plain words.
    history = _text(client.get("/my/history").text)
    assert "Vous avez modifié votre accord à Suivi Glycémie" in history


def test_extending_is_allowed_up_to_what_the_app_declares(client: Any, world: World) -> None:
    world.patient("gaelle")
    world.log_in(client, "gaelle")
    consent_id = world.consents["gaelle"]
    with world.factory() as session:
        app = session.get(App, world.client_id)
        assert app is not None
        longest = longest_consent_days(app)
    # The demo manifest keeps data 730 days: the broker's own ceiling of a year applies.
    assert longest == MAX_CONSENT_DAYS
    now = utcnow()
    last_day = (now + timedelta(days=longest)).astimezone(TIMEZONE).date()
    page = client.get("/my/consents").text
    assert f'max="{last_day.isoformat()}"' in page and f'min="{_today().isoformat()}"' in page
    assert _post_end(client, consent_id, last_day.isoformat()).status_code == 303
    extended = _consent(world, "gaelle")
    assert extended.expires_at <= utcnow() + timedelta(days=longest)
    assert extended.expires_at > now + timedelta(days=longest - 1)


@pytest.mark.parametrize(
    ("ends_on", "code", "message"),
    [
        ("past", "past", "Cette date est déjà passée."),
        ("beyond", "beyond", "Cette application ne permet pas un accord aussi long"),
        ("31/02/2026", "date", "Saisissez une date"),
        ("", "date", "Saisissez une date"),
    ],
)
def test_a_refused_end_date_changes_nothing_and_says_why(
    client: Any, world: World, ends_on: str, code: str, message: str
) -> None:
    world.patient("gaelle")
    world.log_in(client, "gaelle")
    consent_id = world.consents["gaelle"]
    before = _consent(world, "gaelle")
    value = {
        "past": (_today() - timedelta(days=1)).isoformat(),
        "beyond": (_today() + timedelta(days=MAX_CONSENT_DAYS + 2)).isoformat(),
    }.get(ends_on, ends_on)
    answer = _post_end(client, consent_id, value)
    assert answer.status_code == 400
    assert message in answer.text
    assert 'aria-invalid="true"' in answer.text
    assert _consent(world, "gaelle").expires_at == before.expires_at
    assert _changed_events(world, "gaelle") == []
    client.cookies.set("broker_lang", "en")
    english = _post_end(client, consent_id, value)
    assert english.status_code == 400 and message not in english.text


def test_an_ended_consent_cannot_be_moved_and_another_patient_s_is_not_found(
    client: Any, world: World
) -> None:
    world.patient("gaelle")
    world.patient("bruno")
    world.log_in(client, "gaelle")
    later = (_today() + timedelta(days=5)).isoformat()
    # Bruno's consent: not found for Gaëlle, and untouched.
    bruno_before = _consent(world, "bruno")
    answer = _post_end(client, world.consents["bruno"], later)
    assert answer.status_code == 404
    assert _consent(world, "bruno").expires_at == bruno_before.expires_at
    # Her own, once withdrawn: refused in words.
    token = form_token(client.get(f"/my/consents/{world.consents['gaelle']}/revoke").text)
    revoked = client.post(
        f"/my/consents/{world.consents['gaelle']}/revoke", data={"csrf_token": token}, follow_redirects=False
    )
    assert revoked.status_code == 303
    with world.factory() as session:
        app = session.get(App, world.client_id)
        consent = session.get(ConsentRecord, world.consents["gaelle"])
        assert app is not None and consent is not None
        with pytest.raises(ConsentEndRefused) as refused:
            change_consent_end(
                session, consent=consent, app=app, ends_on=_today(), by="patient:x", now=utcnow()
            )
        assert refused.value.code == "ended"


def test_shortening_cuts_the_refresh_tokens_to_the_new_end(world: World) -> None:
    world.patient("gaelle")
    now = utcnow()
    with transaction(world.factory) as session:
        session.add(
            RefreshToken(
                token_hash="h" * 64, family_id="fam", consent_id=world.consents["gaelle"],
                client_id=world.client_id, created_at=now, expires_at=now + timedelta(days=20),
            )
        )
    with transaction(world.factory) as session:
        consent = session.get(ConsentRecord, world.consents["gaelle"])
        app = session.get(App, world.client_id)
        assert consent is not None and app is not None
        changed = change_consent_end(
            session, consent=consent, app=app, ends_on=_today() + timedelta(days=2), by="patient:x", now=now
        )
        new_end = changed.expires_at
    with world.factory() as session:
        token = session.get(RefreshToken, "h" * 64)
        assert token is not None and token.expires_at == new_end


def test_consents_that_end_soon_are_recalled_at_the_top_and_on_their_row(client: Any, world: World) -> None:
    world.patient("gaelle")
    world.log_in(client, "gaelle")
    page = client.get("/my/consents").text
    assert 'class="reminder"' not in page and "se termine bientôt" not in page  # 30 days left
    soon = utcnow() + timedelta(days=EXPIRY_REMINDER_DAYS - 4)
    with transaction(world.factory) as session:
        session.execute(
            update(ConsentRecord).where(ConsentRecord.id == world.consents["gaelle"]).values(expires_at=soon)
        )
    page = client.get("/my/consents").text
    top, rows = page.split('<ul class="consents">', 1)
    assert 'class="reminder"' in top
    assert f"moins de {EXPIRY_REMINDER_DAYS} jours" in _text(top)
    assert f'href="#accord-{world.consents["gaelle"]}"' in top
    assert "Cet accord se termine bientôt" in rows
    client.cookies.set("broker_lang", "en")
    assert "This consent ends soon" in client.get("/my/consents").text


def test_the_revoke_page_says_what_will_happen_and_cannot_be_framed(client: Any, world: World) -> None:
    world.patient("gaelle")
    world.log_in(client, "gaelle")
    consent_id = world.consents["gaelle"]
    listing = client.get("/my/consents").text
    assert f'href="/my/consents/{consent_id}/revoke"' in listing
    assert f'action="/my/consents/{consent_id}/revoke"' not in listing  # one more step, on purpose
    confirm = client.get(f"/my/consents/{consent_id}/revoke")
    assert confirm.status_code == 200
    for page in (confirm, client.get("/my/consents")):
        assert page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    text = _text(confirm.text)
    assert "Voici ce qui se passera si vous confirmez" in text
    assert "ne pourra plus rien lire de vos données chez labo-test, dès maintenant" in text
    assert "reçu signé du retrait" in text
    assert _consent(world, "gaelle").status == "active"  # looking at it changes nothing
    answer = client.post(
        f"/my/consents/{consent_id}/revoke",
        data={"csrf_token": form_token(confirm.text)},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/my/consents?done=revoked"
    assert _consent(world, "gaelle").status == "revoked"
    assert "Cet accord est déjà retiré ou terminé" in client.get(f"/my/consents/{consent_id}/revoke").text


def test_another_patient_s_revoke_page_is_not_found(client: Any, world: World) -> None:
    world.patient("gaelle")
    world.patient("bruno")
    world.log_in(client, "gaelle")
    answer = client.get(f"/my/consents/{world.consents['bruno']}/revoke")
    assert answer.status_code == 404 and "Suivi Glycémie" not in answer.text


@pytest.mark.parametrize("token", [None, "wrong-token"])
@pytest.mark.parametrize("form", ["end", "revoke", "link", "unlink"])
def test_every_consent_form_refuses_a_missing_or_wrong_token(
    client: Any, world: World, form: str, token: str | None
) -> None:
    """SECURITY W4: a forged submission is refused with a readable page and changes nothing."""
    world.patient("gaelle")
    world.log_in(client, "gaelle")
    consent_id = world.consents["gaelle"]
    path = {
        "end": f"/my/consents/{consent_id}/end",
        "revoke": f"/my/consents/{consent_id}/revoke",
        "link": "/my/sources/labo-test/link",
        "unlink": "/my/sources/labo-test/unlink",
    }[form]
    before = _consent(world, "gaelle")
    data = {"ends_on": (_today() + timedelta(days=2)).isoformat()}
    if token is not None:
        data["csrf_token"] = token
    answer = client.post(path, data=data, follow_redirects=False)
    assert answer.status_code == 403
    assert "text/html" in answer.headers["content-type"]
    after = _consent(world, "gaelle")
    assert (after.status, after.expires_at) == (before.status, before.expires_at)
    assert "/my/sources/labo-test/unlink" in client.get("/my/sources").text  # still linked


def test_no_access_token_outlives_a_shortened_consent(settings: Settings) -> None:
    from broker.consent.oauth import ConsentFacts, TokenContext, _token_lifetime

    now = utcnow()

    def lifetime(ends_in: timedelta) -> int:
        consent = ConsentFacts("cns_x", "p", "c", [], "active", now + ends_in, 1)
        context = TokenContext(settings=settings, keystore=None, now=now, authenticate=None)  # type: ignore[arg-type]
        return _token_lifetime(context, consent)

    assert lifetime(timedelta(days=3)) == settings.token_lifetime
    assert lifetime(timedelta(seconds=42)) == 42

"""Caregivers on SQLite and PostgreSQL: invitation, answer, acting for someone, withdrawal,
limits, refusals recorded, the helped patient's history, export and deletion."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from broker.audit.history import TIMEZONE
from broker.audit.models import AuditEvent
from broker.audit.tags import EventTag
from broker.catalog.models import App
from broker.consent.caregivers import service
from broker.consent.caregivers.models import Delegation
from broker.consent.models import ConsentRecord
from broker.consent.patients.models import Patient
from broker.consent.service import Grant
from broker.db import transaction, utcnow
from tests.audit.conftest import World
from tests.audit.conftest import factory as factory  # fixtures, used by name
from tests.audit.conftest import world as world
from tests.consent.patients.browser import form_token


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&#39;", "'")


def _day(days: int) -> str:
    return (utcnow().astimezone(TIMEZONE).date() + timedelta(days=days)).isoformat()


def _post(client: Any, page: str, path: str, data: dict[str, Any] | None = None) -> Any:
    token = form_token(client.get(page).text)
    return client.post(path, data={"csrf_token": token, **(data or {})}, follow_redirects=False)


def _invite(client: Any, email: str, rights: str = "revoke", **more: Any) -> Any:
    data = {"email": email, "rights": rights, "ends_on": _day(10), **more}
    return _post(client, "/my/caregivers", "/my/caregivers/invite", data)


def _delegations(world: World) -> list[Delegation]:
    with world.factory() as session:
        return list(session.scalars(select(Delegation).order_by(Delegation.created_at)))


def _events(world: World, patient: str, tag: EventTag) -> list[AuditEvent]:
    with world.factory() as session:
        return list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.patient_id == world.patients[patient], AuditEvent.tag == tag.value)
                .order_by(AuditEvent.id)
            )
        )


def _consent_status(world: World, name: str) -> str:
    with world.factory() as session:
        consent = session.get(ConsentRecord, world.consents[name])
        assert consent is not None
        return consent.status


def _helping(client: Any, world: World, alice_rights: str = "revoke") -> str:
    """Alice invites Bruno with ``alice_rights``; Bruno accepts. Returns the delegation id."""
    world.patient("alice")
    world.patient("bruno")
    world.log_in(client, "alice")
    answer = _invite(client, "Bruno@Example.org", alice_rights)
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/my/caregivers?done=invited"
    (delegation,) = _delegations(world)
    world.log_in(client, "bruno")
    assert "Une invitation vous attend : alice vous demande" in _text(client.get("/account").text)
    page = _text(client.get("/my/caregivers").text)
    assert "alice vous demande de l'aider" in page
    answer = _post(client, "/my/caregivers", f"/my/caregivers/{delegation.id}/accept")
    assert answer.status_code == 303, answer.text
    return delegation.id


def test_a_caregiver_revokes_for_the_patient_and_the_history_names_them(client: Any, world: World) -> None:
    delegation_id = _helping(client, world)
    page = _text(client.get("/my/caregivers").text)
    assert "Les personnes que j'aide" in page and "Agir pour alice" in page
    helping = client.get(f"/helping/{delegation_id}")
    assert helping.status_code == 200
    assert helping.headers["x-frame-options"] == "DENY"
    assert "Vous agissez pour alice." in _text(helping.text)
    answer = _post(
        client,
        f"/helping/{delegation_id}",
        f"/helping/{delegation_id}/consents/{world.consents['alice']}/revoke",
    )
    assert answer.status_code == 303, answer.text
    assert _consent_status(world, "alice") == "revoked"
    assert _consent_status(world, "bruno") == "active"  # the caregiver's own consent is untouched
    (revoked,) = _events(world, "alice", EventTag.CONSENT_REVOKED)
    bruno = world.patients["bruno"]
    assert revoked.actor == f"caregiver:{bruno}"
    assert revoked.details is not None and revoked.details["caregiver"] == "bruno"
    with world.factory() as session:
        consent = session.get(ConsentRecord, world.consents["alice"])
        assert consent is not None and consent.revoked_by == f"caregiver:{bruno}"
    # Alice's history says who did what, in French and in English.
    world.log_in(client, "alice")
    client.cookies.set("broker_lang", "fr")
    history = _text(client.get("/my/history").text)
    assert "bruno, qui vous aide, a retiré pour vous votre accord à" in history
    assert "bruno a accepté de vous aider à gérer vos accords" in history
    assert "Vous avez invité Bruno@Example.org à vous aider" in history
    assert "bruno, qui vous aide, a consulté vos accords" in history
    client.cookies.set("broker_lang", "en")
    history = _text(client.get("/my/history").text)
    assert "bruno, who helps you, withdrew your consent to" in history
    assert "bruno agreed to help you manage your consents" in history
    # Alice sees who helps her, with what rights, until when.
    client.cookies.set("broker_lang", "fr")
    page = _text(client.get("/my/caregivers").text)
    assert "Les personnes qui m'aident" in page and "bruno" in page
    assert "cette personne peut : voir vos accords et les retirer" in page


def test_declining_stopping_and_cancelling_are_told_to_the_patient(client: Any, world: World) -> None:
    world.patient("alice")
    world.patient("bruno")
    world.log_in(client, "alice")
    assert _invite(client, "bruno@example.org").status_code == 303
    (first,) = _delegations(world)
    world.log_in(client, "bruno")
    assert _post(client, "/my/caregivers", f"/my/caregivers/{first.id}/decline").status_code == 303
    again = _post(client, "/my/caregivers", f"/my/caregivers/{first.id}/accept")
    assert again.status_code == 400  # an answered invitation stays answered
    world.log_in(client, "alice")
    assert _invite(client, "bruno@example.org").status_code == 303  # declined: invite again
    second = _delegations(world)[1]
    assert _post(client, "/my/caregivers", f"/my/caregivers/{second.id}/withdraw").status_code == 303
    world.log_in(client, "bruno")
    assert "alice vous demande" not in _text(client.get("/my/caregivers").text)  # cancelled
    assert _post(client, "/my/caregivers", f"/my/caregivers/{second.id}/accept").status_code == 400
    world.log_in(client, "alice")
    assert _invite(client, "bruno@example.org").status_code == 303
    third = _delegations(world)[2]
    world.log_in(client, "bruno")
    assert _post(client, "/my/caregivers", f"/my/caregivers/{third.id}/accept").status_code == 303
    assert _post(client, "/my/caregivers", f"/my/caregivers/{third.id}/stop").status_code == 303
    assert client.get(f"/helping/{third.id}").status_code == 403
    assert [d.status for d in _delegations(world)] == ["declined", "withdrawn", "ended"]
    world.log_in(client, "alice")
    history = _text(client.get("/my/history").text)
    assert "bruno a refusé votre invitation à vous aider" in history
    assert "bruno a arrêté de vous aider" in history
    assert "Vous avez annulé votre invitation à bruno@example.org" in history


def test_a_caregiver_switches_between_the_people_they_help(client: Any, world: World) -> None:
    alice_delegation = _helping(client, world)
    world.patient("carole")
    world.log_in(client, "carole")
    assert _invite(client, "bruno@example.org", "view").status_code == 303
    carole_delegation = next(d.id for d in _delegations(world) if d.patient_id == world.patients["carole"])
    world.log_in(client, "bruno")
    assert _post(client, "/my/caregivers", f"/my/caregivers/{carole_delegation}/accept").status_code == 303
    page = _text(client.get("/my/caregivers").text)
    assert "Agir pour alice" in page and "Agir pour carole" in page
    alice_page = client.get(f"/helping/{alice_delegation}").text
    assert f'href="/helping/{carole_delegation}"' in alice_page
    assert 'href="/my/consents"' in alice_page  # back to oneself
    carole_page = _text(client.get(f"/helping/{carole_delegation}").text)
    assert "Vous agissez pour carole." in carole_page and "Les accords de carole" in carole_page


def test_a_view_only_caregiver_cannot_revoke_and_the_attempt_is_recorded(client: Any, world: World) -> None:
    delegation_id = _helping(client, world, "view")
    helping = client.get(f"/helping/{delegation_id}").text
    assert "/revoke" not in helping  # no button offered ...
    answer = _post(  # ... and a forged form is refused
        client,
        "/my/caregivers",
        f"/helping/{delegation_id}/consents/{world.consents['alice']}/revoke",
    )
    assert answer.status_code == 403
    assert "alice ne vous a pas permis de faire cela." in _text(answer.text)
    assert _consent_status(world, "alice") == "active"
    (refused,) = _events(world, "alice", EventTag.CAREGIVER_REFUSED)
    assert refused.actor == f"caregiver:{world.patients['bruno']}"
    assert refused.details is not None
    assert refused.details["reason"] == "not_allowed" and refused.details["attempted"] == "revoke"
    assert _events(world, "alice", EventTag.CONSENT_REVOKED) == []


def test_after_withdrawal_everything_is_refused_and_recorded(client: Any, world: World) -> None:
    delegation_id = _helping(client, world)
    world.log_in(client, "alice")
    answer = _post(client, "/my/caregivers", f"/my/caregivers/{delegation_id}/withdraw")
    assert answer.status_code == 303
    assert "Personne ne vous aide pour le moment." in _text(client.get("/my/caregivers").text)
    world.log_in(client, "bruno")
    token = form_token(client.get("/my/caregivers").text)
    answer = client.post(
        f"/helping/{delegation_id}/consents/{world.consents['alice']}/revoke",
        data={"csrf_token": token},
        follow_redirects=False,
    )
    assert answer.status_code == 403
    assert "alice a arrêté votre aide" in _text(answer.text)
    assert client.get(f"/helping/{delegation_id}").status_code == 403
    assert _consent_status(world, "alice") == "active"
    reasons = [e.details["reason"] for e in _events(world, "alice", EventTag.CAREGIVER_REFUSED) if e.details]
    assert reasons == ["withdrawn", "withdrawn"]
    world.log_in(client, "alice")
    history = _text(client.get("/my/history").text)
    assert "bruno a essayé d'agir pour vous alors que son aide était terminée" in history
    assert "Vous avez arrêté l'aide de bruno" in history


def test_after_the_period_it_is_refused(client: Any, world: World) -> None:
    delegation_id = _helping(client, world)
    with transaction(world.factory) as session:
        session.execute(
            update(Delegation)
            .where(Delegation.id == delegation_id)
            .values(ends_at=utcnow() - timedelta(minutes=1))
        )
    answer = client.get(f"/helping/{delegation_id}")
    assert answer.status_code == 403
    assert "est terminée" in _text(answer.text)
    assert "Les personnes que j'aide" in client.get("/my/caregivers").text
    assert "Agir pour alice" not in _text(client.get("/my/caregivers").text)
    (refused,) = _events(world, "alice", EventTag.CAREGIVER_REFUSED)
    assert refused.details is not None and refused.details["reason"] == "ended"


def test_someone_elses_delegation_is_not_found_and_records_nothing(client: Any, world: World) -> None:
    delegation_id = _helping(client, world)
    world.patient("carole")
    world.log_in(client, "carole")
    assert client.get(f"/helping/{delegation_id}").status_code == 404
    answer = _post(client, "/my/caregivers", f"/my/caregivers/{delegation_id}/accept")
    assert answer.status_code == 404
    answer = _post(client, "/my/caregivers", f"/my/caregivers/{delegation_id}/withdraw")
    assert answer.status_code == 404
    assert _events(world, "alice", EventTag.CAREGIVER_REFUSED) == []
    assert [d.status for d in _delegations(world)] == ["active"]


@pytest.mark.parametrize(
    "path", ["/my/caregivers/invite", "/my/caregivers/x/withdraw", "/my/caregivers/x/accept"]
)
def test_forms_refuse_a_missing_csrf_token(client: Any, world: World, path: str) -> None:
    world.patient("alice")
    world.log_in(client, "alice")
    answer = client.post(
        path,
        data={"email": "bruno@example.org", "rights": "view", "ends_on": _day(3)},
        follow_redirects=False,
    )
    assert answer.status_code == 403
    assert "text/html" in answer.headers["content-type"]
    assert _delegations(world) == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"email": "alice@example.org"}, "C'est votre propre adresse"),
        ({"email": "pas-une-adresse"}, "Saisissez une adresse e-mail complète"),
        ({"ends_on": "2001-01-01"}, "Ce jour est déjà passé."),
        ({"ends_on": "demain"}, "Choisissez un jour."),
        ({"rights": "everything"}, "Choisissez ce que cette personne pourra faire."),
        ({"rights": "grant"}, "Cochez au moins un type de données."),
        ({"rights": "grant", "categories": "lab_results"}, "Cochez au moins une source."),
        (
            {"rights": "grant", "categories": "lab_results", "holders": "unknown-holder"},
            "Cochez au moins une source.",
        ),
    ],
)
def test_a_wrong_invitation_is_explained_and_changes_nothing(
    client: Any, world: World, fields: dict[str, str], message: str
) -> None:
    world.patient("alice")
    world.log_in(client, "alice")
    fields = {"ends_on": _day(10), **fields}  # a copy: the parameters serve both backends
    answer = _invite(client, fields.pop("email", "bruno@example.org"), **fields)
    assert answer.status_code == 400
    assert message in _text(answer.text)
    assert 'aria-invalid="true"' in answer.text or "field-error" in answer.text
    assert _delegations(world) == []


def test_an_unknown_address_gets_the_same_answer(client: Any, world: World) -> None:
    world.patient("alice")
    world.log_in(client, "alice")
    known = _invite(client, "nobody-yet@example.org")
    assert known.status_code == 303
    assert known.headers["location"] == "/my/caregivers?done=invited"
    # The invitation waits for whoever signs up with that address.
    page = _text(client.get("/my/caregivers").text)
    assert "nobody-yet@example.org" in page and "en attente de sa réponse" in page


def test_names_are_escaped(client: Any, world: World) -> None:
    world.patient("alice")
    world.patient("<script>alert(1)</script>")
    world.log_in(client, "alice")
    assert _invite(client, "<script>alert(1)</script>@example.org").status_code == 303
    with transaction(world.factory) as session:
        bruno = session.get(Patient, world.patients["<script>alert(1)</script>"])
        alice = session.get(Patient, world.patients["alice"])
        assert bruno is not None and alice is not None
        bruno.email_key = "evil@example.org"
        delegation = service.invite(
            session,
            patient=alice,
            email="evil@example.org",
            rights="view",
            categories=[],
            holders=[],
            ends_on=_day(5),
            now=utcnow(),
        )
        service.answer_invitation(
            session, caregiver=bruno, delegation_id=delegation.id, accept=True, now=utcnow()
        )
    for page in ("/my/caregivers", "/my/history"):
        html = client.get(page).text
        assert "<script>alert(1)</script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_grants_only_within_the_limits(world: World) -> None:
    world.patient("alice")
    world.patient("bruno")
    now = utcnow()
    with transaction(world.factory) as session:
        alice = session.get(Patient, world.patients["alice"])
        bruno = session.get(Patient, world.patients["bruno"])
        app = session.get(App, world.client_id)
        assert alice is not None and bruno is not None and app is not None
        delegation = service.invite(
            session,
            patient=alice,
            email="bruno@example.org",
            rights="grant",
            categories=["lab_results"],
            holders=["labo-test"],
            ends_on=_day(30),
            now=now,
        )
        service.answer_invitation(session, caregiver=bruno, delegation_id=delegation.id, accept=True, now=now)
        delegation_id = delegation.id
    outside = [
        [Grant("labo-test", "chronic_disease_followup", ("lab_results", "medications"))],
        [Grant("pharma-test", "chronic_disease_followup", ("lab_results",))],
    ]
    for grants in outside:
        with pytest.raises(service.CaregiverRefused) as refused, transaction(world.factory) as session:
            bruno = session.get(Patient, world.patients["bruno"])
            app = session.get(App, world.client_id)
            assert bruno is not None and app is not None
            service.grant_for(
                session,
                caregiver=bruno,
                delegation_id=delegation_id,
                app=app,
                grants=grants,
                days=30,
                charter_version="1.0",
                now=utcnow(),
            )
        assert refused.value.reason == "outside_limits"
    with transaction(world.factory) as session:
        bruno = session.get(Patient, world.patients["bruno"])
        app = session.get(App, world.client_id)
        assert bruno is not None and app is not None
        consent = service.grant_for(
            session,
            caregiver=bruno,
            delegation_id=delegation_id,
            app=app,
            grants=[Grant("labo-test", "chronic_disease_followup", ("lab_results",))],
            days=30,
            charter_version="1.0",
            now=utcnow(),
        )
        assert consent.patient_id == world.patients["alice"]
    (changed,) = _events(world, "alice", EventTag.CONSENT_CHANGED)
    assert changed.actor == f"caregiver:{world.patients['bruno']}"


def test_export_and_deletion_take_the_relations_into_account(client: Any, world: World) -> None:
    delegation_id = _helping(client, world)
    export = _post(client, "/account", "/account/export").json()
    assert [row["id"] for row in export["caregivers"]["helping"]] == [delegation_id]
    assert export["caregivers"]["helping"][0]["patient"] == "alice"
    world.log_in(client, "alice")
    export = _post(client, "/account", "/account/export").json()
    assert [row["status"] for row in export["caregivers"]["helped_by"]] == ["active"]
    assert export["caregivers"]["helped_by"][0]["invitee_email"] == "Bruno@Example.org"
    # Bruno's account goes: his help ends, and Alice's history says so.
    from broker.consent.patients.account import delete_account, withdraw_everything

    with transaction(world.factory) as session:
        withdraw_everything(session, patient_id=world.patients["bruno"], now=utcnow())
    assert [d.status for d in _delegations(world)] == ["ended"]
    (ended,) = _events(world, "alice", EventTag.DELEGATION_ENDED)
    assert ended.details is not None and ended.details["reason"] == "account deleted"
    with transaction(world.factory) as session:
        delete_account(session, patient_id=world.patients["bruno"], now=utcnow())
    assert _delegations(world) == []
    assert "bruno a arrêté de vous aider" in _text(client.get("/my/history").text)


# -- consenting for someone through an app's consent request --------------------------------

REDIRECT = "https://glycemie.example/callback"


def _grant_helper(world: World, categories: list[str], holders: list[str]) -> str:
    """Alice lets Bruno consent for her, within ``categories`` at ``holders``."""
    world.patient("alice")
    world.patient("bruno")
    now = utcnow()
    with transaction(world.factory) as session:
        alice = session.get(Patient, world.patients["alice"])
        bruno = session.get(Patient, world.patients["bruno"])
        assert alice is not None and bruno is not None
        delegation = service.invite(
            session,
            patient=alice,
            email="bruno@example.org",
            rights="grant",
            categories=categories,
            holders=holders,
            ends_on=_day(30),
            now=now,
        )
        service.answer_invitation(session, caregiver=bruno, delegation_id=delegation.id, accept=True, now=now)
        return delegation.id


def _consent_request(client: Any, world: World) -> str:
    """The app sends the logged-in caregiver to the consent screen; returns the request id."""
    params = {
        "response_type": "code",
        "client_id": world.client_id,
        "redirect_uri": REDIRECT,
        "state": "st-caregiver",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
    }
    answer = client.get("/authorize", params=params, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert location.startswith("/consent/")
    return str(location.removeprefix("/consent/"))


def _alice_grants(world: World) -> list[dict[str, Any]]:
    with world.factory() as session:
        consent = session.get(ConsentRecord, world.consents["alice"])
        assert consent is not None
        return list(consent.grants)


def test_a_caregiver_consents_for_the_patient_within_the_limits(client: Any, world: World) -> None:
    delegation_id = _grant_helper(world, ["lab_results"], ["labo-test"])
    world.log_in(client, "bruno")
    request_id = _consent_request(client, world)
    own = client.get(f"/consent/{request_id}").text
    assert f'href="/helping/{delegation_id}/consent/{request_id}"' in own
    screen = client.get(f"/helping/{delegation_id}/consent/{request_id}")
    assert screen.status_code == 200
    text = _text(screen.text)
    assert "Vous agissez pour alice." in text
    assert f'action="/helping/{delegation_id}/consent/{request_id}"' in screen.text
    assert 'value="pharma-test"' not in screen.text  # only the sources Alice allowed
    assert 'value="chronic_disease_followup|device_measurements"' not in screen.text
    answer = client.post(
        f"/helping/{delegation_id}/consent/{request_id}",
        data={
            "csrf_token": form_token(screen.text),
            "decision": "accept",
            "holder": "labo-test",
            "days": "30",
        },
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"].startswith(REDIRECT + "?code=")
    (changed,) = _events(world, "alice", EventTag.CONSENT_CHANGED)
    assert changed.actor == f"caregiver:{world.patients['bruno']}"
    assert changed.details is not None and changed.details["caregiver"] == "bruno"
    world.log_in(client, "alice")
    assert "bruno, qui vous aide, a modifié pour vous votre accord" in _text(client.get("/my/history").text)


def test_a_grant_beyond_the_limits_is_refused_and_recorded(client: Any, world: World) -> None:
    delegation_id = _grant_helper(world, ["lab_results"], ["labo-test"])
    world.log_in(client, "bruno")
    request_id = _consent_request(client, world)
    screen = client.get(f"/helping/{delegation_id}/consent/{request_id}").text
    before = _alice_grants(world)
    answer = client.post(  # a source Alice did not allow, forged into the form
        f"/helping/{delegation_id}/consent/{request_id}",
        data={"csrf_token": form_token(screen), "decision": "accept", "holder": "pharma-test", "days": "30"},
        follow_redirects=False,
    )
    assert answer.status_code == 403
    assert "alice ne vous a pas permis de partager ces données" in _text(answer.text)
    assert _alice_grants(world) == before
    assert _events(world, "alice", EventTag.CONSENT_CHANGED) == []
    (refused,) = _events(world, "alice", EventTag.CAREGIVER_REFUSED)
    assert refused.details is not None
    assert refused.details["reason"] == "outside_limits" and refused.details["attempted"] == "grant"


def test_required_data_outside_the_limits_leaves_only_refusing(client: Any, world: World) -> None:
    delegation_id = _grant_helper(world, ["medications"], ["labo-test"])
    world.log_in(client, "bruno")
    request_id = _consent_request(client, world)
    screen = client.get(f"/helping/{delegation_id}/consent/{request_id}").text
    assert "Vous pouvez seulement refuser" in _text(screen)
    assert 'value="accept"' not in screen


def test_without_the_right_to_grant_the_screen_is_refused(client: Any, world: World) -> None:
    delegation_id = _helping(client, world, "revoke")
    request_id = _consent_request(client, world)
    assert f"/helping/{delegation_id}/consent/" not in client.get(f"/consent/{request_id}").text
    answer = client.get(f"/helping/{delegation_id}/consent/{request_id}")
    assert answer.status_code == 403
    (refused,) = _events(world, "alice", EventTag.CAREGIVER_REFUSED)
    assert refused.details is not None and refused.details["reason"] == "not_allowed"

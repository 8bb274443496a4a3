"""The patient's history page: plain sentences in French and English, filters, pages,
folded token renewals, summaries, warnings; never another patient's events."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from broker.audit.history import format_when
from broker.audit.log import append_event
from broker.audit.models import AuditEvent
from broker.audit.tags import EventTag
from broker.db import transaction
from tests.audit.conftest import World

JWT = {"Content-Type": "application/jwt"}
MARCH_3 = datetime(2026, 3, 3, 13, 2, tzinfo=UTC)  # 14 h 02 in Paris (winter time)
MARCH_1 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&#39;", "'")


def _history(client: Any, language: str = "fr", **params: Any) -> str:
    client.cookies.set("broker_lang", language)
    answer = client.get("/my/history", params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    return str(answer.text)


def _dated_release(client: Any, world: World) -> None:
    """Gaëlle consented on 1 March; Suivi Glycémie read 12 lab results on 3 March at 14:02."""
    with transaction(world.factory) as session:
        session.execute(
            update(AuditEvent)
            .where(
                AuditEvent.patient_id == world.patients["gaelle"], AuditEvent.tag == EventTag.CONSENT_GRANTED
            )
            .values(at=MARCH_1)
        )
    token = world.receipt("gaelle", released_at=int(MARCH_3.timestamp()))
    assert client.post("/receipts", content=token, headers=JWT).status_code == 201


def test_dates_in_the_patients_language_and_paris_time() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert format_when(MARCH_3, "fr", now).date == "3 mars"
    assert format_when(MARCH_3, "fr", now).time == "14 h 02"
    assert format_when(MARCH_1, "fr", now).date == "1er mars"
    assert format_when(MARCH_3, "en", now).date == "3 March"
    assert format_when(MARCH_3, "en", now).time == "14:02"
    assert format_when(MARCH_3, "fr", datetime(2027, 1, 1, tzinfo=UTC)).date == "3 mars 2026"


def test_a_release_reads_as_one_plain_sentence_in_french_and_english(client: Any, world: World) -> None:
    world.patient("gaelle")
    _dated_release(client, world)
    world.log_in(client, "gaelle")
    french = _text(_history(client, "fr"))
    assert (
        "Suivi Glycémie a lu 12 éléments (résultats d'analyses) chez labo-test, "
        "le 3 mars à 14 h 02, avec votre accord du 1er mars." in french
    )
    assert (
        "Vous avez autorisé Suivi Glycémie à lire vos données (résultats d'analyses) chez labo-test" in french
    )
    assert "Vous avez relié pharma-test" in french
    english = _text(_history(client, "en"))
    assert (
        "Suivi Glycémie read 12 items (laboratory results) at labo-test, "
        "on 3 March at 14:02, with your permission of 1 March." in english
    )
    assert "You allowed Suivi Glycémie to read your data (laboratory results) at labo-test" in english
    assert "My history" in english and "Mon historique" not in english
    # The summaries: per app and per holder, with the last reading.
    assert "What each app read" in english and "What each organisation released" in english


def test_filters_by_app_holder_and_category(client: Any, world: World) -> None:
    world.patient("gaelle", grants={"labo-test": ["lab_results"], "pharma-test": ["medications"]})
    assert client.post("/receipts", content=world.receipt("gaelle"), headers=JWT).status_code == 201
    token = world.receipt("gaelle", holder="pharma-test", categories=["medications"], record_count=3)
    assert client.post("/receipts", content=token, headers=JWT).status_code == 201
    world.log_in(client, "gaelle")
    everything = _text(_history(client))
    assert "a lu 12 éléments" in everything and "a lu 3 éléments" in everything
    by_holder = _text(_history(client, holder="pharma-test"))
    assert "a lu 3 éléments" in by_holder and "a lu 12 éléments" not in by_holder
    by_category = _text(_history(client, category="lab_results"))
    assert "a lu 12 éléments" in by_category and "a lu 3 éléments" not in by_category
    by_app = _text(_history(client, app=world.client_id))
    assert "a lu 12 éléments" in by_app and "Vous avez relié" not in by_app
    # Every control has a label; the form is a plain GET.
    page = _history(client)
    assert '<form method="get" action="/my/history"' in page
    for control in re.findall(r'<(?:select|input)[^>]*id="([^"]+)"', page):
        assert f'<label for="{control}"' in page, control


def test_another_patients_events_never_appear(client: Any, world: World) -> None:
    world.patient("gaelle")
    world.patient("antoine", grants={"pharma-test": ["medications"]})
    token = world.receipt("antoine", holder="pharma-test", categories=["medications"], record_count=7)
    assert client.post("/receipts", content=token, headers=JWT).status_code == 201
    world.log_in(client, "gaelle")
    for params in (
        {},
        {"holder": "pharma-test"},
        {"category": "medications"},
        {"app": world.client_id},
        {"details": "1"},
    ):
        page = _text(_history(client, **params))
        assert "a lu 7" not in page and "médicaments" not in page.lower().replace("tous les types", "")
        assert world.patients["antoine"] not in page
    assert "Rien ne correspond à ces choix." in _text(_history(client, category="medications"))
    # A cursor pointing anywhere only narrows Gaëlle's own events.
    world.log_in(client, "antoine")
    assert "a lu 7 éléments" in _text(_history(client))


def test_pages_of_older_events(client: Any, world: World) -> None:
    world.patient("gaelle")
    with transaction(world.factory) as session:
        for day in range(35):
            append_event(
                session,
                tag=EventTag.LINK_CREATED,
                patient_id=world.patients["gaelle"],
                actor=f"patient:{world.patients['gaelle']}",
                details={"holder": "labo-test"},
                at=MARCH_1 - timedelta(days=day),
            )
    world.log_in(client, "gaelle")
    first = _history(client)
    found = re.search(r'href="/my/history\?([^"]*cursor=[^"]+)" rel="next"', first)
    assert found, "no link to older events"
    assert "Plus anciens" in first
    second = client.get("/my/history?" + found.group(1).replace("&amp;", "&")).text
    assert 'rel="next"' not in second and "Revenir aux plus récents" in second
    count = _text(first).count("Vous avez relié") + _text(second).count("Vous avez relié")
    assert count == 35 + 2


def test_token_renewals_are_folded_unless_details_are_asked(client: Any, world: World) -> None:
    world.patient("gaelle")
    with transaction(world.factory) as session:
        for minute in range(5):
            append_event(
                session,
                tag=EventTag.TOKEN_REFRESHED,
                patient_id=world.patients["gaelle"],
                actor=f"app:{world.client_id}",
                details={"app": world.client_id, "holder": "labo-test", "categories": ["lab_results"]},
                at=MARCH_3 + timedelta(minutes=minute),
            )
    world.log_in(client, "gaelle")
    folded = _text(_history(client))
    assert "Suivi Glycémie a renouvelé sa permission de lecture 5 fois le 3 mars." in folded
    detailed = _text(_history(client, details="1"))
    assert detailed.count("a renouvelé sa permission de lecture chez labo-test") == 5
    assert "renewed its leave to read 5 times on 3 March" in _text(_history(client, "en"))


def test_flagged_releases_are_warned_about_first(client: Any, world: World) -> None:
    world.patient("gaelle")
    token = world.receipt("gaelle", categories=["lab_results", "medications"])
    assert client.post("/receipts", content=token, headers=JWT).status_code == 201
    world.log_in(client, "gaelle")
    page = _history(client)
    warning = page.index("Attention : des données ont été transmises en dehors de votre accord")
    assert warning < page.index("Choisir ce qui est affiché")
    assert "ces données n'étaient pas couvertes par votre accord (médicaments)" in _text(page)


def test_every_page_links_to_the_history(client: Any, world: World) -> None:
    world.patient("gaelle")
    world.log_in(client, "gaelle")
    for path in ("/my/consents", "/my/sources", "/account", "/my/history"):
        assert 'href="/my/history"' in client.get(path).text, path
    client.cookies.clear()
    answer = client.get("/my/history", follow_redirects=False)
    assert answer.status_code in (302, 303) and "/login" in answer.headers["location"]


def test_history_messages_have_english_translations() -> None:
    from babel.messages.extract import extract_from_dir
    from babel.messages.pofile import read_po

    from broker.web.i18n import TEMPLATES, TRANSLATIONS

    with (TRANSLATIONS / "en" / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        catalog = read_po(handle, locale="en")
    method_map = [
        ("audit/**.html", "jinja2"),
        ("consent/my_consents.html", "jinja2"),
        ("base.html", "jinja2"),
    ]
    options = {"**.html": {"extensions": "jinja2.ext.i18n", "trimmed": "true"}}
    missing = []
    for _file, _line, message, _comments, _context in extract_from_dir(TEMPLATES, method_map, options):
        key = message[0] if isinstance(message, tuple) else message
        entry = catalog.get(key)
        if entry is None or not entry.string or (isinstance(entry.string, tuple) and not all(entry.string)):
            missing.append(key)
    assert missing == []

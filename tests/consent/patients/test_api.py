"""The package's public surface, and the completeness of its translations."""

from __future__ import annotations

import inspect
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

import broker.consent.patients as patients
from broker.consent.patients.rendering import safe_next
from broker.web.i18n import TEMPLATES, TRANSLATIONS, choose_language, parse_accept_language


def test_public_api() -> None:
    assert set(patients.__all__) >= {
        "patient_from_request",
        "login_redirect",
        "csrf_token",
        "check_csrf",
        "render_page",
        "seed_demo_patients",
    }
    for name in patients.__all__:
        assert hasattr(patients, name), name
    assert list(inspect.signature(patients.patient_from_request).parameters)[:3] == [
        "session",
        "request",
        "settings",
    ]
    assert list(inspect.signature(patients.check_csrf).parameters) == ["request", "settings", "submitted"]
    assert list(inspect.signature(patients.csrf_token).parameters) == ["request", "settings"]
    assert list(inspect.signature(patients.login_redirect).parameters) == ["request"]
    assert list(inspect.signature(patients.seed_demo_patients).parameters) == ["session", "settings"]


def _messages(directory: Path, pattern: str) -> set[str | tuple[str, ...]]:
    method_map = [(pattern, "jinja2")]
    options = {pattern: {"extensions": "jinja2.ext.i18n", "trimmed": "true"}}
    return {message for _, _, message, _, _ in extract_from_dir(str(directory), method_map, options)}


def test_every_message_of_the_patient_pages_has_an_english_translation() -> None:
    with (TRANSLATIONS / "en" / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        catalog = read_po(handle, locale="en")
    wanted = _messages(TEMPLATES, "patients/**.html") | _messages(TEMPLATES, "base.html")
    assert len(wanted) > 40
    missing = []
    for message in wanted:
        key = message[0] if isinstance(message, tuple) else message
        entry = catalog.get(key)
        if entry is None or not entry.string or (isinstance(entry.string, tuple) and not all(entry.string)):
            missing.append(key)
    assert missing == []


def test_language_negotiation() -> None:
    assert parse_accept_language("en-GB;q=0.8, fr;q=0.9, *;q=0.1") == ["fr", "en_GB"]
    assert choose_language(None, None) == "fr"
    assert choose_language(None, "de-DE, en;q=0.5") == "en"
    assert choose_language(None, "de-DE") == "fr"
    assert choose_language("en", "fr") == "en"
    assert choose_language("xx", "en") == "en"


def test_safe_next() -> None:
    assert safe_next("/consents?x=1") == "/consents?x=1"
    for bad in ("//evil", "/\\evil", "https://evil", "evil", "/a\nb", "/a b", "", None, "/" + "a" * 3000):
        assert safe_next(bad) == "/account"

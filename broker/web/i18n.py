"""Languages of the pages: French first, English too.

Templates are written in French, the broker's first language, and marked for translation
(``{% trans %}``, ``_()``). Other languages come from gettext catalogues in ``translations/``,
edited as ``.po`` files and compiled in memory with Babel when the broker starts, so no binary
``.mo`` file is kept in the repository. To add a language: ``pybabel extract -F
broker/web/translations/babel.cfg -o messages.pot broker``, ``pybabel init -l xx``, translate,
and add ``xx`` to ``LANGUAGES``.

A visitor's language is, in order: the ``broker_lang`` cookie set by the language links, then
the browser's ``Accept-Language``, then French.
"""

from __future__ import annotations

import gettext
from io import BytesIO
from pathlib import Path
from zoneinfo import ZoneInfo

from babel import negotiate_locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from jinja2 import Environment, FileSystemLoader, Template, select_autoescape

WEB = Path(__file__).parent
TEMPLATES = WEB / "templates"
TRANSLATIONS = WEB / "translations"
STATIC = WEB / "static"

DEFAULT_LANGUAGE = "fr"
LANGUAGES = ("fr", "en")
LANGUAGE_NAMES = {"fr": "Français", "en": "English"}
LANGUAGE_COOKIE = "broker_lang"
# Dates shown to patients (and the calendar days they choose) are in this time zone.
TIMEZONE = ZoneInfo("Europe/Paris")


def load_translations(language: str) -> gettext.NullTranslations:
    """The catalogue of ``language``; French is the source language and needs none."""
    if language == DEFAULT_LANGUAGE:
        return gettext.NullTranslations()
    path = TRANSLATIONS / language / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as handle:
        catalog = read_po(handle, locale=language)
    compiled = BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return Translations(fp=compiled)


def make_environment(language: str, directory: Path = TEMPLATES) -> Environment:
    env = Environment(
        loader=FileSystemLoader(directory),
        # SECURITY W9: every value is escaped; app-supplied text is never marked safe.
        autoescape=select_autoescape(["html"]),
        extensions=["jinja2.ext.i18n"],
    )
    env.policies["ext.i18n.trimmed"] = True  # msgids without the template's line breaks
    env.install_gettext_translations(load_translations(language), newstyle=True)  # type: ignore[attr-defined]
    env.globals["language"] = language
    return env


class PageTemplates:
    """One Jinja2 environment per language, built once at start."""

    def __init__(self, directory: Path = TEMPLATES) -> None:
        self.environments = {language: make_environment(language, directory) for language in LANGUAGES}

    def get(self, language: str, name: str) -> Template:
        return self.environments[language].get_template(name)


def parse_accept_language(header: str) -> list[str]:
    """Language tags of an ``Accept-Language`` header, best first (RFC 9110 §12.5.4)."""
    weighted: list[tuple[float, int, str]] = []
    for position, item in enumerate(header.split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        tag = tag.strip()
        if not tag or tag == "*":
            continue
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            weighted.append((-quality, position, tag.replace("-", "_")))
    return [tag for _, _, tag in sorted(weighted)]


def choose_language(cookie: str | None, accept_language: str | None) -> str:
    if cookie in LANGUAGES:
        return str(cookie)
    if accept_language:
        chosen = negotiate_locale(parse_accept_language(accept_language), list(LANGUAGES), sep="_")
        if chosen:  # Babel also matches "en-GB" to "en"
            return chosen.split("_")[0]
    return DEFAULT_LANGUAGE

"""The charter's vocabularies as frozen values: purposes, business models, data categories, articles.

The ids are the public contract of MANIFEST.md; the labels and plain-language descriptions are
what patients and app developers read. Every text exists in French and English; French comes
first and is the fallback for any other language (MISSION.md: French first).

Instances are built by `broker.charter.loading` from a versioned data file and never change.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "Article",
    "BusinessModel",
    "Category",
    "Certification",
    "Charter",
    "Purpose",
    "Text",
    "TypologyGroup",
]


@dataclass(frozen=True, slots=True)
class Text:
    """A short text in French and English."""

    fr: str
    en: str

    def get(self, lang: str) -> str:
        """The text in `lang` ("fr", "en", or a tag such as "en-GB"); French otherwise."""
        return self.en if lang.split("-", 1)[0].lower() == "en" else self.fr

    def to_json(self) -> dict[str, str]:
        return {"fr": self.fr, "en": self.en}


@dataclass(frozen=True, slots=True)
class Article:
    """An article of the charter, cited by number (e.g. "06c") in every finding."""

    id: str
    titles: Text

    def title(self, lang: str) -> str:
        return self.titles.get(lang)


@dataclass(frozen=True, slots=True)
class Purpose:
    """A purpose an app may declare, and the data categories it can justify (art. 06c)."""

    id: str
    labels: Text
    descriptions: Text
    user_facing: bool
    categories: frozenset[str]
    allows_sensitive: bool
    # Art. 04: a purpose that is never bundled (research contribution) may only ask for data
    # the patient can refuse while keeping the rest of the service.
    never_bundled: bool

    def label(self, lang: str) -> str:
        return self.labels.get(lang)

    def description(self, lang: str) -> str:
        return self.descriptions.get(lang)

    def allows(self, category: str) -> bool:
        return category in self.categories


@dataclass(frozen=True, slots=True)
class BusinessModel:
    """A way an app earns its living; a forbidden one names the article it breaks (07)."""

    id: str
    labels: Text
    descriptions: Text
    forbidden: bool
    article: str | None
    # Allowed, but a person must look at it (e.g. a conflict of interest) before approval.
    needs_review: bool

    def label(self, lang: str) -> str:
        return self.labels.get(lang)

    def description(self, lang: str) -> str:
        return self.descriptions.get(lang)


@dataclass(frozen=True, slots=True)
class Category:
    """A category of personal data, with the FHIR R4 resource types that carry it."""

    id: str
    labels: Text
    descriptions: Text
    group: str
    fhir: tuple[str, ...]
    sensitive: bool
    # Health data in the sense of GDPR art. 4(15) and 9: hosting it in France needs a certified
    # health-data host (art. 06e).
    health_data: bool

    def label(self, lang: str) -> str:
        return self.labels.get(lang)

    def description(self, lang: str) -> str:
        return self.descriptions.get(lang)


@dataclass(frozen=True, slots=True)
class TypologyGroup:
    """A group of the founding document's data typology: medical, non-medical, profile."""

    id: str
    labels: Text

    def label(self, lang: str) -> str:
        return self.labels.get(lang)


@dataclass(frozen=True, slots=True)
class Certification:
    """A health-data hosting certification the charter recognises (e.g. HDS in France)."""

    id: str
    country: str
    labels: Text

    def label(self, lang: str) -> str:
        return self.labels.get(lang)


@dataclass(frozen=True)
class Charter:
    """One version of the charter: its vocabularies and the bounds its rules apply.

    The mappings are read-only and keep the order of the data file, so that pages and findings
    list things in a stable order.
    """

    version: str
    date: datetime.date
    titles: Text
    source: str
    articles: Mapping[str, Article]
    purposes: Mapping[str, Purpose]
    business_models: Mapping[str, BusinessModel]
    categories: Mapping[str, Category]
    typology_groups: Mapping[str, TypologyGroup]
    retention_max_days: int
    sensitive_justification_min_chars: int
    health_data_certifications: Mapping[str, Certification]
    eea_countries: frozenset[str]
    # SHA-256 of the data file's canonical JSON: two charters with the same version but
    # different content are told apart.
    sha256: str

    def __hash__(self) -> int:
        return hash(self.sha256)

    def title(self, lang: str) -> str:
        return self.titles.get(lang)

    def in_eea(self, country: str) -> bool:
        """Whether an ISO 3166-1 alpha-2 country code is in the EU or the EEA."""
        return country in self.eea_countries

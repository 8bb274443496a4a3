"""What a rule is: a stable id, the article it enforces, a severity, texts for two readers.

A rule's check is a pure function of a `RuleInput` (the parsed registration, the charter and
the evaluation options). It yields one `Problem` per fault, with the JSON path of the field
and a reason key; the rule holds a developer message for each reason and one patient message,
in French and English. The engine turns problems into findings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from types import MappingProxyType

from broker.charter.manifest import DataRequest, Registration
from broker.charter.vocabulary import Charter, Text

__all__ = [
    "Param",
    "Problem",
    "Rule",
    "RuleInput",
    "Severity",
    "is_blank",
    "is_country",
    "is_email",
    "problem",
    "rule",
    "safe_value",
]

_RULE_ID = re.compile(r"^[a-z_]+(?:\.[a-z_]+)+$")
_ARTICLE_ID = re.compile(r"^\d{2}[a-z]?$")
_MAX_QUOTED = 80
# Deliberately loose: the broker cannot prove an address works, only that it looks like one.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")

Param = str | Text


class Severity(StrEnum):
    """What a finding does to the verdict."""

    REFUSE = "refuse"
    NEEDS_REVIEW = "needs_review"


def safe_value(value: object) -> str:
    """An app-supplied value as it may appear inside a message: short and on one line."""
    text = " ".join(str(value).split())
    return text if len(text) <= _MAX_QUOTED else text[: _MAX_QUOTED - 1] + "…"


def is_blank(value: str) -> bool:
    return not value.strip()


def is_email(value: str) -> bool:
    return bool(_EMAIL.fullmatch(value))


def is_country(value: str) -> bool:
    """An ISO 3166-1 alpha-2 code in capitals, as MANIFEST.md writes them ("FR")."""
    return bool(_COUNTRY.fullmatch(value))


@dataclass(frozen=True, slots=True)
class Problem:
    """One fault found by a rule: where it is, which message explains it, what to fill in."""

    field: str
    reason: str
    params: tuple[tuple[str, Param], ...] = ()


def problem(field_path: str, reason: str, **params: Param) -> Problem:
    return Problem(field_path, reason, tuple(params.items()))


@dataclass(frozen=True)
class RuleInput:
    """Everything a rule may look at. Nothing else: no clock, no database, no network."""

    registration: Registration
    charter: Charter
    allow_loopback_http: bool

    def has_shape_problem_under(self, path: str) -> bool:
        """Whether an item of the array at `path` was malformed (so the array was not empty)."""
        prefix = f"{path}["
        return any(p.field.startswith(prefix) for p in self.registration.problems)

    @cached_property
    def known_requests(self) -> tuple[DataRequest, ...]:
        """Data requests naming a category the charter knows."""
        manifest = self.registration.manifest
        if manifest is None or manifest.data_requests is None:
            return ()
        return tuple(
            request
            for request in manifest.data_requests
            if request.category is not None and request.category in self.charter.categories
        )

    @cached_property
    def declared_purposes(self) -> frozenset[str]:
        """Purpose ids the manifest declares and the charter knows."""
        manifest = self.registration.manifest
        if manifest is None or manifest.purposes is None:
            return frozenset()
        return frozenset(
            p.id for p in manifest.purposes if p.id is not None and p.id in self.charter.purposes
        )

    @cached_property
    def health_data_requested(self) -> tuple[str, ...]:
        """Requested categories that are health data, in request order, without repeats."""
        seen: dict[str, None] = {}
        for request in self.known_requests:
            category = self.charter.categories.get(request.category or "")
            if category is not None and category.health_data:
                seen[category.id] = None
        return tuple(seen)


Check = Callable[[RuleInput], Iterable[Problem]]


@dataclass(frozen=True, eq=False)
class Rule:
    """A rule of the charter. Its id and article never change meaning within a charter version.

    Rules compare and hash by identity: each is declared once, at import.
    """

    id: str
    article: str
    severity: Severity
    # What the rule requires, for the public list of rules.
    requirement: Text
    # What a finding means for a patient, shown beside the app in the catalog and consent pages.
    patient: Text
    # What the developer must change, one text per reason a check can give. Placeholders:
    # {field} (always), and the params of the problem.
    messages: Mapping[str, Text]
    check: Check = field(repr=False)

    def __post_init__(self) -> None:
        if not _RULE_ID.fullmatch(self.id):
            raise ValueError(f"rule id {self.id!r} is not a dotted lower-case name")
        if not _ARTICLE_ID.fullmatch(self.article):
            raise ValueError(f"rule {self.id}: article {self.article!r} is not an article number")
        if not self.messages:
            raise ValueError(f"rule {self.id}: no developer message")
        object.__setattr__(self, "messages", MappingProxyType(dict(self.messages)))


def rule(
    *,
    id: str,
    article: str,
    severity: Severity,
    requirement: Text,
    patient: Text,
    messages: Mapping[str, Text],
) -> Callable[[Check], Rule]:
    """Declare a rule around its check function; the module-level name becomes the `Rule`."""

    def declare(check: Check) -> Rule:
        return Rule(
            id=id,
            article=article,
            severity=severity,
            requirement=requirement,
            patient=patient,
            messages=messages,
            check=check,
        )

    return declare

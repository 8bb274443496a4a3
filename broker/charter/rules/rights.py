"""Rules on the patient's rights over the data the app holds (06d)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlsplit

from broker.charter.rules.base import (
    Problem,
    RuleInput,
    Severity,
    is_blank,
    is_email,
    problem,
    rule,
    safe_value,
)
from broker.charter.vocabulary import Text

__all__ = ["is_exercise_channel", "rights_exercisable"]

_SPACE = re.compile(r"\s")

_RIGHT_NAMES = {
    "access": Text(fr="le droit d'accès", en="the right of access"),
    "rectification": Text(fr="le droit de rectification", en="the right to rectification"),
    "erasure": Text(fr="le droit à l'effacement", en="the right to erasure"),
    "portability": Text(fr="le droit à la portabilité", en="the right to data portability"),
}


def is_exercise_channel(value: str) -> bool:
    """An https URL with a host, a `mailto:` URI, or a bare e-mail address."""
    if _SPACE.search(value):
        return False
    if value.lower().startswith("mailto:"):
        return is_email(value[len("mailto:") :].split("?", 1)[0])
    if "://" not in value:
        return is_email(value)
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        return False
    return parts.scheme.lower() == "https" and bool(host)


@rule(
    id="rights.exercisable",
    article="06d",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="Pour chacun des droits d'accès, de rectification, d'effacement et de portabilité, "
        "l'application indique où l'exercer : une adresse https ou une adresse électronique.",
        en="For each of the rights of access, rectification, erasure and portability, the app "
        "says where to exercise it: an https address or an e-mail address.",
    ),
    patient=Text(
        fr="L'application ne dit pas comment consulter, corriger, supprimer ou récupérer les "
        "données qu'elle a sur vous.",
        en="The app does not say how to see, correct, delete or take back the data it holds about you.",
    ),
    messages={
        "blank": Text(
            fr="Indiquez dans {field} où exercer {right} : une adresse https:// ou une adresse "
            "électronique (mailto:).",
            en="Say in {field} where to exercise {right}: an https:// address or an e-mail "
            "address (mailto:).",
        ),
        "invalid": Text(
            fr="« {value} » ne permet pas d'exercer {right} : donnez une adresse https:// ou une "
            "adresse électronique (mailto:) dans {field}.",
            en="'{value}' gives no way to exercise {right}: give an https:// address or an "
            "e-mail address (mailto:) in {field}.",
        ),
    },
)
def rights_exercisable(given: RuleInput) -> Iterator[Problem]:
    manifest = given.registration.manifest
    for right, value in (manifest.rights if manifest else None) or ():
        if value is None:
            continue
        path = f"charter_manifest.rights.{right}"
        if is_blank(value):
            yield problem(path, "blank", right=_RIGHT_NAMES[right])
        elif not is_exercise_channel(value):
            yield problem(path, "invalid", right=_RIGHT_NAMES[right], value=safe_value(value))

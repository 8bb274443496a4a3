"""Rules on the manifest's form: the contract's members and vocabulary ids (art. 06a).

A manifest that fails these is *malformed* in the sense of MANIFEST.md: the registration
endpoint answers `400 invalid_client_metadata` and stores nothing. The other rules judge what a
well-formed manifest says.
"""

from __future__ import annotations

from collections.abc import Iterator

from broker.charter.rules.base import Problem, RuleInput, Severity, problem, rule, safe_value
from broker.charter.vocabulary import Text

__all__ = ["known_vocabulary", "well_formed"]

_TYPE_NAMES = {
    "object": Text(fr="un objet JSON", en="a JSON object"),
    "array": Text(fr="un tableau JSON", en="a JSON array"),
    "string": Text(fr="une chaîne de caractères", en="a string"),
    "boolean": Text(fr="true ou false", en="true or false"),
    "integer": Text(fr="un nombre entier", en="an integer"),
}


@rule(
    id="manifest.well_formed",
    article="06a",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="La demande d'inscription contient le manifeste de la charte, avec chaque champ prévu "
        "et du bon type.",
        en="The registration holds the charter manifest, with every expected field, each of the right type.",
    ),
    patient=Text(
        fr="La fiche de l'application est incomplète ou mal remplie : on ne peut pas vous dire "
        "clairement ce qu'elle fait de vos données.",
        en="The app's description is incomplete or badly filled in: we cannot tell you clearly "
        "what it does with your data.",
    ),
    messages={
        "root": Text(
            fr="La demande d'inscription doit être un objet JSON (métadonnées RFC 7591 avec "
            "charter_manifest).",
            en="The registration must be a JSON object (RFC 7591 metadata with charter_manifest).",
        ),
        "missing": Text(
            fr="Le champ {field} manque : il doit être {expected}.",
            en="The field {field} is missing: it must be {expected}.",
        ),
        "wrong_type": Text(
            fr="Le champ {field} doit être {expected}.",
            en="The field {field} must be {expected}.",
        ),
    },
)
def well_formed(given: RuleInput) -> Iterator[Problem]:
    for shape in given.registration.problems:
        if shape.field == "$":
            yield problem("$", "root")
        else:
            reason = "missing" if shape.missing else "wrong_type"
            yield problem(shape.field, reason, expected=_TYPE_NAMES[shape.expected])


@rule(
    id="manifest.known_vocabulary",
    article="06a",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="Les finalités, catégories de données et modèles économiques sont choisis dans les "
        "listes publiques de la charte.",
        en="Purposes, data categories and business models are taken from the charter's public lists.",
    ),
    patient=Text(
        fr="L'application décrit ce qu'elle fait avec des termes que la charte ne connaît pas : "
        "on ne peut pas vous l'expliquer.",
        en="The app describes what it does in terms the charter does not know: we cannot explain it to you.",
    ),
    messages={
        "purpose": Text(
            fr="« {value} » n'est pas une finalité de la charte {version} ; choisissez-en une "
            "dans sa liste des finalités.",
            en="'{value}' is not a purpose of charter {version}; pick one from its list of purposes.",
        ),
        "category": Text(
            fr="« {value} » n'est pas une catégorie de données de la charte {version} ; "
            "choisissez-en une dans sa liste des catégories.",
            en="'{value}' is not a data category of charter {version}; pick one from its list of categories.",
        ),
        "business_model": Text(
            fr="« {value} » n'est pas un modèle économique de la charte {version} ; choisissez "
            "celui qui vous décrit dans sa liste et expliquez-le dans la description.",
            en="'{value}' is not a business model of charter {version}; pick the one that "
            "describes you from its list and explain it in the description.",
        ),
    },
)
def known_vocabulary(given: RuleInput) -> Iterator[Problem]:
    manifest = given.registration.manifest
    if manifest is None:
        return
    charter = given.charter
    base = "charter_manifest"
    model = manifest.business_model.model if manifest.business_model else None
    if model is not None and model not in charter.business_models:
        yield problem(
            f"{base}.business_model.model",
            "business_model",
            value=safe_value(model),
            version=charter.version,
        )
    for purpose in manifest.purposes or ():
        if purpose.id is not None and purpose.id not in charter.purposes:
            yield problem(
                f"{base}.purposes[{purpose.index}].id",
                "purpose",
                value=safe_value(purpose.id),
                version=charter.version,
            )
    for request in manifest.data_requests or ():
        path = f"{base}.data_requests[{request.index}]"
        if request.category is not None and request.category not in charter.categories:
            yield problem(
                f"{path}.category",
                "category",
                value=safe_value(request.category),
                version=charter.version,
            )
        if request.purpose is not None and request.purpose not in charter.purposes:
            yield problem(
                f"{path}.purpose",
                "purpose",
                value=safe_value(request.purpose),
                version=charter.version,
            )

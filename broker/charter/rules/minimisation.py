"""Rules on how much data an app asks for and keeps (06c), and on research being a free
choice (04)."""

from __future__ import annotations

from collections.abc import Iterator

from broker.charter.rules.base import Problem, RuleInput, Severity, is_blank, problem, rule
from broker.charter.vocabulary import Text

__all__ = [
    "category_allowed_by_purpose",
    "request_justified",
    "research_never_bundled",
    "retention_bounded",
    "sensitive_category_opt_in",
]

_BASE = "charter_manifest"


@rule(
    id="minimisation.category_allowed_by_purpose",
    article="06c",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="Chaque catégorie de données demandée l'est pour une finalité déclarée qui, selon la "
        "charte, peut la justifier.",
        en="Each data category is requested for a declared purpose that, according to the "
        "charter, can justify it.",
    ),
    patient=Text(
        fr="L'application demande des données dont elle n'a pas besoin pour ce qu'elle annonce.",
        en="The app asks for data it does not need for what it announces.",
    ),
    messages={
        "purpose_not_declared": Text(
            fr="La demande de « {category} » invoque la finalité « {purpose} », que "
            "l'application ne déclare pas dans charter_manifest.purposes. Déclarez-la, ou "
            "rattachez la demande à une finalité déclarée qui la justifie.",
            en="The request for '{category}' names the purpose '{purpose}', which the app does "
            "not declare in charter_manifest.purposes. Declare it, or tie the request to a "
            "declared purpose that justifies it.",
        ),
        "not_allowed": Text(
            fr="La finalité « {purpose} » ne justifie pas la catégorie « {category} ». Retirez "
            "cette demande, ou rattachez-la à une finalité qui la justifie.",
            en="The purpose '{purpose}' does not justify the category '{category}'. Remove this "
            "request, or tie it to a purpose that justifies it.",
        ),
        "not_allowed_other": Text(
            fr="La finalité « {purpose} » ne justifie pas la catégorie « {category} », mais la "
            "finalité « {other} », que vous déclarez aussi, la justifie : rattachez-y la demande "
            "si c'est bien pour elle que vous en avez besoin.",
            en="The purpose '{purpose}' does not justify the category '{category}', but the "
            "purpose '{other}', which you also declare, does: tie the request to it if that is "
            "what you need the data for.",
        ),
    },
)
def category_allowed_by_purpose(given: RuleInput) -> Iterator[Problem]:
    charter = given.charter
    declared = given.declared_purposes
    for request in given.known_requests:
        purpose = charter.purposes.get(request.purpose or "")
        if purpose is None or request.category is None:
            # A missing purpose is a shape problem, an unknown one a vocabulary problem.
            continue
        category = charter.categories[request.category]
        path = f"{_BASE}.data_requests[{request.index}]"
        if purpose.id not in declared:
            yield problem(path, "purpose_not_declared", category=category.id, purpose=purpose.id)
        elif not purpose.allows(category.id):
            others = [p for p in charter.purposes.values() if p.id in declared and p.allows(category.id)]
            if others:
                yield problem(
                    path,
                    "not_allowed_other",
                    category=category.id,
                    purpose=purpose.id,
                    other=others[0].id,
                )
            else:
                yield problem(path, "not_allowed", category=category.id, purpose=purpose.id)


@rule(
    id="minimisation.request_justified",
    article="06c",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="Chaque demande de données explique pourquoi l'application en a besoin.",
        en="Each data request explains why the app needs the data.",
    ),
    patient=Text(
        fr="L'application ne dit pas pourquoi elle a besoin de certaines de vos données.",
        en="The app does not say why it needs some of your data.",
    ),
    messages={
        "blank": Text(
            fr="Expliquez dans {field} pourquoi l'application a besoin de « {category} » : cette "
            "phrase est montrée au patient au moment où il consent.",
            en="Explain in {field} why the app needs '{category}': the sentence is shown to the "
            "patient when they consent.",
        ),
    },
)
def request_justified(given: RuleInput) -> Iterator[Problem]:
    for request in given.known_requests:
        category = given.charter.categories[request.category or ""]
        # Sensitive categories have their own, stricter rule.
        if category.sensitive or request.justification is None:
            continue
        if is_blank(request.justification):
            yield problem(
                f"{_BASE}.data_requests[{request.index}].justification",
                "blank",
                category=category.id,
            )


@rule(
    id="minimisation.sensitive_category_opt_in",
    article="06c",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="Une catégorie sensible (santé sexuelle, santé mentale, addictions, génétique, santé "
        "reproductive) n'est demandée qu'avec une justification explicite, et le patient peut "
        "la refuser.",
        en="A sensitive category (sexual health, mental health, addictions, genetics, "
        "reproductive health) is only requested with an explicit justification, and the "
        "patient can refuse it.",
    ),
    patient=Text(
        fr="L'application demande des données particulièrement sensibles sans dire précisément "
        "pourquoi, ou sans vous laisser les refuser.",
        en="The app asks for particularly sensitive data without saying precisely why, or "
        "without letting you refuse it.",
    ),
    messages={
        "not_optional": Text(
            fr="« {category} » est une catégorie sensible : sa demande doit être facultative "
            "({field} à true), pour que le patient puisse la refuser et garder le service.",
            en="'{category}' is a sensitive category: its request must be optional ({field} set "
            "to true), so that the patient can refuse it and keep the service.",
        ),
        "justification": Text(
            fr="« {category} » est une catégorie sensible : expliquez précisément dans {field} "
            "(au moins {minimum} caractères) ce que l'application en fait et pourquoi elle ne "
            "peut pas s'en passer.",
            en="'{category}' is a sensitive category: explain precisely in {field} (at least "
            "{minimum} characters) what the app does with it and why it cannot do without it.",
        ),
    },
)
def sensitive_category_opt_in(given: RuleInput) -> Iterator[Problem]:
    minimum = given.charter.sensitive_justification_min_chars
    for request in given.known_requests:
        category = given.charter.categories[request.category or ""]
        if not category.sensitive:
            continue
        path = f"{_BASE}.data_requests[{request.index}]"
        if request.optional is False:
            yield problem(f"{path}.optional", "not_optional", category=category.id)
        justification = request.justification
        if justification is not None and len(justification.strip()) < minimum:
            yield problem(
                f"{path}.justification",
                "justification",
                category=category.id,
                minimum=str(minimum),
            )


@rule(
    id="retention.bounded",
    article="06c",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="La durée de conservation est déclarée en jours et ne dépasse pas le plafond de la charte.",
        en="The retention period is declared in days and does not exceed the charter's ceiling.",
    ),
    patient=Text(
        fr="L'application garderait vos données plus longtemps que la charte ne le permet.",
        en="The app would keep your data longer than the charter allows.",
    ),
    messages={
        "negative": Text(
            fr="{field} vaut {days} : indiquez un nombre de jours positif ou nul.",
            en="{field} is {days}: give a number of days that is zero or more.",
        ),
        "too_long": Text(
            fr="{field} vaut {days} jours ; la charte {version} plafonne la conservation à "
            "{maximum} jours. Réduisez la durée.",
            en="{field} is {days} days; charter {version} caps retention at {maximum} days. Shorten it.",
        ),
    },
)
def retention_bounded(given: RuleInput) -> Iterator[Problem]:
    manifest = given.registration.manifest
    retention = manifest.retention if manifest else None
    days = retention.days if retention else None
    if days is None:
        return
    path = f"{_BASE}.retention.days"
    if days < 0:
        yield problem(path, "negative", days=str(days))
    elif days > given.charter.retention_max_days:
        yield problem(
            path,
            "too_long",
            days=str(days),
            version=given.charter.version,
            maximum=str(given.charter.retention_max_days),
        )


@rule(
    id="research.never_bundled",
    article="04",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="Les données demandées pour contribuer à la recherche sont toutes facultatives : "
        "refuser la recherche ne retire rien au reste du service.",
        en="Data requested for research contribution are all optional: refusing research takes "
        "nothing away from the rest of the service.",
    ),
    patient=Text(
        fr="L'application vous obligerait à donner vos données à la recherche pour utiliser le "
        "service, alors que cela doit rester votre libre choix.",
        en="The app would make you give your data to research in order to use the service, "
        "when that must remain your free choice.",
    ),
    messages={
        "not_optional": Text(
            fr="La demande de « {category} » pour « {purpose} » doit être facultative ({field} à "
            "true) : un patient qui refuse la recherche doit garder tout le service.",
            en="The request for '{category}' for '{purpose}' must be optional ({field} set to "
            "true): a patient who refuses research must keep the whole service.",
        ),
    },
)
def research_never_bundled(given: RuleInput) -> Iterator[Problem]:
    for request in given.known_requests:
        purpose = given.charter.purposes.get(request.purpose or "")
        if purpose is None or not purpose.never_bundled or request.optional is not False:
            continue
        yield problem(
            f"{_BASE}.data_requests[{request.index}].optional",
            "not_optional",
            category=request.category or "",
            purpose=purpose.id,
        )

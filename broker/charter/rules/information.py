"""Rules on what the patient is told before consenting: purposes (01), who publishes the app and
how it lives (06a), and who else gets the data (07)."""

from __future__ import annotations

from collections.abc import Iterator

from broker.charter.rules.base import (
    Problem,
    RuleInput,
    Severity,
    is_blank,
    is_country,
    is_email,
    problem,
    rule,
    safe_value,
)
from broker.charter.vocabulary import Text

__all__ = [
    "business_model_conflict_of_interest",
    "business_model_declared",
    "business_model_not_forbidden",
    "funding_disclosed",
    "publisher_identity_complete",
    "purpose_described",
    "purpose_user_facing",
    "third_parties_disclosed",
]

_BASE = "charter_manifest"

_PUBLISHER_FIELDS = {
    "legal_name": Text(fr="la raison sociale", en="the legal name"),
    "registration_number": Text(fr="le numéro d'immatriculation", en="the registration number"),
    "country": Text(fr="le pays", en="the country"),
    "address": Text(fr="l'adresse", en="the address"),
    "contact_email": Text(fr="l'adresse électronique de contact", en="the contact e-mail address"),
    "dpo_email": Text(
        fr="l'adresse électronique du délégué à la protection des données",
        en="the data protection officer's e-mail address",
    ),
}

_BLANK = Text(
    fr="Indiquez {what} dans {field} : ce champ est vide.",
    en="Give {what} in {field}: the field is empty.",
)
_COUNTRY = Text(
    fr="« {value} » n'est pas un code pays ISO 3166-1 alpha-2 en majuscules (par exemple FR) ; "
    "corrigez {field}.",
    en="'{value}' is not an ISO 3166-1 alpha-2 country code in capitals (for example FR); correct {field}.",
)


@rule(
    id="purpose.user_facing",
    article="01",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="L'application déclare au moins une finalité qui sert le patient lui-même.",
        en="The app declares at least one purpose that serves the patients themselves.",
    ),
    patient=Text(
        fr="L'application ne dit pas en quoi elle vous sert.",
        en="The app does not say how it serves you.",
    ),
    messages={
        "none": Text(
            fr="Déclarez dans {field} au moins une finalité de la charte : c'est ce qui dit au "
            "patient à quoi l'application lui sert.",
            en="Declare at least one of the charter's purposes in {field}: it tells the patient "
            "what the app does for them.",
        ),
        "not_user_facing": Text(
            fr="Aucune des finalités déclarées dans {field} ne sert directement le patient ; "
            "ajoutez celle qui décrit le service que vous lui rendez.",
            en="None of the purposes declared in {field} serves the patient directly; add the "
            "one that describes the service you give them.",
        ),
    },
)
def purpose_user_facing(given: RuleInput) -> Iterator[Problem]:
    manifest = given.registration.manifest
    if manifest is None or manifest.purposes is None:
        return
    path = f"{_BASE}.purposes"
    declared = given.declared_purposes
    if declared:
        if not any(given.charter.purposes[p].user_facing for p in declared):
            yield problem(path, "not_user_facing")
    # Purposes that are there but unknown or malformed are reported by the manifest.* rules.
    elif not manifest.purposes and not given.has_shape_problem_under(path):
        yield problem(path, "none")


@rule(
    id="purpose.described",
    article="06a",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="Chaque finalité déclarée est expliquée en une phrase claire.",
        en="Each declared purpose is explained in one clear sentence.",
    ),
    patient=Text(
        fr="L'application n'explique pas ce qu'elle fait pour chacun des usages qu'elle annonce.",
        en="The app does not explain what it does for each use it announces.",
    ),
    messages={
        "blank": Text(
            fr="Décrivez dans {field}, en une phrase qu'un patient comprend, ce que l'application "
            "fait pour la finalité « {purpose} ».",
            en="Describe in {field}, in a sentence a patient understands, what the app does for "
            "the purpose '{purpose}'.",
        ),
    },
)
def purpose_described(given: RuleInput) -> Iterator[Problem]:
    manifest = given.registration.manifest
    for purpose in (manifest.purposes if manifest else None) or ():
        if purpose.description is not None and is_blank(purpose.description):
            yield problem(
                f"{_BASE}.purposes[{purpose.index}].description",
                "blank",
                purpose=safe_value(purpose.id or ""),
            )


@rule(
    id="publisher.identity_complete",
    article="06a",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="L'éditeur est identifié : raison sociale, numéro d'immatriculation, pays, adresse, "
        "adresse de contact et adresse du délégué à la protection des données.",
        en="The publisher is identified: legal name, registration number, country, address, "
        "contact address and data protection officer's address.",
    ),
    patient=Text(
        fr="On ne sait pas exactement qui publie cette application, ni comment le joindre.",
        en="It is not clear who publishes this app, or how to reach them.",
    ),
    messages={
        "blank": _BLANK,
        "email": Text(
            fr="« {value} » n'est pas une adresse électronique ; corrigez {field}.",
            en="'{value}' is not an e-mail address; correct {field}.",
        ),
        "country": _COUNTRY,
    },
)
def publisher_identity_complete(given: RuleInput) -> Iterator[Problem]:
    manifest = given.registration.manifest
    publisher = manifest.publisher if manifest else None
    if publisher is None:
        return
    for name, what in _PUBLISHER_FIELDS.items():
        value: str | None = getattr(publisher, name)
        path = f"{_BASE}.publisher.{name}"
        if value is None:
            continue
        if is_blank(value):
            yield problem(path, "blank", what=what)
        elif name.endswith("_email") and not is_email(value):
            yield problem(path, "email", value=safe_value(value))
        elif name == "country" and not is_country(value):
            yield problem(path, "country", value=safe_value(value))


@rule(
    id="business_model.declared",
    article="06a",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="Le modèle économique est choisi dans la liste de la charte et expliqué en clair.",
        en="The business model is taken from the charter's list and explained in plain words.",
    ),
    patient=Text(
        fr="L'application ne dit pas clairement comment elle gagne sa vie.",
        en="The app does not say clearly how it makes its living.",
    ),
    messages={
        "blank": Text(
            fr="Expliquez en clair dans {field} comment l'application gagne sa vie : qui paie, "
            "combien, en échange de quoi.",
            en="Explain in plain words in {field} how the app makes its living: who pays, how "
            "much, for what.",
        ),
    },
)
def business_model_declared(given: RuleInput) -> Iterator[Problem]:
    manifest = given.registration.manifest
    model = manifest.business_model if manifest else None
    if model is not None and model.description is not None and is_blank(model.description):
        yield problem(f"{_BASE}.business_model.description", "blank")


@rule(
    id="business_model.not_forbidden",
    article="07",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="Le modèle économique n'est ni la vente de données, ni leur courtage, ni la publicité "
        "ciblée grâce aux données de santé.",
        en="The business model is neither selling data, nor brokering it, nor advertising "
        "targeted with health data.",
    ),
    patient=Text(
        fr="Cette application gagnerait de l'argent avec vos données, ce que la charte interdit.",
        en="This app would make money from your data, which the charter forbids.",
    ),
    messages={
        "forbidden": Text(
            fr="Le modèle économique « {model} » est interdit par l'article {article} de la "
            "charte : une application ne peut pas vivre de la vente ou de l'exploitation "
            "commerciale des données des patients. Choisissez un autre modèle dans {field}.",
            en="The business model '{model}' is forbidden by article {article} of the charter: "
            "an app may not live off selling or commercially exploiting patients' data. Choose "
            "another model in {field}.",
        ),
    },
)
def business_model_not_forbidden(given: RuleInput) -> Iterator[Problem]:
    manifest = given.registration.manifest
    declared = manifest.business_model if manifest else None
    model = given.charter.business_models.get(declared.model or "") if declared else None
    if model is not None and model.forbidden:
        yield problem(
            f"{_BASE}.business_model.model",
            "forbidden",
            model=model.id,
            article=model.article or "07",
        )


@rule(
    id="business_model.conflict_of_interest",
    article="07",
    severity=Severity.NEEDS_REVIEW,
    requirement=Text(
        fr="Un modèle économique exposé à un conflit d'intérêts (par exemple financé par un "
        "laboratoire pharmaceutique) est examiné par un opérateur.",
        en="A business model open to a conflict of interest (for example funded by a "
        "pharmaceutical company) is examined by an operator.",
    ),
    patient=Text(
        fr="Cette application est financée par une entreprise qui peut avoir intérêt à orienter "
        "vos soins ; une personne l'examine avant qu'elle vous soit proposée.",
        en="This app is funded by a company that may have an interest in steering your care; a "
        "person examines it before it is offered to you.",
    ),
    messages={
        "review": Text(
            fr="Le modèle « {model} » est permis mais doit être examiné : un opérateur vérifiera "
            "que le financeur n'oriente ni les contenus ni les traitements proposés. Dites dans "
            "charter_manifest.business_model.description ce que le financeur peut et ne peut "
            "pas faire.",
            en="The model '{model}' is allowed but must be examined: an operator will check that "
            "the funder steers neither the content nor the treatments offered. Say in "
            "charter_manifest.business_model.description what the funder may and may not do.",
        ),
    },
)
def business_model_conflict_of_interest(given: RuleInput) -> Iterator[Problem]:
    manifest = given.registration.manifest
    declared = manifest.business_model if manifest else None
    model = given.charter.business_models.get(declared.model or "") if declared else None
    if model is not None and model.needs_review:
        yield problem(f"{_BASE}.business_model.model", "review", model=model.id)


@rule(
    id="business_model.funding_disclosed",
    article="06a",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="Les sources de financement sont listées, chacune avec son nom et sa nature.",
        en="The funding sources are listed, each with its name and kind.",
    ),
    patient=Text(
        fr="L'application ne dit pas qui la finance.",
        en="The app does not say who funds it.",
    ),
    messages={
        "none": Text(
            fr="Listez dans {field} qui finance l'application (les fondateurs eux-mêmes, des "
            "investisseurs, une subvention, les abonnements…).",
            en="List in {field} who funds the app (the founders themselves, investors, a grant, "
            "subscriptions…).",
        ),
        "blank": _BLANK,
    },
)
def funding_disclosed(given: RuleInput) -> Iterator[Problem]:
    manifest = given.registration.manifest
    declared = manifest.business_model if manifest else None
    if declared is None or declared.funding_sources is None:
        return
    path = f"{_BASE}.business_model.funding_sources"
    if not declared.funding_sources and not given.has_shape_problem_under(path):
        yield problem(path, "none")
    for source in declared.funding_sources:
        if source.name is not None and is_blank(source.name):
            yield problem(
                f"{path}[{source.index}].name",
                "blank",
                what=Text(fr="le nom du financeur", en="the funder's name"),
            )
        if source.kind is not None and is_blank(source.kind):
            yield problem(
                f"{path}[{source.index}].kind",
                "blank",
                what=Text(fr="la nature du financement", en="the kind of funding"),
            )


@rule(
    id="third_parties.disclosed",
    article="07",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="Chaque destinataire des données hors de l'éditeur est nommé, avec ce qu'il en fait et son pays.",
        en="Every recipient of the data other than the publisher is named, with what it does "
        "with it and its country.",
    ),
    patient=Text(
        fr="L'application ne dit pas clairement à qui elle transmet vos données, ni pourquoi.",
        en="The app does not say clearly whom it passes your data to, or why.",
    ),
    messages={"blank": _BLANK, "country": _COUNTRY},
)
def third_parties_disclosed(given: RuleInput) -> Iterator[Problem]:
    manifest = given.registration.manifest
    for party in (manifest.third_parties if manifest else None) or ():
        path = f"{_BASE}.third_parties[{party.index}]"
        if party.name is not None and is_blank(party.name):
            yield problem(
                f"{path}.name", "blank", what=Text(fr="le nom du destinataire", en="the recipient's name")
            )
        if party.purpose is not None and is_blank(party.purpose):
            yield problem(
                f"{path}.purpose",
                "blank",
                what=Text(
                    fr="ce que ce destinataire fait des données", en="what this recipient does with the data"
                ),
            )
        if party.country is not None and not is_country(party.country):
            yield problem(f"{path}.country", "country", value=safe_value(party.country))

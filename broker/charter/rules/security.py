"""Rules on where the data live and travel (06e, 05) and on the redirect back to the app (06e)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlsplit

from broker.charter.rules.base import (
    Problem,
    RuleInput,
    Severity,
    is_blank,
    is_country,
    problem,
    rule,
    safe_value,
)
from broker.charter.vocabulary import Text

__all__ = [
    "certification_review",
    "health_data_certified",
    "hosting_declared",
    "outside_eu_review",
    "redirect_uri_problem",
    "redirect_uris_https",
    "transfer_declared_consistently",
]

_BASE = "charter_manifest"
# RFC 8252 §7.3 and §8.3: native apps listen on a loopback address over plain http. "localhost"
# is accepted too because development servers print it, and the broker only allows any of them
# when the deployment says it is a development one.
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_SPACE = re.compile(r"\s")


def _outside_eea(given: RuleInput) -> list[tuple[str, str]]:
    """(field, country) for each declared place of the data outside the EU and the EEA."""
    manifest = given.registration.manifest
    if manifest is None:
        return []
    places: list[tuple[str, str]] = []
    if manifest.hosting is not None and manifest.hosting.country is not None:
        places.append((f"{_BASE}.hosting.country", manifest.hosting.country))
    for party in manifest.third_parties or ():
        if party.country is not None:
            places.append((f"{_BASE}.third_parties[{party.index}].country", party.country))
    # A malformed code is reported by the rule on its own field; it is no evidence either way.
    return [
        (path, country)
        for path, country in places
        if is_country(country) and not given.charter.in_eea(country)
    ]


@rule(
    id="hosting.declared",
    article="06e",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="L'hébergeur des données est nommé, avec le pays où il les garde.",
        en="The host of the data is named, with the country where it keeps them.",
    ),
    patient=Text(
        fr="L'application ne dit pas qui héberge vos données, ni dans quel pays.",
        en="The app does not say who hosts your data, or in which country.",
    ),
    messages={
        "provider_blank": Text(
            fr="Nommez dans {field} l'hébergeur qui garde les données de l'application.",
            en="Name in {field} the host that keeps the app's data.",
        ),
        "country": Text(
            fr="« {value} » n'est pas un code pays ISO 3166-1 alpha-2 en majuscules (par exemple "
            "FR) ; indiquez dans {field} le pays où les données sont hébergées.",
            en="'{value}' is not an ISO 3166-1 alpha-2 country code in capitals (for example "
            "FR); give in {field} the country where the data are hosted.",
        ),
    },
)
def hosting_declared(given: RuleInput) -> Iterator[Problem]:
    manifest = given.registration.manifest
    hosting = manifest.hosting if manifest else None
    if hosting is None:
        return
    if hosting.provider is not None and is_blank(hosting.provider):
        yield problem(f"{_BASE}.hosting.provider", "provider_blank")
    if hosting.country is not None and not is_country(hosting.country):
        yield problem(f"{_BASE}.hosting.country", "country", value=safe_value(hosting.country))


@rule(
    id="hosting.health_data_certified",
    article="06e",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="Une application qui demande des données de santé déclare la certification de son "
        "hébergeur pour les données de santé (en France : HDS).",
        en="An app that requests health data declares its host's health-data certification (in France: HDS).",
    ),
    patient=Text(
        fr="L'application ne dit pas que vos données de santé seraient gardées chez un hébergeur "
        "certifié, comme la loi l'exige.",
        en="The app does not say that your health data would be kept by a certified host, as "
        "the law requires.",
    ),
    messages={
        "missing": Text(
            fr="L'application demande des données de santé ({categories}) : indiquez dans "
            "{field} la certification de son hébergeur pour les données de santé ({accepted}), "
            "et dans charter_manifest.hosting.certificate_id le numéro du certificat.",
            en="The app requests health data ({categories}): give in {field} its host's "
            "health-data certification ({accepted}), and the certificate number in "
            "charter_manifest.hosting.certificate_id.",
        ),
    },
)
def health_data_certified(given: RuleInput) -> Iterator[Problem]:
    manifest = given.registration.manifest
    hosting = manifest.hosting if manifest else None
    if hosting is None or not given.health_data_requested:
        return
    certification = hosting.health_data_certification
    if certification is None or is_blank(certification):
        yield problem(
            f"{_BASE}.hosting.health_data_certification",
            "missing",
            categories=safe_value(", ".join(given.health_data_requested)),
            accepted=", ".join(given.charter.health_data_certifications),
        )


@rule(
    id="hosting.certification_review",
    article="06e",
    severity=Severity.NEEDS_REVIEW,
    requirement=Text(
        fr="Une certification d'hébergement que la charte ne reconnaît pas, ou sans numéro de "
        "certificat, est vérifiée par un opérateur.",
        en="A hosting certification the charter does not recognise, or one without a "
        "certificate number, is checked by an operator.",
    ),
    patient=Text(
        fr="Une personne doit encore vérifier que vos données de santé seraient hébergées dans les règles.",
        en="A person must still check that your health data would be hosted lawfully.",
    ),
    messages={
        "unrecognised": Text(
            fr="La certification « {certification} » n'est pas de celles que la charte "
            "reconnaît ({accepted}) : un opérateur vérifiera qu'elle vaut certification "
            "d'hébergement de données de santé.",
            en="The certification '{certification}' is not one the charter recognises "
            "({accepted}): an operator will check that it amounts to a health-data hosting "
            "certification.",
        ),
        "no_certificate_id": Text(
            fr="Indiquez dans {field} le numéro du certificat {certification} de l'hébergeur, "
            "pour qu'un opérateur puisse le vérifier.",
            en="Give in {field} the number of the host's {certification} certificate, so that "
            "an operator can check it.",
        ),
    },
)
def certification_review(given: RuleInput) -> Iterator[Problem]:
    manifest = given.registration.manifest
    hosting = manifest.hosting if manifest else None
    if hosting is None or not given.health_data_requested:
        return
    certification = hosting.health_data_certification
    if certification is None or is_blank(certification):
        return  # hosting.health_data_certified refuses it
    accepted = given.charter.health_data_certifications
    if certification not in accepted:
        yield problem(
            f"{_BASE}.hosting.health_data_certification",
            "unrecognised",
            certification=safe_value(certification),
            accepted=", ".join(accepted),
        )
    elif hosting.certificate_id is None or is_blank(hosting.certificate_id):
        yield problem(
            f"{_BASE}.hosting.certificate_id",
            "no_certificate_id",
            certification=certification,
        )


@rule(
    id="transfer.data_leaves_eu_consistent",
    article="05",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="La déclaration « les données quittent l'Union européenne » est cohérente avec le "
        "pays de l'hébergeur et ceux des destinataires.",
        en="The statement 'data leave the European Union' agrees with the countries of the "
        "host and of the recipients.",
    ),
    patient=Text(
        fr="L'application dit que vos données restent en Europe alors que ce n'est pas le cas.",
        en="The app says your data stay in Europe when they do not.",
    ),
    messages={
        "undeclared": Text(
            fr="{field} vaut false, mais {where} désigne un pays hors de l'Union européenne et "
            "de l'EEE ({country}). Déclarez data_leaves_eu à true, ou corrigez le pays.",
            en="{field} is false, but {where} names a country outside the European Union and "
            "the EEA ({country}). Set data_leaves_eu to true, or correct the country.",
        ),
    },
)
def transfer_declared_consistently(given: RuleInput) -> Iterator[Problem]:
    manifest = given.registration.manifest
    if manifest is None or manifest.data_leaves_eu is not False:
        return
    for where, country in _outside_eea(given):
        yield problem(f"{_BASE}.data_leaves_eu", "undeclared", where=where, country=country)


@rule(
    id="transfer.outside_eu_review",
    article="05",
    severity=Severity.NEEDS_REVIEW,
    requirement=Text(
        fr="Des données de santé qui quittent l'Union européenne et l'EEE sont examinées par un "
        "opérateur, qui vérifie la base légale du transfert.",
        en="Health data leaving the European Union and the EEA are examined by an operator, who "
        "checks the legal basis of the transfer.",
    ),
    patient=Text(
        fr="Vos données de santé pourraient quitter l'Europe ; une personne vérifie qu'elles y "
        "resteraient protégées comme la loi européenne l'exige.",
        en="Your health data could leave Europe; a person checks that they would stay protected "
        "as European law requires.",
    ),
    messages={
        "outside": Text(
            fr="{field} ({country}) est hors de l'Union européenne et de l'EEE et l'application "
            "demande des données de santé : un opérateur vérifiera la base légale du transfert "
            "(décision d'adéquation, clauses contractuelles types).",
            en="{field} ({country}) is outside the European Union and the EEA and the app "
            "requests health data: an operator will check the legal basis of the transfer "
            "(adequacy decision, standard contractual clauses).",
        ),
        "declared": Text(
            fr="{field} vaut true et l'application demande des données de santé : un opérateur "
            "vérifiera où elles vont et la base légale du transfert.",
            en="{field} is true and the app requests health data: an operator will check where "
            "they go and the legal basis of the transfer.",
        ),
    },
)
def outside_eu_review(given: RuleInput) -> Iterator[Problem]:
    manifest = given.registration.manifest
    # When data_leaves_eu is false and a place is outside, the consistency rule refuses; the
    # review only concerns a transfer the app owns up to.
    if manifest is None or manifest.data_leaves_eu is not True or not given.health_data_requested:
        return
    places = _outside_eea(given)
    for where, country in places:
        yield problem(where, "outside", country=country)
    if not places:
        yield problem(f"{_BASE}.data_leaves_eu", "declared")


def redirect_uri_problem(uri: str, *, allow_loopback_http: bool) -> str | None:
    """The reason a redirect URI is refused, or None. RFC 9700 §2.6, RFC 6749 §3.1.2."""
    if not uri or not uri.isprintable() or _SPACE.search(uri):
        return "invalid"
    try:
        parts = urlsplit(uri)
        host = parts.hostname
        _ = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError:
        return "invalid"
    # RFC 6749 §3.1.2: the redirection endpoint URI MUST NOT include a fragment component.
    if "#" in uri:
        return "fragment"
    scheme = parts.scheme.lower()
    if scheme == "https":
        return None if host else "invalid"
    if scheme == "http" and host in _LOOPBACK_HOSTS:
        return None if allow_loopback_http else "loopback"
    return "not_https"


@rule(
    id="redirect_uris.https",
    article="06e",
    severity=Severity.REFUSE,
    requirement=Text(
        fr="Les adresses de retour vers l'application sont en https (http sur la machine "
        "locale seulement dans un déploiement de développement).",
        en="The addresses back to the app use https (http on the local machine only in a "
        "development deployment).",
    ),
    patient=Text(
        fr="La connexion par laquelle vous revenez vers l'application après votre accord ne "
        "serait pas protégée.",
        en="The connection that takes you back to the app after you agree would not be protected.",
    ),
    messages={
        "none": Text(
            fr="Déclarez au moins une adresse de retour https dans {field}.",
            en="Declare at least one https redirect URI in {field}.",
        ),
        "not_https": Text(
            fr="L'adresse de retour « {value} » doit commencer par https:// (RFC 9700 §2.6).",
            en="The redirect URI '{value}' must start with https:// (RFC 9700 §2.6).",
        ),
        "loopback": Text(
            fr="L'adresse de retour locale « {value} » n'est acceptée que par un broker de "
            "développement ; en production, utilisez une adresse https://.",
            en="The loopback redirect URI '{value}' is only accepted by a development broker; "
            "in production, use an https:// address.",
        ),
        "fragment": Text(
            fr="L'adresse de retour « {value} » ne doit pas contenir de fragment (#) (RFC 6749 §3.1.2).",
            en="The redirect URI '{value}' must not contain a fragment (#) (RFC 6749 §3.1.2).",
        ),
        "invalid": Text(
            fr="« {value} » n'est pas une adresse de retour valide : donnez une URL absolue "
            "https:// avec un nom d'hôte.",
            en="'{value}' is not a valid redirect URI: give an absolute https:// URL with a host name.",
        ),
    },
)
def redirect_uris_https(given: RuleInput) -> Iterator[Problem]:
    uris = given.registration.redirect_uris
    if uris is None:
        return
    if not uris and not given.has_shape_problem_under("redirect_uris"):
        yield problem("redirect_uris", "none")
    for path, uri in uris:
        reason = redirect_uri_problem(uri, allow_loopback_http=given.allow_loopback_http)
        if reason is not None:
            yield problem(path, reason, value=safe_value(uri))

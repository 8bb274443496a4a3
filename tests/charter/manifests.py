"""Registration documents for the charter tests: compliant apps and targeted changes to them.

`app(...)` builds a compliant registration from a few choices; `changed(doc, {path: value})`
returns a deep copy with fields set, removed (`DELETE`) or appended (`APPEND`). Paths are the
JSON paths findings use: "charter_manifest.data_requests[0].optional".

The compliant apps are the services the founding document imagines (MISSION.md).
"""

from __future__ import annotations

import copy
import random
import re
from typing import Any

from broker.charter import Charter

__all__ = [
    "APPEND",
    "COMPLIANT",
    "DELETE",
    "app",
    "changed",
    "request",
    "varied_app",
]

Json = Any


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


DELETE = _Marker("DELETE")
# changed(doc, {"charter_manifest.third_parties": APPEND(item)}) appends item to the list.


class APPEND:
    def __init__(self, item: Json) -> None:
        self.item = item


def request(
    category: str, purpose: str, *, optional: bool = False, why: str | None = None
) -> dict[str, Json]:
    return {
        "category": category,
        "purpose": purpose,
        "optional": optional,
        "justification": why
        if why is not None
        else f"The app shows the patient's {category.replace('_', ' ')} for this purpose.",
    }


def app(
    name: str,
    *,
    host: str,
    purposes: dict[str, str],
    requests: list[dict[str, Json]],
    model: str = "subscription",
    model_description: str = "A monthly subscription paid by the user; no other income.",
    retention_days: int = 730,
    hosting_country: str = "FR",
    certification: str | None = "HDS",
    third_parties: list[dict[str, Json]] | None = None,
    data_leaves_eu: bool = False,
) -> dict[str, Json]:
    """A compliant registration (given compliant choices), shaped like MANIFEST.md's example."""
    hosting: dict[str, Json] = {"provider": "Hébergeur Santé SA", "country": hosting_country}
    if certification is not None:
        hosting["health_data_certification"] = certification
        hosting["certificate_id"] = f"{certification}-2025-0042"
    return {
        "client_name": name,
        "client_uri": f"https://{host}",
        "logo_uri": f"https://{host}/logo.png",
        "redirect_uris": [f"https://{host}/callback"],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks_uri": f"https://{host}/jwks.json",
        "policy_uri": f"https://{host}/privacy",
        "contacts": [f"dpo@{host}"],
        "software_version": "1.0.0",
        "charter_manifest": {
            "publisher": {
                "legal_name": f"{name} SAS",
                "registration_number": "RCS Lyon 912 345 678",
                "country": "FR",
                "address": "12 rue de la Santé, 69003 Lyon",
                "contact_email": f"contact@{host}",
                "dpo_email": f"dpo@{host}",
            },
            "business_model": {
                "model": model,
                "description": model_description,
                "funding_sources": [
                    {"name": "Founders and a public innovation grant", "kind": "equity_and_grant"}
                ],
            },
            "purposes": [{"id": pid, "description": text} for pid, text in purposes.items()],
            "data_requests": requests,
            "retention": {
                "days": retention_days,
                "description": "Deleted after the last use, or at once on request.",
            },
            "rights": {
                "access": f"https://{host}/account/export",
                "rectification": f"mailto:dpo@{host}",
                "erasure": f"https://{host}/account/delete",
                "portability": f"dpo@{host}",
            },
            "hosting": hosting,
            "third_parties": third_parties or [],
            "data_leaves_eu": data_leaves_eu,
        },
    }


_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _steps(path: str) -> list[str | int]:
    return [name if name else int(index) for name, index in _STEP.findall(path)]


def changed(document: Json, changes: dict[str, Json]) -> Json:
    """A deep copy of `document` with each path set to its value (or DELETE'd, or APPEND'ed to)."""
    result = copy.deepcopy(document)
    for path, value in changes.items():
        *parents, last = _steps(path)
        target = result
        for step in parents:
            target = target[step]
        if value is DELETE:
            del target[last]
        elif isinstance(value, APPEND):
            target[last].append(copy.deepcopy(value.item))
        else:
            target[last] = copy.deepcopy(value)
    return result


def _glycemie() -> dict[str, Json]:
    return app(
        "Suivi Glycémie",
        host="glycemie.example",
        purposes={"chronic_disease_followup": "Follow one's blood glucose and HbA1c over time."},
        requests=[
            request(
                "lab_results",
                "chronic_disease_followup",
                why="HbA1c and fasting glucose are the measures the chart shows.",
            ),
            request(
                "device_measurements",
                "chronic_disease_followup",
                optional=True,
                why="Readings from a connected glucose meter, if the patient has one.",
            ),
        ],
    )


# The services of the founding document, each compliant: the charter must approve them.
COMPLIANT: dict[str, dict[str, Json]] = {
    "emergency card «Mon Livret Santé»": app(
        "Mon Livret Santé",
        host="livret-sante.example",
        model="freemium",
        model_description="The card is free; printing a plastic card costs 5 €.",
        purposes={
            "emergency_card": "Show emergency services your blood group, allergies, treatments and who to call."
        },
        requests=[
            request("identity", "emergency_card"),
            request("blood_group", "emergency_card"),
            request("allergies", "emergency_card"),
            request("medications", "emergency_card"),
            request("conditions", "emergency_card", optional=True),
            request("emergency_contacts", "emergency_card"),
        ],
    ),
    "diabetes follow-up «Suivi Glycémie»": _glycemie(),
    "occupational-disease claim «MaSantéSynchro»": app(
        "MaSantéSynchro",
        host="masantesynchro.example",
        model="one_off_payment",
        model_description="30 € paid once by the worker when the claim file is ready.",
        purposes={
            "occupational_disease_claim": "Gather the reports and stays a claim for an occupational disease needs."
        },
        requests=[
            request("identity", "occupational_disease_claim"),
            request("contact_details", "occupational_disease_claim"),
            request("clinical_documents", "occupational_disease_claim"),
            request("encounters", "occupational_disease_claim"),
            request("conditions", "occupational_disease_claim"),
            request("reimbursements", "occupational_disease_claim", optional=True),
            request(
                "mental_health",
                "occupational_disease_claim",
                optional=True,
                why="A burn-out claim needs the psychiatrist's reports; only if you choose to add them.",
            ),
        ],
        retention_days=1825,
    ),
    "prevention «PoidsPlume»": app(
        "PoidsPlume",
        host="poidsplume.example",
        model="advertising_without_health_data",
        model_description="Free; shows sports-shop adverts chosen without any of your data.",
        purposes={
            "prevention_coaching": "Playful coaching towards a healthy weight with your scale and activity."
        },
        requests=[
            request("physical_activity", "prevention_coaching"),
            request("sleep", "prevention_coaching", optional=True),
            request("nutrition", "prevention_coaching", optional=True),
            request("device_measurements", "prevention_coaching", optional=True),
        ],
        retention_days=365,
    ),
    "health budget «Budget Santé»": app(
        "Budget Santé",
        host="budget-sante.example",
        model="insurer_funded",
        model_description="Paid by the mutual insurer for its members; the insurer sees no individual data.",
        purposes={"health_budget": "See what your care cost, what was reimbursed and what is left to pay."},
        requests=[
            request("reimbursements", "health_budget"),
            request("coverage", "health_budget"),
            request("medications", "health_budget", optional=True),
        ],
    ),
    "second opinion «Deuxième Avis»": app(
        "Deuxième Avis",
        host="deuxieme-avis.example",
        model="one_off_payment",
        model_description="90 € per opinion, paid by the patient, partly reimbursed by some mutuals.",
        purposes={"second_opinion": "Send your file to a specialist of your choice for a second opinion."},
        requests=[
            request("identity", "second_opinion"),
            request("clinical_documents", "second_opinion"),
            request("imaging", "second_opinion"),
            request("lab_results", "second_opinion"),
            request(
                "genetics",
                "second_opinion",
                optional=True,
                why="Genetic test results, only if the opinion concerns a hereditary disease.",
            ),
        ],
        retention_days=365,
    ),
    "doctor search «S+»": app(
        "S+",
        host="splus.example",
        model="freemium",
        model_description="Searching is free; booking reminders by text message cost 1 € a month.",
        purposes={"care_search": "Find doctors suited to your conditions, your cover and where you live."},
        requests=[
            request("conditions", "care_search", optional=True),
            request("coverage", "care_search"),
            request("geolocation", "care_search", optional=True),
        ],
        retention_days=90,
    ),
    "care coordination «Cercle Aidants»": app(
        "Cercle Aidants",
        host="cercle-aidants.example",
        model="public_service",
        model_description="Free; run by the regional health agency with public money.",
        purposes={"care_coordination": "Share treatments and appointments with the people who care for you."},
        requests=[
            request("identity", "care_coordination"),
            request("contact_details", "care_coordination"),
            request("emergency_contacts", "care_coordination"),
            request("medications", "care_coordination"),
            request("calendar", "care_coordination", optional=True),
        ],
    ),
    "personal health record «Coffre Santé»": app(
        "Coffre Santé",
        host="coffre-sante.example",
        purposes={
            "personal_health_record": "Keep all your health records in one place that only you control."
        },
        requests=[
            request("lab_results", "personal_health_record"),
            request("immunizations", "personal_health_record"),
            request("clinical_documents", "personal_health_record"),
            request("imaging", "personal_health_record", optional=True),
            request(
                "sexual_health",
                "personal_health_record",
                optional=True,
                why="HIV and STI results, only if you choose to keep them in your record.",
            ),
        ],
        retention_days=3650,
    ),
    "research contribution opt-in «Cohorte Glycémie»": app(
        "Cohorte Glycémie",
        host="cohorte.example",
        model="public_service",
        model_description="Free; run by a public research institute.",
        purposes={
            "chronic_disease_followup": "Follow your blood glucose over time.",
            "research_contribution": "If you wish, give your glucose results to a public study on diabetes.",
        },
        requests=[
            request("lab_results", "chronic_disease_followup"),
            request("lab_results", "research_contribution", optional=True),
            request("device_measurements", "research_contribution", optional=True),
        ],
    ),
    "non-health activity coach «Pas à Pas» (no certified host needed)": app(
        "Pas à Pas",
        host="pasapas.example",
        model="freemium",
        model_description="Free; a yearly 10 € option adds training plans.",
        purposes={"prevention_coaching": "Walk more, one step at a time."},
        requests=[request("physical_activity", "prevention_coaching")],
        certification=None,
        retention_days=365,
        third_parties=[{"name": "Cartes Libres SAS", "purpose": "Draws the walk maps.", "country": "DE"}],
    ),
    "HIV follow-up «Suivi VIH»": app(
        "Suivi VIH",
        host="suivi-vih.example",
        model="public_service",
        model_description="Free; funded by a patients' association and a public grant.",
        purposes={"chronic_disease_followup": "Follow your viral load and treatment over time."},
        requests=[
            request("lab_results", "chronic_disease_followup"),
            request("medications", "chronic_disease_followup"),
            request(
                "sexual_health",
                "chronic_disease_followup",
                optional=True,
                why="Your HIV diagnosis and viral load history, to draw the chart you asked for.",
            ),
        ],
    ),
}


def varied_app(rng: random.Random, charter: Charter, number: int = 0) -> dict[str, Json]:
    """A random app that follows every refusing rule of `charter` (pharma funding may still
    send it to review). Used by property tests and by bench/charter.py."""
    everyday = [p for p in charter.purposes.values() if not p.never_bundled]
    chosen = rng.sample(everyday, k=rng.randint(1, 2))
    if rng.random() < 0.3:
        chosen += [p for p in charter.purposes.values() if p.never_bundled]
    requests = []
    for purpose in chosen:
        for category_id in rng.sample(sorted(purpose.categories), k=rng.randint(1, 4)):
            category = charter.categories[category_id]
            optional = category.sensitive or purpose.never_bundled or rng.random() < 0.5
            why = f"The app needs {category.labels.en.lower()} to {purpose.labels.en.lower()}; see the help page."
            requests.append(request(category_id, purpose.id, optional=optional, why=why))
    allowed_models = [m.id for m in charter.business_models.values() if not m.forbidden]
    in_eea = sorted(charter.eea_countries)
    return app(
        f"App {number}",
        host=f"app{number}.example",
        purposes={p.id: f"What the app does for {p.labels.en.lower()}." for p in chosen},
        requests=requests,
        model=rng.choice(allowed_models),
        retention_days=rng.randint(0, charter.retention_max_days),
        hosting_country=rng.choice(["FR", "FR", "DE", "NL"]),
        third_parties=[
            {"name": f"Partner {i}", "purpose": "Sends appointment reminders.", "country": rng.choice(in_eea)}
            for i in range(rng.randint(0, 2))
        ],
    )

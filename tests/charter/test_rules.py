"""Table-driven: compliant apps are approved; each rule fails alone on a targeted change; a
manifest breaking several rules lists them all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import broker.charter
from broker.charter import RULES, Charter, Severity, Status, evaluate, load_charter
from broker.charter.loading import parse_charter
from tests.charter.manifests import APPEND, COMPLIANT, DELETE, app, changed, request

GLYCEMIE = COMPLIANT["diabetes follow-up «Suivi Glycémie»"]
LIVRET = COMPLIANT["emergency card «Mon Livret Santé»"]
COFFRE = COMPLIANT["personal health record «Coffre Santé»"]
COHORTE = COMPLIANT["research contribution opt-in «Cohorte Glycémie»"]
PAS_A_PAS = COMPLIANT["non-health activity coach «Pas à Pas» (no certified host needed)"]
M = "charter_manifest"
US_PARTY = {"name": "Cloud Analytics Inc.", "purpose": "Computes weekly activity summaries.", "country": "US"}

RULE_BY_ID = {rule.id: rule for rule in RULES}
PACKAGE_DATA = Path(broker.charter.__file__).parent / "data"


@pytest.fixture(scope="module")
def charter() -> Charter:
    return load_charter("1.0")


@pytest.mark.parametrize("name", sorted(COMPLIANT))
def test_founding_services_are_approved(charter: Charter, name: str) -> None:
    verdict = evaluate(COMPLIANT[name], charter)
    assert verdict.findings == ()
    assert verdict.status == Status.APPROVED
    assert verdict.to_json() == {"status": "approved", "charter_version": "1.0", "findings": []}


def test_loopback_redirect_is_approved_when_the_deployment_allows_it(charter: Charter) -> None:
    native = changed(GLYCEMIE, {"redirect_uris": ["http://127.0.0.1:8765/cb", "http://[::1]/cb"]})
    assert evaluate(native, charter, allow_loopback_http=True).status == Status.APPROVED


# (case, base, changes, rule, field): the change breaks exactly this rule, at this field.
SINGLE_FAULTS: list[tuple[str, object, dict[str, Any], str, str]] = [
    # 06a: the manifest's form
    ("registration is not an object", [GLYCEMIE], {}, "manifest.well_formed", "$"),
    ("charter_manifest missing", GLYCEMIE, {M: DELETE}, "manifest.well_formed", M),
    (
        "dpo_email missing",
        GLYCEMIE,
        {f"{M}.publisher.dpo_email": DELETE},
        "manifest.well_formed",
        f"{M}.publisher.dpo_email",
    ),
    (
        "retention days as a string",
        GLYCEMIE,
        {f"{M}.retention.days": "730"},
        "manifest.well_formed",
        f"{M}.retention.days",
    ),
    (
        "optional is not a boolean",
        GLYCEMIE,
        {f"{M}.data_requests[0].optional": "no"},
        "manifest.well_formed",
        f"{M}.data_requests[0].optional",
    ),
    (
        "data_leaves_eu missing",
        GLYCEMIE,
        {f"{M}.data_leaves_eu": DELETE},
        "manifest.well_formed",
        f"{M}.data_leaves_eu",
    ),
    (
        "rights is a list",
        GLYCEMIE,
        {f"{M}.rights": ["https://glycemie.example/rights"]},
        "manifest.well_formed",
        f"{M}.rights",
    ),
    (
        "unknown extra purpose",
        GLYCEMIE,
        {f"{M}.purposes": APPEND({"id": "weight_loss", "description": "Lose weight."})},
        "manifest.known_vocabulary",
        f"{M}.purposes[1].id",
    ),
    (
        "unknown category",
        GLYCEMIE,
        {f"{M}.data_requests": APPEND(request("dna_sequence", "chronic_disease_followup", optional=True))},
        "manifest.known_vocabulary",
        f"{M}.data_requests[2].category",
    ),
    (
        "unknown business model",
        GLYCEMIE,
        {f"{M}.business_model.model": "donations"},
        "manifest.known_vocabulary",
        f"{M}.business_model.model",
    ),
    (
        "only purpose has no id",
        GLYCEMIE,
        {f"{M}.purposes": [{"description": "Follow glucose."}], f"{M}.data_requests": []},
        "manifest.well_formed",
        f"{M}.purposes[0].id",
    ),
    (
        "only purpose is unknown",
        GLYCEMIE,
        {f"{M}.purposes[0].id": "weight_loss", f"{M}.data_requests": []},
        "manifest.known_vocabulary",
        f"{M}.purposes[0].id",
    ),
    # 01
    (
        "no purpose at all",
        GLYCEMIE,
        {f"{M}.purposes": [], f"{M}.data_requests": []},
        "purpose.user_facing",
        f"{M}.purposes",
    ),
    # 06a: information
    (
        "purpose without description",
        GLYCEMIE,
        {f"{M}.purposes[0].description": "  "},
        "purpose.described",
        f"{M}.purposes[0].description",
    ),
    (
        "publisher legal name blank",
        GLYCEMIE,
        {f"{M}.publisher.legal_name": ""},
        "publisher.identity_complete",
        f"{M}.publisher.legal_name",
    ),
    (
        "registration number blank",
        GLYCEMIE,
        {f"{M}.publisher.registration_number": " "},
        "publisher.identity_complete",
        f"{M}.publisher.registration_number",
    ),
    (
        "publisher address blank",
        GLYCEMIE,
        {f"{M}.publisher.address": ""},
        "publisher.identity_complete",
        f"{M}.publisher.address",
    ),
    (
        "dpo e-mail invalid",
        GLYCEMIE,
        {f"{M}.publisher.dpo_email": "dpo at glycemie"},
        "publisher.identity_complete",
        f"{M}.publisher.dpo_email",
    ),
    (
        "contact e-mail invalid",
        GLYCEMIE,
        {f"{M}.publisher.contact_email": "contact@"},
        "publisher.identity_complete",
        f"{M}.publisher.contact_email",
    ),
    (
        "publisher country not a code",
        GLYCEMIE,
        {f"{M}.publisher.country": "France"},
        "publisher.identity_complete",
        f"{M}.publisher.country",
    ),
    (
        "business model not explained",
        GLYCEMIE,
        {f"{M}.business_model.description": ""},
        "business_model.declared",
        f"{M}.business_model.description",
    ),
    (
        "funding sources empty",
        GLYCEMIE,
        {f"{M}.business_model.funding_sources": []},
        "business_model.funding_disclosed",
        f"{M}.business_model.funding_sources",
    ),
    (
        "funder without a name",
        GLYCEMIE,
        {f"{M}.business_model.funding_sources[0].name": ""},
        "business_model.funding_disclosed",
        f"{M}.business_model.funding_sources[0].name",
    ),
    # 07
    (
        "sale of data",
        GLYCEMIE,
        {f"{M}.business_model.model": "sale_of_data"},
        "business_model.not_forbidden",
        f"{M}.business_model.model",
    ),
    (
        "data brokerage",
        LIVRET,
        {f"{M}.business_model.model": "data_brokerage"},
        "business_model.not_forbidden",
        f"{M}.business_model.model",
    ),
    (
        "advertising targeted with health data",
        COFFRE,
        {f"{M}.business_model.model": "health_targeted_advertising"},
        "business_model.not_forbidden",
        f"{M}.business_model.model",
    ),
    (
        "pharma-funded (review)",
        GLYCEMIE,
        {f"{M}.business_model.model": "pharma_funded"},
        "business_model.conflict_of_interest",
        f"{M}.business_model.model",
    ),
    (
        "third party without purpose",
        GLYCEMIE,
        {f"{M}.third_parties": [{"name": "Labo Stats", "purpose": "", "country": "FR"}]},
        "third_parties.disclosed",
        f"{M}.third_parties[0].purpose",
    ),
    (
        "third party without name",
        GLYCEMIE,
        {f"{M}.third_parties": [{"name": " ", "purpose": "Statistics.", "country": "FR"}]},
        "third_parties.disclosed",
        f"{M}.third_parties[0].name",
    ),
    (
        "third party country not a code",
        GLYCEMIE,
        {f"{M}.third_parties": [{"name": "Labo Stats", "purpose": "Statistics.", "country": "Germany"}]},
        "third_parties.disclosed",
        f"{M}.third_parties[0].country",
    ),
    # 06c
    (
        "emergency card asks for location",
        LIVRET,
        {f"{M}.data_requests": APPEND(request("geolocation", "emergency_card", optional=True))},
        "minimisation.category_allowed_by_purpose",
        f"{M}.data_requests[6]",
    ),
    (
        "diabetes app asks for imaging",
        GLYCEMIE,
        {f"{M}.data_requests": APPEND(request("imaging", "chronic_disease_followup"))},
        "minimisation.category_allowed_by_purpose",
        f"{M}.data_requests[2]",
    ),
    (
        "request names an undeclared purpose",
        GLYCEMIE,
        {f"{M}.data_requests": APPEND(request("lab_results", "research_contribution", optional=True))},
        "minimisation.category_allowed_by_purpose",
        f"{M}.data_requests[2]",
    ),
    (
        "request without justification",
        GLYCEMIE,
        {f"{M}.data_requests[1].justification": ""},
        "minimisation.request_justified",
        f"{M}.data_requests[1].justification",
    ),
    (
        "sensitive category not optional",
        COFFRE,
        {f"{M}.data_requests[4].optional": False},
        "minimisation.sensitive_category_opt_in",
        f"{M}.data_requests[4].optional",
    ),
    (
        "sensitive category without justification",
        COFFRE,
        {f"{M}.data_requests[4].justification": ""},
        "minimisation.sensitive_category_opt_in",
        f"{M}.data_requests[4].justification",
    ),
    (
        "sensitive category with a vague justification",
        COFFRE,
        {f"{M}.data_requests[4].justification": "needed"},
        "minimisation.sensitive_category_opt_in",
        f"{M}.data_requests[4].justification",
    ),
    (
        "retention too long",
        GLYCEMIE,
        {f"{M}.retention.days": 3651},
        "retention.bounded",
        f"{M}.retention.days",
    ),
    ("retention negative", GLYCEMIE, {f"{M}.retention.days": -1}, "retention.bounded", f"{M}.retention.days"),
    # 04
    (
        "research request bundled",
        COHORTE,
        {f"{M}.data_requests[1].optional": False},
        "research.never_bundled",
        f"{M}.data_requests[1].optional",
    ),
    # 06d
    (
        "erasure over plain http",
        GLYCEMIE,
        {f"{M}.rights.erasure": "http://glycemie.example/delete"},
        "rights.exercisable",
        f"{M}.rights.erasure",
    ),
    (
        "portability by phone",
        GLYCEMIE,
        {f"{M}.rights.portability": "call 01 23 45 67 89"},
        "rights.exercisable",
        f"{M}.rights.portability",
    ),
    ("access blank", GLYCEMIE, {f"{M}.rights.access": ""}, "rights.exercisable", f"{M}.rights.access"),
    (
        "rectification bad mailto",
        GLYCEMIE,
        {f"{M}.rights.rectification": "mailto:nobody"},
        "rights.exercisable",
        f"{M}.rights.rectification",
    ),
    # 06e
    (
        "hosting provider blank",
        GLYCEMIE,
        {f"{M}.hosting.provider": ""},
        "hosting.declared",
        f"{M}.hosting.provider",
    ),
    (
        "hosting country lower case",
        GLYCEMIE,
        {f"{M}.hosting.country": "fr"},
        "hosting.declared",
        f"{M}.hosting.country",
    ),
    (
        "health data without certified host",
        GLYCEMIE,
        {f"{M}.hosting.health_data_certification": DELETE},
        "hosting.health_data_certified",
        f"{M}.hosting.health_data_certification",
    ),
    (
        "health data with blank certification",
        LIVRET,
        {f"{M}.hosting.health_data_certification": ""},
        "hosting.health_data_certified",
        f"{M}.hosting.health_data_certification",
    ),
    (
        "unrecognised certification (review)",
        GLYCEMIE,
        {f"{M}.hosting.health_data_certification": "ISO 27001"},
        "hosting.certification_review",
        f"{M}.hosting.health_data_certification",
    ),
    (
        "HDS without certificate id (review)",
        GLYCEMIE,
        {f"{M}.hosting.certificate_id": DELETE},
        "hosting.certification_review",
        f"{M}.hosting.certificate_id",
    ),
    (
        "redirect over http",
        GLYCEMIE,
        {"redirect_uris": ["http://glycemie.example/callback"]},
        "redirect_uris.https",
        "redirect_uris[0]",
    ),
    (
        "loopback redirect in production",
        GLYCEMIE,
        {"redirect_uris": APPEND("http://127.0.0.1:8765/cb")},
        "redirect_uris.https",
        "redirect_uris[1]",
    ),
    (
        "redirect with a fragment",
        GLYCEMIE,
        {"redirect_uris": ["https://glycemie.example/cb#top"]},
        "redirect_uris.https",
        "redirect_uris[0]",
    ),
    (
        "custom-scheme redirect",
        GLYCEMIE,
        {"redirect_uris": ["com.example.app:/oauth"]},
        "redirect_uris.https",
        "redirect_uris[0]",
    ),
    ("no redirect at all", GLYCEMIE, {"redirect_uris": []}, "redirect_uris.https", "redirect_uris"),
    # 05
    (
        "says data stay in the EU, third party in the US",
        PAS_A_PAS,
        {f"{M}.third_parties": APPEND(US_PARTY)},
        "transfer.data_leaves_eu_consistent",
        f"{M}.data_leaves_eu",
    ),
    (
        "says data stay in the EU, host in Switzerland",
        PAS_A_PAS,
        {f"{M}.hosting.country": "CH"},
        "transfer.data_leaves_eu_consistent",
        f"{M}.data_leaves_eu",
    ),
    (
        "health data hosted in the US (review)",
        GLYCEMIE,
        {f"{M}.hosting.country": "US", f"{M}.data_leaves_eu": True},
        "transfer.outside_eu_review",
        f"{M}.hosting.country",
    ),
    (
        "health data declared to leave the EU (review)",
        GLYCEMIE,
        {f"{M}.data_leaves_eu": True},
        "transfer.outside_eu_review",
        f"{M}.data_leaves_eu",
    ),
]


@pytest.mark.parametrize(
    ("base", "changes", "rule_id", "field"),
    [pytest.param(b, c, r, f, id=case) for case, b, c, r, f in SINGLE_FAULTS],
)
def test_each_fault_breaks_its_rule_alone(
    charter: Charter,
    base: object,
    changes: dict[str, Any],
    rule_id: str,
    field: str,
) -> None:
    rule = RULE_BY_ID[rule_id]
    verdict = evaluate(changed(base, changes), charter)

    assert {f.rule for f in verdict.findings} == {rule_id}
    assert {f.article for f in verdict.findings} == {rule.article}
    assert [f.field for f in verdict.findings] == [field]
    expected = Status.REFUSED if rule.severity == Severity.REFUSE else Status.NEEDS_REVIEW
    assert verdict.status == expected
    for finding in verdict.findings:
        for text in (finding.message, finding.patient_message):
            assert text.fr.strip() and text.en.strip()
            assert "{" not in text.fr + text.en, "a placeholder was left unfilled"


def test_every_rule_has_a_manifest_that_fails_it_alone() -> None:
    covered = {rule_id for _, _, _, rule_id, _ in SINGLE_FAULTS}
    assert covered == set(RULE_BY_ID)


def test_purposes_that_do_not_serve_the_patient_are_refused() -> None:
    data = json.loads((PACKAGE_DATA / "charter-1.0.json").read_text(encoding="utf-8"))
    for purpose in data["purposes"]:
        purpose["user_facing"] = purpose["id"] != "research_contribution"
    research_only = app(
        "Recherche Seule",
        host="recherche.example",
        purposes={"research_contribution": "Give your results to a study."},
        requests=[request("lab_results", "research_contribution", optional=True)],
    )
    verdict = evaluate(research_only, parse_charter(data, "charter-test.json"))
    assert [(f.rule, f.article, f.field) for f in verdict.findings] == [
        ("purpose.user_facing", "01", f"{M}.purposes")
    ]


def test_forbidden_model_cites_article_07(charter: Charter) -> None:
    verdict = evaluate(changed(GLYCEMIE, {f"{M}.business_model.model": "sale_of_data"}), charter)
    assert verdict.articles == ("07",)
    assert charter.business_models["sale_of_data"].article == "07"


# (case, document, the rule ids the verdict must list, in order)
SEVERAL_FAULTS: list[tuple[str, object, list[str]]] = [
    (
        "data broker over http asking for genetics to follow diabetes",
        changed(
            GLYCEMIE,
            {
                f"{M}.business_model.model": "data_brokerage",
                "redirect_uris": ["http://glycemie.example/callback"],
                f"{M}.data_requests": APPEND(request("genetics", "chronic_disease_followup", why="")),
            },
        ),
        [
            "business_model.not_forbidden",
            "minimisation.category_allowed_by_purpose",
            "minimisation.sensitive_category_opt_in",
            "minimisation.sensitive_category_opt_in",
            "redirect_uris.https",
        ],
    ),
    (
        "anonymous publisher keeping data forever without rights",
        changed(
            LIVRET,
            {
                f"{M}.publisher.legal_name": "",
                f"{M}.publisher.dpo_email": "none",
                f"{M}.retention.days": 100_000,
                f"{M}.rights.erasure": "",
                f"{M}.rights.portability": "ask us",
            },
        ),
        [
            "publisher.identity_complete",
            "publisher.identity_complete",
            "retention.bounded",
            "rights.exercisable",
            "rights.exercisable",
        ],
    ),
    (
        "research bundled, unjustified and hosted uncertified",
        changed(
            COHORTE,
            {
                f"{M}.data_requests[2].optional": False,
                f"{M}.data_requests[0].justification": "",
                f"{M}.hosting.health_data_certification": DELETE,
            },
        ),
        ["minimisation.request_justified", "research.never_bundled", "hosting.health_data_certified"],
    ),
    (
        "malformed and forbidden at once",
        changed(
            GLYCEMIE,
            {
                f"{M}.publisher": "Glycémie SAS",
                f"{M}.business_model.model": "sale_of_data",
                f"{M}.data_requests[0].category": 12,
            },
        ),
        ["manifest.well_formed", "manifest.well_formed", "business_model.not_forbidden"],
    ),
    (
        "needs review twice but refused once",
        changed(
            GLYCEMIE,
            {
                f"{M}.business_model.model": "pharma_funded",
                f"{M}.hosting.health_data_certification": "C5",
                f"{M}.purposes[0].description": "",
            },
        ),
        ["purpose.described", "business_model.conflict_of_interest", "hosting.certification_review"],
    ),
]


@pytest.mark.parametrize(("document", "expected"), [pytest.param(d, e, id=c) for c, d, e in SEVERAL_FAULTS])
def test_a_manifest_breaking_several_rules_lists_them_all(
    charter: Charter, document: object, expected: list[str]
) -> None:
    verdict = evaluate(document, charter)
    assert [f.rule for f in verdict.findings] == expected
    assert verdict.status == Status.REFUSED


def test_review_only_findings_give_needs_review(charter: Charter) -> None:
    document = changed(
        GLYCEMIE,
        {f"{M}.business_model.model": "pharma_funded", f"{M}.hosting.health_data_certification": "C5"},
    )
    verdict = evaluate(document, charter)
    assert verdict.status == Status.NEEDS_REVIEW
    assert {f.severity for f in verdict.findings} == {Severity.NEEDS_REVIEW}


def test_certification_is_only_required_for_health_data(charter: Charter) -> None:
    # Pas à Pas requests physical activity only: no health data, no certified host needed.
    assert evaluate(PAS_A_PAS, charter).status == Status.APPROVED
    with_health_data = changed(
        PAS_A_PAS,
        {f"{M}.data_requests": APPEND(request("device_measurements", "prevention_coaching", optional=True))},
    )
    verdict = evaluate(with_health_data, charter)
    assert [f.rule for f in verdict.findings] == ["hosting.health_data_certified"]


def test_suggests_the_declared_purpose_that_justifies_a_category(charter: Charter) -> None:
    document = app(
        "Deux Usages",
        host="deux.example",
        purposes={"emergency_card": "An emergency card.", "health_budget": "A health budget."},
        requests=[request("reimbursements", "emergency_card")],
    )
    (finding,) = evaluate(document, charter).findings
    assert finding.rule == "minimisation.category_allowed_by_purpose"
    assert "health_budget" in finding.message.en and "health_budget" in finding.message.fr


def test_malformed_verdict_is_flagged_for_a_400(charter: Charter) -> None:
    assert evaluate(changed(GLYCEMIE, {f"{M}.hosting": None}), charter).malformed
    assert evaluate(changed(GLYCEMIE, {f"{M}.business_model.model": "gifts"}), charter).malformed
    assert not evaluate(changed(GLYCEMIE, {f"{M}.business_model.model": "sale_of_data"}), charter).malformed

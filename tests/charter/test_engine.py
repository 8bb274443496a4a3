"""The engine's surface: the verdict's JSON, digests, rule sets, run-time minimisation, and the
package's independence from the rest of the broker."""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

import pytest

import broker.charter
from broker.charter import (
    RULES,
    Charter,
    RuleSetError,
    Status,
    allowed_categories,
    evaluate,
    load_charter,
    manifest_digest,
    requested_categories,
)
from broker.charter.rules import Rule
from broker.charter.rules.security import redirect_uri_problem
from tests.charter.manifests import COMPLIANT, changed, request

GLYCEMIE = COMPLIANT["diabetes follow-up «Suivi Glycémie»"]
COHORTE = COMPLIANT["research contribution opt-in «Cohorte Glycémie»"]
PACKAGE = Path(broker.charter.__file__).parent


@pytest.fixture(scope="module")
def charter() -> Charter:
    return load_charter("1.0")


def test_public_api() -> None:
    assert sorted(broker.charter.__all__) == sorted(
        [
            "MALFORMED_RULES",
            "RULES",
            "Article",
            "BusinessModel",
            "Category",
            "Certification",
            "Charter",
            "CharterDataError",
            "CharterError",
            "Finding",
            "Purpose",
            "Rule",
            "RuleSetError",
            "Severity",
            "Status",
            "Text",
            "TypologyGroup",
            "UnknownCharterVersion",
            "Verdict",
            "allowed_categories",
            "available_versions",
            "evaluate",
            "load_charter",
            "load_charter_file",
            "manifest_digest",
            "parse_charter",
            "requested_categories",
        ]
    )
    for name in broker.charter.__all__:
        assert hasattr(broker.charter, name), name


def test_the_charter_imports_nothing_else_from_the_broker() -> None:
    for source in PACKAGE.rglob("*.py"):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name == "broker" or name.startswith("broker."):
                    assert name.startswith("broker.charter"), f"{source.name} imports {name}"


def test_rules_have_stable_ids_articles_and_texts(charter: Charter) -> None:
    ids = [rule.id for rule in RULES]
    assert len(ids) == len(set(ids))
    for rule in RULES:
        assert re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", rule.id)
        assert rule.article in charter.articles, rule.id
        for text in (rule.requirement, rule.patient, *rule.messages.values()):
            assert text.fr.strip() and text.en.strip()
            assert text.fr != text.en


def test_verdict_json_has_the_shape_of_the_manifest_contract(charter: Charter) -> None:
    document = changed(GLYCEMIE, {"charter_manifest.data_requests[1].category": "imaging"})
    verdict = evaluate(document, charter)
    assert verdict.to_json() == {
        "status": "refused",
        "charter_version": "1.0",
        "findings": [
            {
                "rule": "minimisation.category_allowed_by_purpose",
                "article": "06c",
                "severity": "refuse",
                "field": "charter_manifest.data_requests[1]",
                "message": {
                    "fr": verdict.findings[0].message.fr,
                    "en": verdict.findings[0].message.en,
                },
                "patient_message": {
                    "fr": "L'application demande des données dont elle n'a pas besoin pour ce "
                    "qu'elle annonce.",
                    "en": "The app asks for data it does not need for what it announces.",
                },
            }
        ],
    }
    assert "imaging" in verdict.findings[0].message.en
    assert verdict.articles == ("06c",)


def test_an_empty_rule_set_is_an_error_not_a_pass(charter: Charter) -> None:
    with pytest.raises(RuleSetError, match="empty rule set"):
        evaluate(GLYCEMIE, charter, rules=())
    with pytest.raises(RuleSetError, match="given twice"):
        evaluate(GLYCEMIE, charter, rules=(RULES[0], RULES[0]))
    orphan = Rule(
        id="test.orphan",
        article="10",
        severity=RULES[0].severity,
        requirement=RULES[0].requirement,
        patient=RULES[0].patient,
        messages=RULES[0].messages,
        check=RULES[0].check,
    )
    with pytest.raises(RuleSetError, match="article 10"):
        evaluate(GLYCEMIE, charter, rules=(orphan,))


def test_a_subset_of_rules_judges_only_with_those(charter: Charter) -> None:
    document = changed(GLYCEMIE, {"charter_manifest.business_model.model": "sale_of_data"})
    https_only = [rule for rule in RULES if rule.id == "redirect_uris.https"]
    assert evaluate(document, charter, rules=https_only).status == Status.APPROVED
    assert evaluate(document, charter).status == Status.REFUSED


def test_manifest_digest_is_sha256_of_canonical_json() -> None:
    expected = hashlib.sha256('{"a":[1,true,null],"b":"é"}'.encode()).hexdigest()
    assert manifest_digest({"b": "é", "a": [1, True, None]}) == expected
    assert manifest_digest({}) == hashlib.sha256(b"{}").hexdigest()
    assert manifest_digest(GLYCEMIE) == manifest_digest(changed(GLYCEMIE, {}))
    assert manifest_digest(GLYCEMIE) != manifest_digest(changed(GLYCEMIE, {"client_name": "X"}))
    # Total on what Python's JSON parser accepts, lone surrogates included.
    assert manifest_digest({"s": "\ud800"}) != manifest_digest({"s": "\ufffd"})


def test_requested_and_allowed_categories(charter: Charter) -> None:
    manifest = COHORTE["charter_manifest"]
    assert requested_categories(manifest) == {"lab_results", "device_measurements"}
    assert requested_categories(COHORTE) == requested_categories(manifest)
    assert allowed_categories(charter, manifest, "chronic_disease_followup") == {"lab_results"}
    assert allowed_categories(charter, COHORTE, "research_contribution") == {
        "lab_results",
        "device_measurements",
    }
    assert allowed_categories(charter, manifest, "emergency_card") == frozenset()
    assert allowed_categories(charter, manifest, "no_such_purpose") == frozenset()


def test_allowed_categories_never_exceed_what_the_charter_allows(charter: Charter) -> None:
    # Even a manifest that slipped through (here: never evaluated) cannot widen a purpose.
    sloppy = changed(
        GLYCEMIE,
        {
            "charter_manifest.data_requests": [
                request("lab_results", "chronic_disease_followup"),
                request("imaging", "chronic_disease_followup"),
                request("blood_group", "emergency_card"),
                request("not_a_category", "chronic_disease_followup"),
            ]
        },
    )
    assert allowed_categories(charter, sloppy, "chronic_disease_followup") == {"lab_results"}
    # emergency_card is requested but not declared in purposes.
    assert allowed_categories(charter, sloppy, "emergency_card") == frozenset()


@pytest.mark.parametrize("garbage", [None, 3, "x", [], {"data_requests": "all"}, {"charter_manifest": 7}])
def test_runtime_helpers_are_total(charter: Charter, garbage: object) -> None:
    assert requested_categories(garbage) == frozenset()
    assert allowed_categories(charter, garbage, "emergency_card") == frozenset()


@pytest.mark.parametrize(
    ("uri", "loopback", "reason"),
    [
        ("https://app.example/cb", False, None),
        ("https://app.example:8443/cb?x=1", False, None),
        ("HTTPS://app.example/cb", False, None),
        ("http://localhost:3000/cb", True, None),
        ("http://127.0.0.1/cb", True, None),
        ("http://[::1]:8080/cb", True, None),
        ("http://localhost:3000/cb", False, "loopback"),
        ("http://127.0.0.2/cb", True, "not_https"),
        ("http://localhost.evil.example/cb", True, "not_https"),
        ("https://app.example/cb#frag", False, "fragment"),
        ("https:///cb", False, "invalid"),
        ("https://[::1/cb", False, "invalid"),
        ("https://app.example:99999/cb", False, "invalid"),
        ("https://app.example/a b", False, "invalid"),
        ("", False, "invalid"),
        ("javascript:alert(1)", False, "not_https"),
        ("/relative/cb", False, "not_https"),
    ],
)
def test_redirect_uri_checks(uri: str, loopback: bool, reason: str | None) -> None:
    assert redirect_uri_problem(uri, allow_loopback_http=loopback) == reason

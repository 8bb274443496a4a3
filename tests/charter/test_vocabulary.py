"""The charter data: the public vocabulary of MANIFEST.md, loading, and refusing bad files."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from broker.charter import (
    Charter,
    CharterDataError,
    Status,
    UnknownCharterVersion,
    available_versions,
    evaluate,
    load_charter,
    load_charter_file,
)
from broker.charter.loading import parse_charter
from tests.charter.manifests import COMPLIANT, changed

DATA = Path(__file__).parent / "data"
PACKAGED = Path(__file__).parents[2] / "broker" / "charter" / "data" / "charter-1.0.json"

# MANIFEST.md, "Vocabularies": ids are a public contract.
PURPOSES = [
    "chronic_disease_followup",
    "emergency_card",
    "prevention_coaching",
    "health_budget",
    "second_opinion",
    "occupational_disease_claim",
    "care_search",
    "care_coordination",
    "personal_health_record",
    "research_contribution",
]
ALLOWED_MODELS = [
    "subscription",
    "one_off_payment",
    "freemium",
    "public_service",
    "insurer_funded",
    "employer_funded",
    "pharma_funded",
    "advertising_without_health_data",
]
FORBIDDEN_MODELS = ["sale_of_data", "data_brokerage", "health_targeted_advertising"]
PERSONAL = [
    "identity",
    "contact_details",
    "emergency_contacts",
    "blood_group",
    "allergies",
    "conditions",
    "medications",
    "immunizations",
    "lab_results",
    "vital_signs",
    "procedures",
    "encounters",
    "clinical_documents",
    "imaging",
    "reimbursements",
    "coverage",
    "device_measurements",
    "physical_activity",
    "sleep",
    "nutrition",
    "geolocation",
    "calendar",
]
SENSITIVE = ["sexual_health", "mental_health", "addictions", "genetics", "reproductive_health"]
# MANIFEST.md, "Which categories a purpose can justify" (the personal, non-sensitive part).
PURPOSE_TABLE = {
    "chronic_disease_followup": {
        "lab_results",
        "vital_signs",
        "device_measurements",
        "medications",
        "conditions",
        "encounters",
        "physical_activity",
        "nutrition",
        "sleep",
        "identity",
    },
    "emergency_card": {
        "identity",
        "blood_group",
        "allergies",
        "conditions",
        "medications",
        "immunizations",
        "emergency_contacts",
        "contact_details",
    },
    "prevention_coaching": {
        "physical_activity",
        "sleep",
        "nutrition",
        "device_measurements",
        "vital_signs",
        "identity",
    },
    "health_budget": {"reimbursements", "coverage", "encounters", "medications"},
    "second_opinion": {
        "clinical_documents",
        "lab_results",
        "imaging",
        "conditions",
        "procedures",
        "medications",
        "identity",
    },
    "occupational_disease_claim": {
        "clinical_documents",
        "encounters",
        "conditions",
        "procedures",
        "reimbursements",
        "identity",
        "contact_details",
    },
    "care_search": {"conditions", "coverage", "encounters", "geolocation"},
    "care_coordination": {
        "identity",
        "contact_details",
        "emergency_contacts",
        "conditions",
        "medications",
        "allergies",
        "encounters",
        "calendar",
        "clinical_documents",
    },
    "personal_health_record": set(PERSONAL),
    "research_contribution": set(PERSONAL),
}
ARTICLES = ["01", "02", "03", "04", "05", "06", "06a", "06b", "06c", "06d", "06e", "07", "08", "09"]


@pytest.fixture(scope="module")
def charter() -> Charter:
    return load_charter("1.0")


def test_vocabulary_ids_are_those_of_the_public_contract(charter: Charter) -> None:
    assert list(charter.purposes) == PURPOSES
    assert list(charter.business_models) == ALLOWED_MODELS + FORBIDDEN_MODELS
    assert list(charter.categories) == PERSONAL + SENSITIVE
    assert list(charter.articles) == ARTICLES


def test_purposes_justify_the_categories_of_the_table(charter: Charter) -> None:
    for purpose_id, personal in PURPOSE_TABLE.items():
        purpose = charter.purposes[purpose_id]
        assert purpose.categories - set(SENSITIVE) == personal, purpose_id
        assert purpose.allows_sensitive == bool(purpose.categories & set(SENSITIVE))
        assert purpose.user_facing


def test_sensitive_categories_are_justified_only_where_they_can_be(charter: Charter) -> None:
    for purpose_id in ("emergency_card", "health_budget", "care_search"):
        assert not charter.purposes[purpose_id].allows_sensitive
    for purpose_id in ("second_opinion", "personal_health_record", "research_contribution"):
        assert set(SENSITIVE) <= charter.purposes[purpose_id].categories


def test_research_alone_is_never_bundled(charter: Charter) -> None:
    assert [p.id for p in charter.purposes.values() if p.never_bundled] == ["research_contribution"]


def test_forbidden_business_models_cite_article_07(charter: Charter) -> None:
    forbidden = {m.id: m.article for m in charter.business_models.values() if m.forbidden}
    assert forbidden == dict.fromkeys(FORBIDDEN_MODELS, "07")
    assert [m.id for m in charter.business_models.values() if m.needs_review] == ["pharma_funded"]


def test_categories(charter: Charter) -> None:
    sensitive = [c.id for c in charter.categories.values() if c.sensitive]
    assert sensitive == SENSITIVE
    assert all(charter.categories[c].health_data for c in SENSITIVE)
    assert {c.group for c in charter.categories.values()} == {"medical", "non_medical", "profile"}
    assert charter.categories["medications"].fhir == ("MedicationRequest", "MedicationDispense")
    assert charter.categories["nutrition"].fhir == ()
    assert charter.categories["identity"].group == "profile"
    assert charter.categories["sleep"].group == "non_medical"
    assert not charter.categories["physical_activity"].health_data


def test_texts_exist_in_both_languages_and_french_comes_first(charter: Charter) -> None:
    purpose = charter.purposes["emergency_card"]
    assert purpose.label("fr") == "Carte d'urgence"
    assert purpose.label("en") == "Emergency card"
    assert purpose.label("en-GB") == "Emergency card"
    assert purpose.label("de") == "Carte d'urgence"
    assert charter.articles["06c"].title("en")
    for vocabulary in (charter.purposes, charter.business_models, charter.categories):
        for entry in vocabulary.values():
            assert entry.label("fr").strip() and entry.label("en").strip()
            assert entry.description("fr").strip() and entry.description("en").strip()


def test_bounds_and_places(charter: Charter) -> None:
    assert charter.retention_max_days == 3650
    assert list(charter.health_data_certifications) == ["HDS"]
    assert charter.in_eea("FR") and charter.in_eea("NO") and charter.in_eea("GR")
    assert not charter.in_eea("CH") and not charter.in_eea("US") and not charter.in_eea("GB")
    assert len(charter.eea_countries) == 30
    assert str(charter.date) == "2026-11-28"


def test_charter_is_read_only(charter: Charter) -> None:
    with pytest.raises(TypeError):
        charter.purposes["x"] = charter.purposes["emergency_card"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        charter.version = "9"  # type: ignore[misc]


def test_packaged_versions_and_cache() -> None:
    assert available_versions() == ["1.0"]
    assert load_charter() is load_charter("1.0")
    with pytest.raises(UnknownCharterVersion):
        load_charter("9.9")
    with pytest.raises(LookupError):
        load_charter("9.9")


def test_a_file_loads_like_the_packaged_one(charter: Charter) -> None:
    again = load_charter_file(PACKAGED)
    assert again == charter
    assert hash(again) == hash(charter)


def _data() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(PACKAGED.read_text(encoding="utf-8"))
    return loaded


def _purpose(data: dict[str, Any], purpose_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in data["purposes"] if p["id"] == purpose_id)
    return found


def _model(data: dict[str, Any], model_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(m for m in data["business_models"] if m["id"] == model_id)
    return found


def _break_purpose_category(d: dict[str, Any]) -> None:
    _purpose(d, "emergency_card")["categories"].append("tattoos")


def _break_duplicate_purpose(d: dict[str, Any]) -> None:
    d["purposes"].append(copy.deepcopy(d["purposes"][0]))


def _break_forbidden_without_article(d: dict[str, Any]) -> None:
    _model(d, "sale_of_data")["article"] = None


def _break_forbidden_unknown_article(d: dict[str, Any]) -> None:
    _model(d, "sale_of_data")["article"] = "99"


def _break_allowed_with_article(d: dict[str, Any]) -> None:
    _model(d, "subscription")["article"] = "07"


def _break_allows_sensitive(d: dict[str, Any]) -> None:
    _purpose(d, "emergency_card")["allows_sensitive"] = True


def _break_sensitive_not_health(d: dict[str, Any]) -> None:
    d["categories"][-1]["health_data"] = False


def _break_unknown_group(d: dict[str, Any]) -> None:
    d["categories"][0]["group"] = "astrology"


def _break_missing_label(d: dict[str, Any]) -> None:
    del d["purposes"][0]["label"]["en"]


def _break_misspelt_key(d: dict[str, Any]) -> None:
    d["retention_max_day"] = d.pop("retention_max_days")


def _break_retention(d: dict[str, Any]) -> None:
    d["retention_max_days"] = 0


def _break_country(d: dict[str, Any]) -> None:
    d["eea_countries"].append("france")


def _break_date(d: dict[str, Any]) -> None:
    d["date"] = "28/11/2026"


def _break_empty_purposes(d: dict[str, Any]) -> None:
    d["purposes"] = []


@pytest.mark.parametrize(
    ("breaks", "path"),
    [
        (_break_purpose_category, "purposes[1].categories[8]"),
        (_break_duplicate_purpose, "purposes[10].id"),
        (_break_forbidden_without_article, "business_models[8].article"),
        (_break_forbidden_unknown_article, "business_models[8].article"),
        (_break_allowed_with_article, "business_models[0].article"),
        (_break_allows_sensitive, "purposes[1].allows_sensitive"),
        (_break_sensitive_not_health, "categories[26].health_data"),
        (_break_unknown_group, "categories[0].group"),
        (_break_missing_label, "purposes[0].label"),
        (_break_misspelt_key, "$"),
        (_break_retention, "retention_max_days"),
        (_break_country, "eea_countries[30]"),
        (_break_date, "date"),
        (_break_empty_purposes, "purposes"),
    ],
)
def test_an_inconsistent_data_file_is_refused(tmp_path: Path, breaks: Any, path: str) -> None:
    data = _data()
    breaks(data)
    file = tmp_path / "charter-1.0.json"
    file.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(CharterDataError) as raised:
        load_charter_file(file)
    assert str(raised.value).startswith(f"charter-1.0.json: {path}: ")


def test_duplicate_keys_invalid_json_and_unreadable_files_are_refused(tmp_path: Path) -> None:
    duplicated = tmp_path / "dup.json"
    duplicated.write_text(
        PACKAGED.read_text(encoding="utf-8").replace(
            '"version": "1.0",', '"version": "1.0", "version": "1.1",'
        ),
        encoding="utf-8",
    )
    with pytest.raises(CharterDataError, match="duplicate key 'version'"):
        load_charter_file(duplicated)
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(CharterDataError, match="not valid UTF-8 JSON"):
        load_charter_file(broken)
    with pytest.raises(CharterDataError, match="cannot be read"):
        load_charter_file(tmp_path / "absent.json")
    with pytest.raises(CharterDataError, match="must be an object"):
        parse_charter([], "list.json")


# A charter-version change: the stricter v2 is a test fixture, not a packaged version.
def test_version_2_fixture_is_stricter() -> None:
    v2 = load_charter_file(DATA / "charter-2.0.json")
    assert v2.version == "2.0"
    assert v2.retention_max_days == 1095
    assert v2.business_models["advertising_without_health_data"].forbidden
    assert "2.0" not in available_versions()


def test_apps_approved_under_v1_may_fail_v2(charter: Charter) -> None:
    v2 = load_charter_file(DATA / "charter-2.0.json")
    outcomes = {name: (evaluate(doc, charter), evaluate(doc, v2)) for name, doc in COMPLIANT.items()}
    assert all(v1.status == Status.APPROVED for v1, _ in outcomes.values())

    poids_plume = outcomes["prevention «PoidsPlume»"][1]
    assert poids_plume.status == Status.REFUSED
    assert poids_plume.charter_version == "2.0"
    assert [(f.rule, f.article) for f in poids_plume.findings] == [("business_model.not_forbidden", "07")]

    coffre = outcomes["personal health record «Coffre Santé»"][1]
    assert [(f.rule, f.article) for f in coffre.findings] == [("retention.bounded", "06c")]
    assert "1095" in coffre.findings[0].message.en

    still_approved = {name for name, (_, after) in outcomes.items() if after.status == Status.APPROVED}
    assert still_approved == set(COMPLIANT) - {
        "prevention «PoidsPlume»",
        "personal health record «Coffre Santé»",
        "occupational-disease claim «MaSantéSynchro»",
    }

    fixed = changed(
        COMPLIANT["personal health record «Coffre Santé»"], {"charter_manifest.retention.days": 1095}
    )
    assert evaluate(fixed, v2).status == Status.APPROVED

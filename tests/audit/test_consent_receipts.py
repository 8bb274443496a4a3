"""Signed consent receipts: a JWS that verifies against the broker's published JWKS, the same
content as a Kantara Consent Receipt v1.1 and as a FHIR R4 Consent; the patient's own only."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from fhir.resources.R4B.consent import Consent

from broker.consent.service import patient_consent, revoke_consent
from broker.db import transaction, utcnow
from tests.audit.conftest import World

KANTARA_FIELDS = (
    "version",
    "jurisdiction",
    "consentTimestamp",
    "collectionMethod",
    "consentReceiptID",
    "piiPrincipalId",
    "piiControllers",
    "policyUrl",
    "services",
    "sensitive",
    "spiCat",
)


def _verify(client: Any, token: str, issuer: str) -> dict[str, Any]:
    """What any holder of the receipt can do: check it against the broker's public keys."""
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["typ"] == "consent-receipt+jwt"
    jwks = client.get("/jwks.json").json()
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],  # the broker signs with ES256 only
        issuer=issuer,
        options={"require": ["iss", "sub", "iat", "jti"], "verify_aud": False},
    )
    return claims


def test_a_consent_receipt_verifies_and_says_the_same_in_three_forms(client: Any, world: World) -> None:
    patient_id = world.patient(
        "gaelle", grants={"labo-test": ["lab_results"], "pharma-test": ["medications"]}
    )
    consent_id = world.consents["gaelle"]
    world.log_in(client, "gaelle")
    answer = client.get(f"/my/consents/{consent_id}/receipt.jwt")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/jwt")
    assert "attachment" in answer.headers["content-disposition"]
    assert answer.headers["cache-control"].startswith("no-store")
    claims = _verify(client, answer.text, world.settings.issuer)

    kantara = client.get(f"/my/consents/{consent_id}/receipt.kantara.json").json()
    assert kantara == claims  # the signed payload is the Kantara document itself
    for name in KANTARA_FIELDS:
        assert name in kantara, name
    assert kantara["version"] == "KI-CR-v1.1.0" and kantara["jurisdiction"] == "FR"
    assert kantara["piiPrincipalId"] == patient_id == claims["sub"]
    assert kantara["consentReceiptID"] == claims["jti"]
    assert kantara["piiControllers"][0]["piiController"] == "Glycémie SAS"
    assert kantara["policyUrl"] == "https://glycemie.example/privacy"
    (service,) = kantara["services"]
    assert service["service"] == "Suivi Glycémie"
    (purpose,) = service["purposes"]
    assert purpose["purposeCategory"] == ["chronic_disease_followup"]
    assert purpose["consentType"] == "EXPLICIT"
    assert len(purpose["piiCategory"]) == 2
    assert kantara["sensitive"] is False and kantara["spiCat"] == []
    assert kantara["consent"]["consent_id"] == consent_id
    assert kantara["consent"]["status"] == "active"
    assert {g["holder"] for g in kantara["consent"]["grants"]} == {"labo-test", "pharma-test"}
    # The same at every download: a receipt describes a record, not the moment of download.
    assert client.get(f"/my/consents/{consent_id}/receipt.kantara.json").json() == kantara

    fhir = client.get(f"/my/consents/{consent_id}/receipt.fhir.json")
    assert fhir.headers["content-type"].startswith("application/fhir+json")
    resource = Consent.model_validate(fhir.json())
    assert resource.status == "active"
    assert resource.patient.identifier.value == patient_id
    assert resource.provision.actor[0].reference.identifier.value == world.client_id
    holders = {p.actor[0].reference.identifier.value for p in resource.provision.provision}
    assert holders == {"labo-test", "pharma-test"}
    codes = {c.coding[0].code for p in resource.provision.provision for c in p.code}
    assert codes == {"lab_results", "medications"}


def test_a_withdrawal_has_its_own_receipt(client: Any, world: World) -> None:
    world.patient("gaelle")
    consent_id = world.consents["gaelle"]
    world.log_in(client, "gaelle")
    assert client.get(f"/my/consents/{consent_id}/withdrawal.jwt").status_code == 404
    with transaction(world.factory) as session:
        consent = patient_consent(session, patient_id=world.patients["gaelle"], consent_id=consent_id)
        revoke_consent(
            session, consent=consent, by=f"patient:{consent.patient_id}", reason="test", now=utcnow()
        )
    token = client.get(f"/my/consents/{consent_id}/withdrawal.jwt").text
    claims = _verify(client, token, world.settings.issuer)
    assert claims["consent"]["status"] == "withdrawn" and claims["consent"]["withdrawn_at"]
    grant = client.get(f"/my/consents/{consent_id}/receipt.kantara.json").json()
    assert claims["jti"] != grant["jti"]
    fhir = Consent.model_validate(client.get(f"/my/consents/{consent_id}/withdrawal.fhir.json").json())
    assert fhir.status == "inactive"
    assert fhir.provision.period.end is not None


def test_the_consent_list_links_to_the_receipts(client: Any, world: World) -> None:
    world.patient("gaelle")
    world.log_in(client, "gaelle")
    page = client.get("/my/consents").text
    consent_id = world.consents["gaelle"]
    for document in ("receipt.jwt", "receipt.kantara.json", "receipt.fhir.json"):
        assert f"/my/consents/{consent_id}/{document}" in page
    assert 'href="/my/history"' in page


@pytest.mark.parametrize(
    "document", ["receipt.jwt", "receipt.kantara.json", "receipt.fhir.json", "withdrawal.jwt"]
)
def test_another_patients_receipt_is_not_found(client: Any, world: World, document: str) -> None:
    world.patient("gaelle")
    world.patient("antoine")
    world.log_in(client, "antoine")
    theirs = client.get(f"/my/consents/{world.consents['gaelle']}/{document}")
    made_up = client.get(f"/my/consents/cns_made-up/{document}")
    assert theirs.status_code == made_up.status_code == 404
    assert world.patients["gaelle"] not in theirs.text
    assert "eyJ" not in theirs.text and "piiPrincipalId" not in theirs.text
    assert client.get(f"/my/consents/{world.consents['antoine']}/receipt.exe").status_code == 404


def test_receipts_need_a_logged_in_patient(client: Any, world: World) -> None:
    world.patient("gaelle")
    answer = client.get(f"/my/consents/{world.consents['gaelle']}/receipt.jwt", follow_redirects=False)
    assert answer.status_code in (302, 303)
    assert "/login" in answer.headers["location"]
    assert "eyJ" not in answer.text

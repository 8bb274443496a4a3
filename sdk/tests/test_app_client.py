"""The app client against the live broker: registration, PAR, the code flow, refresh, DPoP,
calls to a holder, and revocation noticed as ``ConsentRevoked``."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
from sdk_support import REDIRECT_URI, Broker, Browser, new_key

from broker_sdk import AppClient, ConsentRevoked, HolderVerifier, OAuthError
from broker_sdk.app import load_manifest

MANIFEST = Path(__file__).parents[1] / "examples" / "manifest.toml"


def manifest(name: str, **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(load_manifest(MANIFEST))
    body.update(client_name=name, redirect_uris=[REDIRECT_URI], **changes)
    return body


def test_register_update_verdict(live_broker: Broker, tmp_path: Path) -> None:
    with AppClient(live_broker.issuer) as client:
        # straight from the TOML file (its redirect URI is the demo app's)
        from_file = client.register(MANIFEST)
        assert from_file.verdict.approved, from_file.verdict.findings
        registration = client.register(manifest("Carnet Registration Test"))
        assert registration.client_id and registration.registration_access_token
        assert registration.verdict.status == "approved"
        assert client.verdict(registration).approved
        first_token = registration.registration_access_token
        updated = client.update(registration, manifest("Carnet Registration Test", software_version="1.1.0"))
        assert updated.metadata["software_version"] == "1.1.0"
        assert updated.registration_access_token != first_token  # RFC 7592: rotated
        with pytest.raises(OAuthError) as caught:
            client.read(registration)  # the old registration token is spent
        assert caught.value.status == 401
        assert client.read(updated).client_id == registration.client_id
        # a manifest the charter refuses is registered with its verdict, not rejected
        selling = manifest("Carnet Refused Test")
        selling["charter_manifest"]["business_model"]["model"] = "sale_of_data"
        refused = client.register(selling)
        assert refused.verdict.status == "refused" and refused.verdict.findings
        # a malformed one is refused with RFC 7591 codes
        with pytest.raises(OAuthError) as caught:
            client.register({"client_name": "x"})
        assert caught.value.error in ("invalid_client_metadata", "invalid_redirect_uri")


def test_code_flow_dpop_holder_call_and_revocation(
    live_broker: Broker, browser: Browser, holder_api: str
) -> None:
    client = AppClient(live_broker.issuer)
    client.register(manifest("Carnet Flow Test"))
    request = client.authorization_request(REDIRECT_URI, scope="lab_results")
    assert "request_uri=" in request.url and "code_challenge" not in request.url  # PAR
    callback = browser.consent(request.url)
    # a callback with another state, or from another issuer, is refused
    with pytest.raises(OAuthError, match="state"):
        client.exchange_code(request, callback.replace(f"state={request.state}", "state=forged"))
    with pytest.raises(OAuthError, match="iss"):
        client.exchange_code(request, callback.replace("iss=", "iss=x"))
    labo_a = live_broker.holders["labo-a"].base_url
    grant = client.exchange_code(request, callback, resource=labo_a)
    assert {h.holder for h in grant.holders()} == {"labo-a", "labo-b"}
    token = grant.access_tokens[labo_a]
    assert token.token_type == "DPoP"

    response = client.get(grant, f"{holder_api}/Observation")
    assert response.status_code == 200, response.text
    assert response.json()["consent_id"] == grant.consent_id

    # a token for the second holder: by refresh, with rotation, bound to the same key
    spent = grant.refresh_token
    labo_b = live_broker.holders["labo-b"].base_url
    other = client.access_token(grant, labo_b)
    assert grant.refresh_token != spent
    with HolderVerifier(live_broker.issuer, labo_b, holder_id="labo-b") as verifier_b:
        url = f"{labo_b}/Observation"
        proof = grant.dpop_key.proof("GET", url, access_token=other.token) if grant.dpop_key else None
        verified = verifier_b.verify(other.token, scheme="DPoP", dpop=proof, method="GET", url=url)
        assert verified.jkt == grant.dpop_key.jkt if grant.dpop_key else False

    # the grant survives a restart of the app
    restored = type(grant).from_json(grant.to_json())
    assert client.get(restored, f"{holder_api}/Observation").status_code == 200

    # the patient withdraws: the holder refuses within a second, the app learns it
    browser.revoke(grant.consent_id)
    time.sleep(1.0)
    with pytest.raises(ConsentRevoked):
        client.get(restored, f"{holder_api}/Observation")
    client.close()


def test_app_revokes_its_own_grant(live_broker: Broker, browser: Browser) -> None:
    with AppClient(live_broker.issuer, dpop=False) as client:
        client.register(manifest("Carnet Revoke Test"))
        request = client.authorization_request(
            REDIRECT_URI,
            use_par=False,
            authorization_details=[{"purpose": "chronic_disease_followup", "categories": ["lab_results"]}],
        )
        assert "code_challenge_method=S256" in request.url
        grant = client.exchange_code(request, browser.consent(request.url))
        assert next(iter(grant.access_tokens.values())).token_type == "Bearer"
        client.revoke(grant)
        with pytest.raises(ConsentRevoked):
            client.refresh(grant)


def test_confidential_app_with_private_key_jwt(live_broker: Broker, browser: Browser) -> None:
    key = new_key()
    with AppClient(live_broker.issuer, client_key=key) as client:
        registration = client.register(
            manifest("Carnet Confidential Test", token_endpoint_auth_method="private_key_jwt")
        )
        assert registration.metadata["jwks"]["keys"][0]["kid"] == key.get("kid")
        request = client.authorization_request(REDIRECT_URI)
        grant = client.exchange_code(request, browser.consent(request.url))
        assert grant.refresh_token
        # another key cannot act for this client
        impostor = AppClient(
            live_broker.issuer, client_id=registration.client_id, client_key=new_key(key.get("kid"))
        )
        with pytest.raises(OAuthError) as caught:
            impostor.refresh(grant)
        assert caught.value.error == "invalid_client"
        impostor.close()

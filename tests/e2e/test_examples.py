"""The example servers' own pieces, in process: FHIR data, link handles, the holder's pages and
refusals, the chart, the key files, and the broker's demo seeding of the example holders."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from jwcrypto import jwk, jwt
from litestar.testing import TestClient

from examples.common.holder import HolderConfig, LinkHandles
from examples.common.keys import load_or_create_key
from examples.diabetes_app.chart import line_chart
from examples.insurer_holder import data as insurer_data
from examples.lab_holder import data as lab_data
from examples.lab_holder.server import build as build_lab
from tests.e2e.stack import find_served

pytestmark = pytest.mark.e2e

BROKER = "http://127.0.0.1:8000"
BROKER_HANDLE = re.compile(r"^[A-Za-z0-9_\-]{16,64}$")  # what the broker accepts (consent/links.py)


# -- the data --------------------------------------------------------------------------------


def test_lab_results_are_deterministic_valid_fhir_with_loinc_codes() -> None:
    for patient in lab_data.PATIENTS:
        results = lab_data.observations(patient.record_id)
        codes = [r["code"]["coding"][0]["code"] for r in results]
        assert (codes.count("14771-0"), codes.count("4548-4"), codes.count("2093-3")) == (12, 4, 2)
        assert [r["effectiveDateTime"] for r in results] == sorted(r["effectiveDateTime"] for r in results)
        for result in results:
            value = result["valueQuantity"]["value"]
            assert str(value) == f"{value:.{len(str(value).split('.')[1])}f}" and not str(value).endswith("0")
    # The same values on every machine: a value pinned here would change only with the generator.
    first = lab_data.observations("LBM-69-004217")[0]
    assert (first["effectiveDateTime"], first["valueQuantity"]["value"]) == (
        "2025-01-12T07:40:00+01:00",
        6.61,
    )
    assert lab_data.search("LBM-69-004217", "http://loinc.org|4548-4,2093-3") == [
        r for r in lab_data.observations("LBM-69-004217") if r["code"]["coding"][0]["code"] != "14771-0"
    ]


def test_reimbursements_are_valid_explanations_of_benefit() -> None:
    for member in insurer_data.MEMBERS:
        claims = insurer_data.claims(member.record_id)
        assert len(claims) == insurer_data.CLAIMS
        assert all(c["resourceType"] == "ExplanationOfBenefit" and c["total"] for c in claims)


def test_served_strings_are_found_whole_and_only_whole() -> None:
    needles = {"values": {"7.43"}, "codes": {"14771-0"}, "names": {"MARTIN Gaëlle Josiane"}}
    assert find_served('{"value": 7.43, "unit": "mmol/L"}', needles) == ["values: 7.43"]
    assert find_served("2026-11-28T20:56:17.431+00:00 and 27.43", needles) == []
    jws = "eyJhbGciOiJFUzI1NiJ9.eyJhIjoxfQ9.43kq-signature"  # a payload ending in 9, a signature...
    assert find_served(jws.replace("9.43", "7.43"), needles) == []
    assert find_served("<td>7.43 mmol/L</td>", needles) == ["values: 7.43"]
    assert find_served("code=14771-0 for MARTIN Gaëlle Josiane", needles) == [
        "codes: 14771-0",
        "names: MARTIN Gaëlle Josiane",
    ]


# -- keys and link handles --------------------------------------------------------------------


def test_holder_key_is_private_to_its_owner_and_its_public_half_has_no_secret(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "labo-demo")
    assert stat.S_IMODE((tmp_path / "labo-demo" / "signing-key.jwk").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "labo-demo").stat().st_mode) == 0o700
    public = json.loads((tmp_path / "labo-demo" / "jwks.json").read_text())
    assert [set(k) for k in public["keys"]] == [{"kty", "crv", "x", "y", "kid", "alg", "use"}]
    assert public["keys"][0]["kid"] == key.thumbprint() == key.get("kid")
    assert load_or_create_key(tmp_path / "labo-demo").thumbprint() == key.thumbprint()  # kept


def test_link_handles_are_stable_opaque_and_differ_per_broker(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "k")
    handles = LinkHandles(key, [p.record_id for p in lab_data.PATIENTS])
    mine = handles.handle(BROKER, "LBM-69-004217")
    assert BROKER_HANDLE.match(mine) and "LBM" not in mine
    assert handles.handle(BROKER, "LBM-69-004217") == mine
    assert handles.handle("https://other-broker.example", "LBM-69-004217") != mine
    assert handles.record(BROKER, mine) == "LBM-69-004217"
    assert handles.record("https://other-broker.example", mine) is None


# -- the holder's HTTP surface ---------------------------------------------------------------


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[TestClient, HolderConfig, jwk.JWK]]:
    config = HolderConfig(
        identifier="labo-demo",
        legal_name="Laboratoire Démo",
        categories=("lab_results", "identity"),
        host="127.0.0.1",
        port=8002,
        broker=BROKER,
        state_dir=tmp_path / "labo-demo",
        push=False,  # no broker here
    )
    with TestClient(app=build_lab(config), base_url=config.origin) as client:  # type: ignore[arg-type]
        yield client, config, load_or_create_key(config.state_dir)


def test_fhir_api_needs_a_broker_token(lab: tuple[TestClient, HolderConfig, jwk.JWK]) -> None:
    client, _, _ = lab
    answer = client.get("/fhir/Observation")
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    answer = client.get("/fhir/Observation", headers={"Authorization": "Bearer not-a-token"})
    assert answer.status_code == 401 and 'error="invalid_token"' in answer.headers["www-authenticate"]
    assert "14771-0" not in answer.text
    assert client.get("/fhir/metadata").status_code == 200  # the capability statement is public


def test_link_step_at_the_holder(lab: tuple[TestClient, HolderConfig, jwk.JWK]) -> None:
    client, config, key = lab
    request = {"state": "s" * 43, "redirect_uri": f"{BROKER}/my/sources/callback", "broker": BROKER}
    assert client.get("/link", params={**request, "broker": "https://rogue.example"}).status_code == 400
    assert (
        client.get("/link", params={**request, "redirect_uri": "https://rogue.example/cb"}).status_code == 400
    )
    page = client.get("/link", params=request)
    assert page.status_code == 200 and 'name="password"' in page.text and "<script" not in page.text
    wrong = client.post("/link", data={**request, "username": "gaelle.martin", "password": "nope"})
    assert wrong.status_code == 400 and "incorrect" in wrong.text
    answer = client.post(
        "/link",
        data={**request, "username": "gaelle.martin", "password": "labo-gaelle-2026"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    location = urlsplit(answer.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == request["redirect_uri"]
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["state"] == request["state"]
    public = jwk.JWK(**json.loads((config.state_dir / "jwks.json").read_text())["keys"][0])
    token = jwt.JWT(jwt=query["link_token"], key=public, algs=["ES256"], expected_type="JWS")
    header, claims = json.loads(token.header), json.loads(token.claims)
    assert header["typ"] == "link+jwt" and header["kid"] == key.thumbprint()
    assert claims["iss"] == "labo-demo" and claims["aud"] == BROKER and claims["state"] == request["state"]
    assert claims["exp"] - claims["iat"] <= 600
    handles = LinkHandles(key, [p.record_id for p in lab_data.PATIENTS])
    assert handles.record(BROKER, claims["handle"]) == "LBM-69-004217"


# -- the app's chart ----------------------------------------------------------------------------


def test_chart_is_an_inline_svg_with_one_point_per_value() -> None:
    from datetime import datetime

    points = [
        (datetime.fromisoformat(r["effectiveDateTime"]), r["valueQuantity"]["value"])
        for r in lab_data.search("LBM-69-004217", "14771-0")
    ]
    svg = line_chart(points, title="Glycémie", unit="mmol/L", band=(3.9, 6.1))
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "<script" not in svg
    assert svg.count("<circle") == len(points) == 12
    assert line_chart([], title="x", unit="y") == ""


# -- the broker's demo seeding reads the examples' public keys -----------------------------------


@pytest.mark.db
def test_demo_seeding_registers_both_holders_with_the_keys_the_examples_own(settings) -> None:  # type: ignore[no-untyped-def]
    from broker.catalog.models import App, Holder
    from broker.db import make_engine, make_session_factory, transaction
    from broker.demo import DEMO_APP_NAME, examples_dir, seed_demo

    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        seed_demo(session, settings)  # no example key yet: the holders' published JWKS stands in
    with transaction(factory) as session:
        holders = {h.identifier: h for h in session.query(Holder).all()}
        assert sorted(holders) == ["assurance-demo", "labo-demo"]
        assert all(h.status == "approved" and h.jwks_uri and h.link_endpoint for h in holders.values())
    key = load_or_create_key(examples_dir(settings) / "labo-demo")
    with transaction(factory) as session:
        seed_demo(session, settings)  # the next start finds the example's key
    with transaction(factory) as session:
        lab = session.get(Holder, "labo-demo")
        assert lab is not None and lab.jwks_uri is None
        assert lab.jwks == {
            "keys": [json.loads((examples_dir(settings) / "labo-demo/jwks.json").read_text())["keys"][0]]
        }
        assert "d" not in lab.jwks["keys"][0] and lab.jwks["keys"][0]["kid"] == key.thumbprint()
        assert lab.link_endpoint == "http://127.0.0.1:8002/link"
        apps = session.query(App).filter(App.client_name == DEMO_APP_NAME).all()
        assert len(apps) == 1 and apps[0].status == "approved"
        requested = {r["category"] for r in apps[0].client_metadata["charter_manifest"]["data_requests"]}
        assert requested == {"lab_results", "device_measurements", "reimbursements"}
    engine.dispose()

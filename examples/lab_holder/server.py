"""The laboratory's HTTP server: FHIR R4 ``Observation`` and ``Patient`` behind broker tokens."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.params import FromQuery

from examples.common.holder import HolderConfig, fhir, holder_app, release
from examples.lab_holder import data

IDENTIFIER = "labo-demo"
LEGAL_NAME = "Laboratoire Démo"
CATEGORIES = ("lab_results", "identity")
PORT = 8002


@get("/fhir/Observation", include_in_schema=False)
async def observations(
    request: Request[Any, Any, Any], code: FromQuery[str | None] = None
) -> Response[dict[str, Any]]:
    """FHIR search ``Observation?code=`` on the token's patient; ``lab_results`` is required."""
    granted = release(request)
    found = data.search(granted.record_id, code)
    bundle = data.searchset(found, request.app.state.config.base_url)
    await granted.receipt(request, ["lab_results"], len(found))
    return fhir(bundle)


@get("/fhir/Patient", include_in_schema=False)
async def patient(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """The token's patient only (``identity`` is required)."""
    granted = release(request)
    record = next(p for p in data.PATIENTS if p.record_id == granted.record_id)
    bundle = data.searchset([data.patient_resource(record)], request.app.state.config.base_url)
    await granted.receipt(request, ["identity"], 1)
    return fhir(bundle)


@get("/fhir/metadata", include_in_schema=False)
async def capability() -> Response[dict[str, Any]]:
    return fhir(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-01-01",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "resource": [
                        {
                            "type": "Observation",
                            "interaction": [{"code": "search-type"}],
                            "searchParam": [{"name": "code", "type": "token"}],
                        },
                        {"type": "Patient", "interaction": [{"code": "search-type"}]},
                    ],
                }
            ],
        }
    )


def download(record_id: str, categories: frozenset[str]) -> list[dict[str, Any]]:
    """The patient's own copy: Observations for ``lab_results``, Patient for ``identity``."""
    found: list[dict[str, Any]] = []
    if "lab_results" in categories:
        found += data.search(record_id)
    if "identity" in categories:
        found += [data.patient_resource(p) for p in data.PATIENTS if p.record_id == record_id]
    return found


def build(config: HolderConfig) -> Any:
    data.observations(data.PATIENTS[0].record_id)  # generate and validate before serving
    return holder_app(
        config,
        accounts=data.PATIENTS,
        find_by_login=data.find_by_login,
        routes=[observations, patient, capability],
        categories_by_path={"/fhir/Observation": {"lab_results"}, "/fhir/Patient": {"identity"}},
        welcome="Résultats d'analyses de biologie médicale (glycémie, HbA1c, cholestérol).",
        download=download,
    )

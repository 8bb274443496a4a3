"""The insurer's HTTP server: FHIR R4 ``ExplanationOfBenefit`` behind broker tokens."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from examples.common.holder import HolderConfig, fhir, holder_app, release
from examples.insurer_holder import data

IDENTIFIER = "assurance-demo"
LEGAL_NAME = "Assurance Démo"
CATEGORIES = ("reimbursements",)
PORT = 8003


@get("/fhir/ExplanationOfBenefit", include_in_schema=False)
async def explanation_of_benefit(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """The token's member's reimbursements, newest first; ``reimbursements`` is required."""
    granted = release(request)
    found = sorted(data.claims(granted.record_id), key=lambda c: c["created"], reverse=True)
    bundle = data.searchset(found, request.app.state.config.base_url)
    await granted.receipt(request, ["reimbursements"], len(found))
    return fhir(bundle)


def download(record_id: str, categories: frozenset[str]) -> list[dict[str, Any]]:
    """The member's own copy: ExplanationOfBenefit for ``reimbursements``."""
    return list(data.claims(record_id)) if "reimbursements" in categories else []


def build(config: HolderConfig) -> Any:
    data.claims(data.MEMBERS[0].record_id)  # generate and validate before serving
    return holder_app(
        config,
        accounts=data.MEMBERS,
        find_by_login=data.find_by_login,
        routes=[explanation_of_benefit],
        categories_by_path={"/fhir/ExplanationOfBenefit": {"reimbursements"}},
        welcome="Vos remboursements de soins, au format FHIR ExplanationOfBenefit.",
        download=download,
    )

"""Discovery (DESIGN step 1): RFC 8414 metadata and the JWKS, both cacheable."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.datastructures import State

# Long enough to spare holders a fetch per token, short enough that a rotated key is seen well
# before the previous key leaves the JWKS (the previous key stays published ≥ 1 hour).
JWKS_MAX_AGE = 300
METADATA_MAX_AGE = 3600


def authorization_server_metadata(issuer: str, charter_categories: list[str]) -> dict[str, Any]:
    """RFC 8414 §2 metadata for what this broker serves today."""
    return {
        "issuer": issuer,
        "registration_endpoint": f"{issuer}/register",
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "pushed_authorization_request_endpoint": f"{issuer}/par",
        "revocation_endpoint": f"{issuer}/revoke",
        "revocation_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "introspection_endpoint": f"{issuer}/introspect",
        "introspection_endpoint_auth_methods_supported": ["private_key_jwt"],
        "require_pushed_authorization_requests": False,
        "dpop_signing_alg_values_supported": ["ES256", "ES384", "EdDSA", "PS256"],
        "revocation_events_endpoint": f"{issuer}/events/revocations",
        "status_list_ttl_seconds": 30,
        "jwks_uri": f"{issuer}/jwks.json",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        # RFC 9700 §2.1.1: PKCE for every client, S256 only.
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "EdDSA", "PS256"],
        "authorization_response_iss_parameter_supported": True,
        "authorization_details_types_supported": ["health_data"],
        "scopes_supported": sorted(charter_categories),
        "service_documentation": f"{issuer}/schema",
        "catalog_endpoint": f"{issuer}/api/catalog/apps",
    }


@get(
    "/.well-known/oauth-authorization-server",
    tags=["discovery"],
    summary="Authorization server metadata (RFC 8414)",
)
async def metadata(state: State) -> Response[dict[str, Any]]:
    body = state.metadata_document
    return Response(body, headers={"Cache-Control": f"public, max-age={METADATA_MAX_AGE}"})


@get("/jwks.json", tags=["discovery"], summary="The broker's public signing keys (RFC 7517)")
async def jwks(state: State) -> Response[dict[str, Any]]:
    keystore = state.keystore
    keystore.refresh()  # a `broker keys rotate` in another process is seen at once
    return Response(
        keystore.public_jwks(),
        media_type="application/jwk-set+json",
        headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE}"},
    )

"""What the OpenAPI description says beyond what Litestar infers from the handlers.

Litestar documents a handler from its signature. The broker's JSON routes read their bodies
themselves (strict JSON, RFC 6749 forms), and its errors are rendered by ``broker.app``, so
the generated description would say that no operation takes a body and that errors are
Litestar's own ``{"status_code", "detail"}`` JSON. ``complete_description`` corrects it once,
when the app is built:

- every operation's errors: RFC 9457 problem details (``application/problem+json``), or the
  RFC 6749 §5.2 error object on the OAuth endpoints; as the ``default`` response, since any
  operation may answer 400, 401, 404, 413, 415 … and each is a documented error;
- the bodies: a JSON object where a route reads JSON, an ``application/x-www-form-urlencoded``
  form with its RFC parameters on the OAuth endpoints, a compact JWT for access receipts;
- the media types of the answers that are not JSON (JWTs, the revocation event stream).

The attack suite (``tests/attacks/test_schema.py``) generates requests from this description
and checks the answers against it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from litestar import Litestar
from litestar.openapi.spec import (
    Components,
    OpenAPI,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Reference,
    RequestBody,
    Schema,
)
from litestar.openapi.spec.enums import OpenAPIType

PROBLEM = Schema(
    type=OpenAPIType.OBJECT,
    description="RFC 9457 problem details",
    required=["type", "title", "status"],
    properties={
        "type": Schema(type=OpenAPIType.STRING),
        "title": Schema(type=OpenAPIType.STRING),
        "status": Schema(type=OpenAPIType.INTEGER, minimum=400, maximum=599),
        "detail": Schema(type=OpenAPIType.STRING),
        "instance": Schema(type=OpenAPIType.STRING),
    },
)
OAUTH_ERROR = Schema(
    type=OpenAPIType.OBJECT,
    description="RFC 6749 §5.2 error response",
    required=["error"],
    properties={
        "error": Schema(type=OpenAPIType.STRING, pattern=r"^[\x20-\x21\x23-\x5b\x5d-\x7e]+$"),
        "error_description": Schema(type=OpenAPIType.STRING),
    },
)


def _text(description: str) -> Schema:
    return Schema(type=OpenAPIType.STRING, description=description)


def _form(*names: str, required: tuple[str, ...] = ()) -> RequestBody:
    properties: dict[str, Schema | Reference] = {name: Schema(type=OpenAPIType.STRING) for name in names}
    schema = Schema(type=OpenAPIType.OBJECT, properties=properties, required=list(required) or None)
    form = OpenAPIMediaType(schema=schema)
    return RequestBody(content={"application/x-www-form-urlencoded": form}, required=True)


_JSON_OBJECT = RequestBody(
    content={"application/json": OpenAPIMediaType(schema=Schema(type=OpenAPIType.OBJECT))}, required=True
)
_CLIENT_AUTH = ("client_id", "client_assertion_type", "client_assertion")

# (method, path) -> the body the route reads.
REQUEST_BODIES: dict[tuple[str, str], RequestBody] = {
    ("post", "/register"): _JSON_OBJECT,
    ("put", "/register/{client_id}"): _JSON_OBJECT,
    ("post", "/admin/holders"): _JSON_OBJECT,
    ("post", "/admin/apps/{client_id}/decision"): _JSON_OBJECT,
    ("post", "/token"): _form(
        "grant_type",
        "code",
        "redirect_uri",
        "code_verifier",
        "refresh_token",
        "resource",
        "scope",
        *_CLIENT_AUTH,
        required=("grant_type",),
    ),
    ("post", "/par"): _form(
        "response_type",
        "redirect_uri",
        "state",
        "scope",
        "code_challenge",
        "code_challenge_method",
        "authorization_details",
        *_CLIENT_AUTH,
    ),
    ("post", "/revoke"): _form("token", "token_type_hint", *_CLIENT_AUTH, required=("token",)),
    ("post", "/introspect"): _form("token", "token_type_hint", required=("token",)),
    ("post", "/federation/trust_mark_status"): _form("trust_mark", required=("trust_mark",)),
    ("post", "/receipts"): RequestBody(
        content={"application/jwt": OpenAPIMediaType(schema=_text("a holder's signed access receipt"))},
        required=True,
    ),
}

# (method, path) -> the media type of its success answer, where it is not JSON. A ``+json``
# type keeps the JSON schema Litestar inferred; the others are described as text (a JWT, an
# event stream).
SUCCESS_MEDIA_TYPES = {
    ("get", "/jwks.json"): "application/jwk-set+json",
    ("get", "/.well-known/openid-federation"): "application/entity-statement+jwt",
    ("get", "/federation/fetch"): "application/entity-statement+jwt",
    ("post", "/federation/trust_mark_status"): "application/trust-mark-status-response+jwt",
    ("get", "/status/{list_id}"): "application/statuslist+jwt",
    ("get", "/events/revocations"): "text/event-stream",
}

# Operations protected by a bearer token outside the OAuth endpoints: RFC 6750 §3 answers a
# refused token in the RFC 6749 form, with ``WWW-Authenticate``.
BEARER_PROTECTED = frozenset({("get", "/events/revocations")})


def _operations(openapi: OpenAPI) -> Iterator[tuple[str, str, Operation]]:
    for path, item in (openapi.paths or {}).items():
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(item, method, None)
            if isinstance(operation, Operation):
                yield method, path, operation


def complete_description(app: Litestar, *, is_oauth_path: Callable[[str], bool]) -> None:
    """Correct the app's OpenAPI description in place (before anyone has asked for it).

    ``is_oauth_path`` tells the paths whose errors take the RFC 6749 form (``broker.app``).
    """
    openapi = app.openapi_schema  # built once and kept: the corrections stay
    openapi.components = openapi.components or Components()
    openapi.components.schemas = {
        **(openapi.components.schemas or {}),
        "ProblemDetails": PROBLEM,
        "OAuthError": OAUTH_ERROR,
    }
    problem_schema = Reference("#/components/schemas/ProblemDetails")
    problem = OpenAPIResponse(
        description="An error, as RFC 9457 problem details",
        content={"application/problem+json": OpenAPIMediaType(schema=problem_schema)},
    )
    oauth_error = OpenAPIResponse(
        description="An error, in the RFC 6749 §5.2 form",
        content={"application/json": OpenAPIMediaType(schema=Reference("#/components/schemas/OAuthError"))},
    )
    for method, path, operation in _operations(openapi):
        responses: dict[str, Any] = {
            status: response
            for status, response in (operation.responses or {}).items()
            if not status.startswith(("4", "5"))  # Litestar's own error shape: never sent
        }
        responses["default"] = oauth_error if is_oauth_path(path) else problem
        if (method, path) in BEARER_PROTECTED:
            responses["401"] = oauth_error
        media_type = SUCCESS_MEDIA_TYPES.get((method, path))
        if media_type:
            for status, response in responses.items():
                if status.startswith("2") and isinstance(response, OpenAPIResponse):
                    inferred = next(iter((response.content or {}).values()), None)
                    kept = inferred if media_type.endswith("+json") and inferred else None
                    response.content = {media_type: kept or OpenAPIMediaType(schema=_text("see the summary"))}
        operation.responses = responses
        body = REQUEST_BODIES.get((method, path))
        if body is not None:
            operation.request_body = body

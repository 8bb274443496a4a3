"""Federation endpoints (OpenID Federation 1.0 §9, §8.1, §8.2, §8.4): thin, signed answers.

Errors are RFC 9457 problem details like the rest of the API, with the specification's error
code (``invalid_request``, ``not_found``) as an ``error`` member beside them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.params import Parameter
from sqlalchemy.orm import Session

from broker.errors import BrokerError, InvalidRequest
from broker.federation import service
from broker.http import in_transaction

ENTITY_STATEMENT_MEDIA_TYPE = "application/entity-statement+jwt"
TRUST_MARK_STATUS_MEDIA_TYPE = "application/trust-mark-status-response+jwt"
# Short enough that a key rotation or a suspension reaches peers within minutes; statements
# are signed per request, so caching is for the readers' sake only.
STATEMENT_MAX_AGE = 300
SUBORDINATE_MAX_AGE = 60
# A trust mark is a few hundred bytes; the form carrying it is capped well above that.
MAX_STATUS_REQUEST = 16 * 1024


class UnsupportedFormMediaType(BrokerError):
    status = 415
    slug = "unsupported-media-type"
    title = "The body must be a form"


def _federation(state: State) -> service.Federation:
    settings = state.settings
    keystore = state.keystore
    keystore.refresh()  # a `broker keys rotate` in another process is seen at once
    return service.Federation(
        issuer=settings.issuer,
        signer=keystore,
        statement_lifetime=settings.federation_statement_lifetime,
        trust_mark_lifetime=settings.federation_trust_mark_lifetime,
        now=datetime.now(UTC),
    )


def _statement(token: str, max_age: int) -> Response[bytes]:
    return Response(
        token.encode("ascii"),
        media_type=ENTITY_STATEMENT_MEDIA_TYPE,
        headers={"Cache-Control": f"public, max-age={max_age}"},
    )


@get(
    "/.well-known/openid-federation",
    tags=["federation"],
    summary="The broker's entity configuration (OpenID Federation 1.0 §9)",
)
async def entity_configuration(state: State) -> Response[bytes]:
    fed = _federation(state)
    settings = state.settings

    def work(session: Session) -> str:
        return service.entity_configuration(
            fed,
            as_metadata=state.metadata_document,
            charter_version=state.charters.current(session).version,
            policy_mode=settings.policy_mode,
            authority_hints=settings.federation_authority_hints,
            trust_marks=settings.federation_trust_marks,
        )

    return _statement(await in_transaction(state.session_factory, work), STATEMENT_MAX_AGE)


@get(
    "/federation/fetch",
    tags=["federation"],
    summary="A subordinate statement about an app or a holder (OpenID Federation 1.0 §8.1)",
)
async def fetch(
    state: State,
    sub: Annotated[str | None, Parameter(description="The entity id of the app or holder")] = None,
) -> Response[bytes]:
    if not sub:
        raise InvalidRequest("sub: the entity id of a subordinate is required", error="invalid_request")
    fed = _federation(state)

    def work(session: Session) -> str:
        version = state.charters.current(session).version
        return service.subordinate_statement(session, fed, sub=sub, charter_version=version)

    return _statement(await in_transaction(state.session_factory, work), SUBORDINATE_MAX_AGE)


@get(
    "/federation/list",
    tags=["federation"],
    summary="The apps and holders in good standing (OpenID Federation 1.0 §8.2)",
)
async def list_subordinates(
    state: State,
    entity_type: Annotated[
        str | None, Parameter(description="oauth_client (apps) or oauth_resource (holders)")
    ] = None,
    trust_marked: Annotated[bool | None, Parameter(description="only entities with a trust mark")] = None,
    trust_mark_type: Annotated[str | None, Parameter(description="only entities with this mark")] = None,
    intermediate: Annotated[bool | None, Parameter(description="only intermediates (none here)")] = None,
) -> Response[list[str]]:
    issuer = state.settings.issuer

    def work(session: Session) -> list[str]:
        if intermediate:
            return []  # apps and holders are leaves
        version = state.charters.current(session).version
        mark_type = trust_mark_type
        if trust_marked and mark_type is None:
            mark_type = service.charter_trust_mark_type(issuer, version)
        return service.subordinate_ids(
            session, issuer, entity_type=entity_type, trust_mark_type=mark_type, charter_version=version
        )

    ids = await in_transaction(state.session_factory, work)
    return Response(ids, headers={"Cache-Control": f"public, max-age={SUBORDINATE_MAX_AGE}"})


async def _trust_mark_parameter(request: Request[Any, Any, Any]) -> str:
    """§8.4.1: one ``trust_mark`` parameter in an ``application/x-www-form-urlencoded`` body."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise UnsupportedFormMediaType(
            f"Content-Type must be application/x-www-form-urlencoded, not {media_type or 'missing'!r}",
            error="invalid_request",
        )
    raw = await request.body()
    if len(raw) > MAX_STATUS_REQUEST:
        raise InvalidRequest(
            f"the request is longer than {MAX_STATUS_REQUEST} bytes", error="invalid_request"
        )
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, strict_parsing=bool(raw))
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("the body is not a valid form", error="invalid_request") from None
    values = [value for name, value in pairs if name == "trust_mark"]
    if len(values) != 1 or not values[0]:
        raise InvalidRequest("trust_mark: exactly one trust mark is required", error="invalid_request")
    return values[0]


@post(
    "/federation/trust_mark_status",
    status_code=200,
    tags=["federation"],
    summary="Whether a charter trust mark is still active (OpenID Federation 1.0 §8.4)",
)
async def trust_mark_status(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    trust_mark = await _trust_mark_parameter(request)
    fed = _federation(state)

    def work(session: Session) -> str:
        version = state.charters.current(session).version
        status = service.trust_mark_status(session, fed, trust_mark=trust_mark, charter_version=version)
        return service.trust_mark_status_response(fed, trust_mark=trust_mark, status=status)

    token = await in_transaction(state.session_factory, work)
    return Response(
        token.encode("ascii"),
        media_type=TRUST_MARK_STATUS_MEDIA_TYPE,
        headers={"Cache-Control": "no-store"},  # a status is of the moment it is asked
    )


federation_routes = [entity_configuration, fetch, list_subordinates, trust_mark_status]

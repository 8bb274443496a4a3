"""JSON routes of the registry: RFC 7591/7592 registration, the catalog API, the admin API."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, Router, delete, get, post, put
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, Parameter
from sqlalchemy.orm import Session

from broker.catalog import enforcement, service
from broker.catalog.operators import authenticate_operator
from broker.db import utcnow
from broker.errors import InvalidRequest
from broker.http import NO_STORE, bearer_token, in_transaction, json_body

# -- RFC 7591 / RFC 7592 -----------------------------------------------------------------


@post("/register", status_code=201, summary="Register an app (RFC 7591)", tags=["registration"])
async def register(request: Request[Any, Any, Any], state: State) -> Response[dict[str, Any]]:
    """Dynamic client registration with the charter manifest; the answer carries the verdict."""
    body = await json_body(request)
    settings = state.settings

    def work(session: Session) -> dict[str, Any]:
        charter = state.charters.current(session)
        result = service.register_app(
            session,
            body=body,
            charter=charter,
            secret_key=settings.secret_key,
            dev_mode=settings.dev_mode,
            now=utcnow(),
        )
        return service.registration_response(result.app, settings.issuer, result.registration_access_token)

    answer = await in_transaction(state.session_factory, work)
    return Response(answer, status_code=201, headers=NO_STORE)


@get("/register/{client_id:str}", summary="Read an app's registration (RFC 7592)", tags=["registration"])
async def read_registration(
    request: Request[Any, Any, Any], state: State, client_id: FromPath[str]
) -> Response[dict[str, Any]]:
    token = bearer_token(request)
    settings = state.settings

    def work(session: Session) -> dict[str, Any]:
        app = service.authenticate_registration(
            session, client_id=client_id, token=token, secret_key=settings.secret_key
        )
        return service.registration_response(app, settings.issuer, None)

    return Response(await in_transaction(state.session_factory, work), headers=NO_STORE)


@put("/register/{client_id:str}", summary="Update an app's registration (RFC 7592)", tags=["registration"])
async def update_registration(
    request: Request[Any, Any, Any], state: State, client_id: FromPath[str]
) -> Response[dict[str, Any]]:
    token = bearer_token(request)
    body = await json_body(request)
    settings = state.settings

    def work(session: Session) -> dict[str, Any]:
        app = service.authenticate_registration(
            session, client_id=client_id, token=token, secret_key=settings.secret_key
        )
        result = service.update_app(
            session,
            app=app,
            body=body,
            charter=state.charters.current(session),
            secret_key=settings.secret_key,
            dev_mode=settings.dev_mode,
            now=utcnow(),
        )
        return service.registration_response(result.app, settings.issuer, result.registration_access_token)

    return Response(await in_transaction(state.session_factory, work), headers=NO_STORE)


@delete(
    "/register/{client_id:str}",
    status_code=204,
    summary="Deregister an app (RFC 7592)",
    tags=["registration"],
)
async def delete_registration(
    request: Request[Any, Any, Any], state: State, client_id: FromPath[str]
) -> None:
    token = bearer_token(request)
    settings = state.settings

    def work(session: Session) -> None:
        app = service.authenticate_registration(
            session, client_id=client_id, token=token, secret_key=settings.secret_key
        )
        service.delete_app(session, app=app, now=utcnow())

    await in_transaction(state.session_factory, work)


# -- the public catalog ----------------------------------------------------------------------


@get("/api/catalog/apps", summary="Search the catalog", tags=["catalog"])
async def search_apps(
    state: State,
    q: Annotated[str | None, Parameter(description="Words to look for (name, publisher, purpose)")] = None,
    category: Annotated[
        list[str] | None, Parameter(description="Data category ids (all must be requested)")
    ] = None,
    purpose: Annotated[str | None, Parameter(description="A purpose id")] = None,
    business_model: Annotated[list[str] | None, Parameter(description="Business model ids (any)")] = None,
    holder: Annotated[
        str | None, Parameter(description="Identifier of a holder that can feed the app")
    ] = None,
    eu_only: Annotated[bool, Parameter(description="Only apps whose data never leave the EU")] = False,
    cursor: Annotated[str | None, Parameter(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Parameter(description="Page size, 1 to 100")] = 20,
) -> Response[dict[str, Any]]:
    """Approved apps (every app, labelled, in `label` mode), in a stated neutral order."""

    def work(session: Session) -> dict[str, Any]:
        return service.search_catalog(
            session,
            charter=state.charters.current(session),
            policy_mode=state.settings.policy_mode,
            q=q,
            categories=category,
            purpose=purpose,
            business_models=business_model,
            holder=holder,
            eu_only=eu_only,
            cursor=cursor,
            limit=limit,
        )

    return Response(
        await in_transaction(state.session_factory, work), headers={"Cache-Control": "public, max-age=30"}
    )


@get("/api/catalog/apps/{client_id:str}", summary="An app's public page of facts", tags=["catalog"])
async def app_facts(state: State, client_id: FromPath[str]) -> Response[dict[str, Any]]:
    def work(session: Session) -> dict[str, Any]:
        return service.app_facts(
            session,
            client_id=client_id,
            charter=state.charters.current(session),
            policy_mode=state.settings.policy_mode,
        )

    return Response(
        await in_transaction(state.session_factory, work), headers={"Cache-Control": "public, max-age=30"}
    )


@get("/api/catalog/holders", summary="Approved data holders", tags=["catalog"])
async def holders(state: State) -> list[dict[str, Any]]:
    def work(session: Session) -> list[dict[str, Any]]:
        from broker.catalog import repository

        return [service.holder_json(h) for h in repository.list_holders(session, "approved")]

    return await in_transaction(state.session_factory, work)


@get("/register/{client_id:str}/verdict", summary="The app's charter verdict, again", tags=["registration"])
async def read_verdict(
    request: Request[Any, Any, Any], state: State, client_id: FromPath[str]
) -> Response[dict[str, Any]]:
    token = bearer_token(request)
    settings = state.settings

    def work(session: Session) -> dict[str, Any]:
        app = service.authenticate_registration(
            session, client_id=client_id, token=token, secret_key=settings.secret_key
        )
        return {"status": app.status, "charter_verdict": app.verdict}

    return Response(await in_transaction(state.session_factory, work), headers=NO_STORE)


# -- the admin API (operator token) --------------------------------------------------------


async def _as_operator(request: Request[Any, Any, Any], state: State) -> str:
    token = bearer_token(request)

    def work(session: Session) -> str:
        return authenticate_operator(session, token=token, secret_key=state.settings.secret_key)

    return await in_transaction(state.session_factory, work)


@post("/admin/holders", status_code=201, summary="Register a holder (pending approval)")
async def admin_add_holder(request: Request[Any, Any, Any], state: State) -> dict[str, Any]:
    await _as_operator(request, state)
    body = await json_body(request)

    def work(session: Session) -> dict[str, Any]:
        holder = service.add_holder(
            session,
            body=body,
            charter=state.charters.current(session),
            dev_mode=state.settings.dev_mode,
            now=utcnow(),
        )
        return service.holder_json(holder, private=True)

    return await in_transaction(state.session_factory, work)


@post("/admin/holders/{identifier:str}/approve", status_code=200, summary="Approve a holder")
async def admin_approve_holder(
    request: Request[Any, Any, Any], state: State, identifier: FromPath[str]
) -> dict[str, Any]:
    operator = await _as_operator(request, state)

    def work(session: Session) -> dict[str, Any]:
        holder = service.approve_holder(session, identifier=identifier, operator=operator, now=utcnow())
        return service.holder_json(holder, private=True)

    return await in_transaction(state.session_factory, work)


@get("/admin/holders", summary="Every holder, with its status")
async def admin_list_holders(
    request: Request[Any, Any, Any], state: State, status: FromQuery[str | None] = None
) -> list[dict[str, Any]]:
    await _as_operator(request, state)
    return await in_transaction(
        state.session_factory, lambda session: service.list_holders(session, status=status)
    )


@get("/admin/reviews", summary="Apps waiting for an operator's review")
async def admin_reviews(request: Request[Any, Any, Any], state: State) -> list[dict[str, Any]]:
    await _as_operator(request, state)
    return await in_transaction(state.session_factory, enforcement.pending_reviews)


@post(
    "/admin/apps/{client_id:str}/decision",
    status_code=200,
    summary="Settle a needs_review verdict, with a reason",
)
async def admin_decide(
    request: Request[Any, Any, Any], state: State, client_id: FromPath[str]
) -> dict[str, Any]:
    operator = await _as_operator(request, state)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidRequest("request body: must be a JSON object")

    def work(session: Session) -> dict[str, Any]:
        app = enforcement.decide_review(
            session,
            client_id=client_id,
            decision=body.get("decision"),
            reason=body.get("reason"),
            operator=operator,
            charter=state.charters.current(session),
            dev_mode=state.settings.dev_mode,
            now=utcnow(),
        )
        return {"client_id": app.client_id, "status": app.status, "charter_verdict": app.verdict}

    return await in_transaction(state.session_factory, work)


registry_router = Router(
    path="/",
    route_handlers=[
        register,
        read_registration,
        update_registration,
        delete_registration,
        read_verdict,
        search_apps,
        app_facts,
        holders,
    ],
)
admin_router = Router(
    path="/",
    route_handlers=[admin_add_holder, admin_approve_holder, admin_list_holders, admin_reviews, admin_decide],
    tags=["admin"],
    include_in_schema=True,
)

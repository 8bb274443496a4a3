"""OAuth endpoints for apps and holders: PAR, token, revocation, status lists."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, cast
from urllib.parse import parse_qsl

from litestar import Request, Response, get, post
from litestar.datastructures import State
from sqlalchemy.orm import Session

from broker import strictjson
from broker.catalog.models import App, Holder
from broker.consent import oauth
from broker.consent.events import revocation_stream
from broker.consent.proofs import JoseError, verify_client_assertion, verify_dpop_proof
from broker.consent.proofs.jose import b64url_decode
from broker.consent.replay_store import DatabaseReplayCache
from broker.consent.service import LIST_SIZE, status_list_values
from broker.consent.status_list import StatusList, status_list_token
from broker.db import utcnow
from broker.errors import InvalidClient, InvalidDPoPProof, InvalidRequest
from broker.http import NO_STORE, Position, in_transaction
from broker.outbound import JwksCache, OutboundPolicy, OutboundRefused

# How long a holder may cache a status list: the delay before a revocation reaches a holder
# that does not use the push stream (DESIGN step 9).
STATUS_TTL = timedelta(seconds=30)


async def oauth_form(request: Request[Any, Any, Any]) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body; RFC 6749 §3.1: no repeated parameter."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("the body must be application/x-www-form-urlencoded")
    try:
        raw = (await request.body()).decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise InvalidRequest("the body is not UTF-8") from None
    if "\x00" in raw or "%00" in raw:
        raise InvalidRequest("the body contains a NUL character (%00)")
    pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=False, max_num_fields=50)
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise InvalidRequest(f"parameter {key!r} is repeated")
        form[key] = value
    return form


_JWKS_CACHE_LOCK = threading.Lock()


def jwks_cache(state: State) -> JwksCache:
    """The process's cache of remote JWKS (SECURITY S8), made on first use."""
    with _JWKS_CACHE_LOCK:
        cache = getattr(state, "jwks_cache", None)
        if cache is None:
            cache = state.jwks_cache = JwksCache(OutboundPolicy.from_settings(state.settings))
        return cast(JwksCache, cache)


def _unverified_kid(assertion: str) -> str | None:
    """The ``kid`` in a JWS header, before verification: only to ask the cache for that key."""
    header = assertion.split(".", 1)[0]
    if len(header) > 2048:
        return None  # the verifier refuses the token anyway
    try:
        kid = strictjson.loads(b64url_decode(header, "header")).get("kid")
    except (JoseError, ValueError, AttributeError):
        return None
    return kid if isinstance(kid, str) else None


def remote_jwks(state: State, jwks_uri: Any, assertion: str) -> dict[str, Any]:
    """The keys at a registered ``jwks_uri``, through the guarded outbound client.

    Whatever went wrong, the client is told the same thing (S6); the reason is in the log.
    """
    if not isinstance(jwks_uri, str) or not jwks_uri:
        raise InvalidClient("the client has no registered keys")
    try:
        return jwks_cache(state).get(jwks_uri, _unverified_kid(assertion))
    except OutboundRefused as exc:
        raise InvalidClient(f"the client's jwks_uri: {exc.detail}") from None


def authenticate_client(session: Session, form: Mapping[str, str], state: State) -> App:
    """RFC 7523 ``private_key_jwt`` for confidential apps; ``client_id`` alone for public ones."""
    settings = state.settings
    if "client_assertion" not in form and "client_assertion_type" not in form:
        return oauth.check_client_id_only(session, form)
    if form.get("client_assertion_type") != oauth.ASSERTION_TYPE:
        raise InvalidClient("client_assertion_type must be " + oauth.ASSERTION_TYPE)
    client_id = form.get("client_id") or ""
    app = session.get(App, client_id) if client_id else None
    method = app.token_endpoint_auth_method if app is not None else None
    if app is None or app.status == "deleted" or method != "private_key_jwt":
        raise InvalidClient("unknown client, or a client that does not use private_key_jwt")
    jwks = app.client_metadata.get("jwks")
    if not jwks:
        jwks = remote_jwks(state, app.client_metadata.get("jwks_uri"), form.get("client_assertion", ""))
    now = utcnow()
    try:
        verify_client_assertion(
            form.get("client_assertion", ""),
            client_id=app.client_id,
            client_jwks=jwks,
            # RFC 7523 §3 (3): the token endpoint or the issuer, compared exactly.
            audiences=(f"{settings.issuer}/token", settings.issuer, f"{settings.issuer}/par"),
            now=now,
            replay=DatabaseReplayCache(state.session_factory, now),
        )
    except JoseError as exc:
        raise InvalidClient(f"client assertion refused: {exc}") from None
    return app


def token_client(session: Session, form: Mapping[str, str], state: State) -> oauth.Client:
    """The token endpoint's client authentication: public apps in one statement."""
    if "client_assertion" not in form and "client_assertion_type" not in form:
        return oauth.public_token_client(session, form)
    app = authenticate_client(session, form, state)
    return oauth.Client(app.client_id, app.status)


def dpop_thumbprint(session: Session, request: Request[Any, Any, Any], state: State) -> str | None:
    """RFC 9449 §4.3: verify the request's DPoP proof, if any; the key's thumbprint."""
    proofs = request.headers.getall("dpop", [])
    if not proofs:
        return None
    if len(proofs) > 1:
        raise InvalidDPoPProof("exactly one DPoP header is allowed")
    now = utcnow()
    try:
        proof = verify_dpop_proof(
            proofs[0],
            method=request.method,
            url=f"{state.settings.issuer}{request.url.path}",
            now=now,
            replay=DatabaseReplayCache(state.session_factory, now),
        )
    except JoseError as exc:
        raise InvalidDPoPProof(f"DPoP proof refused: {exc}") from None
    return proof.jkt


@post("/token", status_code=200, tags=["oauth"], summary="Token endpoint (RFC 6749, 7636, 8707, 9449)")
async def token(request: Request[Any, Any, Any], state: State) -> Response[dict[str, Any]]:
    form = await oauth_form(request)

    def work(session: Session) -> dict[str, Any]:
        ctx = oauth.TokenContext(
            settings=state.settings,
            keystore=state.keystore,
            now=utcnow(),
            authenticate=lambda s, f: token_client(s, f, state),
            dpop_jkt=dpop_thumbprint(session, request, state),
        )
        return oauth.token_request(session, form, ctx)

    body = await in_transaction(state.session_factory, work, inline=state.settings.embedded_database)
    return Response(body, headers=NO_STORE)


def authenticate_holder(session: Session, form: Mapping[str, str], state: State) -> Holder:
    """A holder proves itself with a client assertion signed by its registered key (RFC 7523)."""
    holder = session.get(Holder, form.get("client_id") or "")
    if holder is None or holder.status != "approved" or not (holder.jwks or holder.jwks_uri):
        raise InvalidClient("unknown holder, or a holder without registered keys")
    if form.get("client_assertion_type") != oauth.ASSERTION_TYPE:
        raise InvalidClient("client_assertion_type must be " + oauth.ASSERTION_TYPE)
    keys = holder.jwks or remote_jwks(state, holder.jwks_uri, form.get("client_assertion", ""))
    now = utcnow()
    issuer = state.settings.issuer
    try:
        verify_client_assertion(
            form.get("client_assertion", ""),
            client_id=holder.identifier,
            client_jwks=keys,
            audiences=(issuer, f"{issuer}/introspect"),
            now=now,
            replay=DatabaseReplayCache(state.session_factory, now),
        )
    except JoseError as exc:
        raise InvalidClient(f"client assertion refused: {exc}") from None
    return holder


@post("/introspect", status_code=200, tags=["oauth"], summary="Token introspection for holders (RFC 7662)")
async def introspect(request: Request[Any, Any, Any], state: State) -> Response[dict[str, Any]]:
    form = await oauth_form(request)

    def work(session: Session) -> dict[str, Any]:
        holder = authenticate_holder(session, form, state)
        return oauth.introspect_token(
            session,
            form.get("token") or "",
            holder=holder,
            keystore=state.keystore,
            issuer=state.settings.issuer,
            now=utcnow(),
        )

    return Response(await in_transaction(state.session_factory, work), headers=NO_STORE)


@post("/par", status_code=201, tags=["oauth"], summary="Pushed authorization request (RFC 9126)")
async def pushed_authorization_request(
    request: Request[Any, Any, Any], state: State
) -> Response[dict[str, Any]]:
    form = await oauth_form(request)
    settings = state.settings

    def work(session: Session) -> dict[str, Any]:
        app = authenticate_client(session, form, state)
        if "request_uri" in form:
            raise InvalidRequest("request_uri cannot be pushed (RFC 9126 §2.1)")
        if form.get("redirect_uri") not in app.client_metadata["redirect_uris"]:
            raise InvalidRequest("redirect_uri is not registered for this client")
        if app.status != "approved":
            raise InvalidClient(f"this app is {app.status} under the charter")
        charter = state.charters.current(session)
        try:
            checked = oauth.check_authorization_params(app, charter, form, settings.issuer)
        except oauth.RedirectError as exc:
            # RFC 9126 §2.3: the same error codes the authorization endpoint would give.
            raise oauth.error_for_code(exc.error, exc.description) from None
        stored = oauth.store_authorization_request(session, checked, pushed=True, now=utcnow())
        return {"request_uri": oauth.PAR_PREFIX + stored.id, "expires_in": int(oauth.PAR_TTL.total_seconds())}

    body = await in_transaction(state.session_factory, work)
    return Response(body, status_code=201, headers=NO_STORE)


@post("/revoke", status_code=200, tags=["oauth"], summary="Token revocation (RFC 7009)")
async def revoke(request: Request[Any, Any, Any], state: State) -> Response[dict[str, Any]]:
    form = await oauth_form(request)

    def work(session: Session) -> None:
        app = authenticate_client(session, form, state)
        oauth.revoke_token(session, form, app, state.settings.secret_key, utcnow())

    await in_transaction(state.session_factory, work)
    return Response({}, headers=NO_STORE)


@get("/status/{list_id:int}", tags=["oauth"], summary="Token Status List (IETF OAuth draft)")
async def status_list(state: State, list_id: Position) -> Response[str]:
    settings = state.settings
    # Status entries have 32-bit ids: a list past them cannot exist (and PostgreSQL would
    # refuse the bound in the query).
    if (list_id + 1) * LIST_SIZE > 2**31:
        raise InvalidRequest("no such status list")
    now = utcnow()
    values = await in_transaction(state.session_factory, lambda s: status_list_values(s, list_id, now))
    entries = StatusList(LIST_SIZE, bits=2)
    for idx, value in values.items():
        entries.set(idx, value)
    token_text = status_list_token(
        state.keystore,
        uri=f"{settings.issuer}/status/{list_id}",
        status_list=entries,
        issuer=settings.issuer,
        now=now,
        ttl=STATUS_TTL,
    )
    return Response(
        token_text,
        media_type="application/statuslist+jwt",
        headers={"Cache-Control": f"public, max-age={int(STATUS_TTL.total_seconds())}"},
    )


oauth_routes = [token, pushed_authorization_request, revoke, status_list, introspect, revocation_stream]

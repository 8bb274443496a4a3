"""``create_app(settings)``: wires settings, database, keys, charter and routes into Litestar."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Litestar, MediaType, Request, Response, get
from litestar.datastructures import MutableScopeHeaders, State
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import RedocRenderPlugin
from litestar.static_files import create_static_files_router
from litestar.types import Message, Scope
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from broker import __version__
from broker.audit.expiry import ExpirySweep
from broker.audit.pages import audit_pages
from broker.audit.routes import audit_routes, patient_audit_api
from broker.audit.sequencer import BackgroundSequencer, sequence
from broker.catalog import repository
from broker.catalog.enforcement import CharterInForce
from broker.catalog.routes import admin_router, registry_router
from broker.charter import load_charter
from broker.consent.caregivers.pages import caregiver_pages
from broker.consent.catalog_pages import catalog_pages
from broker.consent.download_pages import download_pages
from broker.consent.pages import consent_pages, patient_api
from broker.consent.patients import patient_pages, patient_state
from broker.consent.patients.rendering import render_page
from broker.consent.push import PushHub
from broker.consent.routes import oauth_routes
from broker.db import (
    DATABASE_RETRY_AFTER,
    database_unreachable,
    make_engine,
    make_session_factory,
    transaction,
    utcnow,
)
from broker.discovery import authorization_server_metadata, jwks, metadata
from broker.errors import BrokerError, InvalidToken, OAuthError
from broker.federation.routes import federation_routes
from broker.federation.sync import guarded_fetch, synchronise_all
from broker.http import configure_database_threads, in_transaction, refuse_nul_characters
from broker.keys import KeyStore
from broker.openapi import complete_description
from broker.ops.health import health_routes
from broker.ops.limits import RateLimits
from broker.ops.metrics import process_stopped
from broker.ops.observe import ObservedRequests
from broker.ops.shutdown import Draining
from broker.outbound import OutboundPolicy
from broker.settings import Settings
from broker.web.i18n import STATIC

log = logging.getLogger("broker")

TEMPLATES = Path(__file__).parent / "web" / "templates"
# Endpoints whose errors take the RFC 6749 §5.2 form (``error``, ``error_description``).
OAUTH_PATHS = ("/register", "/token", "/par", "/revoke", "/introspect")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'",
}


def _is_oauth_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in OAUTH_PATHS)


def _problem_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response[Any]:
    return Response(
        body,
        status_code=status,
        media_type="application/problem+json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _oauth_response(status: int, error: str, description: str) -> Response[Any]:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        # RFC 6750 §3: tell the client which scheme and what went wrong.
        headers["WWW-Authenticate"] = f'Bearer error="{error}"'
    return Response(
        {"error": error, "error_description": description},
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def _oauth_error_code(path: str, status: int) -> str:
    """The RFC error code for an error that is not an OAuth error of its own."""
    registration = path == "/register" or path.startswith("/register/")
    if status == 401:
        return "invalid_token" if registration else "invalid_client"
    if registration and status in (400, 415):
        return "invalid_client_metadata"  # RFC 7591 §3.2.2
    return "invalid_request"


def handle_broker_error(request: Request[Any, Any, Any], exc: BrokerError) -> Response[Any]:
    if isinstance(exc, OAuthError) or (_is_oauth_path(request.url.path) and exc.status < 500):
        error = exc.error if isinstance(exc, OAuthError) else _oauth_error_code(request.url.path, exc.status)
        return _oauth_response(exc.status, error, exc.detail)
    return _problem_response(exc.status, exc.problem(request.url.path))


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if status == 413:
        limit = request.app.state.settings.max_body_bytes
        detail = f"the request body is larger than the {limit} bytes this broker accepts"
    else:
        detail = exc.detail
    if status >= 500:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        detail = "an internal error occurred; it has been logged"
    if _is_oauth_path(request.url.path) and status < 500:
        error = "invalid_request" if status != 401 else InvalidToken.error
        return _oauth_response(status, error, detail)
    body = {
        "type": "about:blank",
        "title": detail if status < 500 else "Internal error",
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    extra = getattr(exc, "extra", None)
    if status == 400 and isinstance(extra, list | dict) and extra:
        body["errors"] = extra
    headers = {"Allow": exc.headers["Allow"]} if exc.headers and "Allow" in exc.headers else None
    return _problem_response(status, body, headers)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    if _is_oauth_path(request.url.path):
        return _oauth_response(500, "server_error", "an internal error occurred")
    return _problem_response(
        500,
        {
            "type": "about:blank",
            "title": "Internal error",
            "status": 500,
            "detail": "an internal error occurred",
        },
    )


def handle_database_error(request: Request[Any, Any, Any], exc: DBAPIError) -> Response[Any]:
    """The database is out of reach (restarting, fail-over, network): a clear, retryable 503.

    Nothing was committed by the request that failed so (its transaction rolled back), so
    the client may send it again after ``Retry-After``. Other database errors are bugs: 500.
    """
    if not database_unreachable(exc):
        return handle_unexpected(request, exc)
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc.orig)
    detail = "the broker's database is out of reach for a moment; try again shortly"
    headers = {"Retry-After": str(DATABASE_RETRY_AFTER)}
    if _is_oauth_path(request.url.path):
        response = _oauth_response(503, "temporarily_unavailable", detail)
        response.headers.update(headers)
        return response
    return _problem_response(
        503,
        {"type": "about:blank", "title": "Temporarily unavailable", "status": 503, "detail": detail},
        headers,
    )


async def add_security_headers(message: Message, scope: Scope) -> None:
    if message["type"] != "http.response.start":
        return
    headers = MutableScopeHeaders.from_message(message)
    for name, value in SECURITY_HEADERS.items():
        # The API documentation page loads its renderer's script; every other page is ours only.
        if name == "Content-Security-Policy" and scope["path"].startswith("/schema"):
            continue
        if name not in headers:
            headers[name] = value


@get("/", media_type=MediaType.HTML, include_in_schema=False)
async def index(state: State) -> str:
    def work(session: Session) -> dict[str, Any]:
        return {
            "holders": len(repository.list_holders(session, "approved")),
            "charter": state.charters.current(session),
        }

    facts = await in_transaction(state.session_factory, work)
    template = state.templates.get_template("index.html")
    page: str = template.render(issuer=state.settings.issuer, version=__version__, **facts)
    return page


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    # A unit of work may hold a second connection (the replay cache's own transaction).
    engine = make_engine(
        settings.database_url, pool_size=settings.db_threads, max_overflow=settings.db_threads
    )
    configure_database_threads(settings.db_threads)
    session_factory = make_session_factory(engine)
    keystore = KeyStore(settings.key_dir)
    if settings.dev_mode or settings.demo:
        keystore.create()  # a first key for a local try; production runs `broker keys create`
    keystore.load()
    charter = load_charter(settings.charter_version)
    state = State(
        {
            "settings": settings,
            "engine": engine,
            "session_factory": session_factory,
            "keystore": keystore,
            "charters": CharterInForce(settings.charter_version),
            "draining": (draining := Draining()),
            # Wakes this process's push streams when any node commits a consent event.
            "push": PushHub(settings.database_url),
            "metadata_document": authorization_server_metadata(settings.issuer, list(charter.categories)),
            "templates": Environment(
                loader=FileSystemLoader(TEMPLATES),
                autoescape=select_autoescape(["html"]),
            ),
            # The patient pages: Jinja2 environments per language, password hashing, OIDC.
            **patient_state(settings),
        }
    )

    def on_shutdown() -> None:
        engine.dispose()

    # The audit log's sequencer, in the background of every process (one works at a time);
    # on the same tick, about once a minute, consents past their end are marked expired.
    expire = ExpirySweep(session_factory)

    def audit_tick() -> int:
        placed = sequence(
            session_factory,
            signer=keystore,
            secret_key=settings.secret_key,
            issuer=settings.issuer,
            wait=False,
        )
        expire()  # its events are placed on the next tick
        return placed

    sequencer = BackgroundSequencer(audit_tick, settings.audit_interval)
    # Every trusted peer, at start and then each period: suspensions at the origin reach
    # this catalog within one period.
    charters = state.charters
    outbound = OutboundPolicy.from_settings(settings)
    federation_sync = BackgroundSequencer(
        lambda: len(
            synchronise_all(
                session_factory,
                charter_of=charters.current,
                fetch=guarded_fetch(outbound),
                dev_mode=settings.dev_mode,
                clock=utcnow,
                interval=settings.federation_sync_interval,
            )
        ),
        settings.federation_sync_interval,
        name="federation synchroniser",
    )

    if settings.demo:
        from broker.demo import seed_demo

        with transaction(session_factory) as session:
            seed_demo(session, settings)

    def too_many_requests_page(request: Request[Any, Any, Any], wait: int) -> Response[Any]:
        return render_page(request, "patients/error.html", status_code=429, code="throttled")

    # Kept in the state, where the tests read its buckets.
    rate_limits = state.rate_limits = RateLimits(settings, page=too_many_requests_page)

    async def before_request(request: Request[Any, Any, Any]) -> Response[Any] | None:
        refuse_nul_characters(request)  # a 400 before anything reads the request
        return await rate_limits(request)

    app = Litestar(
        route_handlers=[
            index,
            *health_routes,
            metadata,
            jwks,
            *federation_routes,
            registry_router,
            admin_router,
            *oauth_routes,
            consent_pages,
            caregiver_pages,
            catalog_pages,
            download_pages,
            audit_pages,
            *patient_api,
            *patient_audit_api,
            *audit_routes,
            patient_pages,
            create_static_files_router(path="/static", directories=[STATIC], include_in_schema=False),
        ],
        state=state,
        exception_handlers={
            BrokerError: handle_broker_error,
            HTTPException: handle_http_exception,
            DBAPIError: handle_database_error,
            Exception: handle_unexpected,
        },
        before_send=[add_security_headers],
        before_request=before_request,
        on_startup=[draining.install, sequencer.start, state.push.start, federation_sync.start],
        on_shutdown=[
            draining.begin,
            federation_sync.stop,
            state.push.stop,
            sequencer.stop,
            on_shutdown,
            process_stopped,
        ],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Consent broker for personal health data",
            version=__version__,
            description="App registry (RFC 7591/7592), charter verdicts, catalog and discovery.",
            path="/schema",
            render_plugins=[RedocRenderPlugin()],
        ),
        debug=False,
        # Logging is configured by `broker serve` (JSON lines, broker/ops/logs.py); Litestar's
        # own configuration would replace it with plain text.
        logging_config=None,
    )
    complete_description(app, is_oauth_path=_is_oauth_path)
    # Outside everything Litestar does: request id, log line and metrics of every request.
    app.asgi_handler = ObservedRequests(app.asgi_handler)
    return app

"""What both demo holders share: configuration, the link step's pages, token checks, receipts.

A holder example is a Litestar app made by ``holder_app`` with its own FHIR routes, behind
the SDK's ``BrokerAuthMiddleware``, which verifies the broker token for the category of each
path before the route runs. A route calls ``release`` (the verified token and the patient's
record, found from the token's link handle), answers, and reports the release with
``Release.receipt``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker_sdk import BrokerAuthMiddleware, HolderVerifier, ReceiptSender, VerifiedToken
from broker_sdk.download import DownloadEndpoint, DownloadRequest, DownloadVerifier
from broker_sdk.link import LinkRequestError, link_response, parse_link_request
from jwcrypto import jwk
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.response import Redirect

from examples.common.keys import load_or_create_key, public_jwks
from examples.common.pages import escape, page

log = logging.getLogger("examples.holder")
logging.getLogger("httpx").setLevel(logging.WARNING)


@dataclass(frozen=True)
class HolderConfig:
    identifier: str
    legal_name: str
    categories: tuple[str, ...]
    host: str
    port: int
    broker: str  # the issuer this holder trusts
    state_dir: Path  # signing key, receipt queue
    push: bool = True  # listen to the broker's push stream of revocations
    status_max_age: float | None = None  # how long a status list copy may serve (None: the SDK's)

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The holder's FHIR base: the audience of the tokens issued for it (RFC 8707)."""
        return f"{self.origin}/fhir"

    @property
    def link_endpoint(self) -> str:
        return f"{self.origin}/link"

    @property
    def download_endpoint(self) -> str:
        return f"{self.origin}/download"

    def registration(self, key: jwk.JWK) -> dict[str, Any]:
        """The holder's registration document for the broker's operator (public key only)."""
        return {
            "identifier": self.identifier,
            "legal_name": self.legal_name,
            "base_url": self.base_url,
            "categories": list(self.categories),
            "release_step_categories": [],
            "jwks": public_jwks(key),
            "link_endpoint": self.link_endpoint,
            "download_endpoint": self.download_endpoint,
        }


def parse_config(
    argv: Sequence[str] | None, *, identifier: str, legal_name: str, categories: tuple[str, ...], port: int
) -> tuple[HolderConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog=f"python -m examples.{identifier}")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "registration", "keygen"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--broker", default="http://127.0.0.1:8000", help="the broker's issuer URL")
    parser.add_argument("--state-dir", type=Path, default=Path("var/examples") / identifier)
    parser.add_argument("--no-push", action="store_true", help="rely on the status list only")
    parser.add_argument("--status-max-age", type=float, default=None)
    args = parser.parse_args(argv)
    config = HolderConfig(
        identifier=identifier,
        legal_name=legal_name,
        categories=categories,
        host=args.host,
        port=args.port,
        broker=args.broker.rstrip("/"),
        state_dir=args.state_dir,
        push=not args.no_push,
        status_max_age=args.status_max_age,
    )
    return config, args


class LinkHandles:
    """The handle this holder gives the broker for each of its records (DESIGN step 4).

    Derived, not stored: an HMAC of the broker and the record under a key only the holder
    has. The same patient linked again gets the same handle; another broker gets another one,
    so that two brokers cannot correlate their patients.
    """

    def __init__(self, key: jwk.JWK, records: Sequence[str]) -> None:
        private_scalar = json.loads(key.export_private())["d"]
        self._secret = hashlib.sha256(b"link-handles\x00" + private_scalar.encode()).digest()
        self._records = tuple(records)

    def handle(self, broker: str, record_id: str) -> str:
        mac = hmac.new(self._secret, f"{broker}\x00{record_id}".encode(), hashlib.sha256).hexdigest()
        return "h" + mac[:40]

    def record(self, broker: str, handle: str) -> str | None:
        for record_id in self._records:
            if hmac.compare_digest(self.handle(broker, record_id), handle):
                return record_id
        return None


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    from litestar.exceptions import HTTPException

    if isinstance(exc, HTTPException):
        return Response({"detail": exc.detail}, status_code=exc.status_code)
    log.exception("unexpected error on %s", request.url.path)
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "fatal", "code": "exception", "diagnostics": "internal error"}],
    }
    return Response(outcome, status_code=500, media_type="application/fhir+json")


def fhir(body: dict[str, Any]) -> Response[dict[str, Any]]:
    return Response(body, media_type="application/fhir+json", headers={"Cache-Control": "no-store"})


class NotLinked(Exception):
    """A valid token whose link handle names no record here (unlinked, or another broker's)."""


@dataclass
class Release:
    token: VerifiedToken
    record_id: str

    async def receipt(
        self, request: Request[Any, Any, Any], categories: list[str], record_count: int
    ) -> None:
        """Report this release to the broker: queued on disk now (a synced write, so off the
        event loop), delivered in the background."""
        import anyio.to_thread

        sender: ReceiptSender = request.app.state.receipts
        await anyio.to_thread.run_sync(
            lambda: sender.submit(self.token, categories=categories, record_count=record_count)
        )


def release(request: Request[Any, Any, Any]) -> Release:
    """The token the SDK's middleware verified for this request, and the patient's record."""
    token: VerifiedToken = request.state.broker_token  # set by the SDK's BrokerAuthMiddleware
    handles: LinkHandles = request.app.state.handles
    record_id = handles.record(token.issuer, token.link_handle or "")
    if record_id is None:
        raise NotLinked
    return Release(token, record_id)


def _not_linked(request: Request[Any, Any, Any], exc: NotLinked) -> Response[dict[str, Any]]:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "not-found", "diagnostics": "no record for this link"}],
    }
    return Response(outcome, status_code=404, media_type="application/fhir+json")


def holder_app(
    config: HolderConfig,
    *,
    accounts: Sequence[Any],
    find_by_login: Callable[[str, str], Any],
    routes: Sequence[Any],
    categories_by_path: dict[str, set[str]],
    welcome: str,
    download: Callable[[str, frozenset[str]], list[dict[str, Any]]],
) -> Any:
    """The holder's ASGI app: its Litestar routes behind the SDK's token middleware."""
    key = load_or_create_key(config.state_dir)
    verifier = HolderVerifier(
        config.broker,  # the one issuer this holder trusts
        config.base_url,  # the audience of tokens issued for this holder
        holder_id=config.identifier,
        holder_key=key,  # signs the push stream subscription
        **({"status_max_age": config.status_max_age} if config.status_max_age is not None else {}),
    )
    receipts = ReceiptSender(
        config.broker,
        holder_id=config.identifier,
        key=key,
        queue_path=config.state_dir / "receipts.sqlite3",  # on disk: an outage loses nothing
    )
    site = config.legal_name

    @get("/", include_in_schema=False)
    async def home() -> Response[str]:
        return page(
            config.legal_name,
            f"<p>{escape(welcome)}</p>"
            f"<p>API FHIR R4 : <code>{escape(config.base_url)}</code>, accessible uniquement avec un "
            "jeton du courtier de consentement.</p>",
            site=site,
        )

    @get("/health", include_in_schema=False)
    async def health() -> dict[str, Any]:
        return {"status": "ok", "holder": config.identifier}

    @get("/.well-known/jwks.json", include_in_schema=False)
    async def jwks() -> dict[str, Any]:
        return public_jwks(key)

    def login_form(query: dict[str, str], error: str = "") -> Response[str]:
        hidden = "".join(
            f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
            for k, v in query.items()
            if k in ("state", "redirect_uri", "broker")
        )
        alert = f'<p class="alert" role="alert">{escape(error)}</p>' if error else ""
        return page(
            "Relier votre dossier au courtier",
            f"{alert}<p class='notice'>Le courtier de consentement vous demande de vous identifier "
            f"auprès de <strong>{escape(config.legal_name)}</strong>. Nous lui donnerons seulement un "
            "identifiant opaque de votre dossier, jamais vos résultats ni votre identité.</p>"
            f'<form method="post" action="/link">{hidden}'
            '<label for="username">Identifiant</label>'
            '<input type="text" id="username" name="username" autocomplete="username" required>'
            '<label for="password">Mot de passe</label>'
            '<input type="password" id="password" name="password" autocomplete="current-password" required>'
            "<button type=submit>Me connecter et relier mon dossier</button></form>",
            site=site,
            status_code=400 if error else 200,
        )

    def refused_link(error: LinkRequestError) -> Response[str]:
        log.warning("link request refused: %s", error)
        return page(
            "Demande de liaison refusée",
            "<p class='alert'>Cette demande ne vient pas d'un courtier reconnu par cet "
            "établissement, ou elle est incomplète.</p>",
            site=site,
            status_code=400,
        )

    @get("/link", include_in_schema=False)
    async def link_page(request: Request[Any, Any, Any]) -> Response[str]:
        """The holder side of the link step: the broker sent the patient here."""
        query = {k: str(v) for k, v in request.query_params.items()}
        try:
            parse_link_request(query, trusted_issuers=[config.broker])
        except LinkRequestError as error:
            return refused_link(error)
        return login_form(query)

    @post("/link", include_in_schema=False)
    async def link_submit(request: Request[Any, Any, Any]) -> Response[Any]:
        form = {k: str(v) for k, v in (await request.form()).items()}
        try:
            link = parse_link_request(form, trusted_issuers=[config.broker])
        except LinkRequestError as error:
            return refused_link(error)
        account = find_by_login(form.get("username", ""), form.get("password", ""))
        if account is None:
            return login_form(form, "Identifiant ou mot de passe incorrect.")
        handle = request.app.state.handles.handle(link.broker, account.record_id)
        log.info("a record was linked to the broker")
        # Back to the broker with a link+jwt the holder signed, naming the handle.
        return Redirect(
            link_response(link, key=key, holder_id=config.identifier, handle=handle), status_code=303
        )

    def on_startup(app: Litestar) -> None:
        receipts.start()
        if config.push:
            verifier.start_push(wait=5.0)

    def on_shutdown(app: Litestar) -> None:
        receipts.close()
        verifier.close()

    app = Litestar(
        route_handlers=[home, health, jwks, link_page, link_submit, *routes],
        state=State(
            {
                "config": config,
                "receipts": receipts,
                "verifier": verifier,
                "handles": LinkHandles(key, [a.record_id for a in accounts]),
            }
        ),
        exception_handlers={NotLinked: _not_linked, Exception: _unexpected},
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
    )
    # The FHIR API needs a broker token granting the path's category; the SDK's middleware
    # checks it and answers refusals itself (401/403/503 with WWW-Authenticate, RFC 6750 §3).
    # The holder's own pages (home, link step, keys) stay outside it.
    protected = BrokerAuthMiddleware(
        app,
        verifier,
        categories=lambda scope: categories_by_path.get(scope["path"], ()),
        public_paths=("/fhir/metadata",),
        public_origin=config.origin,
        realm=config.identifier,
    )

    handles = app.state.handles

    def serve_download(request: DownloadRequest) -> list[dict[str, Any]]:
        record_id = handles.record(request.token.issuer, request.token.link_handle or "")
        if record_id is None:
            raise LookupError("no record for this link")
        return download(record_id, request.categories)

    # The patient's own download (issue 10): one-time download tokens only, never at /fhir.
    download_endpoint = DownloadEndpoint(
        DownloadVerifier(config.broker, config.base_url, holder_id=config.identifier, http=verifier.http),
        serve_download,
        base_url=config.base_url,
        holder_name=config.legal_name,
        allowed_origins=[config.broker],  # the broker's page may fetch the file (CORS)
        receipts=receipts,
        filename=config.identifier,
    )

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/fhir/"):
            await protected(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == "/download":
            await download_endpoint(scope, receive, send)
        else:
            await app(scope, receive, send)

    asgi.litestar = app  # type: ignore[attr-defined]  # for tests that want the inner app
    return asgi


def main(
    argv: Sequence[str] | None,
    *,
    identifier: str,
    legal_name: str,
    categories: tuple[str, ...],
    port: int,
    build: Callable[[HolderConfig], Any],
) -> int:

    import uvicorn

    config, args = parse_config(
        argv, identifier=identifier, legal_name=legal_name, categories=categories, port=port
    )
    key = load_or_create_key(config.state_dir)
    if args.command == "registration":
        print(json.dumps(config.registration(key), indent=2, ensure_ascii=False))
        return 0
    if args.command == "keygen":
        print(config.state_dir / "jwks.json")
        return 0
    logging.basicConfig(level=logging.INFO, format=f"{identifier} %(levelname)s %(name)s: %(message)s")
    uvicorn.run(build(config), host=config.host, port=config.port, log_level="warning")
    return 0

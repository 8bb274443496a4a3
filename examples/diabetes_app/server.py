"""«Suivi Glycémie»: the demo app's web site (French, server-rendered, no JavaScript).

The patient clicks «Connecter mes données»; the app pushes its authorization request to the
broker (PAR, PKCE), the patient consents at the broker, and comes back with a code. The app
then asks the broker for a token per holder and fetches the data DIRECTLY from each holder:
the broker never sees a result. When the patient withdraws the consent, the holder refuses
the next call and the refresh fails: the page says «Accès retiré».
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from broker_sdk import AppClient, BrokerUnreachable, ConsentRevoked, OAuthError
from broker_sdk.app import AuthorizationRequest, Grant, Registration
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import Cookie, State
from litestar.response import Redirect

from examples.common.pages import escape, page
from examples.diabetes_app.chart import french_date, line_chart

log = logging.getLogger("examples.diabetes_app")

SITE = "Suivi Glycémie"
COOKIE = "sg_session"
MANIFEST = Path(__file__).with_name("manifest.json")
GLUCOSE, HBA1C = "14771-0", "4548-4"
# What the app asks for (RFC 9396 ``health_data`` details): each purpose with what it needs.
AUTHORIZATION_DETAILS = [
    {"purpose": "chronic_disease_followup", "categories": ["lab_results"]},
    {"purpose": "health_budget", "categories": ["reimbursements"]},
]


class HolderUnavailable(Exception):
    """A holder answered 503: it cannot check the consent right now (it fails closed)."""


@dataclass
class Visit:
    """One browser's session at the app (kept in memory: a demo)."""

    pending: AuthorizationRequest | None = None
    grant: Grant | None = None
    ended: str | None = None  # why access was withdrawn, once it was
    ended_by: str = ""  # "holder" when a holder refused first, else "broker" (the refresh)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one holder call at a time


@dataclass(frozen=True)
class AppConfig:
    host: str
    port: int
    broker: str
    client_id: str | None
    state_dir: Path

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def redirect_uri(self) -> str:
        return f"{self.origin}/callback"


def _client_id(config: AppConfig, client: AppClient) -> str:
    """The app's client_id: given, or from its own earlier registration, or registered now
    through the SDK (RFC 7591, the manifest with this app's own redirect URI)."""
    if config.client_id:
        return config.client_id
    saved = config.state_dir / "registration.json"
    manifest = json.loads(MANIFEST.read_text())
    manifest["redirect_uris"] = [config.redirect_uri]
    manifest["client_uri"] = config.origin
    if saved.is_file():
        registration = Registration.from_json(json.loads(saved.read_text()))
        if registration.metadata.get("redirect_uris") == manifest["redirect_uris"]:
            return str(registration.client_id)
    registration = client.register(manifest)
    log.info("registered with the broker; charter verdict: %s", registration.verdict.status)
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    saved.write_text(json.dumps(registration.to_json()))
    saved.chmod(0o600)  # it holds the registration access token
    return str(registration.client_id)


# Which holder refused a token last, per worker thread: an httpx hook sees every answer.
_seen = threading.local()


def _note_refusal(response: httpx.Response) -> None:
    if response.status_code == 401 and "/fhir/" in response.request.url.path:
        _seen.refused_by = f"{response.request.url.scheme}://{response.request.url.netloc.decode()}"


def _holder_get(client: AppClient, grant: Grant, url: str, params: dict[str, str]) -> Any:
    """GET a holder's API with the SDK: the right token for that holder, a DPoP proof, one
    retry with a fresh token on 401; a consent that is gone raises ConsentRevoked."""
    response = client.get(grant, url, params=params, headers={"Accept": "application/fhir+json"})
    if response.status_code == 503:
        raise HolderUnavailable(url)
    response.raise_for_status()
    return response.json()


def _locations(grant: Grant, category: str) -> list[str]:
    out: list[str] = []
    for holder in grant.holders():
        if category in holder.categories and holder.base_url not in out:
            out.append(holder.base_url)
    return out


def _observations(bundle: dict[str, Any], code: str) -> list[tuple[datetime, float]]:
    points = []
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        if resource["code"]["coding"][0]["code"] == code:
            points.append(
                (
                    datetime.fromisoformat(resource["effectiveDateTime"]),
                    float(resource["valueQuantity"]["value"]),
                )
            )
    return sorted(points)


def _dashboard(client: AppClient, grant: Grant) -> str:
    html = []
    for location in _locations(grant, "lab_results"):
        bundle = _holder_get(client, grant, location + "/Observation", {"code": f"{GLUCOSE},{HBA1C}"})
        glucose = _observations(bundle, GLUCOSE)
        hba1c = _observations(bundle, HBA1C)
        html.append("<h2>Votre glycémie à jeun</h2>")
        html.append(
            line_chart(
                glucose, title="Glycémie à jeun (mmol/L) dans le temps", unit="mmol/L", band=(3.9, 6.1)
            )
        )
        rows = "".join(f"<tr><td>{french_date(m)}</td><td>{v} mmol/L</td></tr>" for m, v in glucose)
        html.append(
            f"<details><summary>Les valeurs ({len(glucose)})</summary><table id='glycemie'>"
            f"<tr><th>Date</th><th>Glycémie</th></tr>{rows}</table></details>"
        )
        rows = "".join(f"<tr><td>{french_date(m)}</td><td>{v} %</td></tr>" for m, v in hba1c)
        html.append(
            f"<h2>Votre hémoglobine glyquée (HbA1c)</h2><table id='hba1c'>"
            f"<tr><th>Date</th><th>HbA1c</th></tr>{rows}</table>"
        )
        html.append(f"<p><small>Source : {escape(location)}, lu directement chez le laboratoire.</small></p>")
    for location in _locations(grant, "reimbursements"):
        bundle = _holder_get(client, grant, location + "/ExplanationOfBenefit", {})
        lines: list[str] = []
        total = 0.0
        for entry in bundle.get("entry", []):
            claim = entry["resource"]
            paid = next(
                t["amount"]["value"]
                for t in claim["total"]
                if t["category"]["coding"][0]["code"] == "benefit"
            )
            total += paid
            label = claim["item"][0]["productOrService"].get("text", "")
            lines.append(
                f"<tr><td>{escape(claim['created'])}</td><td>{escape(label)}</td><td>{paid} €</td></tr>"
            )
        html.append(
            f"<h2>Le coût de votre suivi</h2><p>Remboursé sur la période : {total:.2f} €</p>"
            f"<table id='remboursements'><tr><th>Date</th><th>Soin</th><th>Remboursé</th></tr>"
            f"{''.join(lines)}</table>"
        )
    if not html:
        html.append("<p class='notice'>Aucune source de résultats d'analyses n'a été autorisée.</p>")
    return "".join(html)


def create_app(config: AppConfig) -> Litestar:
    # A public client (PKCE is its proof); tokens bound to a DPoP key the SDK makes per grant.
    client = AppClient(
        config.broker,
        client_id=config.client_id,
        dpop=True,
        http=httpx.Client(timeout=10.0, trust_env=False, event_hooks={"response": [_note_refusal]}),
    )
    visits: dict[str, Visit] = {}

    def visit_of(request: Request[Any, Any, Any]) -> tuple[str, Visit]:
        sid = request.cookies.get(COOKIE, "")
        if sid not in visits:
            sid = secrets.token_urlsafe(24)
            visits[sid] = Visit()
        return sid, visits[sid]

    def with_cookie(response: Response[Any], sid: str) -> Response[Any]:
        response.cookies.append(Cookie(key=COOKIE, value=sid, httponly=True, samesite="lax", path="/"))
        return response

    connect_form = (
        '<form method="post" action="/connect"><button type="submit">Connecter mes données</button></form>'
    )

    def read(visit: Visit) -> tuple[str, str | None]:
        """The dashboard, or why not; runs in a worker thread (the SDK is synchronous)."""
        assert visit.grant is not None
        with visit.lock:
            _seen.refused_by = None
            try:
                return _dashboard(client, visit.grant), None
            except ConsentRevoked:
                return "", _seen.refused_by or ""

    @get("/", include_in_schema=False)
    async def home(request: Request[Any, Any, Any]) -> Response[Any]:
        sid, visit = visit_of(request)
        if visit.grant is None:
            ended = ""
            if visit.ended:
                ended = (
                    f"<div class='alert' id='acces-retire' data-refused-by='{visit.ended_by}' role='alert'>"
                    f"<strong>Accès retiré.</strong> {escape(visit.ended)}</div>"
                )
            body = (
                f"{ended}<p>{SITE} vous montre l'évolution de votre glycémie et de votre HbA1c, "
                "à partir des résultats de votre laboratoire. Vos résultats vont directement du "
                "laboratoire à l'application : le courtier de consentement ne les voit jamais.</p>"
                f"{connect_form}"
            )
            return with_cookie(page("Suivi Glycémie", body, site=SITE), sid)
        try:
            body, refused_by = await _in_thread(read, visit)
        except (HolderUnavailable, BrokerUnreachable):
            return with_cookie(
                page(
                    "Service momentanément indisponible",
                    "<p class='alert'>La source de données ne peut pas vérifier votre consentement pour "
                    "le moment. Réessayez dans un instant.</p>",
                    site=SITE,
                    status_code=503,
                ),
                sid,
            )
        if refused_by is not None:
            # The SDK noticed the withdrawal: a holder refused the token and the refresh failed.
            visit.grant = None
            if refused_by:
                visit.ended_by = "holder"
                visit.ended = (
                    f"Le consentement a été retiré : la source de données ({refused_by}) a refusé la "
                    "demande de l'application, et le courtier ne renouvelle plus l'accès. "
                    "Vos données ne sont plus lues."
                )
            else:
                visit.ended_by = "broker"
                visit.ended = "Le courtier ne renouvelle plus l'accès : le consentement a été retiré."
            log.info("access withdrawn (%s refused)", visit.ended_by)
            return Redirect("/", status_code=303)
        logout = '<form method="post" action="/logout"><button type="submit">Se déconnecter</button></form>'
        return with_cookie(page("Votre suivi", body + logout, site=SITE), sid)

    @post("/connect", include_in_schema=False)
    async def connect(request: Request[Any, Any, Any]) -> Response[Any]:
        """PKCE and state, the request pushed to the broker (PAR), then off to its consent page."""
        sid, visit = visit_of(request)
        pending = await _in_thread(
            lambda: client.authorization_request(
                config.redirect_uri, authorization_details=AUTHORIZATION_DETAILS
            )
        )
        visit.pending = pending
        return with_cookie(Redirect(pending.url, status_code=303), sid)

    @get("/callback", include_in_schema=False)
    async def callback(request: Request[Any, Any, Any]) -> Response[Any]:
        sid, visit = visit_of(request)
        pending, visit.pending = visit.pending, None
        if pending is None:
            return page(
                "Retour inattendu",
                "<p class='alert'>Cette réponse ne correspond à aucune demande en cours. Recommencez.</p>"
                + connect_form,
                site=SITE,
                status_code=400,
            )
        try:
            # The SDK checks state and the issuer (RFC 9207), then redeems the code (PKCE).
            grant = await _in_thread(lambda: client.exchange_code(pending, str(request.url)))
        except OAuthError as error:
            if error.error == "access_denied":
                return page(
                    "Connexion annulée",
                    "<p class='notice'>Vous n'avez pas donné votre accord : l'application ne lit "
                    "aucune donnée.</p>" + connect_form,
                    site=SITE,
                )
            log.warning("callback refused: %s", error.error)
            return page(
                "Retour inattendu",
                "<p class='alert'>Cette réponse n'a pas pu être vérifiée. Recommencez.</p>" + connect_form,
                site=SITE,
                status_code=400,
            )
        visit.grant, visit.ended = grant, None
        return with_cookie(Redirect("/", status_code=303), sid)

    @post("/logout", include_in_schema=False)
    async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
        visits.pop(request.cookies.get(COOKIE, ""), None)
        return Redirect("/", status_code=303)

    @get("/health", include_in_schema=False)
    async def health() -> dict[str, Any]:
        return {"status": "ok", "client_id": client.client_id}

    def on_startup(app: Litestar) -> None:
        client.client_id = _client_id(config, client)

    def unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        from litestar.exceptions import HTTPException

        if isinstance(exc, HTTPException):
            return Response({"detail": exc.detail}, status_code=exc.status_code)
        log.exception("unexpected error on %s", request.url.path)
        return page(
            "Erreur",
            "<p class='alert'>Une erreur est survenue. Réessayez plus tard.</p>",
            site=SITE,
            status_code=500,
        )

    return Litestar(
        route_handlers=[home, connect, callback, logout, health],
        state=State({"config": config}),
        on_startup=[on_startup],
        exception_handlers={Exception: unexpected},
    )


async def _in_thread(function: Any, *args: Any) -> Any:
    """The SDK client is synchronous: run it off the event loop."""
    import anyio.to_thread

    return await anyio.to_thread.run_sync(lambda: function(*args))


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m examples.diabetes_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--broker", default="http://127.0.0.1:8000")
    parser.add_argument("--client-id", default=None, help="registered already; otherwise register now")
    parser.add_argument("--state-dir", type=Path, default=Path("var/examples/diabetes-app"))
    args = parser.parse_args(argv)
    config = AppConfig(args.host, args.port, args.broker.rstrip("/"), args.client_id, args.state_dir)
    logging.basicConfig(level=logging.INFO, format="diabetes-app %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="warning")
    return 0

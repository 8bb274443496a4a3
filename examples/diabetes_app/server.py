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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import Cookie, State
from litestar.response import Redirect

from examples.common.pages import escape, page
from examples.diabetes_app.app_sdk import AppClient, GrantEnded, HolderRefused
from examples.diabetes_app.chart import french_date, line_chart

log = logging.getLogger("examples.diabetes_app")

SITE = "Suivi Glycémie"
COOKIE = "sg_session"
MANIFEST = Path(__file__).with_name("manifest.json")
GLUCOSE, HBA1C = "14771-0", "4548-4"
# What the app asks for (RFC 9396): its two purposes, each with what it needs.
AUTHORIZATION_DETAILS = [
    {"type": "health_data", "purpose": "chronic_disease_followup", "categories": ["lab_results"]},
    {"type": "health_data", "purpose": "health_budget", "categories": ["reimbursements"]},
]


@dataclass
class Grant:
    refresh_token: str
    details: list[dict[str, Any]]
    consent_id: str
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # location -> (token, expiry)
    refused_by: str | None = None  # the holder that last refused a token of this grant
    lock: threading.Lock = field(default_factory=threading.Lock)

    def locations(self, category: str) -> list[str]:
        out: list[str] = []
        for detail in self.details:
            if category in detail.get("categories", []):
                out += [loc for loc in detail.get("locations", []) if loc not in out]
        return out


@dataclass
class Visit:
    """One browser's session at the app (kept in memory: a demo)."""

    pending: dict[str, str] | None = None  # state, code_verifier
    grant: Grant | None = None
    ended: str | None = None  # why access was withdrawn, once it was
    ended_by: str = ""  # "holder" when a holder refused first, else "broker" (the refresh)


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
    """The app's client_id: given, or from its own earlier registration, or registered now."""
    if config.client_id:
        return config.client_id
    saved = config.state_dir / "registration.json"
    manifest = json.loads(MANIFEST.read_text())
    manifest["redirect_uris"] = [config.redirect_uri]
    if saved.is_file():
        registration = json.loads(saved.read_text())
        if registration.get("redirect_uris") == manifest["redirect_uris"]:
            return str(registration["client_id"])
    registration = client.register(manifest)
    verdict = registration.get("charter_verdict", {}).get("status")
    log.info("registered with the broker: %s (charter verdict: %s)", registration["client_id"], verdict)
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    saved.write_text(json.dumps(registration))
    saved.chmod(0o600)  # it holds the registration access token
    return str(registration["client_id"])


def _holder_call(client: AppClient, grant: Grant, location: str, path: str, params: dict[str, str]) -> Any:
    """GET ``location + path`` with a token for that holder; one retry with a fresh token."""
    with grant.lock:
        for attempt in (1, 2):
            token, expiry = grant.tokens.get(location, ("", 0.0))
            if not token or expiry - time.time() < 10:
                answer = client.refresh(grant.refresh_token, resource=location)
                grant.refresh_token = answer["refresh_token"]  # rotated on every use
                token, expiry = answer["access_token"], time.time() + int(answer.get("expires_in", 60))
                grant.tokens[location] = (token, expiry)
            try:
                return client.call_holder(location + path, token, params)
            except HolderRefused as refused:
                grant.tokens.pop(location, None)
                if refused.error == "invalid_token":
                    grant.refused_by = location
                if refused.error != "invalid_token" or attempt == 2:
                    raise
        raise AssertionError("unreachable")


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
    for location in grant.locations("lab_results"):
        bundle = _holder_call(client, grant, location, "/Observation", {"code": f"{GLUCOSE},{HBA1C}"})
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
    for location in grant.locations("reimbursements"):
        bundle = _holder_call(client, grant, location, "/ExplanationOfBenefit", {})
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
    client = AppClient(config.broker, None, config.redirect_uri)
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
            body = await _in_thread(_dashboard, client, visit.grant)
        except (GrantEnded, HolderRefused) as exc:
            if isinstance(exc, HolderRefused) and exc.status == 503:
                return with_cookie(
                    page(
                        "Service momentanément indisponible",
                        "<p class='alert'>La source de données ne peut pas vérifier votre "
                        "consentement pour le moment. Réessayez dans un instant.</p>",
                        site=SITE,
                        status_code=503,
                    ),
                    sid,
                )
            if isinstance(exc, HolderRefused) and exc.error == "insufficient_scope":
                raise
            refused_by, visit.grant = visit.grant.refused_by, None
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
        sid, visit = visit_of(request)
        state = secrets.token_urlsafe(24)
        url, verifier = await _in_thread(client.start, AUTHORIZATION_DETAILS, state)
        visit.pending = {"state": state, "verifier": verifier}
        return with_cookie(Redirect(url, status_code=303), sid)

    @get("/callback", include_in_schema=False)
    async def callback(request: Request[Any, Any, Any]) -> Response[Any]:
        sid, visit = visit_of(request)
        query = request.query_params
        pending, visit.pending = visit.pending, None
        if pending is None or not secrets.compare_digest(str(query.get("state", "")), pending["state"]):
            return page(
                "Retour inattendu",
                "<p class='alert'>Cette réponse ne correspond à aucune demande "
                "en cours. Recommencez.</p>" + connect_form,
                site=SITE,
                status_code=400,
            )
        # RFC 9207: the answer names its issuer; an answer from another server is refused.
        if query.get("iss") not in (None, config.broker):
            return page(
                "Retour inattendu",
                "<p class='alert'>Réponse d'un autre serveur.</p>",
                site=SITE,
                status_code=400,
            )
        if "error" in query:
            return page(
                "Connexion annulée",
                "<p class='notice'>Vous n'avez pas donné votre accord : "
                "l'application ne lit aucune donnée.</p>" + connect_form,
                site=SITE,
            )
        answer = await _in_thread(client.exchange, str(query.get("code", "")), pending["verifier"])
        grant = Grant(
            refresh_token=answer["refresh_token"],
            details=answer.get("authorization_details", []),
            consent_id=str(answer.get("consent_id", "")),
        )
        locations = {loc for d in grant.details for loc in d.get("locations", [])}
        if len(locations) == 1:  # the token answers for the only holder: keep it
            grant.tokens[locations.pop()] = (answer["access_token"], time.time() + int(answer["expires_in"]))
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

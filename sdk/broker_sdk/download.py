"""The holder's download endpoint: a patient downloads their own data (broker issue 10).

The broker's page «Télécharger mes données» hands the patient's browser over to the holder's
registered ``download_endpoint`` with a one-time token: a form ``POST`` (the token in the body
as ``download_token``, never in a URL) or, with JavaScript, a ``fetch`` from the broker's page
(CORS for the broker's origin). The holder answers the browser directly, with a FHIR R4
``Bundle`` (JSON, type ``collection``) of the granted categories or a printable HTML summary,
and reports the release with an access receipt, so that the patient's timeline records it.

:class:`DownloadVerifier` accepts only download tokens (``typ`` ``download+jwt``, client
:data:`DOWNLOAD_CLIENT_ID`, this holder as audience) and each one once (its ``jti`` is
remembered until it expires). Access tokens of apps are refused here, and download tokens are
refused by :class:`~broker_sdk.HolderVerifier` at the holder's API.

:func:`handle_download` is the plain function (form fields in, status, headers and body
out); :class:`DownloadEndpoint` wraps it as an ASGI application for Litestar, Starlette,
FastAPI or any ASGI 3 server.
"""

from __future__ import annotations

import asyncio
import html
import json
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import httpx

from broker_sdk.dpop import MemoryReplayCache, ReplayCache
from broker_sdk.errors import BrokerUnavailable, TokenInvalid, VerificationError
from broker_sdk.receipts import ReceiptSender
from broker_sdk.verifier import DOWNLOAD_CLIENT_ID, HolderVerifier, VerifiedToken

__all__ = [
    "DOWNLOAD_CLIENT_ID",
    "DOWNLOAD_TOKEN_TYP",
    "DownloadAnswer",
    "DownloadEndpoint",
    "DownloadRequest",
    "DownloadVerifier",
    "fhir_bundle",
    "handle_download",
    "summary_html",
]

DOWNLOAD_TOKEN_TYP = "download+jwt"  # noqa: S105 (a media type, not a secret)
MAX_FORM_BYTES = 16 * 1024
FORMATS = ("json", "html")

Resources = Sequence[Mapping[str, Any]]


class DownloadVerifier:
    """Verifies the one-time download tokens presented to one holder.

    ``issuers``, ``audience`` and ``holder_id`` as for :class:`~broker_sdk.HolderVerifier`
    (the audience is the holder's API base URL, as registered). ``replay_cache`` remembers
    used tokens; holders running several processes give them a shared one.
    """

    def __init__(
        self,
        issuers: str | Sequence[str],
        audience: str,
        *,
        holder_id: str | None = None,
        replay_cache: ReplayCache | None = None,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        **options: Any,
    ) -> None:
        self.verifier = HolderVerifier(
            issuers,
            audience,
            holder_id=holder_id,
            http=http,
            clock=clock,
            token_type=DOWNLOAD_TOKEN_TYP,
            **options,
        )
        self.used: ReplayCache = replay_cache or MemoryReplayCache(clock=clock)

    def __enter__(self) -> DownloadVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.verifier.close()

    def verify(self, token: str) -> VerifiedToken:
        """Every check of an access token, with the download token's ``typ``; then the
        download client, a bearer token only, and its first use."""
        verified = self.verifier.verify(token, scheme="Bearer")
        if verified.client_id != DOWNLOAD_CLIENT_ID:
            raise TokenInvalid("only the broker's download client may download here", reason="client")
        if not verified.categories:
            raise TokenInvalid("the download token grants no category here", reason="claims")
        key = f"{verified.issuer} {verified.token_id}"
        if not self.used.first_use(key, verified.expires_at + self.verifier.leeway):
            raise TokenInvalid("this download token was already used", reason="replay")
        return verified


@dataclass(frozen=True)
class DownloadRequest:
    """A verified download: whose (the token's link handle), which categories, which form."""

    token: VerifiedToken
    categories: frozenset[str]
    format: str  # "json" (FHIR Bundle) or "html" (printable summary)


@dataclass(frozen=True)
class DownloadAnswer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def fhir_bundle(resources: Resources, *, base_url: str, now: float | None = None) -> dict[str, Any]:
    """A FHIR R4 ``Bundle`` of type ``collection`` holding ``resources``."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": stamp.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "entry": [
            {"fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}", "resource": dict(r)} for r in resources
        ],
    }


def _concept(value: Any) -> str:
    if not isinstance(value, Mapping):
        return ""
    if isinstance(value.get("text"), str):
        return str(value["text"])
    for coding in value.get("coding") or []:
        if isinstance(coding, Mapping) and isinstance(coding.get("display"), str):
            return str(coding["display"])
    return ""


def _money(value: Any) -> str:
    if isinstance(value, Mapping) and "value" in value:
        return f"{value['value']} {value.get('currency', '')}".strip()
    return ""


def _describe(resource: Mapping[str, Any]) -> tuple[str, str, str]:
    """(date, what, value) of a resource, for the summary; the common FHIR fields only."""
    date = str(
        resource.get("effectiveDateTime")
        or resource.get("issued")
        or resource.get("created")
        or (resource.get("billablePeriod") or {}).get("start")
        or ""
    )[:10]
    what = _concept(resource.get("code")) or _concept(resource.get("type")) or str(resource["resourceType"])
    value = ""
    quantity = resource.get("valueQuantity")
    if isinstance(quantity, Mapping):
        value = f"{quantity.get('value', '')} {quantity.get('unit', '')}".strip()
    elif resource.get("total"):
        totals = [
            f"{_concept(t.get('category'))} : {_money(t.get('amount'))}"
            for t in resource["total"]
            if isinstance(t, Mapping)
        ]
        value = " ; ".join(totals)
    elif isinstance(resource.get("valueString"), str):
        value = str(resource["valueString"])
    return date, what, value


def summary_html(resources: Resources, *, title: str, holder_name: str, now: float | None = None) -> str:
    """A printable HTML page of ``resources``: one table, newest first, plain words."""
    rows = sorted((_describe(r) for r in resources), key=lambda row: row[0], reverse=True)
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%d/%m/%Y")
    body = "".join(
        f"<tr><td>{html.escape(d)}</td><td>{html.escape(w)}</td><td>{html.escape(v)}</td></tr>"
        for d, w, v in rows
    )
    return (
        '<!doctype html><html lang="fr"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:50rem;margin:1rem auto;padding:0 1rem}"
        "table{border-collapse:collapse;width:100%}th,td{border:1px solid #444;padding:.3rem .5rem;"
        "text-align:left}@media print{a{display:none}}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>Données transmises par {html.escape(holder_name)} le {stamp}, à votre demande. "
        f"{len(rows)} élément(s).</p>"
        "<table><caption>Vos données</caption><thead><tr><th scope='col'>Date</th>"
        "<th scope='col'>Quoi</th><th scope='col'>Valeur</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
        "<p>Pour l'imprimer : menu du navigateur, « Imprimer ».</p></body></html>"
    )


def _page(status: int, title: str, message: str, english: str) -> DownloadAnswer:
    """A short readable page for the patient's browser (French, then English)."""
    page = (
        f'<!doctype html><html lang="fr"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"</head><body><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>"
        f'<p lang="en">{html.escape(english)}</p></body></html>'
    )
    return DownloadAnswer(
        status,
        [("content-type", "text/html; charset=utf-8"), ("cache-control", "no-store")],
        page.encode("utf-8"),
    )


def _refusal(error: VerificationError) -> DownloadAnswer:
    if isinstance(error, BrokerUnavailable):
        status, message = 503, "Le service de consentement ne répond pas. Réessayez dans un moment."
    else:
        status = error.status_code
        message = (
            "Ce lien de téléchargement n'est plus valable : il a déjà servi, il a expiré, ou il "
            "n'est pas fait pour cet organisme. Recommencez depuis « Télécharger mes données »."
        )
    return _page(status, "Téléchargement refusé", message, f"The download was refused ({error.error}).")


def _bad_form(detail: str) -> DownloadAnswer:
    return _page(
        400,
        "Demande incomplète",
        "Cette demande de téléchargement est mal formée. Recommencez depuis « Télécharger mes données ».",
        f"The download request is malformed: {detail}.",
    )


def handle_download(
    form: Mapping[str, str],
    verifier: DownloadVerifier,
    serve: Callable[[DownloadRequest], Resources],
    *,
    base_url: str,
    holder_name: str,
    receipts: ReceiptSender | None = None,
    filename: str = "mes-donnees",
) -> DownloadAnswer:
    """Answer one download form: verify the token, gather the data, report the release.

    ``serve`` returns the patient's FHIR resources of the request's categories (the holder
    finds the patient from ``request.token.link_handle``). With ``receipts``, the access
    receipt (categories, number of records) is queued before the answer is returned.
    """
    file_format = form.get("format") or "json"
    if file_format not in FORMATS:
        return _bad_form("format must be json or html")
    try:
        verified = verifier.verify(form.get("download_token") or "")
    except VerificationError as error:
        return _refusal(error)
    request = DownloadRequest(verified, verified.categories, file_format)
    try:
        resources = list(serve(request))
    except LookupError:  # the holder has no record for this link handle
        return _page(404, "Dossier introuvable", "Aucun dossier ici pour ce lien.", "No record here.")
    if receipts is not None:
        receipts.submit(verified, categories=sorted(verified.categories), record_count=len(resources))
    headers = [("cache-control", "no-store"), ("x-content-type-options", "nosniff")]
    if file_format == "html":
        page = summary_html(resources, title="Mes données de santé", holder_name=holder_name)
        headers += [
            ("content-type", "text/html; charset=utf-8"),
            ("content-security-policy", "default-src 'none'; style-src 'unsafe-inline'"),
        ]
        return DownloadAnswer(200, headers, page.encode("utf-8"))
    bundle = fhir_bundle(resources, base_url=base_url)
    headers += [
        ("content-type", "application/fhir+json"),
        ("content-disposition", f'attachment; filename="{filename}.json"'),
    ]
    return DownloadAnswer(200, headers, json.dumps(bundle, ensure_ascii=False, indent=1).encode("utf-8"))


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


class DownloadEndpoint:
    """:func:`handle_download` as an ASGI application, with CORS for the broker's page.

    ``allowed_origins``: the broker origin(s) whose page may fetch here (``scheme://host[:port]``).
    Only ``POST`` with an ``application/x-www-form-urlencoded`` body (and the ``OPTIONS``
    preflight) is answered; a token in the query string is refused.
    """

    def __init__(
        self,
        verifier: DownloadVerifier,
        serve: Callable[[DownloadRequest], Resources],
        *,
        base_url: str,
        holder_name: str,
        allowed_origins: Iterable[str],
        receipts: ReceiptSender | None = None,
        filename: str = "mes-donnees",
    ) -> None:
        self.verifier = verifier
        self.serve = serve
        self.base_url = base_url
        self.holder_name = holder_name
        self.allowed_origins = frozenset(o.rstrip("/") for o in allowed_origins)
        self.receipts = receipts
        self.filename = filename

    def _cors(self, headers: dict[str, str]) -> list[tuple[str, str]]:
        origin = headers.get("origin")
        out = [("vary", "Origin")]
        if origin and origin in self.allowed_origins:
            out += [
                ("access-control-allow-origin", origin),
                ("access-control-expose-headers", "content-disposition"),
            ]
        return out

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        cors = self._cors(headers)
        method = scope["method"]
        if method == "OPTIONS":
            answer = DownloadAnswer(204, [*cors, ("access-control-allow-methods", "POST")], b"")
            if any(name == "access-control-allow-origin" for name, _ in cors):
                answer.headers.append(("access-control-allow-headers", "content-type"))
                answer.headers.append(("access-control-max-age", "600"))
        elif method != "POST":
            answer = DownloadAnswer(405, [("allow", "POST, OPTIONS")], b"")
        elif b"download_token" in scope.get("query_string", b""):
            answer = _refusal(TokenInvalid("download tokens are not accepted in a URL", reason="query"))
        else:
            answer = await self._post(receive, headers)
        payload = answer.body
        response_headers = [*answer.headers, *(cors if method != "OPTIONS" else [])]
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in [*response_headers, ("content-length", str(len(payload)))]
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _post(self, receive: Any, headers: Mapping[str, str]) -> DownloadAnswer:
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_FORM_BYTES:
                return _page(413, "Demande trop longue", "Cette demande est trop longue.", "Form too large.")
            if not message.get("more_body"):
                break
        if content_type != "application/x-www-form-urlencoded":
            return _bad_form("send the form as application/x-www-form-urlencoded")
        fields = parse_qs(body.decode("latin-1"), keep_blank_values=True, max_num_fields=8)
        form = {k: v[0] for k, v in fields.items() if len(v) == 1}
        return await asyncio.to_thread(
            handle_download,
            form,
            self.verifier,
            self.serve,
            base_url=self.base_url,
            holder_name=self.holder_name,
            receipts=self.receipts,
            filename=self.filename,
        )

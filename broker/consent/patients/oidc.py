"""Log-in through an external OpenID Connect provider (e.g. FranceConnect), with authlib.

The operator configures one provider (``BROKER_OIDC_*``). The flow is OpenID Connect Core
§3.1, the authorization code flow, hardened as RFC 9700 asks:

1. ``POST /login/oidc`` (CSRF-checked) draws ``state``, ``nonce`` and a PKCE S256 verifier,
   keeps them in a short-lived signed cookie, and sends the browser to the provider.
2. ``GET /login/oidc/callback`` checks ``state`` against the cookie (one use: the cookie is
   cleared), ``iss`` when the provider sends it (RFC 9207), redeems the code with the
   verifier and the client secret, and verifies the ID token (``verify_id_token``).
3. The patient is found by (issuer, ``sub``) in ``external_identities``, created the first
   time, and a fresh session opens.

Provider metadata and keys come only from the configured issuer's discovery document, whose
``issuer`` must equal the configured one exactly (OIDC Discovery §4.3); they are cached, and
an unknown ``kid`` triggers at most one refetch a minute. Outbound requests follow no
redirect, ignore proxy variables and are bounded in time and size.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from authlib.deprecate import AuthlibDeprecationWarning
from jwcrypto import jwk, jws
from jwcrypto.common import JWException
from litestar import Request, Response, get, post
from litestar.datastructures import State
from sqlalchemy.orm import Session

from broker.consent.patients import cookies, service
from broker.consent.patients.csrf import FIELD as CSRF_FIELD
from broker.consent.patients.csrf import check_csrf
from broker.consent.patients.errors import ExternalLoginFailed
from broker.consent.patients.rendering import page_language, render_page, safe_next
from broker.db import utcnow
from broker.http import in_transaction
from broker.settings import Settings

with warnings.catch_warnings():
    # authlib announces its move to the httpx2 fork; the httpx it falls back on is the one
    # the broker uses everywhere else. (Its module installs an "always" filter on import.)
    warnings.filterwarnings("ignore", category=AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

log = logging.getLogger("broker.oidc")

CALLBACK_PATH = "/login/oidc/callback"
TRANSACTION_LIFETIME = 600  # seconds a person has to log in at the provider
# OIDC Core §3.1.3.7 lets the provider choose; these are the asymmetric ones worth trusting.
# No HMAC (the client secret would become a signing key) and never "none".
ALLOWED_ALGS = ("RS256", "PS256", "ES256", "ES384", "EdDSA")
LEEWAY = 60  # seconds of clock difference tolerated on exp and iat
MAX_ID_TOKEN = 16 * 1024
MAX_DOCUMENT = 256 * 1024
METADATA_TTL = 3600
JWKS_TTL = 600
JWKS_MIN_REFETCH = 60
TIMEOUT = httpx.Timeout(5.0, connect=2.0)


class IdTokenInvalid(ValueError):
    """Why an ID token was refused (logged server-side; the patient sees a plain message)."""


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    token_endpoint_auth_method: str


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7515 §5.2 / RFC 8259 §4: duplicate members are parsed differently by different
    # libraries; a token or document that has them is refused.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate member {key!r}")
        result[key] = value
    return result


def _json(raw: bytes | str) -> Any:
    return json.loads(raw, object_pairs_hook=_no_duplicates)


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


class ProviderCache:
    """The provider's metadata and keys, fetched from its issuer and cached."""

    def __init__(self, settings: Settings) -> None:
        assert settings.oidc_issuer and settings.oidc_client_id
        self.settings = settings
        self.issuer = settings.oidc_issuer
        self._metadata: tuple[float, ProviderMetadata] | None = None
        self._jwks: tuple[float, jwk.JWKSet] | None = None

    def client(self) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.settings.oidc_client_id,
            client_secret=self.settings.oidc_client_secret,
            token_endpoint_auth_method=(
                self._metadata[1].token_endpoint_auth_method if self._metadata else None
            ),
            scope=self.settings.oidc_scopes,
            redirect_uri=self.settings.issuer + CALLBACK_PATH,
            code_challenge_method="S256",
            timeout=TIMEOUT,
            follow_redirects=False,
            trust_env=False,
        )

    async def _get_json(self, url: str) -> Any:
        async with self.client() as client:
            response = await client.request(
                "GET", url, withhold_token=True, headers={"Accept": "application/json"}
            )
        if response.status_code != 200 or len(response.content) > MAX_DOCUMENT:
            raise ExternalLoginFailed(f"the provider answered {response.status_code} for {url}")
        try:
            return _json(response.content)
        except ValueError as exc:
            raise ExternalLoginFailed(f"the provider's document at {url} is not valid JSON") from exc

    async def metadata(self) -> ProviderMetadata:
        if self._metadata and time.monotonic() - self._metadata[0] < METADATA_TTL:
            return self._metadata[1]
        document = await self._get_json(self.issuer + "/.well-known/openid-configuration")
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            raise ExternalLoginFailed("the provider's discovery document names another issuer")
        try:
            methods = document.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
            metadata = ProviderMetadata(
                issuer=self.issuer,
                authorization_endpoint=str(document["authorization_endpoint"]),
                token_endpoint=str(document["token_endpoint"]),
                jwks_uri=str(document["jwks_uri"]),
                token_endpoint_auth_method=(
                    "client_secret_basic" if "client_secret_basic" in methods else "client_secret_post"
                ),
            )
        except KeyError as exc:
            raise ExternalLoginFailed(f"the provider's discovery document lacks {exc}") from None
        self._metadata = (time.monotonic(), metadata)
        return metadata

    async def keys(self, refresh: bool = False) -> jwk.JWKSet:
        now = time.monotonic()
        if self._jwks:
            age = now - self._jwks[0]
            if age < JWKS_TTL and not (refresh and age >= JWKS_MIN_REFETCH):
                return self._jwks[1]
        metadata = await self.metadata()
        document = await self._get_json(metadata.jwks_uri)
        keys = jwk.JWKSet()
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            try:
                key = jwk.JWK(**entry)
            except (JWException, ValueError, TypeError):
                continue
            if key.has_private or (key.get("kty") == "RSA" and key.get_op_key("verify").key_size < 2048):
                continue  # SECURITY J16: weak RSA keys are not trusted
            keys.add(key)
        self._jwks = (now, keys)
        return keys


def _select_key(keys: jwk.JWKSet, kid: str | None) -> jwk.JWK | None:
    if kid is not None:
        found: jwk.JWK | None = keys.get_key(kid)
        return found
    # Without kid, only an unambiguous set will do (OIDC Core §10.1).
    members = list(keys)
    return members[0] if len(members) == 1 else None


async def verify_id_token(
    raw: str, *, provider: ProviderCache, client_id: str, nonce: str, now: float
) -> dict[str, Any]:
    """The claims of ``raw`` after every check of OIDC Core §3.1.3.7; ``IdTokenInvalid`` else."""
    if len(raw) > MAX_ID_TOKEN:
        raise IdTokenInvalid("the ID token is too long")
    segments = raw.split(".")
    if len(segments) != 3 or not all(segments):
        # Compact JWS only: no JWE (five segments), no unsigned token (empty signature).
        raise IdTokenInvalid("the ID token is not a signed compact JWS")
    try:
        header = _json(_b64(segments[0]))
    except ValueError as exc:
        raise IdTokenInvalid(f"unreadable header: {exc}") from None
    if not isinstance(header, dict):
        raise IdTokenInvalid("unreadable header")
    alg = header.get("alg")
    if alg not in ALLOWED_ALGS:
        raise IdTokenInvalid(f"algorithm {alg!r} is not allowed")
    if "crit" in header:
        raise IdTokenInvalid("critical header extensions are not supported")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise IdTokenInvalid("kid is not a string")
    # Keys come from the provider's JWKS only; jwk/jku/x5u/x5c headers are never used.
    key = _select_key(await provider.keys(), kid)
    if key is None:
        key = _select_key(await provider.keys(refresh=True), kid)  # rotation at the provider
    if key is None:
        raise IdTokenInvalid(f"no key of the provider matches kid {kid!r}")
    if key.get("alg") not in (None, alg):
        raise IdTokenInvalid("the header's alg differs from the key's")
    token = jws.JWS()
    try:
        token.deserialize(raw)
        token.allowed_algs = [alg]  # never jwcrypto's default list, which includes HS*
        token.verify(key)
        claims = _json(token.payload)
    except (JWException, ValueError) as exc:
        raise IdTokenInvalid(f"bad signature: {exc}") from None
    if not isinstance(claims, dict):
        raise IdTokenInvalid("the payload is not a JSON object")
    if claims.get("iss") != provider.issuer:  # exact comparison, never a prefix
        raise IdTokenInvalid("wrong issuer")
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
    if client_id not in audiences:
        raise IdTokenInvalid("the ID token is not for this broker (aud)")
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise IdTokenInvalid("several audiences and azp is not this broker")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or exp + LEEWAY <= now:
        raise IdTokenInvalid("expired or missing exp")
    if not isinstance(iat, int | float) or isinstance(iat, bool) or iat - LEEWAY > now:
        raise IdTokenInvalid("iat missing or in the future")
    sent_nonce = claims.get("nonce")
    if not isinstance(sent_nonce, str) or not hmac.compare_digest(sent_nonce.encode(), nonce.encode()):
        raise IdTokenInvalid("wrong nonce")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise IdTokenInvalid("missing or oversized sub")
    return claims


# -- the transaction cookie ------------------------------------------------------------------


def _sign(settings: Settings, payload: str) -> str:
    return hmac.new(settings.secret_key, f"oidc-transaction:{payload}".encode(), hashlib.sha256).hexdigest()


def seal_transaction(settings: Settings, values: dict[str, Any]) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")
    return f"{payload}.{_sign(settings, payload)}"


def open_transaction(settings: Settings, sealed: str | None, now: float) -> dict[str, Any] | None:
    if not sealed or len(sealed) > 4096 or "." not in sealed:
        return None
    payload, mac = sealed.rsplit(".", 1)
    if not hmac.compare_digest(_sign(settings, payload).encode(), mac.encode()):
        return None
    try:
        values = _json(_b64(payload))
    except ValueError:
        return None
    if not isinstance(values, dict) or not isinstance(values.get("exp"), int) or values["exp"] < now:
        return None
    return values


# -- the two pages ----------------------------------------------------------------------------


def _provider(state: State) -> ProviderCache:
    provider: ProviderCache | None = state.get("oidc_provider")
    if provider is None:
        raise ExternalLoginFailed("no external identity provider is configured")
    return provider


@post("/login/oidc", include_in_schema=False)
async def start_external_login(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    settings: Settings = state.settings
    form = await request.form()
    submitted, next_value = form.get(CSRF_FIELD), form.get("next")
    check_csrf(request, settings, submitted if isinstance(submitted, str) else None)
    provider = _provider(state)
    try:
        metadata = await provider.metadata()
    except httpx.HTTPError as exc:
        log.warning("OpenID provider unreachable: %s", exc)
        raise ExternalLoginFailed("the identity provider cannot be reached") from None
    transaction = {
        "state": secrets.token_urlsafe(32),
        "nonce": secrets.token_urlsafe(32),
        "verifier": secrets.token_urlsafe(48),  # 64 characters (RFC 7636 §4.1: 43 to 128)
        "next": safe_next(next_value if isinstance(next_value, str) else None),
        "exp": int(time.time()) + TRANSACTION_LIFETIME,
    }
    async with provider.client() as client:
        url, _ = client.create_authorization_url(
            metadata.authorization_endpoint,
            state=transaction["state"],
            code_verifier=transaction["verifier"],
            nonce=transaction["nonce"],
        )
    return Response(
        content=None,
        status_code=303,
        headers={"Location": url, "Cache-Control": "no-store"},
        cookies=[
            cookies.make(
                settings, cookies.OIDC, seal_transaction(settings, transaction), max_age=TRANSACTION_LIFETIME
            )
        ],
    )


@get(CALLBACK_PATH, include_in_schema=False)
async def external_login_callback(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    settings: Settings = state.settings
    try:
        response = await _complete_external_login(request, state)
    except ExternalLoginFailed:
        # The transaction is over either way: a second try must start again from the button.
        response = render_page(request, "patients/error.html", status_code=400, code="external_login")
    response.set_cookie(cookies.expired(settings, cookies.OIDC))
    return response


async def _complete_external_login(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    settings: Settings = state.settings
    provider = _provider(state)
    params = request.query_params
    transaction = open_transaction(settings, cookies.read(request, settings, cookies.OIDC), time.time())
    returned_state = params.get("state") or ""
    if transaction is None or not hmac.compare_digest(
        str(transaction["state"]).encode(), returned_state.encode()
    ):
        raise ExternalLoginFailed("the log-in at the identity provider does not match this browser")
    if params.get("iss") is not None and params.get("iss") != provider.issuer:
        raise ExternalLoginFailed("the answer comes from another identity provider (RFC 9207)")
    if params.get("error") or not params.get("code"):
        raise ExternalLoginFailed(f"the identity provider answered {params.get('error', 'without a code')}")
    try:
        metadata = await provider.metadata()
        async with provider.client() as client:
            token = await client.fetch_token(
                metadata.token_endpoint,
                grant_type="authorization_code",
                code=params["code"],
                code_verifier=transaction["verifier"],
            )
        raw = token.get("id_token")
        if not isinstance(raw, str):
            raise IdTokenInvalid("the token response has no ID token")
        claims = await verify_id_token(
            raw,
            provider=provider,
            client_id=str(settings.oidc_client_id),
            nonce=str(transaction["nonce"]),
            now=time.time(),
        )
    except (OAuthError, httpx.HTTPError, IdTokenInvalid, ValueError) as exc:
        log.warning("external log-in refused: %s", exc)
        raise ExternalLoginFailed("the identity provider's answer could not be verified") from None
    display_name = str(
        claims.get("name") or " ".join(str(claims.get(k, "")) for k in ("given_name", "family_name")).strip()
    )
    language = page_language(request)
    now: datetime = utcnow()

    def work(session: Session) -> str:
        return service.external_log_in(
            session,
            issuer=provider.issuer,
            subject=str(claims["sub"]),
            display_name=display_name,
            language=language,
            settings=settings,
            now=now,
        )

    session_id = await in_transaction(state.session_factory, work)
    return Response(
        content=None,
        status_code=303,
        headers={"Location": str(transaction["next"]), "Cache-Control": "no-store"},
        cookies=[
            cookies.make(settings, cookies.SESSION, session_id),
            cookies.expired(settings, cookies.CSRF),
        ],
    )

"""The app's client of the broker: registration, consent, tokens, calls to holders.

::

    client = AppClient("https://broker.example")
    registration = client.register("manifest.toml")          # RFC 7591, with the charter verdict
    request = client.authorization_request("https://app.example/callback", scope="lab_results")
    # send the patient's browser to request.url; the broker sends it back to the callback
    grant = client.exchange_code(request, callback_url)       # PKCE S256, state and iss checked
    for holder in grant.holders():                            # where the patient's data live
        response = client.get(grant, holder.base_url + "/Observation")   # token + DPoP proof
    # a withdrawn consent shows up as ConsentRevoked, from a refresh or from a holder

Tokens are sender-constrained with DPoP (RFC 9449) by default: the SDK makes the key, keeps
it in the :class:`Grant`, and signs a proof for every request. Refresh tokens rotate: the
grant keeps the newest one, so persist it (:meth:`Grant.to_json`) after each call if the
app restarts between calls.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from jwcrypto import jwk

from broker_sdk import _jose
from broker_sdk.dpop import DPoPKey
from broker_sdk.errors import BrokerUnreachable, ConsentRevoked, OAuthError
from broker_sdk.events import client_assertion

__all__ = [
    "AccessToken",
    "AppClient",
    "AuthorizationRequest",
    "Grant",
    "HolderGrant",
    "Registration",
    "Verdict",
    "load_manifest",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EARLY_REFRESH = 30.0  # seconds before expiry at which a cached access token is renewed


def load_manifest(path: str | Path) -> dict[str, Any]:
    """An RFC 7591 registration request with its ``charter_manifest``, from TOML or JSON.

    TOML keeps the JSON shape: top-level client metadata, and a ``[charter_manifest]`` table.
    """
    file = Path(path)
    raw = file.read_bytes()
    if file.suffix.lower() == ".toml":
        document: Any = tomllib.loads(raw.decode("utf-8"))
    else:
        document = json.loads(raw)
    if not isinstance(document, dict):
        raise ValueError(f"{file}: a manifest is an object")
    return document


@dataclass(frozen=True)
class Verdict:
    """The charter verdict of a registration: ``approved``, ``refused`` or ``needs_review``."""

    status: str  # the app's status (approved, refused, needs_review, suspended…)
    verdict: str | None
    charter_version: str | None
    findings: list[dict[str, Any]]

    @property
    def approved(self) -> bool:
        return self.status == "approved"

    @classmethod
    def from_answer(cls, body: Mapping[str, Any]) -> Verdict:
        verdict = body.get("charter_verdict") or {}
        return cls(
            status=str(body.get("status") or verdict.get("status") or "unknown"),
            verdict=verdict.get("status"),
            charter_version=verdict.get("charter_version"),
            findings=list(verdict.get("findings") or []),
        )


@dataclass
class Registration:
    """An app's registration; keep ``registration_access_token`` secret (it rotates on update)."""

    client_id: str
    registration_client_uri: str
    registration_access_token: str | None
    metadata: dict[str, Any]

    @property
    def verdict(self) -> Verdict:
        return Verdict.from_answer(self.metadata)

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "registration_client_uri": self.registration_client_uri,
            "registration_access_token": self.registration_access_token,
            "metadata": self.metadata,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Registration:
        return cls(
            client_id=data["client_id"],
            registration_client_uri=data["registration_client_uri"],
            registration_access_token=data.get("registration_access_token"),
            metadata=dict(data.get("metadata") or {}),
        )


@dataclass(frozen=True)
class AuthorizationRequest:
    """Where to send the patient (``url``), and what the callback is checked against."""

    url: str
    state: str
    code_verifier: str
    redirect_uri: str


@dataclass(frozen=True)
class HolderGrant:
    """One holder the patient granted: its identifier, API base URL and categories."""

    holder: str
    base_url: str
    categories: tuple[str, ...]
    purpose: str | None


@dataclass
class AccessToken:
    token: str
    token_type: str  # "DPoP" or "Bearer"
    expires_at: float
    resource: str

    def fresh(self, now: float | None = None) -> bool:
        return (now or time.time()) < self.expires_at - EARLY_REFRESH


@dataclass
class Grant:
    """A patient's consent as the app holds it: the rotating refresh token, the holders,
    an access token per holder, and the DPoP key the tokens are bound to."""

    consent_id: str
    refresh_token: str
    authorization_details: list[dict[str, Any]]
    dpop_key: DPoPKey | None = None
    access_tokens: dict[str, AccessToken] = field(default_factory=dict)

    def holders(self) -> list[HolderGrant]:
        out = []
        for detail in self.authorization_details:
            for location in detail.get("locations") or []:
                out.append(
                    HolderGrant(
                        holder=str(detail.get("holder")),
                        base_url=location,
                        categories=tuple(detail.get("categories") or ()),
                        purpose=detail.get("purpose"),
                    )
                )
        return out

    def resource_for(self, url: str) -> str:
        """The holder base URL (RFC 8707 ``resource``) that ``url`` belongs to."""
        candidates = [
            h.base_url
            for h in self.holders()
            if url == h.base_url or url.startswith(h.base_url.rstrip("/") + "/")
        ]
        if not candidates:
            raise ValueError(f"{url} is not at a holder this consent covers")
        return max(candidates, key=len)

    def to_json(self) -> str:
        """Everything needed to go on after a restart; it holds secrets: store it 0600."""
        return json.dumps(
            {
                "consent_id": self.consent_id,
                "refresh_token": self.refresh_token,
                "authorization_details": self.authorization_details,
                "dpop_key": json.loads(self.dpop_key.to_json()) if self.dpop_key else None,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Grant:
        data = json.loads(text)
        key = data.get("dpop_key")
        return cls(
            consent_id=data["consent_id"],
            refresh_token=data["refresh_token"],
            authorization_details=list(data.get("authorization_details") or []),
            dpop_key=DPoPKey(jwk.JWK(**key)) if key else None,
        )


def _oauth_error(response: httpx.Response) -> OAuthError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        description = str(body.get("error_description") or "")
        return OAuthError(body["error"], description, status=response.status_code, body=body)
    if isinstance(body, dict) and "detail" in body:  # RFC 9457 problem details
        return OAuthError(
            str(body.get("title") or "error"), str(body["detail"]), status=response.status_code, body=body
        )
    return OAuthError("http_error", f"HTTP {response.status_code}", status=response.status_code, body=body)


class AppClient:
    """An app's client of one broker.

    ``client_id``: known after registration (``register`` sets it). ``client_key``: a
    private key for ``private_key_jwt`` (confidential apps); without it the app is a public
    client and PKCE is its proof. ``dpop``: bind tokens to a key the SDK generates.
    """

    def __init__(
        self,
        issuer: str,
        *,
        client_id: str | None = None,
        client_key: jwk.JWK | None = None,
        dpop: bool = True,
        http: httpx.Client | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self.client_key = client_key
        self.dpop = dpop
        self._owns_http = http is None
        self.http = http or httpx.Client(timeout=timeout, trust_env=False, follow_redirects=False)
        self._metadata: dict[str, Any] | None = None

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> AppClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise BrokerUnreachable(f"{url}: {exc}") from exc
        if response.status_code >= 500:
            raise BrokerUnreachable(f"{url}: HTTP {response.status_code}")
        return response

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 metadata (fetched once); its ``issuer`` must be this broker's."""
        if self._metadata is None:
            response = self._send("GET", f"{self.issuer}/.well-known/oauth-authorization-server")
            if response.status_code != 200:
                raise _oauth_error(response)
            document = response.json()
            if document.get("issuer") != self.issuer:
                raise OAuthError("invalid_metadata", "the metadata names another issuer")
            self._metadata = document
        return self._metadata

    def _endpoint(self, name: str, default: str) -> str:
        value = self.metadata().get(name)
        return value if isinstance(value, str) else f"{self.issuer}{default}"

    def _client_auth(self) -> dict[str, str]:
        if self.client_id is None:
            raise ValueError("client_id is unknown: register first, or pass client_id=")
        form = {"client_id": self.client_id}
        if self.client_key is not None:
            form["client_assertion_type"] = ASSERTION_TYPE
            form["client_assertion"] = client_assertion(
                self.client_key, client_id=self.client_id, audience=self.issuer
            )
        return form

    # -- registration (RFC 7591 / RFC 7592) -----------------------------------------------

    def register(self, manifest: Mapping[str, Any] | str | Path) -> Registration:
        """Register the app; the answer carries the charter verdict (whatever it is)."""
        body = self._manifest_body(manifest)
        response = self._send("POST", self._endpoint("registration_endpoint", "/register"), json=body)
        if response.status_code != 201:
            raise _oauth_error(response)
        registration = self._registration(response.json())
        self.client_id = registration.client_id
        return registration

    def update(self, registration: Registration, manifest: Mapping[str, Any] | str | Path) -> Registration:
        """Replace the registration (RFC 7592 §2.2); the charter check runs again and the
        registration access token rotates: keep the one this returns."""
        body = {**self._manifest_body(manifest), "client_id": registration.client_id}
        response = self._send(
            "PUT",
            registration.registration_client_uri,
            json=body,
            headers=self._registration_auth(registration),
        )
        if response.status_code != 200:
            raise _oauth_error(response)
        updated = self._registration(response.json(), previous=registration)
        return updated

    def read(self, registration: Registration) -> Registration:
        response = self._send(
            "GET", registration.registration_client_uri, headers=self._registration_auth(registration)
        )
        if response.status_code != 200:
            raise _oauth_error(response)
        return self._registration(response.json(), previous=registration)

    def verdict(self, registration: Registration) -> Verdict:
        """The charter verdict as the broker holds it now (an operator may have decided)."""
        response = self._send(
            "GET",
            registration.registration_client_uri + "/verdict",
            headers=self._registration_auth(registration),
        )
        if response.status_code != 200:
            raise _oauth_error(response)
        return Verdict.from_answer(response.json())

    def delete(self, registration: Registration) -> None:
        response = self._send(
            "DELETE", registration.registration_client_uri, headers=self._registration_auth(registration)
        )
        if response.status_code != 204:
            raise _oauth_error(response)

    def _manifest_body(self, manifest: Mapping[str, Any] | str | Path) -> dict[str, Any]:
        body = load_manifest(manifest) if isinstance(manifest, str | Path) else dict(manifest)
        if (
            self.client_key is not None
            and body.get("token_endpoint_auth_method") == "private_key_jwt"
            and "jwks" not in body
            and "jwks_uri" not in body
        ):
            public = _jose.public_members(self.client_key)
            public.setdefault("kid", self.client_key.get("kid") or self.client_key.thumbprint())
            public.update(alg=_jose.signing_alg(self.client_key), use="sig")
            body["jwks"] = {"keys": [public]}
        return body

    @staticmethod
    def _registration_auth(registration: Registration) -> dict[str, str]:
        if not registration.registration_access_token:
            raise ValueError("this registration has no registration access token")
        return {"Authorization": f"Bearer {registration.registration_access_token}"}

    def _registration(self, body: dict[str, Any], previous: Registration | None = None) -> Registration:
        token = body.pop("registration_access_token", None)
        return Registration(
            client_id=body["client_id"],
            registration_client_uri=body.get("registration_client_uri")
            or f"{self.issuer}/register/{body['client_id']}",
            registration_access_token=token or (previous.registration_access_token if previous else None),
            metadata=body,
        )

    # -- consent (RFC 6749, 7636, 9126, 9396, 9207) ---------------------------------------

    def authorization_request(
        self,
        redirect_uri: str,
        *,
        scope: str | None = None,
        authorization_details: list[dict[str, Any]] | None = None,
        use_par: bool | None = None,
    ) -> AuthorizationRequest:
        """Where to send the patient: PKCE S256 and ``state`` always; the parameters pushed
        first (PAR) when the broker offers it; ``authorization_details`` of type
        ``health_data`` or category ``scope`` (neither: everything the manifest declares)."""
        verifier = secrets.token_urlsafe(48)
        challenge = _jose.b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())
        state = secrets.token_urlsafe(24)
        params: dict[str, str] = {
            "response_type": "code",
            "client_id": self.client_id or "",
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if not self.client_id:
            raise ValueError("client_id is unknown: register first, or pass client_id=")
        if scope:
            params["scope"] = scope
        if authorization_details is not None:
            details = [{"type": "health_data", **d} for d in authorization_details]
            params["authorization_details"] = json.dumps(details, separators=(",", ":"))
        authorize = self._endpoint("authorization_endpoint", "/authorize")
        par = self.metadata().get("pushed_authorization_request_endpoint")
        if use_par is None:
            use_par = isinstance(par, str)
        if use_par:
            endpoint = str(par or f"{self.issuer}/par")
            response = self._send("POST", endpoint, data={**params, **self._client_auth()})
            if response.status_code != 201:
                raise _oauth_error(response)
            query = {"client_id": self.client_id, "request_uri": response.json()["request_uri"]}
        else:
            query = params
        return AuthorizationRequest(
            url=f"{authorize}?{urlencode(query)}",
            state=state,
            code_verifier=verifier,
            redirect_uri=redirect_uri,
        )

    def exchange_code(
        self, request: AuthorizationRequest, callback_url: str, *, resource: str | None = None
    ) -> Grant:
        """Check the callback (``state``, RFC 9207 ``iss``, errors) and redeem the code."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(callback_url).query).items()}
        if not hmac.compare_digest(query.get("state", ""), request.state):
            raise OAuthError("invalid_state", "the callback's state is not this request's")
        if query.get("iss") != self.issuer:  # RFC 9207 §2.4: mix-up defence
            raise OAuthError("invalid_issuer", "the callback does not come from this broker (iss)")
        if "error" in query:
            raise OAuthError(query["error"], query.get("error_description", ""))
        if "code" not in query:
            raise OAuthError("invalid_request", "the callback has no code")
        key = DPoPKey() if self.dpop else None
        form = {
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": request.redirect_uri,
            "code_verifier": request.code_verifier,
        }
        if resource:
            form["resource"] = resource
        body = self._token_request(form, key)
        grant = Grant(
            consent_id=str(body.get("consent_id")),
            refresh_token=body["refresh_token"],
            authorization_details=list(body.get("authorization_details") or []),
            dpop_key=key,
        )
        self._keep_access_token(grant, body, resource)
        return grant

    def _token_request(self, form: dict[str, str], key: DPoPKey | None) -> dict[str, Any]:
        url = self._endpoint("token_endpoint", "/token")
        nonce: str | None = None
        for _ in range(2):
            headers = {"DPoP": key.proof("POST", url, nonce=nonce)} if key is not None else {}
            response = self._send("POST", url, data={**form, **self._client_auth()}, headers=headers)
            if response.status_code == 200:
                body: dict[str, Any] = response.json()
                return body
            error = _oauth_error(response)
            if error.error == "use_dpop_nonce" and response.headers.get("dpop-nonce") and nonce is None:
                nonce = response.headers["dpop-nonce"]  # RFC 9449 §8: once more, with the nonce
                continue
            if error.error == "invalid_grant" and form["grant_type"] == "refresh_token":
                raise ConsentRevoked(error.error, error.description, status=error.status, body=error.body)
            raise error
        raise OAuthError("use_dpop_nonce", "the broker kept asking for a DPoP nonce")

    def _keep_access_token(self, grant: Grant, body: Mapping[str, Any], resource: str | None) -> AccessToken:
        if body.get("refresh_token"):
            grant.refresh_token = body["refresh_token"]  # rotation: the old one is spent
        if body.get("authorization_details"):
            grant.authorization_details = list(body["authorization_details"])
        token = AccessToken(
            token=body["access_token"],
            token_type=str(body.get("token_type", "Bearer")),
            expires_at=time.time() + float(body.get("expires_in", 60)),
            resource=resource or _audience(body["access_token"]),
        )
        grant.access_tokens[token.resource] = token
        return token

    def refresh(self, grant: Grant, resource: str | None = None) -> AccessToken:
        """A new access token (for ``resource``, a holder's base URL); the refresh token
        rotates. A withdrawn consent raises :class:`ConsentRevoked`."""
        form = {"grant_type": "refresh_token", "refresh_token": grant.refresh_token}
        if resource:
            form["resource"] = resource
        body = self._token_request(form, grant.dpop_key)
        return self._keep_access_token(grant, body, resource)

    def access_token(self, grant: Grant, resource: str) -> AccessToken:
        """The cached token for ``resource`` while fresh, else a refreshed one."""
        token = grant.access_tokens.get(resource)
        if token is not None and token.fresh():
            return token
        return self.refresh(grant, resource)

    def revoke(self, grant: Grant) -> None:
        """RFC 7009: the app gives the grant up (its refresh token family dies)."""
        url = self._endpoint("revocation_endpoint", "/revoke")
        response = self._send(
            "POST",
            url,
            data={"token": grant.refresh_token, "token_type_hint": "refresh_token", **self._client_auth()},
        )
        if response.status_code != 200:
            raise _oauth_error(response)
        grant.access_tokens.clear()

    # -- calling holders ----------------------------------------------------------------

    def request(self, grant: Grant, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Call a holder's API with the right token (and a DPoP proof). A 401 gets one
        retry with a fresh token; a consent that is gone raises :class:`ConsentRevoked`."""
        resource = grant.resource_for(url)
        token = self.access_token(grant, resource)
        response = self._call(grant, token, method, url, **kwargs)
        if response.status_code != 401:
            return response
        token = self.refresh(grant, resource)  # raises ConsentRevoked when the grant is over
        response = self._call(grant, token, method, url, **kwargs)
        if response.status_code == 401:
            challenge = response.headers.get("www-authenticate", "")
            raise ConsentRevoked("invalid_token", f"the holder refused a new token: {challenge}", status=401)
        return response

    def get(self, grant: Grant, url: str, **kwargs: Any) -> httpx.Response:
        return self.request(grant, "GET", url, **kwargs)

    def _call(self, grant: Grant, token: AccessToken, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if token.token_type.lower() == "dpop" and grant.dpop_key is not None:
            headers["Authorization"] = f"DPoP {token.token}"
            headers["DPoP"] = grant.dpop_key.proof(method, url, access_token=token.token)
        else:
            headers["Authorization"] = f"Bearer {token.token}"
        return self.http.request(method, url, headers=headers, **kwargs)


def _audience(token: str) -> str:
    """The ``aud`` of our own access token (to file it by holder); not a verification."""
    try:
        segment = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        aud = claims.get("aud")
        return aud if isinstance(aud, str) else str(aud[0])
    except (IndexError, ValueError, TypeError, KeyError):
        return ""

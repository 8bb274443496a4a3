"""The app side of the SDK, as the demo app uses it.

TEMPORARY SHIM: ``broker_sdk``'s app client (``sdk/``) is being written; until it lands this
module does the minimum itself (discovery, registration, PAR, code exchange, refresh per
holder, calling a holder). The demo app only sees ``AppClient``; it switches to the SDK as
soon as the SDK has it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import urlencode

import httpx


class GrantEnded(Exception):
    """The broker refused the refresh (consent withdrawn, app suspended)."""


class HolderRefused(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{status} {error}: {description}")
        self.status = status
        self.error = error
        self.description = description


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class AppClient:
    def __init__(self, issuer: str, client_id: str | None, redirect_uri: str) -> None:
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self.http = httpx.Client(timeout=10.0)
        self._metadata: dict[str, Any] | None = None

    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            answer = self.http.get(f"{self.issuer}/.well-known/oauth-authorization-server")
            answer.raise_for_status()
            self._metadata = answer.json()
        return self._metadata

    def register(self, manifest: dict[str, Any]) -> dict[str, Any]:
        answer = self.http.post(self.metadata()["registration_endpoint"], json=manifest)
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        self.client_id = body["client_id"]
        return body

    def start(self, authorization_details: list[dict[str, Any]], state: str) -> tuple[str, str]:
        """PAR then the authorization URL; returns (url, code_verifier)."""
        verifier, challenge = pkce_pair()
        answer = self.http.post(
            self.metadata()["pushed_authorization_request_endpoint"],
            data={
                "client_id": self.client_id,
                "response_type": "code",
                "redirect_uri": self.redirect_uri,
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "authorization_details": _json(authorization_details),
            },
        )
        answer.raise_for_status()
        query = urlencode({"client_id": self.client_id, "request_uri": answer.json()["request_uri"]})
        return f"{self.metadata()['authorization_endpoint']}?{query}", verifier

    def _token(self, form: dict[str, str]) -> dict[str, Any]:
        answer = self.http.post(
            self.metadata()["token_endpoint"], data={**form, "client_id": self.client_id or ""}
        )
        if answer.status_code == 400 and answer.json().get("error") == "invalid_grant":
            raise GrantEnded(answer.json().get("error_description", ""))
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        return body

    def exchange(self, code: str, verifier: str) -> dict[str, Any]:
        return self._token(
            {
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": verifier,
                "redirect_uri": self.redirect_uri,
            }
        )

    def refresh(self, refresh_token: str, resource: str) -> dict[str, Any]:
        return self._token(
            {"grant_type": "refresh_token", "refresh_token": refresh_token, "resource": resource}
        )

    def call_holder(
        self, url: str, access_token: str, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        answer = self.http.get(
            url,
            params=params,
            headers={"Authorization": f"Bearer {access_token}", "Accept": "application/fhir+json"},
        )
        if answer.status_code in (401, 403):
            challenge = answer.headers.get("www-authenticate", "")
            error = (
                "invalid_token"
                if "invalid_token" in challenge
                else ("insufficient_scope" if "insufficient_scope" in challenge else "refused")
            )
            raise HolderRefused(answer.status_code, error, challenge)
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        return body


def _json(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

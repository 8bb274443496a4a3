"""A small OpenID Connect provider for the tests, served over real loopback HTTP.

Discovery, JWKS, an authorization endpoint that approves a test person at once, and a token
endpoint that checks the client secret, the redirect URI and the PKCE S256 verifier before
issuing an ID token signed with jwcrypto. ``mode`` makes it misbehave on purpose.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from jwcrypto import jwk, jws, jwt

MODES = (
    "good",
    "wrong_nonce",
    "wrong_audience",
    "bad_signature",
    "wrong_issuer",
    "expired",
    "alg_none",
    "hs256_with_secret",
    "embedded_jwk",
    "no_id_token",
)


class LocalProvider:
    def __init__(self, client_id: str = "broker-test", redirect_uri: str = "") -> None:
        self.key = jwk.JWK.generate(kty="EC", crv="P-256", kid="op-key-1")
        self.rogue = jwk.JWK.generate(kty="EC", crv="P-256", kid="op-key-1")
        self.client_id = client_id
        self.client_secret = "provider-secret-" + secrets.token_hex(8)
        self.redirect_uri = redirect_uri
        self.subject = "person-0042"
        self.mode = "good"
        self.codes: dict[str, dict[str, str]] = {}
        self.token_requests: list[dict[str, str]] = []
        self.authorize_requests: list[dict[str, str]] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/.well-known/openid-configuration":
                    self._send(200, provider.discovery())
                elif url.path == "/jwks":
                    self._send(200, {"keys": [provider.key.export_public(as_dict=True)]})
                elif url.path == "/authorize":
                    query = {k: v[0] for k, v in parse_qs(url.query).items()}
                    provider.authorize_requests.append(query)
                    status, location = provider.authorize(query)
                    self._send(
                        status,
                        None if status == 302 else {"error": location},
                        {"Location": location} if status == 302 else None,
                    )
                else:
                    self._send(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if urlsplit(self.path).path != "/token":
                    self._send(404, {"error": "not_found"})
                    return
                provider.token_requests.append(form)
                status, body = provider.token(form, self.headers.get("Authorization", ""))
                self._send(status, body, {"Cache-Control": "no-store"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LocalProvider:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        }

    def authorize(self, query: dict[str, str]) -> tuple[int, str]:
        if query.get("client_id") != self.client_id or query.get("redirect_uri") != self.redirect_uri:
            return 400, "invalid_client"
        if query.get("response_type") != "code" or query.get("code_challenge_method") != "S256":
            return 400, "invalid_request"
        if not query.get("nonce") or not query.get("state") or "openid" not in query.get("scope", "").split():
            return 400, "invalid_request"
        code = secrets.token_urlsafe(16)
        self.codes[code] = query
        params = urlencode({"code": code, "state": query["state"], "iss": self.issuer})
        return 302, f"{self.redirect_uri}?{params}"

    def token(self, form: dict[str, str], authorization: str) -> tuple[int, dict[str, Any]]:
        expected = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if authorization != expected:
            return 401, {"error": "invalid_client"}
        request = self.codes.pop(form.get("code", ""), None)
        if request is None or form.get("grant_type") != "authorization_code":
            return 400, {"error": "invalid_grant"}
        if form.get("redirect_uri") != request["redirect_uri"]:
            return 400, {"error": "invalid_grant"}
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if challenge != request["code_challenge"]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE verifier does not match"}
        body: dict[str, Any] = {
            "access_token": secrets.token_urlsafe(16),
            "token_type": "Bearer",
            "expires_in": 60,
        }
        if self.mode != "no_id_token":
            body["id_token"] = self.id_token(request["nonce"])
        return 200, body

    def id_token(self, nonce: str) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": self.subject,
            "aud": self.client_id,
            "exp": now + 300,
            "iat": now,
            "nonce": nonce,
            "given_name": "Gaëlle",
            "family_name": "Externe",
        }
        header: dict[str, Any] = {"alg": "ES256", "kid": "op-key-1", "typ": "JWT"}
        key = self.key
        if self.mode == "wrong_nonce":
            claims["nonce"] = "another-" + nonce
        elif self.mode == "wrong_audience":
            claims["aud"] = "another-client"
        elif self.mode == "wrong_issuer":
            claims["iss"] = self.issuer + "/evil"
        elif self.mode == "expired":
            claims["exp"], claims["iat"] = now - 3600, now - 4000
        elif self.mode == "bad_signature":
            key = self.rogue  # same kid, another key: the signature cannot verify
        elif self.mode == "embedded_jwk":
            key = self.rogue
            header = {**header, "kid": "attacker", "jwk": self.rogue.export_public(as_dict=True)}
        elif self.mode == "alg_none":
            segment = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
            return f"{segment({'alg': 'none', 'kid': 'op-key-1'})}.{segment(claims)}."
        elif self.mode == "hs256_with_secret":
            key = jwk.JWK(
                kty="oct", k=base64.urlsafe_b64encode(self.client_secret.encode()).rstrip(b"=").decode()
            )
            header = {"alg": "HS256", "kid": "op-key-1"}
            token = jws.JWS(json.dumps(claims))
            token.add_signature(key, alg="HS256", protected=json.dumps(header))
            return str(token.serialize(compact=True))
        signed = jwt.JWT(header=header, claims=claims)
        signed.make_signed_token(key)
        return str(signed.serialize())

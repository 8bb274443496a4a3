"""Confidential apps registered with a ``jwks_uri`` (RFC 7591 §2): their keys are fetched
through the guarded outbound client (SECURITY.md A5), cached, and any refusal is the same
``invalid_client`` with the generic message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from jwcrypto import jwk

import tests.consent.test_oauth_attacks as attacks
from broker.outbound import PUBLIC_MESSAGE
from tests.outbound_servers import Server, answer, serve

# The world of the OAuth attack tests: two holders, two patients, Gaëlle logged in.
settings = attacks.settings
env = attacks.env
Env = attacks.Env


@pytest.fixture
def keys_server() -> Iterator[Server]:
    """The app's key server, on loopback over http: allowed in development mode only."""
    with serve() as server:
        yield server


def register_with_jwks_uri(env: Env, jwks_uri: str) -> attacks.Confidential:
    key = jwk.JWK.generate(kty="EC", crv="P-256")
    client_id, status = attacks.register(
        env.db,
        env.settings,
        "Glycémie Pro",
        jwks_uri=jwks_uri,
        token_endpoint_auth_method="private_key_jwt",
    )
    assert status == "approved"
    return attacks.Confidential(client_id, key)


def public_jwks(key: jwk.JWK, kid: str = "app-key-1") -> dict[str, Any]:
    public: dict[str, Any] = key.export_public(as_dict=True)
    public.update(kid=kid, alg="ES256", use="sig")
    return {"keys": [public]}


def test_an_app_with_a_jwks_uri_gets_tokens_with_private_key_jwt(env: Env, keys_server: Server) -> None:
    assert env.settings.dev_mode
    app = register_with_jwks_uri(env, f"http://127.0.0.1:{keys_server.port}/jwks.json")
    keys_server.routes["/jwks.json"] = lambda h: answer(h, public_jwks(app.key))

    code, verifier = attacks.confidential_code(env, app)
    tokens = attacks.post_form(
        env.browser,
        "/token",
        attacks.with_assertion(app, attacks.assertion(env, app), **attacks.code_form(code, verifier)),
    )
    assert tokens.status_code == 200, tokens.text
    rotated = attacks.post_form(
        env.browser,
        "/token",
        attacks.with_assertion(
            app,
            attacks.assertion(env, app),
            grant_type="refresh_token",
            refresh_token=tokens.json()["refresh_token"],
        ),
    )
    assert rotated.status_code == 200, rotated.text
    assert keys_server.paths() == ["/jwks.json"]  # fetched once, then cached (S8)

    # The replay check still holds for keys fetched from a jwks_uri.
    signed = attacks.assertion(env, app)
    code, verifier = attacks.confidential_code(env, app)
    first = attacks.post_form(
        env.browser, "/token", attacks.with_assertion(app, signed, **attacks.code_form(code, verifier))
    )
    assert first.status_code == 200, first.text
    code, verifier = attacks.confidential_code(env, app)
    replayed = attacks.post_form(
        env.browser, "/token", attacks.with_assertion(app, signed, **attacks.code_form(code, verifier))
    )
    attacks.assert_oauth_error(replayed, "invalid_client", 401)

    # A key the app did not publish is refused, after at most one refetch.
    stranger = jwk.JWK.generate(kty="EC", crv="P-256")
    forged = attacks.assertion(env, app, key=stranger, header={"kid": "app-key-2"})
    code, verifier = attacks.confidential_code(env, app)
    refused = attacks.post_form(
        env.browser, "/token", attacks.with_assertion(app, forged, **attacks.code_form(code, verifier))
    )
    attacks.assert_oauth_error(refused, "invalid_client", 401)
    assert len(keys_server.paths()) <= 2


@pytest.mark.parametrize(
    "jwks_uri",
    [
        "https://169.254.169.254/latest/meta-data/jwks.json",  # cloud metadata, as a literal
        "https://10.0.0.1/jwks.json",  # a private address
        "https://localhost:1/jwks.json",  # nothing listens: the same answer as a blocked address
    ],
)
def test_an_app_whose_jwks_uri_is_refused_gets_invalid_client_with_the_generic_message(
    env: Env, jwks_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = register_with_jwks_uri(env, jwks_uri)
    _, challenge = attacks.pkce()
    with caplog.at_level(logging.WARNING, logger="broker.outbound"):
        pushed = attacks.post_form(
            env.browser,
            "/par",
            attacks.with_assertion(
                app,
                attacks.assertion(env, app, aud=env.issuer),
                **attacks.auth_params(app.client_id, challenge),
            ),
        )
    body = attacks.assert_oauth_error(pushed, "invalid_client", 401)
    assert body["error_description"] == f"the client's jwks_uri: {PUBLIC_MESSAGE}"
    assert any(r.name == "broker.outbound" for r in caplog.records)  # the reason stays in the log

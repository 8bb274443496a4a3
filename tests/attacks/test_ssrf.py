"""SSRF through the outbound URL fields themselves (SECURITY.md A5), end to end in process.

The guarded client's rules are tested one by one in ``tests/test_outbound.py`` and an app's
``jwks_uri`` with two refused literals in ``tests/consent/test_jwks_uri_clients.py``. Here each
attempt goes through a real field and a real endpoint: an app registers with the URL as its
``jwks_uri``, then authenticates at ``/par`` with a client assertion, which makes the broker
fetch its keys. Every attempt ends in ``invalid_client`` with the one generic message, and
the local server standing behind the internal address receives nothing (or, for redirects,
only the first request).

The URL fields the broker never fetches (``logo_uri``, ``client_uri``, ``policy_uri``,
``tos_uri``, a holder's ``jwks_uri``) are checked to stay unfetched through registration, the
catalog, the consent screen and a holder's receipt.

No packet leaves loopback: the broker's key cache gets the production rules (no development
mode) with a fake resolver, and 127.0.0.1 counts as public only where a test says so.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from jwcrypto import jwk

import tests.consent.test_oauth_attacks as attacks
import tests.test_outbound as outbound_tests
from broker.outbound import PUBLIC_MESSAGE, JwksCache, OutboundPolicy
from tests.outbound_servers import Authority, Server, answer, redirect, serve
from tests.test_outbound import LOCAL, FakeResolver

settings = attacks.settings
env = attacks.env
Env = attacks.Env
authority = outbound_tests.authority  # the outbound tests' local certificate authority


@pytest.fixture
def inside(authority: Authority) -> Iterator[Server]:
    """A server standing for whatever sits at an internal address: it must hear nothing."""
    with serve(authority) as server:
        yield server


def production_rules(
    env: Env, server: Server, authority: Authority, names: dict[str, list[str]], *, public: bool = False
) -> FakeResolver:
    """The broker's key cache, with production rules and ``names`` resolved as given."""
    resolver = FakeResolver(names)
    policy = OutboundPolicy(
        dev_mode=False,
        allowed_ports=frozenset({443, server.port}),
        resolver=resolver,
        deadline=2.0,
        ssl_context=authority.client_context(),
        public_stand_ins=frozenset({LOCAL}) if public else frozenset(),
    )
    env.browser.app.state.jwks_cache = JwksCache(policy)
    return resolver


def attempt(env: Env, jwks_uri: str) -> dict[str, Any]:
    """Register an app with ``jwks_uri`` and authenticate with it at /par; the error body."""
    key = jwk.JWK.generate(kty="EC", crv="P-256")
    client_id, status = attacks.register(
        env.db,
        env.settings,
        f"Glycémie Pro {secrets.token_hex(3)}",
        jwks_uri=jwks_uri,
        token_endpoint_auth_method="private_key_jwt",
    )
    assert status == "approved"
    app = attacks.Confidential(client_id, key)
    _, challenge = attacks.pkce()
    before = attacks.counts(env.db)
    pushed = attacks.post_form(
        env.browser,
        "/par",
        attacks.with_assertion(
            app, attacks.assertion(env, app, aud=env.issuer), **attacks.auth_params(client_id, challenge)
        ),
    )
    body = attacks.assert_oauth_error(pushed, "invalid_client", 401)
    assert body["error_description"] == f"the client's jwks_uri: {PUBLIC_MESSAGE}"
    assert attacks.counts(env.db) == before
    return body


INTERNAL_SPELLINGS = {
    "loopback": "127.0.0.1",
    "decimal": "2130706433",
    "octal": "0177.0.0.1",
    "hexadecimal": "0x7f.0.0.1",
    "short form": "127.1",
    "IPv6 loopback": "[::1]",
    "IPv4-mapped IPv6": "[::ffff:127.0.0.1]",
    "IPv4-mapped IPv6, hex": "[::ffff:7f00:1]",
    "IPv4-compatible IPv6": "[::127.0.0.1]",
    "cloud metadata": "169.254.169.254",
    "cloud metadata, IPv6": "[fd00:ec2::254]",
    "private": "10.0.0.1",
    "link-local": "169.254.1.1",
    "unspecified": "0.0.0.0",  # noqa: S104 (an address to refuse, not to bind)
}


@pytest.mark.parametrize("host", INTERNAL_SPELLINGS.values(), ids=INTERNAL_SPELLINGS.keys())
def test_a_jwks_uri_at_an_internal_address_in_any_spelling_is_never_contacted(
    env: Env, inside: Server, authority: Authority, host: str
) -> None:
    resolver = production_rules(env, inside, authority, {})
    attempt(env, f"https://{host}:{inside.port}/jwks.json")
    assert inside.requests == [] and inside.sni == []
    assert resolver.calls == []  # refused as written, before any lookup


NAMES_INSIDE = {
    "loopback": [LOCAL],
    "metadata": ["169.254.169.254"],
    "private": ["10.1.2.3"],
    "IPv4-mapped private": ["::ffff:10.1.2.3"],
    "6to4 of loopback": ["2002:7f00:1::"],
    "one private among public": ["93.184.215.14", "192.168.0.10"],
}


@pytest.mark.parametrize("addresses", NAMES_INSIDE.values(), ids=NAMES_INSIDE.keys())
def test_a_jwks_uri_whose_name_resolves_inside_is_never_contacted(
    env: Env, inside: Server, authority: Authority, addresses: list[str]
) -> None:
    resolver = production_rules(env, inside, authority, {"keys.app.example": addresses})
    attempt(env, f"https://keys.app.example:{inside.port}/jwks.json")
    assert resolver.calls == ["keys.app.example"]
    assert inside.requests == []


def test_plain_http_and_user_info_are_refused(env: Env, inside: Server, authority: Authority) -> None:
    """At registration: user info, and http to anything but loopback in development mode;
    at the fetch, with production rules, http to loopback too."""
    for jwks_uri in (
        f"https://user:pass@keys.app.example:{inside.port}/jwks.json",
        f"http://keys.app.example:{inside.port}/jwks.json",
    ):
        body = attacks.app_registration(
            name="Appli Refusée",
            redirect_uris=[attacks.REDIRECT],
            jwks_uri=jwks_uri,
            token_endpoint_auth_method="private_key_jwt",
        )
        refused = env.browser.post("/register", json=body)
        attacks.assert_oauth_error(refused, "invalid_client_metadata")
    production_rules(env, inside, authority, {"keys.app.example": [LOCAL]}, public=True)
    attempt(env, f"http://127.0.0.1:{inside.port}/jwks.json")
    assert inside.requests == []


REDIRECTS = {
    "to a private literal": "https://10.0.0.1/jwks.json",
    "to metadata over http": "http://169.254.169.254/latest/meta-data/",
    "to loopback in decimal": "https://2130706433/jwks.json",
    "to a name resolving inside": "https://inside.app.example/jwks.json",
    "to another origin": "https://other.app.example/jwks.json",
}


@pytest.mark.parametrize("location", REDIRECTS.values(), ids=REDIRECTS.keys())
def test_a_jwks_uri_redirecting_inside_is_not_followed(
    env: Env, inside: Server, authority: Authority, location: str
) -> None:
    """The app's key server is "public" (a stand-in); it answers with a redirect inside."""
    resolver = production_rules(
        env,
        inside,
        authority,
        {"keys.app.example": [LOCAL], "inside.app.example": ["10.9.9.9"], "other.app.example": [LOCAL]},
        public=True,
    )
    inside.routes["/jwks.json"] = redirect(location)
    attempt(env, f"https://keys.app.example:{inside.port}/jwks.json")
    assert inside.paths() == ["/jwks.json"]  # the first request only; no second hop
    assert "inside.app.example" not in resolver.calls  # refused before its name was even looked up


def test_oversized_and_slow_key_answers_are_cut(env: Env, inside: Server, authority: Authority) -> None:
    production_rules(env, inside, authority, {"keys.app.example": [LOCAL]}, public=True)
    inside.routes["/big.json"] = lambda h: answer(h, {"keys": [], "pad": "x" * (1024 * 1024)})

    def slow(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(100):
            handler.wfile.write(b" " * 10)
            handler.wfile.flush()
            time.sleep(0.2)

    inside.routes["/slow.json"] = slow
    attempt(env, f"https://keys.app.example:{inside.port}/big.json")
    attempt(env, f"https://keys.app.example:{inside.port}/slow.json")  # ends at the 2 s deadline
    assert inside.paths() == ["/big.json", "/slow.json"]


def test_url_fields_the_broker_never_fetches_stay_unfetched(
    env: Env, inside: Server, authority: Authority
) -> None:
    """S7 (MITREid CVE-2021-26715): logo and page URLs are published, never fetched; a holder's
    ``jwks_uri`` is published in its federation statement, never fetched either."""
    production_rules(env, inside, authority, {"keys.app.example": [LOCAL]}, public=True)
    base = f"https://keys.app.example:{inside.port}"
    client_id, status = attacks.register(
        env.db,
        env.settings,
        "Appli Logo",
        logo_uri=f"{base}/logo.png",
        client_uri=f"{base}/",
        policy_uri=f"{base}/policy",
        tos_uri=f"{base}/tos",
    )
    assert status == "approved"
    for path in ("/api/catalog/apps", f"/api/catalog/apps/{client_id}", "/catalog", f"/catalog/{client_id}"):
        assert env.browser.get(path).status_code == 200, path
    _, challenge = attacks.pkce()
    screen = attacks.open_consent(env.browser, client_id, challenge)
    assert f"{base}/logo.png" not in screen.html  # not hotlinked on the consent screen either
    holder = env.browser.post(
        "/admin/holders",
        json={
            "identifier": "labo-distant",
            "legal_name": "Laboratoire Distant",
            "base_url": "https://labo-distant.example/fhir",
            "categories": ["lab_results"],
            "release_step_categories": [],
            "jwks_uri": f"{base}/holder-jwks.json",
        },
        headers={"Authorization": f"Bearer {operator_token(env)}"},
    )
    assert holder.status_code == 201, holder.text
    receipt = env.browser.post(
        "/receipts",
        content=signed_as_holder("labo-distant", env.issuer),
        headers={"Content-Type": "application/jwt"},
    )
    assert receipt.status_code == 401, receipt.text  # no keys: the jwks_uri was not fetched
    assert env.browser.get("/federation/fetch", params={"sub": "labo-distant"}).status_code in (200, 400, 404)
    assert inside.requests == []


def operator_token(env: Env) -> str:
    from broker.catalog.operators import create_operator_token
    from broker.db import transaction, utcnow

    with transaction(env.db) as session:
        return create_operator_token(session, name="ssrf", secret_key=env.settings.secret_key, now=utcnow())


def signed_as_holder(holder: str, issuer: str) -> str:
    """A receipt signed by a key the broker cannot know: it has only the holder's jwks_uri."""
    from jwcrypto import jwt

    key = jwk.JWK.generate(kty="EC", crv="P-256", kid="holder-key")
    now = int(time.time())
    token = jwt.JWT(
        header={"alg": "ES256", "kid": "holder-key", "typ": "receipt+jwt"},
        claims={"iss": holder, "aud": issuer, "iat": now, "exp": now + 60, "jti": "r-1"},
    )
    token.make_signed_token(key)
    return str(token.serialize())

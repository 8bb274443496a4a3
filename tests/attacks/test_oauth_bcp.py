"""RFC 9700 (OAuth 2.0 Security BCP) cases not already tested elsewhere.

Where each case the BCP names is tested (``attacks`` = ``tests/consent/test_oauth_attacks.py``):

- code injection (§4.5): ``attacks`` (wrong or missing verifier, code bound to its client,
  identical redirect_uri, code replay revoking what it produced) and here, across patients;
- PKCE downgrade (§4.8): ``attacks`` (13 malformed or missing challenges refused at the
  authorization endpoint, PKCE required of confidential clients, no verifier refused);
- mix-up (§4.4, RFC 9207): ``attacks`` (``iss`` on every error redirect),
  ``tests/test_discovery.py`` (metadata), ``tests/consent/test_oauth_flow.py`` and here (success);
- open redirector (§4.11.2): ``attacks`` (14 inexact redirect URIs, unknown or unapproved
  client: error page, no Location), ``tests/consent/patients/test_accounts.py`` (log-in
  ``next``) and here (language links, sign-up);
- refresh-token replay (§4.14): ``attacks`` (rotation, family revocation both ways round,
  another client's token);
- CSRF (§4.7, A6 W4): ``attacks`` (state required, consent form and revocation CSRF),
  ``tests/consent/patients/test_csrf.py`` and here (state returned byte for byte);
- clickjacking (§4.16): ``attacks`` (error pages), ``tests/consent/patients/test_accounts.py``
  (patient pages) and here (consent screen, log-in, authorization error page);
- access token in the URL (§4.3.2): ``sdk/tests/test_asgi.py`` (holders) and here (the
  broker's own bearer-protected endpoints);
- 307 after POST (§4.12): here, every form POST.

Added here:

- §4.5 code injection across patients: a code from the attacker's own session, injected into
  the victim's client transaction, does not redeem with the victim's PKCE verifier;
- §4.4 mix-up: the success response names this broker in ``iss`` (RFC 9207), and so does
  every error response of the authorization endpoint;
- §4.7 CSRF: ``state`` comes back byte for byte, whatever characters it holds;
- §4.11.2 open redirector at the broker's own redirects (language links, sign-up);
- §4.3.2 / RFC 6750 §2.3: a bearer token in the query is not accepted where the broker takes
  bearer tokens (registration management, the revocation stream);
- §4.12: every form POST of the patient pages and the consent screen answers 303, never
  307/308 (which would make the browser repost the password or the consent);
- §4.16 clickjacking: the consent screen, the log-in page and the authorization endpoint's
  error page forbid framing (CSP ``frame-ancestors 'none'`` and ``X-Frame-Options: DENY``).

In process, on SQLite and PostgreSQL, with the world of the OAuth attack tests.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from litestar.testing import TestClient

import tests.consent.test_oauth_attacks as attacks
from tests.factories import app_registration

settings = attacks.settings
env = attacks.env
bruno = attacks.bruno
Env = attacks.Env


def test_a_code_from_the_attackers_session_does_not_redeem_in_the_victims_transaction(
    env: Env, bruno: TestClient[Any]
) -> None:
    """BCP §4.5: Bruno (the attacker) gets a code for his own account and slips it into
    Gaëlle's client, whose transaction holds her PKCE verifier: the code is bound to Bruno's
    challenge, so the token request fails and nothing is issued."""
    victim_verifier, _victim_challenge = attacks.pkce()
    _attacker_verifier, attacker_challenge = attacks.pkce()
    injected = attacks.get_code(bruno, env.client_id, attacker_challenge)
    before = attacks.counts(env.db)
    refused = attacks.redeem(env.browser, env.client_id, injected, victim_verifier, resource=attacks.HOLDERS["labo-test"])
    attacks.assert_oauth_error(refused, "invalid_grant")
    after = attacks.counts(env.db)
    assert after["RefreshToken"] == before["RefreshToken"]
    assert after["ConsentRecord"] == before["ConsentRecord"]


def test_the_success_response_names_the_issuer_and_returns_state_unchanged(env: Env) -> None:
    """BCP §4.4 (RFC 9207 ``iss``) and §4.7 (``state`` is the client's CSRF check): the state
    comes back exactly as sent, reserved characters and non-ASCII included."""
    state = "a&b=c d+é/?#%20~" + "x" * 40
    _verifier, challenge = attacks.pkce()
    screen = attacks.open_consent(env.browser, env.client_id, challenge, state=state)
    done = attacks.answer(env.browser, screen, screen.form())
    assert done.status_code == 303, done.text
    location = done.headers["location"]
    assert location.startswith(attacks.REDIRECT + "?")
    query = parse_qs(urlsplit(location).query, keep_blank_values=True)
    assert query["iss"] == [env.issuer]
    assert query["state"] == [state]
    assert len(query["code"]) == 1


def test_a_denied_consent_answers_with_iss_and_state_too(env: Env) -> None:
    _verifier, challenge = attacks.pkce()
    screen = attacks.open_consent(env.browser, env.client_id, challenge, state="deny-1")
    done = attacks.answer(env.browser, screen, screen.form(decision="deny"))
    attacks.assert_error_redirect(done, env, "access_denied", "deny-1")


OPEN_REDIRECT_TARGETS = [
    "https://evil.example/",
    "//evil.example/",
    "/\\evil.example",
    "/%2F%2Fevil.example",
    "https:evil.example",
    "javascript:alert(1)",
]


@pytest.mark.parametrize("target", OPEN_REDIRECT_TARGETS)
def test_the_brokers_own_redirects_stay_on_the_broker(env: Env, target: str) -> None:
    """BCP §4.11: the language links and the sign-up form take a ``next`` path; anything that
    is not a path of this broker is replaced by the default page."""
    language = env.browser.get("/language?" + urlencode({"to": "en", "next": target}), follow_redirects=False)
    assert language.status_code == 303
    assert_local(language.headers["location"])
    page = env.browser.get("/signup")
    signed = env.browser.post(
        "/signup",
        data={
            "csrf_token": attacks.hidden(page.text, "csrf_token"),
            "email": "nouvelle@example.org",
            "display_name": "Nouvelle",
            "password": attacks.PASSWORD,
            "next": target,
        },
        follow_redirects=False,
    )
    assert signed.status_code == 303
    location = signed.headers["location"]
    assert_local(location)
    next_value = parse_qs(urlsplit(location).query).get("next", ["/account"])[0]
    assert_local(next_value)


def assert_local(location: str) -> None:
    """A path on this broker, as a browser reads it (``/%2F%2Fevil.example`` is one)."""
    assert location.startswith("/") and not location.startswith(("//", "/\\")), location
    parts = urlsplit(location)
    assert not parts.scheme and not parts.netloc and "\\" not in location, location


def test_a_bearer_token_in_the_query_is_not_accepted(env: Env) -> None:
    """RFC 6750 §2.3 is optional and BCP §4.3.2 says why not: the broker reads bearer tokens
    from the Authorization header only."""
    registered = env.browser.post("/register", json=app_registration(name="Appli Requête", redirect_uris=[attacks.REDIRECT]))
    assert registered.status_code == 201, registered.text
    client_id = registered.json()["client_id"]
    token = registered.json()["registration_access_token"]
    in_header = env.browser.get(f"/register/{client_id}", headers={"Authorization": f"Bearer {token}"})
    assert in_header.status_code == 200, in_header.text  # the token itself is good
    in_query = env.browser.get(f"/register/{client_id}?" + urlencode({"access_token": token}))
    attacks.assert_oauth_error(in_query, "invalid_token", 401)
    stream = env.browser.get("/events/revocations?" + urlencode({"holder": "labo-test", "access_token": token}))
    assert stream.status_code == 401, stream.text
    assert stream.headers["www-authenticate"].startswith("Bearer")


def test_every_form_post_answers_303(env: Env) -> None:
    """BCP §4.12: a 307 or 308 after a POST makes the browser send the same body (password,
    consent) to the next location; 302 lets some browsers do it. Sign-up, log-in, consent
    accept and deny, withdrawal, log-out: all 303."""
    browser = env.browser
    statuses = {}
    page = browser.get("/signup")
    statuses["sign-up"] = browser.post(
        "/signup",
        data={
            "csrf_token": attacks.hidden(page.text, "csrf_token"),
            "email": "autre@example.org",
            "display_name": "Autre",
            "password": attacks.PASSWORD,
            "next": "",
        },
        follow_redirects=False,
    ).status_code
    _verifier, challenge = attacks.pkce()
    screen = attacks.open_consent(browser, env.client_id, challenge)
    statuses["consent accept"] = attacks.answer(browser, screen, screen.form()).status_code
    screen = attacks.open_consent(browser, env.client_id, challenge)
    statuses["consent deny"] = attacks.answer(browser, screen, screen.form(decision="deny")).status_code
    tokens = attacks.tokens_for(env)
    statuses["withdrawal"] = attacks._revoke(
        browser, "page", tokens["consent_id"], attacks.page_csrf(browser)
    ).status_code
    statuses["log-out"] = browser.post(
        "/logout", data={"csrf_token": attacks.page_csrf(browser)}, follow_redirects=False
    ).status_code
    page = browser.get("/login")
    statuses["log-in"] = browser.post(
        "/login",
        data={
            "csrf_token": attacks.hidden(page.text, "csrf_token"),
            "email": attacks.GAELLE,
            "password": attacks.PASSWORD,
            "next": "/",
        },
        follow_redirects=False,
    ).status_code
    assert statuses == dict.fromkeys(statuses, 303), statuses


def assert_not_frameable(response: Any) -> None:
    assert response.headers["x-frame-options"] == "DENY"
    directives = [d.strip() for d in response.headers["content-security-policy"].split(";")]
    assert "frame-ancestors 'none'" in directives


def test_the_consent_screen_login_page_and_authorization_errors_cannot_be_framed(
    env: Env, client: TestClient[Any]
) -> None:
    """BCP §4.16: clickjacking the consent button is prevented by forbidding every frame."""
    _verifier, challenge = attacks.pkce()
    screen = attacks.authorize(env.browser, attacks.auth_params(env.client_id, challenge))
    consent = env.browser.get(screen.headers["location"])
    assert consent.status_code == 200
    assert_not_frameable(consent)
    with TestClient(app=client.app) as stranger:
        login = stranger.get("/login")
        assert login.status_code == 200
        assert_not_frameable(login)
    error = attacks.authorize(
        env.browser, attacks.auth_params("app_unknown", challenge)
    )  # an unknown client: an error page, never a redirect
    assert error.status_code == 400
    assert_not_frameable(error)

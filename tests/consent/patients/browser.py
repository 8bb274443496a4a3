"""What a person does in a browser, as functions over a Litestar TestClient."""

from __future__ import annotations

import re
from typing import Any

PASSWORD = "une longue phrase de passe pour les tests"


def form_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "the page has no CSRF token"
    return found.group(1)


def page_token(client: Any, path: str = "/login") -> str:
    response = client.get(path)
    assert response.status_code == 200, response.text
    return form_token(response.text)


def sign_up(
    client: Any,
    email: str = "camille@example.org",
    password: str = PASSWORD,
    display_name: str = "Camille",
    **headers: str,
) -> Any:
    token = page_token(client, "/signup")
    return client.post(
        "/signup",
        data={
            "csrf_token": token,
            "email": email,
            "display_name": display_name,
            "password": password,
            "next": "",
        },
        headers=headers,
        follow_redirects=False,
    )


def log_in(
    client: Any, email: str = "camille@example.org", password: str = PASSWORD, next: str = "/account"
) -> Any:
    token = page_token(client, "/login")
    return client.post(
        "/login",
        data={"csrf_token": token, "email": email, "password": password, "next": next},
        follow_redirects=False,
    )


def session_cookie(client: Any, name: str = "broker_session") -> str | None:
    value = client.cookies.get(name)
    return value or None

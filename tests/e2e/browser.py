"""The patient's browser, driven with httpx: it reads pages, fills their forms, follows redirects.

No JavaScript is needed anywhere on the patient's path, so an HTTP client that submits forms
is a faithful browser for these pages. Cookies are shared by host (as browsers do, whatever
the port), which the broker and the app must cope with on 127.0.0.1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urlencode, urljoin

import httpx


@dataclass
class Form:
    action: str
    method: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    checkboxes: list[tuple[str, str, bool]] = field(default_factory=list)
    buttons: list[tuple[str, str]] = field(default_factory=list)

    def values(self, **overrides: str) -> list[tuple[str, str]]:
        """What submitting would send: fields, ticked boxes, then the overrides."""
        out = [(k, v) for k, v in self.fields if k not in overrides]
        out += [(k, v) for k, v, checked in self.checkboxes if checked]
        out += list(overrides.items())
        return out


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._select: str | None = None
        self._select_value: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
        elif not self.forms:
            return
        elif tag == "input" and a.get("name"):
            kind = a.get("type", "text")
            if kind in ("checkbox", "radio"):
                self.forms[-1].checkboxes.append((a["name"], a.get("value", "on"), "checked" in a))
            elif kind not in ("submit", "button"):
                self.forms[-1].fields.append((a["name"], a.get("value", "")))
        elif tag == "button" and a.get("name"):
            self.forms[-1].buttons.append((a["name"], a.get("value", "")))
        elif tag == "select":
            self._select, self._select_value = a.get("name"), None
        elif tag == "option" and self._select is not None:
            if self._select_value is None or "selected" in a:
                self._select_value = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "select" and self._select is not None and self.forms:
            self.forms[-1].fields.append((self._select, self._select_value or ""))
            self._select = None


def forms(html: str) -> list[Form]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


class Browser:
    def __init__(self) -> None:
        self.http = httpx.Client(follow_redirects=True, timeout=30.0)
        self.page: httpx.Response | None = None

    def close(self) -> None:
        self.http.close()

    def get(self, url: str) -> httpx.Response:
        self.page = self.http.get(url)
        return self.page

    def form(self, action_contains: str) -> Form:
        assert self.page is not None
        for candidate in forms(self.page.text):
            if action_contains in candidate.action:
                return candidate
        raise AssertionError(f"no form for {action_contains!r} on {self.page.url}:\n{self.page.text[:2000]}")

    def submit(self, action_contains: str, **overrides: str) -> httpx.Response:
        form = self.form(action_contains)
        assert self.page is not None
        target = urljoin(str(self.page.url), form.action or str(self.page.url))
        if form.method == "post":
            self.page = self.http.post(
                target,
                content=urlencode(form.values(**overrides)),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        else:
            self.page = self.http.get(target, params=form.values(**overrides))
        return self.page

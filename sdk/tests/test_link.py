"""The holder's side of the link step, against the live broker: the patient comes back linked."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from sdk_support import Broker, Browser, grant, hidden, new_key

from broker_sdk import HolderVerifier, LinkRequestError, link_response, new_handle, parse_link_request


def start_link(browser: Browser, holder_id: str) -> str:
    page = browser.http.get("/my/sources")
    answer = browser.http.post(
        f"/my/sources/{holder_id}/link", data={"csrf_token": hidden(page.text, "csrf_token")}
    )
    assert answer.status_code == 303, answer.text
    return str(answer.headers["location"])


def test_link_step_end_to_end(live_broker: Broker, browser: Browser) -> None:
    holder = live_broker.holders["labo-a"]
    assert holder.link_endpoint is not None
    location = start_link(browser, "labo-a")
    assert location.startswith(holder.link_endpoint + "?")
    # the holder reads the request, authenticates the patient its own way, answers with a handle
    request = parse_link_request(urlsplit(location).query, trusted_issuers=[live_broker.issuer])
    handle = new_handle()
    back = link_response(request, key=holder.key, holder_id="labo-a", handle=handle)
    assert back.startswith(live_broker.issuer + "/")
    answer = browser.http.get(back)
    assert answer.status_code == 303 and answer.headers["location"] == "/my/sources", answer.text
    # the tokens for this holder now carry the holder's own handle
    token = grant(live_broker, browser)
    with HolderVerifier(live_broker.issuer, holder.base_url, holder_id="labo-a") as verifier:
        assert verifier.verify(token["access_token"]).link_handle == handle
    # the same answer cannot be used twice
    assert browser.http.get(back).status_code >= 400
    # the same answer cannot be replayed


def test_a_link_answer_signed_by_another_key_is_refused(live_broker: Broker, browser: Browser) -> None:
    location = start_link(browser, "labo-a")
    request = parse_link_request(urlsplit(location).query, trusted_issuers=[live_broker.issuer])
    back = link_response(request, key=new_key("labo-a-key"), holder_id="labo-a", handle=new_handle())
    answer = browser.http.get(back)
    assert answer.status_code >= 400


@pytest.mark.parametrize(
    "query",
    [
        "state=s&redirect_uri=https://evil.example/cb&broker=BROKER",  # open redirect
        "state=s&redirect_uri=BROKER/cb&broker=https://evil.example",  # untrusted broker
        "redirect_uri=BROKER/cb&broker=BROKER",  # no state
        "state=s&redirect_uri=BROKER.evil.example/cb&broker=BROKER",  # a look-alike host
    ],
)
def test_link_requests_the_holder_must_not_answer(query: str) -> None:
    broker = "http://127.0.0.1:8000"
    with pytest.raises(LinkRequestError):
        parse_link_request(query.replace("BROKER", broker), trusted_issuers=[broker])


def test_link_response_shape() -> None:
    key = new_key("k1")
    request = parse_link_request(
        {
            "state": "abc",
            "redirect_uri": "http://127.0.0.1:8000/my/sources/callback",
            "broker": "http://127.0.0.1:8000",
        },
        trusted_issuers=["http://127.0.0.1:8000"],
    )
    url = link_response(request, key=key, holder_id="h", handle="h" * 20)
    query = parse_qs(urlsplit(url).query)
    assert query["state"] == ["abc"] and query["link_token"][0].count(".") == 2
    with pytest.raises(ValueError, match="handle"):
        link_response(request, key=key, holder_id="h", handle="short")

"""The guarded outbound client, rule by rule (SECURITY.md A5, S0–S8).

No packet leaves loopback: the servers listen on 127.0.0.1, a fake resolver gives host names
their addresses, and ``public_stand_ins`` declares 127.0.0.1 "public" where a test needs the
production rules (https, port allow-list, no loopback) to reach a local server.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
import types
from collections.abc import Iterator, Sequence
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

import broker.outbound
from broker.outbound import (
    DOCUMENT,
    JWKS,
    MAX_TTL,
    PUBLIC_MESSAGE,
    USER_AGENT,
    JwksCache,
    OutboundPolicy,
    OutboundRefused,
    address_problem,
    fetch_bytes,
    fetch_json,
)
from broker.settings import Settings, SettingsError
from tests.outbound_servers import Authority, Server, answer, make_authority, redirect, serve

JWKS_BODY = {"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "x": "x", "y": "y"}]}
LOCAL = "127.0.0.1"


class FakeResolver:
    """Names to addresses, a list per name (returned in turn, the last one repeating)."""

    def __init__(self, table: dict[str, list[list[str]] | list[str]]) -> None:
        self.table = {
            name: (answers if answers and isinstance(answers[0], list) else [answers])
            for name, answers in table.items()
        }
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        answers = self.table.get(host)
        if answers is None:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        index = min(self.calls.count(host) - 1, len(answers) - 1)
        return list(answers[index])


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return make_authority(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server(authority: Authority) -> Iterator[Server]:
    with serve(authority) as running:
        running.routes["/jwks.json"] = lambda h: answer(h, JWKS_BODY)
        running.routes["/doc.json"] = lambda h: answer(h, {"hello": "world"})
        yield running


@pytest.fixture
def resolver() -> FakeResolver:
    return FakeResolver(
        {
            "keys.app.example": [LOCAL],
            "docs.app.example": [LOCAL],
            "other.app.example": [LOCAL],
            "xn--bcher-kva.app.example": [LOCAL],
            "localhost": [LOCAL],
        }
    )


@pytest.fixture
def policy(server: Server, resolver: FakeResolver, authority: Authority) -> OutboundPolicy:
    """Production rules, with the local server's port allowed and 127.0.0.1 counted as public."""
    return OutboundPolicy(
        dev_mode=False,
        allowed_ports=frozenset({443, server.port}),
        resolver=resolver,
        deadline=2.0,
        ssl_context=authority.client_context(),
        public_stand_ins=frozenset({LOCAL}),
    )


def refusal(url: str, policy: OutboundPolicy, **options: Any) -> OutboundRefused:
    with pytest.raises(OutboundRefused) as caught:
        fetch_json(url, kind=options.pop("kind", DOCUMENT), policy=policy, **options)
    assert str(caught.value) == PUBLIC_MESSAGE  # S6: the caller learns nothing more
    return caught.value


def test_the_module_exports_what_it_documents() -> None:
    public = {
        name
        for name, value in vars(broker.outbound).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(broker.outbound.__all__) == public


# -- a fetch that succeeds, and what it looks like on the wire (S2, S5) ----------------------


def test_a_public_https_document_is_fetched_pinned_with_the_name_kept(
    server: Server, policy: OutboundPolicy, resolver: FakeResolver
) -> None:
    url = f"https://keys.app.example:{server.port}/jwks.json"
    assert fetch_json(url, kind=JWKS, policy=policy) == JWKS_BODY
    # The name does not exist anywhere but in the fake resolver: the socket went to the address
    # the guard checked, while TLS (SNI, certificate) and Host carried the name.
    assert resolver.calls == ["keys.app.example"]
    assert server.sni == ["keys.app.example"]
    ((_, headers),) = server.requests
    assert headers["host"] == f"keys.app.example:{server.port}"
    assert headers["user-agent"] == USER_AGENT
    assert headers["accept-encoding"] == "identity"
    assert not {"authorization", "cookie", "proxy-authorization"} & set(headers)


def test_idna_host_names_are_resolved_in_ascii(server: Server, policy: OutboundPolicy, resolver: FakeResolver) -> None:
    assert fetch_json(f"https://bücher.app.example:{server.port}/doc.json", kind=DOCUMENT, policy=policy)
    assert resolver.calls == ["xn--bcher-kva.app.example"]
    assert server.sni == ["xn--bcher-kva.app.example"]


def test_proxy_variables_are_ignored(
    server: Server, policy: OutboundPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve() as proxy:
        for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("NO_PROXY", "")
        assert fetch_json(f"https://docs.app.example:{server.port}/doc.json", kind=DOCUMENT, policy=policy)
        assert proxy.requests == []
    assert server.paths() == ["/doc.json"]


def test_cookies_are_never_sent_back(server: Server, policy: OutboundPolicy) -> None:
    server.routes["/set"] = lambda h: answer(
        h, status=302, headers={"Location": "/doc.json", "Set-Cookie": "session=abc; Path=/"}
    )
    assert fetch_json(f"https://docs.app.example:{server.port}/set", kind=DOCUMENT, policy=policy)
    assert [("cookie" in headers) for _, headers in server.requests] == [False, False]


# -- S1: which URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://user:secret@keys.app.example/jwks.json", "user information"),
        ("https://user@keys.app.example/jwks.json", "user information"),
        ("https://93.184.216.34/jwks.json", "IP-literal"),
        ("https://[2606:4700::1111]/jwks.json", "IP-literal"),
        ("https://127.0.0.1/jwks.json", "IP-literal"),
        ("https://2130706433/jwks.json", "numeric"),
        ("https://0x7f.1/jwks.json", "numeric"),
        ("https://keys.app.example:8443/jwks.json", "port 8443"),
        ("http://keys.app.example/jwks.json", "http is allowed only"),
        ("http://localhost/jwks.json", "http is allowed only"),
        ("ftp://keys.app.example/jwks.json", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("https://keys.app.example/jwks.json\r\nX: y", "control"),
        ("https:///jwks.json", "no host"),
    ],
)
def test_urls_outside_s1_are_refused_before_any_lookup(url: str, reason: str, resolver: FakeResolver) -> None:
    policy = OutboundPolicy(resolver=resolver)
    assert reason in refusal(url, policy).reason
    assert resolver.calls == []


def test_an_allowed_port_setting_opens_that_port_only(tmp_path: Path) -> None:
    base = {"BROKER_SECRET_KEY": "x" * 32, "BROKER_ISSUER": "https://broker.example", "BROKER_KEY_DIR": str(tmp_path)}
    settings = Settings.from_env({**base, "BROKER_OUTBOUND_ALLOWED_PORTS": "443, 8443"})
    assert settings.outbound_allowed_ports == frozenset({443, 8443})
    assert Settings.from_env(base).outbound_allowed_ports == frozenset({443})
    for wrong in ("443,http", "0", "70000"):
        with pytest.raises(SettingsError):
            Settings.from_env({**base, "BROKER_OUTBOUND_ALLOWED_PORTS": wrong})
    policy = OutboundPolicy.from_settings(settings)
    assert policy.allowed_ports == frozenset({443, 8443}) and not policy.dev_mode
    resolver = FakeResolver({})
    opened = replace(policy, resolver=resolver)
    assert "resolving" in refusal("https://keys.app.example:8443/jwks.json", opened).reason
    assert "port 8080" in refusal("https://keys.app.example:8080/jwks.json", opened).reason
    assert resolver.calls == ["keys.app.example"]


# -- S0/S2: which addresses ---------------------------------------------------------------------

REFUSED_ADDRESSES = [
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "127.0.0.1",
    "127.0.0.2",
    "0.0.0.0",  # noqa: S104 (an address to refuse, not to bind)
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # CGNAT
    "192.0.0.170",
    "192.88.99.1",
    "198.18.0.1",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "ff02::1",
    "2001:db8::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible (is_global is True)
    "2002:7f00:1::",  # 6to4 of 127.0.0.1 (is_global is True)
    "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1 (is_global is True)
    "64:ff9b:1::a00:1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "fe80::1%eth0",  # scoped
]


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_a_name_resolving_to_a_special_address_is_refused_without_connecting(
    address: str, server: Server, policy: OutboundPolicy
) -> None:
    policy = replace(policy, resolver=FakeResolver({"keys.app.example": [address]}), public_stand_ins=frozenset())
    reason = refusal(f"https://keys.app.example:{server.port}/jwks.json", policy, kind=JWKS).reason
    assert "refused address" in reason
    assert server.requests == [] and server.sni == []


def test_one_bad_address_among_good_ones_refuses_the_name(server: Server, policy: OutboundPolicy) -> None:
    policy = replace(policy, resolver=FakeResolver({"keys.app.example": [LOCAL, "10.1.2.3"]}))
    assert "10.1.2.3" in refusal(f"https://keys.app.example:{server.port}/jwks.json", policy).reason
    assert server.requests == []


def test_address_rules_name_the_embedded_ipv4_and_accept_global_addresses() -> None:
    assert "embeds 127.0.0.1" in (address_problem("::ffff:127.0.0.1", loopback_allowed=False) or "")
    assert "embeds 127.0.0.1" in (address_problem("64:ff9b::7f00:1", loopback_allowed=False) or "")
    for address in ("93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "2a00:1450:4007:80e::200e"):
        assert address_problem(address, loopback_allowed=False) is None
    # development mode opens loopback, and nothing else
    assert address_problem("127.0.0.1", loopback_allowed=True) is None
    assert address_problem("::1", loopback_allowed=True) is None
    assert address_problem("::ffff:127.0.0.1", loopback_allowed=True) is not None
    assert address_problem("10.0.0.1", loopback_allowed=True) is not None
    assert address_problem("169.254.169.254", loopback_allowed=True) is not None


def test_a_dns_failure_is_the_same_generic_refusal(server: Server, policy: OutboundPolicy) -> None:
    assert "Name or service not known" in refusal(f"https://nowhere.app.example:{server.port}/", policy).reason


def test_dns_rebinding_between_two_connections_is_refused(server: Server, policy: OutboundPolicy) -> None:
    """The name is public for the first connection, then rebinds to the metadata address.

    Every connection resolves and checks again, and nothing but the guard resolves the name.
    """
    resolver = FakeResolver({"keys.app.example": [[LOCAL], ["169.254.169.254"]]})
    policy = replace(policy, resolver=resolver)
    server.routes["/hop"] = redirect("/jwks.json")
    reason = refusal(f"https://keys.app.example:{server.port}/hop", policy, kind=JWKS).reason
    assert "169.254.169.254" in reason
    assert resolver.calls == ["keys.app.example", "keys.app.example"]
    assert server.paths() == ["/hop"]  # the second request never left


# -- S3: redirects ------------------------------------------------------------------------------


def test_two_redirects_are_followed_and_a_third_is_refused(server: Server, policy: OutboundPolicy) -> None:
    server.routes["/a"] = redirect("/b", 301)
    server.routes["/b"] = redirect(f"https://docs.app.example:{server.port}/doc.json", 308)
    server.routes["/c"] = redirect("/a", 307)
    base = f"https://docs.app.example:{server.port}"
    assert fetch_json(f"{base}/a", kind=DOCUMENT, policy=policy) == {"hello": "world"}
    assert "more than 2 redirects" in refusal(f"{base}/c", policy).reason


def test_a_redirect_to_a_private_address_is_refused(server: Server, policy: OutboundPolicy) -> None:
    resolver = FakeResolver({"docs.app.example": [LOCAL], "intranet.app.example": ["10.0.0.7"]})
    policy = replace(policy, resolver=resolver)
    server.routes["/go"] = redirect(f"https://intranet.app.example:{server.port}/admin")
    assert "10.0.0.7" in refusal(f"https://docs.app.example:{server.port}/go", policy).reason
    server.routes["/metadata"] = redirect("https://169.254.169.254/latest/meta-data/")
    assert "IP-literal" in refusal(f"https://docs.app.example:{server.port}/metadata", policy).reason
    assert server.paths() == ["/go", "/metadata"]


def test_a_redirect_from_https_to_http_is_refused_even_in_development(
    server: Server, policy: OutboundPolicy
) -> None:
    with serve() as plain:
        plain.routes["/doc.json"] = lambda h: answer(h, {"hello": "world"})
        policy = replace(policy, dev_mode=True)
        # http to loopback is fine in development mode when asked for directly …
        assert fetch_json(f"http://127.0.0.1:{plain.port}/doc.json", kind=DOCUMENT, policy=policy)
        # … but never as a downgrade from https
        server.routes["/down"] = redirect(f"http://127.0.0.1:{plain.port}/doc.json")
        assert "https to http" in refusal(f"https://localhost:{server.port}/down", policy).reason
        assert plain.paths() == ["/doc.json"]


def test_jwks_refuse_cross_origin_redirects(server: Server, policy: OutboundPolicy) -> None:
    server.routes["/moved"] = redirect(f"https://other.app.example:{server.port}/jwks.json")
    server.routes["/same"] = redirect("/jwks.json")
    url = f"https://keys.app.example:{server.port}/moved"
    assert "cross-origin" in refusal(url, policy, kind=JWKS, same_origin=True).reason
    assert fetch_json(f"https://keys.app.example:{server.port}/same", kind=JWKS, policy=policy, same_origin=True)
    assert fetch_json(url, kind=JWKS, policy=policy)  # documents may move across origins
    with pytest.raises(OutboundRefused):
        JwksCache(policy).get(url, "k1")  # the cache asks for same-origin


# -- S4: limits ---------------------------------------------------------------------------------


def test_a_gzip_bomb_is_stopped_at_the_cap_on_decoded_bytes(server: Server, policy: OutboundPolicy) -> None:
    bomb = gzip.compress(b'{"a": "' + b"0" * (20 * 1024 * 1024) + b'"}')
    assert len(bomb) < 64 * 1024  # small on the wire, 20 MiB once inflated
    server.routes["/bomb"] = lambda h: answer(h, bomb, headers={"Content-Encoding": "gzip"})
    server.routes["/small"] = lambda h: answer(h, gzip.compress(b'{"ok": true}'), headers={"Content-Encoding": "gzip"})
    base = f"https://docs.app.example:{server.port}"
    assert "over the 65536-byte cap" in refusal(f"{base}/bomb", policy, kind=JWKS).reason
    assert fetch_json(f"{base}/small", kind=DOCUMENT, policy=policy) == {"ok": True}


def test_an_oversized_body_is_refused_declared_or_not(server: Server, policy: OutboundPolicy) -> None:
    big = json.dumps({"keys": [], "pad": "x" * (64 * 1024)}).encode()

    def undeclared(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(big)
        handler.close_connection = True

    server.routes["/big"] = lambda h: answer(h, big)
    server.routes["/undeclared"] = undeclared
    base = f"https://keys.app.example:{server.port}"
    assert "Content-Length" in refusal(f"{base}/big", policy, kind=JWKS).reason
    assert "cap" in refusal(f"{base}/undeclared", policy, kind=JWKS).reason
    assert fetch_json(f"{base}/big", kind=DOCUMENT, policy=policy)  # documents may be 256 KiB


def test_a_slow_loris_body_is_cut_at_the_total_deadline(server: Server, policy: OutboundPolicy) -> None:
    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        try:
            for _ in range(1000):
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(0.05)  # each byte well inside any read timeout
        except OSError:
            pass

    server.routes["/slow"] = trickle
    policy = replace(policy, deadline=1.0)
    started = time.monotonic()
    reason = refusal(f"https://docs.app.example:{server.port}/slow", policy).reason
    assert time.monotonic() - started < 2.0
    assert "deadline" in reason or "Timeout" in reason


def test_silence_after_connecting_is_cut_at_the_deadline(server: Server, policy: OutboundPolicy) -> None:
    server.routes["/silent"] = lambda h: time.sleep(3)
    started = time.monotonic()
    refusal(f"https://docs.app.example:{server.port}/silent", replace(policy, deadline=1.0))
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("content_type", ["text/html", "application/octet-stream", "", "application/jsonx"])
def test_a_wrong_content_type_is_refused(server: Server, policy: OutboundPolicy, content_type: str) -> None:
    server.routes["/typed"] = lambda h: answer(h, JWKS_BODY, content_type=content_type)
    assert "Content-Type" in refusal(f"https://keys.app.example:{server.port}/typed", policy, kind=JWKS).reason


def test_jwks_may_be_served_as_jwk_set_json(server: Server, policy: OutboundPolicy) -> None:
    server.routes["/set"] = lambda h: answer(h, JWKS_BODY, content_type="application/jwk-set+json; charset=utf-8")
    assert fetch_json(f"https://keys.app.example:{server.port}/set", kind=JWKS, policy=policy) == JWKS_BODY


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"a": ' + b"[" * 100 + b"]" * 100 + b"}", "nested deeper"),
        (b'{"a": "' + b"[" * 100 + b'"}', None),  # brackets inside a string are not nesting
        (b'{"kid": "a", "kid": "b"}', "duplicate"),
        (b'{"a": NaN}', "not JSON"),
        (b"[1, 2]", "not an object"),
        (b"\xff\xfe{}", "JSON"),
        (b"{", "JSON"),
    ],
)
def test_json_is_strict_and_shallow(server: Server, policy: OutboundPolicy, body: bytes, reason: str | None) -> None:
    server.routes["/doc"] = lambda h: answer(h, body)
    url = f"https://docs.app.example:{server.port}/doc"
    if reason is None:
        assert fetch_json(url, kind=DOCUMENT, policy=policy)
    else:
        assert reason in refusal(url, policy).reason


def test_an_error_status_and_an_untrusted_certificate_are_the_same_refusal(
    server: Server, policy: OutboundPolicy
) -> None:
    assert "status 404" in refusal(f"https://docs.app.example:{server.port}/missing", policy).reason
    untrusted = replace(policy, ssl_context=OutboundPolicy().ssl_context)
    assert "CERTIFICATE_VERIFY_FAILED" in refusal(f"https://docs.app.example:{server.port}/doc.json", untrusted).reason


def test_fetch_bytes_returns_a_jwt_for_federation_kinds(server: Server, policy: OutboundPolicy) -> None:
    server.routes["/.well-known/openid-federation"] = lambda h: answer(
        h, b"eyJhbGciOiJFUzI1NiJ9.e30.sig", content_type="application/entity-statement+jwt"
    )
    url = f"https://docs.app.example:{server.port}/.well-known/openid-federation"
    assert fetch_bytes(url, kind=broker.outbound.ENTITY_STATEMENT, policy=policy).startswith(b"eyJ")


def test_a_form_is_posted_under_the_same_rules_and_a_redirect_to_it_is_refused(
    server: Server, policy: OutboundPolicy
) -> None:
    received: list[tuple[str, str, bytes]] = []

    def status(handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length", "0"))
        received.append((handler.command, handler.headers.get("Content-Type", ""), handler.rfile.read(length)))
        answer(handler, b"eyJ.e30.sig", content_type="application/entity-statement+jwt")

    server.routes["/status"] = status
    server.routes["/moved"] = redirect("/status", 307)
    base = f"https://docs.app.example:{server.port}"
    kind = broker.outbound.ENTITY_STATEMENT
    body = fetch_bytes(f"{base}/status", kind=kind, policy=policy, form={"trust_mark": "a.b.c"})
    assert body == b"eyJ.e30.sig"
    assert received == [("POST", "application/x-www-form-urlencoded", b"trust_mark=a.b.c")]
    with pytest.raises(OutboundRefused) as refused:
        fetch_bytes(f"{base}/moved", kind=kind, policy=policy, form={"trust_mark": "x"})
    assert "in answer to a form" in refused.value.reason
    assert len(received) == 1  # the redirect was not followed


# -- S6: one message outside, the reason in the log ---------------------------------------------


def test_the_reason_is_logged_on_broker_outbound_and_the_query_is_not(
    policy: OutboundPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    policy = replace(policy, resolver=FakeResolver({"keys.app.example": ["169.254.169.254"]}))
    with caplog.at_level(logging.WARNING, logger="broker.outbound"):
        refusal("https://keys.app.example/jwks.json?token=secret", policy)
    (record,) = [r for r in caplog.records if r.name == "broker.outbound"]
    assert "169.254.169.254" in record.getMessage()
    assert "secret" not in record.getMessage()


# -- S8: the JWKS cache -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_jwks_cache_bounds_its_ttl_and_refetches_once_per_interval(
    server: Server, policy: OutboundPolicy
) -> None:
    with pytest.raises(ValueError):
        JwksCache(policy, ttl=MAX_TTL + 1)
    clock = Clock()
    cache = JwksCache(policy, ttl=600, min_refetch=60, clock=clock)
    url = f"https://keys.app.example:{server.port}/jwks.json"
    assert cache.get(url, "k1") == JWKS_BODY
    assert cache.get(url, "k1") == JWKS_BODY
    assert len(server.requests) == 1  # cached
    clock.now += 10
    for kid in ("unknown-1", "unknown-2", "unknown-3"):
        cache.get(url, kid)  # too soon after the fetch: no refetch, the verifier will refuse
    assert len(server.requests) == 1
    clock.now += 60
    cache.get(url, "unknown-4")
    cache.get(url, "unknown-5")
    assert len(server.requests) == 2  # one refetch for the unknown kid, not one per request
    clock.now += 600
    cache.get(url, "k1")
    assert len(server.requests) == 3  # expired after the TTL


def test_the_jwks_cache_remembers_a_failure_for_the_refetch_interval(
    server: Server, policy: OutboundPolicy
) -> None:
    clock = Clock()
    cache = JwksCache(policy, ttl=600, min_refetch=60, clock=clock)
    url = f"https://keys.app.example:{server.port}/gone.json"
    for _ in range(5):
        with pytest.raises(OutboundRefused) as caught:
            cache.get(url, "k1")
        assert str(caught.value) == PUBLIC_MESSAGE
    assert len(server.requests) == 1
    server.routes["/gone.json"] = lambda h: answer(h, JWKS_BODY)
    clock.now += 61
    assert cache.get(url, "k1") == JWKS_BODY


def test_the_jwks_cache_refuses_a_document_that_is_not_a_key_set(server: Server, policy: OutboundPolicy) -> None:
    server.routes["/nokeys"] = lambda h: answer(h, {"keys": "none"})
    server.routes["/many"] = lambda h: answer(h, {"keys": [{"kid": str(i)} for i in range(51)]})
    cache = JwksCache(policy)
    for path in ("/nokeys", "/many"):
        with pytest.raises(OutboundRefused):
            cache.get(f"https://keys.app.example:{server.port}{path}", "k1")


def test_development_mode_opens_loopback_http_only(tmp_path: Path) -> None:
    with serve() as plain:
        plain.routes["/doc.json"] = lambda h: answer(h, {"hello": "world"})
        resolver = FakeResolver({"localhost": [LOCAL], "lan.app.example": ["192.168.1.10"]})
        dev = OutboundPolicy(dev_mode=True, resolver=resolver)
        assert fetch_json(f"http://127.0.0.1:{plain.port}/doc.json", kind=DOCUMENT, policy=dev)
        assert fetch_json(f"http://localhost:{plain.port}/doc.json", kind=DOCUMENT, policy=dev)
        assert "192.168.1.10" in refusal("https://lan.app.example/doc.json", dev).reason
        assert "IP-literal" in refusal("http://10.0.0.1/doc.json", dev).reason
        production = OutboundPolicy(resolver=resolver)
        assert "IP-literal" in refusal(f"http://127.0.0.1:{plain.port}/doc.json", production).reason
        assert len(plain.requests) == 2

"""Synchronising with a peer over loopback HTTP: genuine documents import, forged ones change nothing.

The peer is a real broker (its own database and keys) behind a loopback server; the local
broker runs on both backends. Every forged or stale document named in issue 8 is tried, each
refused with its reason, and the local catalog is compared row by row before and after.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import select

from broker.app import create_app
from broker.catalog.enforcement import CharterInForce, apply_charter, charter_source
from broker.catalog.models import App, CharterVerdict
from broker.db import make_engine, make_session_factory, transaction, utcnow
from broker.federation import peers as federation_peers
from broker.federation.models import FederationPeer, ImportedApp
from broker.federation.sync import SyncReport, guarded_fetch, synchronise
from broker.federation.verify import MAX_DEPTH
from broker.keys import KeyStore
from broker.outbound import OutboundPolicy
from broker.settings import Settings
from tests.federation.peers import Peer, at, changed_payload, claims_of, replace_body, rewrite, running_peer

POLICY = OutboundPolicy(dev_mode=True)  # loopback http on any port, as in development


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    with running_peer(tmp_path / "peer") as running:
        yield running


def _factory(settings: Settings) -> Any:
    return make_session_factory(make_engine(settings.database_url))


def trust(settings: Settings, peer_id: str, jwks: dict[str, Any], **options: Any) -> None:
    factory = _factory(settings)
    with transaction(factory) as session:
        federation_peers.add_peer(
            session,
            entity_id=peer_id,
            jwks=jwks,
            trust_anchor=options.get("trust_anchor"),
            trust_anchor_jwks=options.get("trust_anchor_jwks"),
            import_apps=options.get("import_apps", True),
            operator="test",
            dev_mode=True,
            fetch=guarded_fetch(POLICY),
            now=utcnow(),
        )
    factory.kw["bind"].dispose()


def sync(settings: Settings, peer_id: str) -> SyncReport:
    factory = _factory(settings)
    try:
        return synchronise(
            factory,
            peer_id=peer_id,
            charter_of=CharterInForce(None).current,
            fetch=guarded_fetch(POLICY),
            dev_mode=True,
            now=utcnow(),
        )
    finally:
        factory.kw["bind"].dispose()


def catalog_rows(settings: Settings) -> list[Any]:
    """Everything the catalog holds about apps, imported or not, and the verdicts' history."""
    factory = _factory(settings)
    with transaction(factory) as session:
        apps = [
            (
                a.client_id,
                a.status,
                a.manifest_sha256,
                a.name_key,
                json.dumps(a.client_metadata, sort_keys=True),
            )
            for a in session.scalars(select(App).order_by(App.client_id))
        ]
        imported = [
            (r.client_id, r.peer_id, r.origin_status, r.origin_manifest_sha256)
            for r in session.scalars(select(ImportedApp).order_by(ImportedApp.client_id))
        ]
        verdicts = session.scalars(select(CharterVerdict.id).order_by(CharterVerdict.id)).all()
        keys = [json.dumps(p.jwks, sort_keys=True) for p in session.scalars(select(FederationPeer))]
    factory.kw["bind"].dispose()
    return [apps, imported, verdicts, keys]


def local_app(settings: Settings, client_id: str) -> tuple[str, str | None] | None:
    factory = _factory(settings)
    with transaction(factory) as session:
        app = session.get(App, client_id)
        row = session.get(ImportedApp, client_id)
        found = None if app is None else (app.status, row.origin_status if row else None)
    factory.kw["bind"].dispose()
    return found


def peer_row(settings: Settings, peer_id: str) -> tuple[str, str | None]:
    factory = _factory(settings)
    with transaction(factory) as session:
        peer = session.get(FederationPeer, peer_id)
        assert peer is not None
        found = (peer.state, peer.last_error)
    factory.kw["bind"].dispose()
    return found


def resign(peer: Peer, token: str, **changes: Any) -> str:
    """A document re-signed with the peer's own key after a change: genuine signature, wrong content."""
    header = json.loads(__import__("base64").urlsafe_b64decode(token.split(".")[0] + "=="))
    claims = claims_of(token)
    claims.update(changes)
    return KeyStore(peer.settings.key_dir).load().sign(claims, typ=header["typ"])


# -- genuine documents ------------------------------------------------------------------------


def test_import_keep_in_step_and_suspend(settings: Settings, peer: Peer) -> None:
    client_id = peer.register()
    trust(settings, peer.issuer, peer.jwks())
    report = sync(settings, peer.issuer)
    assert report.ok and report.imported == [client_id] and report.refused == []
    assert local_app(settings, client_id) == ("approved", "approved")

    again = sync(settings, peer.issuer)
    assert again.ok and again.imported == [] and again.unchanged == 1
    origin = peer.issuer.removeprefix("http://")
    with TestClient(app=create_app(replace(settings, federation_sync_interval=0))) as local:
        catalog_page = local.get("/catalog").text
        assert f"Inscrite auprès de {origin}, un service partenaire." in catalog_page
        page = local.get(f"/catalog/{client_id}").text
        assert f"Inscrite auprès de {origin}, un service partenaire qui l" in page
        english = local.get(f"/catalog/{client_id}", headers={"Accept-Language": "en"}).text
        assert f"Registered at {origin}, a partner service that checked it first" in english
        # This broker does not vouch for what it imported: its origin does.
        assert local.get("/federation/list").json() == [peer.issuer]
        imported_here = f"{settings.issuer}/apps/{client_id}"
        assert local.get("/federation/fetch", params={"sub": imported_here}).status_code == 404

    peer.set_status(client_id, "suspended")  # e.g. a charter re-check at the origin
    report = sync(settings, peer.issuer)
    assert report.suspended == [client_id]
    assert local_app(settings, client_id) == ("suspended", "dropped")
    with TestClient(app=create_app(replace(settings, federation_sync_interval=0))) as local:
        assert origin not in local.get("/catalog").text  # gate mode: out of the catalog

    # A charter re-check here does not restore what the origin suspended …
    factory = _factory(settings)
    with transaction(factory) as session:
        charter, document = charter_source("1.0")
        apply_charter(session, charter=charter, document=document, applied_by="t", dev_mode=True, now=utcnow())
    factory.kw["bind"].dispose()
    assert local_app(settings, client_id) == ("suspended", "dropped")
    # … the origin's word does, at the next synchronisation.
    peer.set_status(client_id, "approved")
    report = sync(settings, peer.issuer)
    assert report.updated == [client_id]
    assert local_app(settings, client_id) == ("approved", "approved")

    factory = _factory(settings)
    with transaction(factory) as session:
        listed = federation_peers.list_peers(session)
    factory.kw["bind"].dispose()
    assert listed[0]["entity_id"] == peer.issuer and listed[0]["imported_apps"] == 1
    assert listed[0]["state"] == "active" and listed[0]["last_error"] is None


def test_an_app_whose_name_is_taken_here_is_refused_alone(settings: Settings, peer: Peer) -> None:
    from broker.catalog import service as catalog
    from broker.charter import load_charter
    from tests.factories import app_registration

    taken = peer.register("Suivi Glycémie")
    other = peer.register("Carnet Tension")
    factory = _factory(settings)
    with transaction(factory) as session:
        catalog.register_app(
            session,
            body=app_registration("Suivi Glycémie"),
            charter=load_charter(),
            secret_key=settings.secret_key,
            dev_mode=True,
            now=utcnow(),
        )
    factory.kw["bind"].dispose()
    trust(settings, peer.issuer, peer.jwks())
    report = sync(settings, peer.issuer)
    assert report.imported == [other]
    assert [(r.client_id, r.reason) for r in report.refused] == [(taken, "not_acceptable_here")]
    assert "already registered" in report.refused[0].detail


def test_removing_a_peer_suspends_its_apps(settings: Settings, peer: Peer) -> None:
    client_id = peer.register()
    trust(settings, peer.issuer, peer.jwks())
    sync(settings, peer.issuer)
    factory = _factory(settings)
    with transaction(factory) as session:
        suspended = federation_peers.remove_peer(session, entity_id=peer.issuer, now=utcnow())
    factory.kw["bind"].dispose()
    assert suspended == [client_id]
    assert local_app(settings, client_id) == ("suspended", None)
    # trusted again: the app is taken back, not refused as someone else's
    trust(settings, peer.issuer, peer.jwks())
    report = sync(settings, peer.issuer)
    assert report.imported == [client_id] and report.refused == []
    assert local_app(settings, client_id) == ("approved", "approved")


# -- forged and stale documents -----------------------------------------------------------------


CONFIG = "/.well-known/openid-federation"
FETCH = "/federation/fetch"


def _flip_signature(token: str) -> str:
    head, payload, signature = token.split(".")
    flipped = ("A" if signature[10] != "A" else "B").join((signature[:10], signature[11:]))
    return f"{head}.{payload}.{flipped}"


def _nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"n": value}
    return value


PEER_FORGERIES = {
    "bad signature": (CONFIG, lambda p: rewrite(_flip_signature), "bad_signature"),
    "expired statement": (
        CONFIG,
        lambda p: rewrite(lambda t: resign(p, t, iat=at(utcnow()) - 7200, exp=at(utcnow()) - 3600)),
        "expired",
    ),
    "wrong sub": (
        CONFIG,
        lambda p: rewrite(lambda t: resign(p, t, sub="http://127.0.0.1:9/other")),
        "wrong_subject",
    ),
    "wrong iss": (
        CONFIG,
        lambda p: rewrite(lambda t: resign(p, t, iss="http://127.0.0.1:9/other")),
        "wrong_subject",
    ),
    "payload changed under the signature": (
        CONFIG,
        lambda p: rewrite(lambda t: changed_payload(t, metadata={})),
        "bad_signature",
    ),
    "oversized": (
        CONFIG,
        lambda p: rewrite(lambda t: resign(p, t, padding="x" * 70_000)),
        "oversized",
    ),
    "deeply nested": (
        CONFIG,
        lambda p: rewrite(lambda t: resign(p, t, nested=_nested(MAX_DEPTH + 4))),
        "too_deep",
    ),
    "not a JWS at all": (CONFIG, lambda p: replace_body(b"<html>hello</html>"), "malformed"),
    "list of another broker's apps": (
        "/federation/list",
        lambda p: replace_body(json.dumps(["http://127.0.0.1:9/apps/app_x"]).encode()),
        "wrong_subject",
    ),
    "keys changed without rollover": (
        CONFIG,
        lambda p: rewrite(lambda t: _self_signed_by_a_new_key(p, t)),
        "key_rollover_unsigned",
    ),
}


def _self_signed_by_a_new_key(peer: Peer, token: str) -> str:
    stranger = KeyStore(peer.settings.key_dir.parent / "stranger")
    stranger.create()
    stranger.load()
    claims = claims_of(token)
    claims["jwks"] = stranger.public_jwks()
    return stranger.sign(claims, typ="entity-statement+jwt")


@pytest.mark.parametrize("case", sorted(PEER_FORGERIES))
def test_peer_documents_forged_or_stale_change_nothing(settings: Settings, peer: Peer, case: str) -> None:
    first = peer.register("Suivi Glycémie")
    trust(settings, peer.issuer, peer.jwks())
    assert sync(settings, peer.issuer).imported == [first]
    peer.register("Carnet Tension")  # new at the peer: must not arrive
    peer.set_status(first, "suspended")  # nor may this suspension, from forged documents
    before = catalog_rows(settings)

    path, forge, reason = PEER_FORGERIES[case]
    peer.tamper[path] = forge(peer)
    report = sync(settings, peer.issuer)
    assert not report.ok
    assert report.reason == reason, report.detail
    assert report.detail  # a clear reason for the operator
    assert catalog_rows(settings) == before
    state, error = peer_row(settings, peer.issuer)
    assert state == "refused" and error is not None and error.startswith(reason)


def test_a_peer_that_is_down_changes_nothing(settings: Settings, peer: Peer) -> None:
    first = peer.register()
    trust(settings, peer.issuer, peer.jwks())
    sync(settings, peer.issuer)
    before = catalog_rows(settings)
    peer.tamper[CONFIG] = lambda status, ctype, body: (503, "text/plain", b"down for maintenance")
    report = sync(settings, peer.issuer)
    assert not report.ok and report.reason == "peer_unreachable" and "503" in (report.detail or "")
    assert catalog_rows(settings) == before
    assert local_app(settings, first) == ("approved", "approved")

    trust(settings, "http://127.0.0.1:9", peer.jwks())  # nothing listens on port 9
    report = sync(settings, "http://127.0.0.1:9")
    assert not report.ok and report.reason == "peer_unreachable"
    assert catalog_rows(settings)[0] == before[0]


def _for_app(peer: Peer, client_id: str, change: Any) -> Any:
    """Forge the statement about one app only; the others pass untouched."""

    def forge(token: str) -> str:
        return change(token) if claims_of(token)["sub"] == peer.entity(client_id) else token

    return rewrite(forge)


def _older_mark(peer: Peer, token: str) -> str:
    """The statement re-signed a minute later: its trust mark is now older than it."""
    claims = claims_of(token)
    return resign(peer, token, iat=claims["iat"] + 60)


def _revoked_status(peer: Peer) -> Any:
    def forge(status: int, content_type: str, body: bytes) -> tuple[int, str, bytes]:
        genuine = body.decode("ascii")
        return status, content_type, resign(peer, genuine, status="revoked").encode("ascii")

    return forge


def test_app_documents_forged_or_stale_change_nothing(settings: Settings, peer: Peer) -> None:
    first = peer.register("Suivi Glycémie")
    trust(settings, peer.issuer, peer.jwks())
    assert sync(settings, peer.issuer).imported == [first]
    second = peer.register("Carnet Tension")
    first_statement = peer.get(f"{FETCH}?sub={peer.entity(first)}")
    cases = {
        "bad_signature": _flip_signature,
        "expired": lambda t: resign(peer, t, iat=at(utcnow() - timedelta(hours=2)), exp=at(utcnow()) - 3600),
        "wrong_issuer": lambda t: resign(peer, t, iss="http://127.0.0.1:9"),
        "wrong_subject": lambda t: resign(peer, t, sub=peer.entity(first)),
        "trust_mark_other_subject": lambda t: resign(
            peer, t, trust_marks=claims_of(first_statement)["trust_marks"]
        ),
        "too_deep": lambda t: resign(peer, t, nested=_nested(MAX_DEPTH + 4)),
        "oversized": lambda t: resign(peer, t, padding="x" * 70_000),
    }
    for reason, change in cases.items():
        before = catalog_rows(settings)
        peer.tamper[FETCH] = _for_app(peer, second, change)
        report = sync(settings, peer.issuer)
        assert report.ok, reason
        assert [(r.client_id, r.reason) for r in report.refused] == [(second, reason)], report.to_json()
        assert local_app(settings, second) is None
        assert catalog_rows(settings)[:3] == before[:3], reason

    # A trust mark older than its statement is checked at the peer: revoked, it is refused.
    peer.tamper[FETCH] = _for_app(peer, second, lambda t: _older_mark(peer, t))
    peer.tamper["/federation/trust_mark_status"] = _revoked_status(peer)
    report = sync(settings, peer.issuer)
    assert [(r.client_id, r.reason) for r in report.refused] == [(second, "trust_mark_revoked")]
    assert local_app(settings, second) is None
    # … and an app imported before whose mark the peer revoked is suspended here.
    peer.tamper[FETCH] = rewrite(lambda t: _older_mark(peer, t))
    report = sync(settings, peer.issuer)
    assert report.suspended == [first]
    assert local_app(settings, first) == ("suspended", "revoked")
    # The genuine documents again: both are in the catalog.
    peer.tamper.clear()
    report = sync(settings, peer.issuer)
    assert report.imported == [second] and report.updated == [first]


# -- trust anchors and key rollover ---------------------------------------------------------------


def test_chain_to_the_anchor_and_rollover_vouched_by_it(settings: Settings, tmp_path: Path) -> None:
    with running_peer(tmp_path / "anchor") as anchor:
        with running_peer(tmp_path / "peer", federation_authority_hints=(anchor.issuer,)) as peer:
            # The anchor vouches for the peer's keys (its subordinate statement).
            anchor_settings = Settings(
                database_url=anchor.settings.database_url,
                secret_key=anchor.settings.secret_key,
                dev_mode=True,
            )
            trust(anchor_settings, peer.issuer, peer.jwks(), import_apps=False)
            first = peer.register()
            trust(
                settings,
                peer.issuer,
                peer.jwks(),
                trust_anchor=anchor.issuer,
                trust_anchor_jwks=anchor.jwks(),
            )
            assert sync(settings, peer.issuer).imported == [first]

            # the operator's view of an app's chain: leaf, its broker, the anchor's statement, the anchor
            factory = _factory(settings)
            with transaction(factory) as session:
                chain = federation_peers.trust_chain(
                    session,
                    entity_id=peer.entity(first),
                    issuer=settings.issuer,
                    fetch=guarded_fetch(POLICY),
                    now=utcnow(),
                )
            factory.kw["bind"].dispose()
            assert chain.valid, chain.to_json()
            assert [(link.iss, link.sub) for link in chain.links] == [
                (peer.issuer, peer.entity(first)),
                (peer.issuer, peer.issuer),
                (anchor.issuer, peer.issuer),
                (anchor.issuer, anchor.issuer),
            ]
            assert all(link.verified and link.exp for link in chain.links)

            # A chain that does not reach the anchor: its statement about the peer, by someone else.
            before = catalog_rows(settings)
            anchor.tamper[FETCH] = rewrite(lambda t: _self_signed_by_a_new_key(anchor, t))
            report = sync(settings, peer.issuer)
            assert not report.ok and report.reason == "bad_signature", report.detail
            assert catalog_rows(settings) == before
            anchor.tamper.clear()

            # The peer rotates its keys (the old one leaves the JWKS): not signed by the old key,
            # but the anchor vouches for the new one once its operator pins it there.
            keys = KeyStore(peer.settings.key_dir).load()
            keys.rotate(timedelta(0))
            report = sync(settings, peer.issuer)
            assert not report.ok and report.reason == "bad_signature", report.detail
            assert catalog_rows(settings) == before
            factory = _factory(anchor_settings)
            with transaction(factory) as session:
                row = session.get(FederationPeer, peer.issuer)
                assert row is not None
                row.jwks = peer.jwks()
            factory.kw["bind"].dispose()
            report = sync(settings, peer.issuer)
            assert report.ok and report.keys_rolled_over, report.to_json()


# -- the operator's commands ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entity_id", "options", "message"),
    [
        ("http://peer.example", {}, "https URL"),
        ("https://peer.example/", {}, "final slash"),
        ("https://peer.example?x=1", {}, "without query"),
        ("https://peer.example", {"jwks": None}, "pin the peer's keys"),
        ("https://peer.example", {"jwks": {"keys": []}}, "at least one key"),
        ("https://peer.example", {"trust_anchor": "https://anchor.example"}, "needs its keys pinned"),
    ],
)
def test_adding_a_peer_refuses_what_it_cannot_pin(
    settings: Settings, entity_id: str, options: dict[str, Any], message: str
) -> None:
    from broker.errors import InvalidRequest

    factory = _factory(settings)
    with pytest.raises(InvalidRequest, match=message), transaction(factory) as session:
        federation_peers.add_peer(
            session,
            entity_id=entity_id,
            jwks=options.get("jwks", {"keys": [{"kty": "EC", "kid": "k"}]}),
            trust_anchor=options.get("trust_anchor"),
            trust_anchor_jwks=None,
            import_apps=True,
            operator="test",
            dev_mode=False,
            fetch=guarded_fetch(POLICY),
            now=utcnow(),
        )
    with transaction(factory) as session:
        assert federation_peers.list_peers(session) == []
    factory.kw["bind"].dispose()


def test_the_same_peer_twice_is_a_conflict(settings: Settings, peer: Peer) -> None:
    from broker.errors import Conflict

    trust(settings, peer.issuer, peer.jwks())
    with pytest.raises(Conflict):
        trust(settings, peer.issuer, peer.jwks())


def test_worker_processes_share_the_periodic_synchronisation(settings: Settings, peer: Peer) -> None:
    from broker.federation.sync import synchronise_all

    client_id = peer.register()
    trust(settings, peer.issuer, peer.jwks())
    factory = _factory(settings)

    def round_of(interval: float) -> list[SyncReport]:
        return synchronise_all(
            factory,
            charter_of=CharterInForce(None).current,
            fetch=guarded_fetch(POLICY),
            dev_mode=True,
            clock=utcnow,
            interval=interval,
        )

    first = round_of(300)
    assert [r.imported for r in first] == [[client_id]]
    assert round_of(300) == []  # another process started one less than half a period ago
    assert [r.unchanged for r in round_of(0)] == [1]  # on demand: always
    factory.kw["bind"].dispose()

"""The SDK's resolution of trusted brokers through their entity configurations and an anchor.

Two real brokers (their own databases and keys) on loopback ports: one acts as the trust
anchor, the other is resolved directly and through the anchor's statement about it. Forged
and unvouched documents are refused with ``reason="federation"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from broker.db import make_engine, make_session_factory, transaction, utcnow
from broker.federation.models import FederationPeer
from tests.federation.peers import Peer, rewrite, running_peer

from broker_sdk import BrokerUnavailable, HolderVerifier, IssuerResolver, federated_verifier

CONFIG = "/.well-known/openid-federation"


@pytest.fixture
def anchor(tmp_path: Path) -> Iterator[Peer]:
    with running_peer(tmp_path / "anchor") as running:
        yield running


@pytest.fixture
def broker(tmp_path: Path, anchor: Peer) -> Iterator[Peer]:
    with running_peer(tmp_path / "broker", federation_authority_hints=(anchor.issuer,)) as running:
        yield running


def vouch(anchor: Peer, broker: Peer) -> None:
    """The anchor's operator pins the broker's keys: the anchor now issues a statement about it."""
    engine = make_engine(anchor.settings.database_url)
    with transaction(make_session_factory(engine)) as session:
        session.add(
            FederationPeer(
                entity_id=broker.issuer, jwks=broker.jwks(), import_apps=False, added_at=utcnow(), added_by="t"
            )
        )
    engine.dispose()


def configuration_fetches(peer: Peer) -> int:
    return sum(1 for path in peer.server.paths() if path == CONFIG)


def test_resolved_from_its_own_configuration_and_cached(broker: Peer) -> None:
    resolver = IssuerResolver()
    resolved = resolver.resolve(broker.issuer)
    assert resolved.jwks_uri == f"{broker.issuer}/jwks.json"
    assert [k["kid"] for k in resolved.jwks["keys"]] == [k["kid"] for k in broker.jwks()["keys"]]
    assert resolved.anchor is None and resolved.expires_at > utcnow().timestamp()
    fetched = configuration_fetches(broker)
    assert resolver.resolve(broker.issuer) is resolved  # cached: no new fetch
    assert configuration_fetches(broker) == fetched
    resolver.forget(broker.issuer)
    assert resolver.resolve(broker.issuer) is not resolved
    assert configuration_fetches(broker) == fetched + 1


def test_resolved_through_the_anchor(anchor: Peer, broker: Peer) -> None:
    resolver = IssuerResolver(trust_anchor=anchor.issuer, anchor_jwks=anchor.jwks())
    with pytest.raises(BrokerUnavailable) as caught:
        resolver.resolve(broker.issuer)  # the anchor does not vouch for it yet: 404
    assert caught.value.reason == "federation"
    vouch(anchor, broker)
    resolved = resolver.resolve(broker.issuer)
    assert resolved.anchor == anchor.issuer
    verifier = federated_verifier([broker.issuer], "https://labo.example/fhir", resolver=resolver)
    assert isinstance(verifier, HolderVerifier) and verifier.issuers == (broker.issuer,)


def test_an_anchor_pinned_with_other_keys_refuses(anchor: Peer, broker: Peer) -> None:
    vouch(anchor, broker)
    resolver = IssuerResolver(trust_anchor=anchor.issuer, anchor_jwks=broker.jwks())
    with pytest.raises(BrokerUnavailable, match="no key"):
        resolver.resolve(broker.issuer)


def test_forged_configuration_is_refused(broker: Peer) -> None:
    def flip(token: str) -> str:
        head, payload, signature = token.split(".")
        return f"{head}.{payload}.{signature[:-6]}{'AAAAAA' if not signature.endswith('AAAAAA') else 'BBBBBB'}"

    broker.tamper[CONFIG] = rewrite(flip)
    with pytest.raises(BrokerUnavailable) as caught:
        IssuerResolver().resolve(broker.issuer)
    assert caught.value.reason == "federation"

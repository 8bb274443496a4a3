"""The operator's side of federation: trusted peers, and the trust chain of any entity.

``broker federation peer add|remove|list``, ``broker federation chain`` and ``broker
federation sync`` call these; the synchronisation itself is :mod:`broker.federation.sync`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

from sqlalchemy.orm import Session

from broker.catalog.models import App
from broker.errors import Conflict, InvalidRequest, NotFound
from broker.federation import repository
from broker.federation.models import FederationPeer
from broker.federation.sync import (
    Fetch,
    anchor_chain,
    configuration_url,
    endpoint,
    fetch_configuration,
    statement_text,
    suspend_imported,
)
from broker.federation.verify import (
    EntityStatement,
    FederationRefused,
    Refusal,
    TrustAnchor,
    _check_jwks,
    _unverified_claims,
    resolve_trust_chain,
    verify_entity_configuration,
    verify_subordinate_statement,
)
from broker.outbound import ENTITY_STATEMENT, OutboundRefused


def check_entity_id(value: str, *, dev_mode: bool) -> str:
    """An entity id is an issuer URL: https (loopback http in development), no query, no slash at the end."""
    parts = urlsplit(value)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (dev_mode and parts.scheme == "http" and loopback):
        raise InvalidRequest(f"entity id {value!r}: must be an https URL (loopback http in development mode)")
    if not parts.hostname or parts.query or parts.fragment or parts.username or value.endswith("/"):
        raise InvalidRequest(f"entity id {value!r}: a URL without query, fragment, user or final slash")
    return value


def add_peer(
    session: Session,
    *,
    entity_id: str,
    jwks: Mapping[str, Any] | None,
    trust_anchor: str | None,
    trust_anchor_jwks: Mapping[str, Any] | None,
    import_apps: bool,
    operator: str,
    dev_mode: bool,
    fetch: Fetch,
    now: datetime,
) -> FederationPeer:
    """Trust a peer with its keys pinned: given, or vouched for by a pinned trust anchor."""
    check_entity_id(entity_id, dev_mode=dev_mode)
    if repository.get_peer(session, entity_id) is not None:
        raise Conflict(f"{entity_id} is a trusted peer already")
    if trust_anchor is not None:
        check_entity_id(trust_anchor, dev_mode=dev_mode)
        if trust_anchor_jwks is None:
            raise InvalidRequest("a trust anchor needs its keys pinned (--anchor-jwks)")
    try:
        if jwks is not None:
            jwks = _check_jwks(jwks, "the peer's keys")
        if trust_anchor_jwks is not None:
            trust_anchor_jwks = _check_jwks(trust_anchor_jwks, "the anchor's keys")
        if jwks is None:
            if trust_anchor is None or trust_anchor_jwks is None:
                raise InvalidRequest("pin the peer's keys (--jwks) or a trust anchor that vouches for them")
            configuration = fetch_configuration(entity_id, fetch, now)
            anchor_chain(configuration, TrustAnchor(trust_anchor, trust_anchor_jwks), fetch, now)
            jwks = configuration.jwks
    except FederationRefused as exc:
        raise InvalidRequest(f"{entity_id} cannot be trusted: {exc}") from exc
    except OutboundRefused as exc:
        raise InvalidRequest(f"{entity_id} could not be reached: {exc.reason}") from exc
    peer = FederationPeer(
        entity_id=entity_id,
        jwks=dict(jwks),
        trust_anchor=trust_anchor,
        trust_anchor_jwks=dict(trust_anchor_jwks) if trust_anchor_jwks is not None else None,
        import_apps=import_apps,
        state="active",
        added_at=now,
        added_by=operator,
    )
    session.add(peer)
    session.flush()
    return peer


def remove_peer(session: Session, *, entity_id: str, now: datetime) -> list[str]:
    """Stop trusting a peer: its apps leave the catalog (suspended, kept for the record)."""
    peer = repository.get_peer(session, entity_id)
    if peer is None:
        raise NotFound(f"{entity_id} is not a trusted peer")
    suspended = []
    for client_id, row in repository.imported_from(session, entity_id).items():
        app = session.get(App, client_id)
        if app is not None and suspend_imported(
            session, app, row, "removed", now, "its broker is no longer trusted"
        ):
            suspended.append(client_id)
        session.delete(row)
    session.delete(peer)
    return suspended


def peer_json(session: Session, peer: FederationPeer) -> dict[str, Any]:
    apps = repository.imported_from(session, peer.entity_id)
    return {
        "entity_id": peer.entity_id,
        "state": peer.state,
        "import_apps": peer.import_apps,
        "trust_anchor": peer.trust_anchor,
        "kids": [k.get("kid") for k in peer.jwks.get("keys", [])],
        "charter_version": peer.charter_version,
        "added_at": peer.added_at,
        "added_by": peer.added_by,
        "last_sync_at": peer.last_sync_at,
        "last_success_at": peer.last_success_at,
        "last_error": peer.last_error,
        "imported_apps": len(apps),
        "imported_apps_approved_at_origin": sum(1 for r in apps.values() if r.origin_status == "approved"),
    }


def list_peers(session: Session) -> list[dict[str, Any]]:
    return [peer_json(session, p) for p in repository.peers(session)]


# -- trust chains, for the operator ----------------------------------------------------------


@dataclass(frozen=True)
class ChainLink:
    """One statement of a chain as shown to the operator."""

    iss: str | None
    sub: str | None
    exp: int | None
    verified: bool
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "iss": self.iss,
            "sub": self.sub,
            "exp": self.exp,
            "verified": self.verified,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ChainReport:
    entity_id: str
    anchor: str | None
    links: tuple[ChainLink, ...]
    valid: bool
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "entity_id": self.entity_id,
            "trust_anchor": self.anchor,
            "valid": self.valid,
            "reason": self.reason,
            "statements": [link.to_json() for link in self.links],
        }


def _superior_of(entity_id: str, brokers: Sequence[str]) -> str | None:
    for broker in brokers:
        if entity_id.startswith(broker + "/apps/") or entity_id.startswith(broker + "/holders/"):
            return broker
    return None


def _link(token: str, verify: Any) -> ChainLink:
    try:
        claims = _unverified_claims(token, "statement")
    except FederationRefused as exc:
        return ChainLink(None, None, None, False, str(exc))
    exp = claims.get("exp")
    link = ChainLink(claims.get("iss"), claims.get("sub"), exp if isinstance(exp, int) else None, True)
    try:
        verify()
    except FederationRefused as exc:
        return ChainLink(link.iss, link.sub, link.exp, False, str(exc))
    return link


def trust_chain(
    session: Session,
    *,
    entity_id: str,
    issuer: str,
    fetch: Fetch,
    now: datetime,
) -> ChainReport:
    """The chain of an app, a holder or a broker up to the trust anchor known for its broker.

    Each statement is shown with its ``iss``, ``sub``, ``exp`` and its own verification; the
    chain as a whole is then resolved against the pinned anchor (OpenID Federation §10.2).
    """
    peers = {p.entity_id: p for p in repository.peers(session)}
    broker = _superior_of(entity_id, [*peers, issuer]) or entity_id
    peer = peers.get(broker)
    anchor: TrustAnchor | None = None
    if peer is not None and peer.trust_anchor and peer.trust_anchor_jwks:
        anchor = TrustAnchor(peer.trust_anchor, peer.trust_anchor_jwks)
    elif broker == issuer:
        # This broker's own chain: an anchor pinned for any peer, if one is among its superiors.
        for other in peers.values():
            if other.trust_anchor and other.trust_anchor_jwks:
                anchor = TrustAnchor(other.trust_anchor, other.trust_anchor_jwks)
                break
    tokens: list[str] = []
    links: list[ChainLink] = []
    try:
        config_token = statement_text(
            fetch(configuration_url(broker), ENTITY_STATEMENT, None), "entity configuration"
        )
        configuration: EntityStatement | None = None
        try:
            configuration = verify_entity_configuration(config_token, entity_id=broker, now=now)
        except FederationRefused:
            configuration = None
        if broker != entity_id:
            fetch_endpoint = f"{broker}/federation/fetch"
            if configuration is not None:
                fetch_endpoint = endpoint(configuration, "federation_fetch_endpoint")
            url = f"{fetch_endpoint}?sub={quote(entity_id, safe='')}"
            leaf = statement_text(fetch(url, ENTITY_STATEMENT, None), "statement")
            tokens.append(leaf)
            superior = configuration
            links.append(
                _link(
                    leaf,
                    lambda: verify_subordinate_statement(
                        leaf, superior=_required(superior), subject=entity_id, now=now
                    ),
                )
            )
        tokens.append(config_token)
        pinned = peer.jwks if peer is not None else None
        links.append(
            _link(
                config_token,
                lambda: verify_entity_configuration(
                    config_token, entity_id=broker, now=now, trusted_jwks=pinned
                ),
            )
        )
        if anchor is not None and broker != anchor.entity_id:
            anchor_token = statement_text(
                fetch(configuration_url(anchor.entity_id), ENTITY_STATEMENT, None), "anchor configuration"
            )
            about = statement_text(
                fetch(
                    f"{anchor.entity_id}/federation/fetch?sub={quote(broker, safe='')}",
                    ENTITY_STATEMENT,
                    None,
                ),
                "the anchor's statement",
            )
            anchor_config = verify_entity_configuration
            links.append(
                _link(
                    about,
                    lambda: verify_subordinate_statement(
                        about,
                        superior=anchor_config(anchor_token, entity_id=anchor.entity_id, now=now),
                        subject=broker,
                        now=now,
                    ),
                )
            )
            links.append(
                _link(
                    anchor_token,
                    lambda: anchor_config(
                        anchor_token, entity_id=anchor.entity_id, now=now, trusted_jwks=anchor.jwks
                    ),
                )
            )
            tokens += [about, anchor_token]
    except OutboundRefused as exc:
        return ChainReport(
            entity_id,
            anchor.entity_id if anchor else None,
            tuple(links),
            False,
            f"peer_unreachable: {exc.reason}",
        )
    except FederationRefused as exc:
        return ChainReport(entity_id, anchor.entity_id if anchor else None, tuple(links), False, str(exc))
    if anchor is None:
        ok = all(link.verified for link in links)
        return ChainReport(entity_id, None, tuple(links), ok, None if ok else "a statement does not verify")
    try:
        resolve_trust_chain(tokens, anchor=anchor, now=now)
    except FederationRefused as exc:
        return ChainReport(entity_id, anchor.entity_id, tuple(links), False, str(exc))
    return ChainReport(entity_id, anchor.entity_id, tuple(links), True, None)


def _required(statement: EntityStatement | None) -> EntityStatement:
    if statement is None:
        raise FederationRefused(Refusal.BAD_SIGNATURE, "its superior's configuration does not verify")
    return statement

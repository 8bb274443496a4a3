"""Synchronising with a trusted peer broker: fetch, verify everything, then change the catalog.

A synchronisation has two halves, so that a refusal changes nothing:

1. :func:`collect` fetches the peer's entity configuration (and, when a trust anchor is
   pinned, the anchor's configuration and its statement about the peer), its list of apps,
   each app's subordinate statement and, for a trust mark older than the statement carrying
   it, the mark's status, all through the guarded outbound client; and verifies each with
   :mod:`broker.federation.verify`. It touches no database. A refusal of the peer itself
   (down, bad signature, stale, chain not reaching the anchor, keys changed without a valid
   rollover, oversized) raises :class:`SyncRefused`; a refusal of one app's documents is kept
   as an :class:`AppRefusal` beside the apps that passed.
2. :func:`apply` re-checks each app against this broker's charter and writes the catalog: new
   apps are imported, changed ones refreshed, and apps the peer no longer vouches for
   (suspended, dropped from its list, trust mark revoked) are suspended here. An app whose
   documents were refused for any other reason is left exactly as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from sqlalchemy.orm import Session, sessionmaker

from broker.audit.tags import EventTag
from broker.catalog import service as catalog
from broker.catalog.models import App
from broker.charter import Charter
from broker.db import transaction, utcnow
from broker.errors import BrokerError
from broker.federation import repository
from broker.federation.models import FederationPeer, ImportedApp
from broker.federation.service import APP_ENTITY_TYPE, BROKER_ENTITY_TYPE, parse_entity_id
from broker.federation.verify import (
    MAX_DOCUMENT_LENGTH,
    EntityStatement,
    FederationRefused,
    Refusal,
    TrustAnchor,
    resolve_trust_chain,
    verify_entity_configuration,
    verify_key_rollover,
    verify_subordinate_statement,
    verify_trust_mark,
    verify_trust_mark_status,
)
from broker.outbound import (
    ENTITY_STATEMENT,
    FetchKind,
    OutboundPolicy,
    OutboundRefused,
    fetch_bytes,
    parse_json,
)

log = logging.getLogger("broker.federation")

# §8.2: the list is a JSON array of entity ids; 10,000 apps take about 600 KiB.
ENTITY_LIST = FetchKind("entity-list", 8 * 1024 * 1024, frozenset({"application/json"}), 2)
TRUST_MARK_STATUS = FetchKind(
    "trust-mark-status", 2 * MAX_DOCUMENT_LENGTH, frozenset({"application/trust-mark-status-response+jwt"})
)
MAX_LISTED_APPS = 100_000
# Statements are fetched a few at a time: the peer signs each one, and the guarded client
# opens a connection per fetch.
FETCH_WORKERS = 8

Fetch = Callable[[str, FetchKind, Mapping[str, str] | None], bytes]


def guarded_fetch(policy: OutboundPolicy) -> Fetch:
    """Every fetch of a synchronisation goes through the guarded outbound client (S0-S6)."""

    def fetch(url: str, kind: FetchKind, form: Mapping[str, str] | None = None) -> bytes:
        return fetch_bytes(url, kind=kind, policy=policy, form=form)

    return fetch


class SyncRefused(Exception):
    """The peer's documents cannot be trusted: nothing in the catalog changes."""

    def __init__(self, peer: str, reason: str, detail: str) -> None:
        super().__init__(f"{peer}: {reason}: {detail}")
        self.peer = peer
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PeerTrust:
    """What this broker trusts about a peer before a synchronisation (a plain copy of the row)."""

    entity_id: str
    jwks: Mapping[str, Any]
    trust_anchor: str | None = None
    trust_anchor_jwks: Mapping[str, Any] | None = None
    import_apps: bool = True

    @classmethod
    def of(cls, peer: FederationPeer) -> PeerTrust:
        return cls(peer.entity_id, peer.jwks, peer.trust_anchor, peer.trust_anchor_jwks, peer.import_apps)


@dataclass(frozen=True)
class RemoteApp:
    """An app the peer vouches for, its documents verified."""

    entity_id: str
    client_id: str
    client_metadata: dict[str, Any]
    manifest_sha256: str
    charter_version: str | None


@dataclass(frozen=True)
class AppRefusal:
    entity_id: str
    client_id: str
    reason: str
    detail: str

    @property
    def withdrawn(self) -> bool:
        """The peer itself says the app lost its standing (not a forgery or a glitch)."""
        return self.reason == Refusal.TRUST_MARK_REVOKED


@dataclass(frozen=True)
class Collected:
    configuration: EntityStatement
    anchored: bool
    charter_version: str | None
    listed: frozenset[str]  # client ids the peer lists
    apps: tuple[RemoteApp, ...] = ()
    refused: tuple[AppRefusal, ...] = ()


@dataclass
class SyncReport:
    peer: str
    ok: bool
    reason: str | None = None
    detail: str | None = None
    imported: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    suspended: list[str] = field(default_factory=list)
    unchanged: int = 0
    refused: list[AppRefusal] = field(default_factory=list)
    keys_rolled_over: bool = False

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"peer": self.peer, "ok": self.ok}
        if not self.ok:
            body.update(reason=self.reason, detail=self.detail)
            return body
        body.update(
            imported=self.imported,
            updated=self.updated,
            suspended=self.suspended,
            unchanged=self.unchanged,
            refused=[
                {"entity_id": r.entity_id, "reason": r.reason, "detail": r.detail} for r in self.refused
            ],
            keys_rolled_over=self.keys_rolled_over,
        )
        return body


# -- collecting (network and verification, no database) -------------------------------------


def statement_text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise FederationRefused(Refusal.MALFORMED, f"{what} is not a compact JWS") from None


def configuration_url(entity_id: str) -> str:
    return f"{entity_id}/.well-known/openid-federation"


def endpoint(configuration: EntityStatement, name: str) -> str:
    """An endpoint of the peer's ``federation_entity`` metadata, on the peer's own origin."""
    value = configuration.metadata.get("federation_entity", {}).get(name)
    if not isinstance(value, str) or not value.startswith(configuration.sub + "/"):
        raise FederationRefused(
            Refusal.MALFORMED, f"entity configuration: {name} is missing or not under its entity id"
        )
    return value


def fetch_configuration(entity_id: str, fetch: Fetch, now: datetime) -> EntityStatement:
    token = statement_text(
        fetch(configuration_url(entity_id), ENTITY_STATEMENT, None), "entity configuration"
    )
    return verify_entity_configuration(token, entity_id=entity_id, now=now)


def anchor_chain(
    configuration: EntityStatement, anchor: TrustAnchor, fetch: Fetch, now: datetime
) -> list[EntityStatement]:
    """§10: the chain [peer's configuration, anchor's statement about it, anchor's configuration]."""
    anchor_token = statement_text(
        fetch(configuration_url(anchor.entity_id), ENTITY_STATEMENT, None), "anchor configuration"
    )
    anchor_configuration = verify_entity_configuration(
        anchor_token, entity_id=anchor.entity_id, now=now, trusted_jwks=anchor.jwks
    )
    fetch_endpoint = endpoint(anchor_configuration, "federation_fetch_endpoint")
    about = statement_text(
        fetch(f"{fetch_endpoint}?sub={quote(configuration.sub, safe='')}", ENTITY_STATEMENT, None),
        "the anchor's statement",
    )
    chain = resolve_trust_chain([configuration.token, about, anchor_token], anchor=anchor, now=now)
    return list(chain.statements)


def _trusted_configuration(peer: PeerTrust, fetch: Fetch, now: datetime) -> tuple[EntityStatement, bool]:
    """The peer's configuration, its keys vouched for by the keys trusted before or the anchor."""
    configuration = fetch_configuration(peer.entity_id, fetch, now)
    anchored = False
    if peer.trust_anchor:
        anchor = TrustAnchor(peer.trust_anchor, peer.trust_anchor_jwks or {"keys": []})
        anchor_chain(configuration, anchor, fetch, now)
        anchored = True
    try:
        verify_key_rollover(peer.jwks, configuration.token, entity_id=peer.entity_id, now=now)
    except FederationRefused:
        if not anchored:
            raise  # no key trusted before signed it, and no anchor vouches for the new ones
    return configuration, anchored


def _app_documents(
    entity_id: str,
    client_id: str,
    *,
    configuration: EntityStatement,
    mark_type: str,
    fetch: Fetch,
    now: datetime,
) -> RemoteApp:
    fetch_endpoint = endpoint(configuration, "federation_fetch_endpoint")
    raw = fetch(f"{fetch_endpoint}?sub={quote(entity_id, safe='')}", ENTITY_STATEMENT, None)
    statement = verify_subordinate_statement(
        statement_text(raw, "subordinate statement"), superior=configuration, subject=entity_id, now=now
    )
    client = statement.metadata.get("oauth_client")
    facts = statement.metadata.get(APP_ENTITY_TYPE)
    if not isinstance(client, dict) or not isinstance(facts, dict):
        raise FederationRefused(Refusal.MALFORMED, "subordinate statement: no app metadata")
    if client.get("client_id") != client_id or facts.get("client_id") != client_id:
        raise FederationRefused(
            Refusal.WRONG_SUBJECT, "subordinate statement: its client_id is another app's"
        )
    if facts.get("status") != "approved":
        raise FederationRefused(
            Refusal.TRUST_MARK_REVOKED, f"the peer says the app is {facts.get('status')!r}"
        )
    tokens = [
        m.get("trust_mark")
        for m in statement.claims.get("trust_marks", [])
        if m.get("trust_mark_type") == mark_type
    ]
    if not tokens:
        raise FederationRefused(Refusal.MISSING_CLAIM, f"no trust mark of type {mark_type!r}")
    mark = verify_trust_mark(
        tokens[0],
        issuer=configuration.sub,
        issuer_jwks=configuration.jwks,
        subject=entity_id,
        trust_mark_type=mark_type,
        now=now,
    )
    if int(mark.claims["iat"]) < int(statement.claims["iat"]):
        # A mark signed with the statement carrying it is the peer's word of that moment; an
        # older one may have been revoked since: its issuer is asked (§8.4).
        answer = fetch(
            endpoint(configuration, "federation_trust_mark_status_endpoint"),
            TRUST_MARK_STATUS,
            {"trust_mark": tokens[0]},
        )
        status = verify_trust_mark_status(
            statement_text(answer, "trust mark status"),
            issuer=configuration.sub,
            issuer_jwks=configuration.jwks,
            trust_mark=tokens[0],
            now=now,
        )
        if status != "active":
            raise FederationRefused(Refusal.TRUST_MARK_REVOKED, f"trust mark: its issuer says {status!r}")
    digest = mark.claims.get("charter_manifest_sha256")
    if not isinstance(digest, str) or digest != facts.get("charter_manifest_sha256"):
        raise FederationRefused(Refusal.MALFORMED, "the trust mark vouches for another manifest")
    metadata = {k: v for k, v in client.items() if k != "client_id"}
    return RemoteApp(entity_id, client_id, metadata, digest, facts.get("charter_version"))


def _listed(configuration: EntityStatement, fetch: Fetch) -> dict[str, str]:
    """§8.2: entity id → client id of each app the peer lists in good standing."""
    url = f"{endpoint(configuration, 'federation_list_endpoint')}?entity_type=oauth_client"
    try:
        ids = parse_json(fetch(url, ENTITY_LIST, None), max_depth=ENTITY_LIST.max_depth)
    except (ValueError, RecursionError) as exc:
        raise FederationRefused(Refusal.MALFORMED, f"the list of apps is not JSON: {exc}") from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise FederationRefused(Refusal.MALFORMED, "the list of apps is not a list of entity ids")
    if len(ids) > MAX_LISTED_APPS:
        raise FederationRefused(Refusal.OVERSIZED, f"the peer lists more than {MAX_LISTED_APPS} apps")
    listed: dict[str, str] = {}
    for entity_id in ids:
        parsed = parse_entity_id(configuration.sub, entity_id)
        if parsed is None or parsed[0] != "app":
            raise FederationRefused(
                Refusal.WRONG_SUBJECT, f"the list names {entity_id[:200]!r}, not an app of the peer"
            )
        listed[entity_id] = parsed[1]
    return listed


def collect(
    peer: PeerTrust,
    fetch: Fetch,
    now: datetime,
    workers: int = FETCH_WORKERS,
    clock: Callable[[], datetime] = utcnow,
) -> Collected:
    """Fetch and verify everything the peer publishes; raises :class:`SyncRefused`.

    Each app's documents are checked against ``clock()`` when they arrive, not against ``now``:
    ten thousand statements take minutes, and the peer signs each one when it is asked.
    """
    try:
        configuration, anchored = _trusted_configuration(peer, fetch, now)
        facts = configuration.metadata.get(BROKER_ENTITY_TYPE)
        if not isinstance(facts, dict) or not isinstance(facts.get("charter_trust_mark_type"), str):
            raise FederationRefused(
                Refusal.MALFORMED, f"entity configuration: no {BROKER_ENTITY_TYPE} metadata"
            )
        charter_version = facts.get("charter_version")
        if not peer.import_apps:
            return Collected(configuration, anchored, charter_version, frozenset())
        listed = _listed(configuration, fetch)
    except FederationRefused as exc:
        raise SyncRefused(peer.entity_id, exc.reason.value, exc.detail) from exc
    except OutboundRefused as exc:
        raise SyncRefused(peer.entity_id, Refusal.PEER_UNREACHABLE.value, exc.reason) from exc

    mark_type = facts["charter_trust_mark_type"]

    def one(item: tuple[str, str]) -> RemoteApp | AppRefusal:
        entity_id, client_id = item
        try:
            return _app_documents(
                entity_id,
                client_id,
                configuration=configuration,
                mark_type=mark_type,
                fetch=fetch,
                now=clock(),
            )
        except FederationRefused as exc:
            return AppRefusal(entity_id, client_id, exc.reason.value, exc.detail)
        except OutboundRefused as exc:
            return AppRefusal(entity_id, client_id, Refusal.PEER_UNREACHABLE.value, exc.reason)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, sorted(listed.items())))
    apps = tuple(r for r in results if isinstance(r, RemoteApp))
    refused = tuple(r for r in results if isinstance(r, AppRefusal))
    return Collected(configuration, anchored, charter_version, frozenset(listed.values()), apps, refused)


# -- applying (the database, after everything was verified) ----------------------------------


def suspend_imported(
    session: Session, app: App, row: ImportedApp, origin_status: str, now: datetime, why: str
) -> bool:
    row.origin_status = origin_status
    row.synced_at = now
    if app.status == "suspended" or app.status == "deleted":
        return False
    previous = app.status
    app.status = "suspended"
    app.updated_at = now
    catalog.log_app_event(
        session, EventTag.APP_SUSPENDED, app, f"peer:{row.peer_id}", now, previous_status=previous, reason=why
    )
    return True


def apply(
    session: Session,
    *,
    peer: FederationPeer,
    collected: Collected,
    charter: Charter,
    dev_mode: bool,
    now: datetime,
) -> SyncReport:
    """Write what :func:`collect` verified: this broker's charter decides each app's status."""
    report = SyncReport(peer.entity_id, ok=True, refused=list(collected.refused))
    new_jwks = collected.configuration.jwks
    report.keys_rolled_over = new_jwks != peer.jwks
    peer.jwks = new_jwks
    peer.state = "active"
    peer.last_sync_at = peer.last_success_at = now
    peer.last_error = None
    peer.charter_version = collected.charter_version
    if not peer.import_apps:
        return report
    rows = repository.imported_from(session, peer.entity_id)
    actor = f"peer:{peer.entity_id}"
    for remote in collected.apps:
        row = rows.get(remote.client_id)
        app = session.get(App, remote.client_id)
        # An app with this client_id that is not this peer's: registered here, deleted here, or
        # imported from another peer. One left by a peer removed since (imported: no
        # registration token, no origin row) is taken back.
        if app is not None and row is None and (
            app.registration_token_hash is not None
            or app.status == "deleted"
            or repository.origin_of(session, remote.client_id) is not None
        ):
            report.refused.append(
                AppRefusal(
                    remote.entity_id,
                    remote.client_id,
                    "client_id_taken",
                    "an app of this broker has this client_id",
                )
            )
            continue
        if (
            app is not None
            and row is not None
            and row.origin_status == "approved"
            and row.origin_manifest_sha256 == remote.manifest_sha256
            and app.status != "suspended"
        ):
            row.synced_at = now
            row.origin_charter_version = remote.charter_version
            report.unchanged += 1
            continue
        try:
            # import_app checks everything before it changes anything: a refusal leaves the row.
            imported = catalog.import_app(
                session,
                client_id=remote.client_id,
                body=remote.client_metadata,
                charter=charter,
                dev_mode=dev_mode,
                now=now,
                actor=actor,
                app=app,
            )
        except BrokerError as exc:
            report.refused.append(
                AppRefusal(remote.entity_id, remote.client_id, "not_acceptable_here", exc.detail)
            )
            continue
        if row is None:
            session.add(
                ImportedApp(
                    client_id=imported.client_id,
                    peer_id=peer.entity_id,
                    entity_id=remote.entity_id,
                    origin_status="approved",
                    origin_manifest_sha256=remote.manifest_sha256,
                    origin_charter_version=remote.charter_version,
                    imported_at=now,
                    synced_at=now,
                )
            )
            report.imported.append(imported.client_id)
        else:
            row.origin_status = "approved"
            row.origin_manifest_sha256 = remote.manifest_sha256
            row.origin_charter_version = remote.charter_version
            row.synced_at = now
            report.updated.append(imported.client_id)
    withdrawn = {r.client_id: r for r in collected.refused if r.withdrawn}
    for client_id, row in rows.items():
        app = session.get(App, client_id)
        if app is None:
            continue
        if client_id not in collected.listed:
            why, origin = "no longer listed by its broker", "dropped"
        elif client_id in withdrawn:
            why, origin = withdrawn[client_id].detail, "revoked"
        else:
            continue
        if suspend_imported(session, app, row, origin, now, why):
            report.suspended.append(client_id)
    return report


# -- one synchronisation, from the database and back ---------------------------------------


def synchronise(
    factory: sessionmaker[Session],
    *,
    peer_id: str,
    charter_of: Callable[[Session], Charter],
    fetch: Fetch,
    dev_mode: bool,
    now: datetime,
    workers: int = FETCH_WORKERS,
) -> SyncReport:
    """Synchronise with one peer: a refusal is recorded on the peer's row, and only there."""
    with transaction(factory) as session:
        peer = session.get(FederationPeer, peer_id)
        if peer is None:
            raise LookupError(f"no trusted peer {peer_id!r}")
        trust = PeerTrust.of(peer)
    try:
        collected = collect(trust, fetch, now, workers)
    except SyncRefused as exc:
        log.warning("synchronisation with %s refused: %s: %s", peer_id, exc.reason, exc.detail)
        with transaction(factory) as session:
            peer = session.get(FederationPeer, peer_id)
            if peer is not None:
                peer.state = "refused"
                peer.last_sync_at = now
                peer.last_error = f"{exc.reason}: {exc.detail}"[:2000]
        return SyncReport(peer_id, ok=False, reason=exc.reason, detail=exc.detail)
    with transaction(factory) as session:
        peer = session.get(FederationPeer, peer_id)
        if peer is None:
            raise LookupError(f"no trusted peer {peer_id!r}")
        if PeerTrust.of(peer) != trust:
            # The operator changed the pins meanwhile: what was verified is no longer what we trust.
            return SyncReport(
                peer_id, ok=False, reason="peer_changed", detail="the peer was changed meanwhile"
            )
        return apply(
            session, peer=peer, collected=collected, charter=charter_of(session), dev_mode=dev_mode, now=now
        )


def peer_ids(factory: sessionmaker[Session]) -> Sequence[str]:
    with transaction(factory) as session:
        return repository.peer_ids(session)


def synchronise_all(
    factory: sessionmaker[Session],
    *,
    charter_of: Callable[[Session], Charter],
    fetch: Fetch,
    dev_mode: bool,
    clock: Callable[[], datetime],
    interval: float = 0,
) -> list[SyncReport]:
    """One round over every trusted peer (the server's periodic synchroniser).

    With ``interval``, a peer is synchronised only if no process started a synchronisation
    with it in the last half period: the broker's worker processes share the work instead of
    importing the same apps at once.
    """
    reports = []
    for peer_id in peer_ids(factory):
        if interval > 0:
            now = clock()
            with transaction(factory) as session:
                claimed = repository.claim_peer(
                    session, peer_id, now=now, not_after=now - timedelta(seconds=interval / 2)
                )
            if not claimed:
                continue
        report = synchronise(
            factory, peer_id=peer_id, charter_of=charter_of, fetch=fetch, dev_mode=dev_mode, now=clock()
        )
        if report.suspended or report.imported:
            log.info(
                "synchronised with %s: %d imported, %d suspended",
                peer_id,
                len(report.imported),
                len(report.suspended),
            )
        reports.append(report)
    return reports

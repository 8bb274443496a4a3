"""The broker's federation documents (OpenID Federation 1.0, final): built from existing rows.

* its **entity configuration** (§3.1, §9): keys, RFC 8414 metadata, the charter version in force
  and the policy mode, ``authority_hints`` and the trust marks others gave it;
* a **subordinate statement** (§3.1) per app and holder it registered, carrying their metadata,
  and for approved apps a **trust mark** (§7): "passes charter version N at this broker";
* the **trust mark status** (§8.4): active while the app is approved under the same charter
  version and the same manifest, revoked otherwise.

Nothing here is stored: each document is signed when asked for, so a suspension is visible in
the next statement and at the status endpoint at once. Apps and holders publish no entity
configuration of their own; the broker's statement about them is where their chains start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.orm import Session

from broker import strictjson
from broker.catalog.models import App, Holder
from broker.consent.proofs.jose import JoseError, b64url_decode
from broker.errors import NotFound
from broker.federation import repository
from broker.federation.verify import (
    ENTITY_STATEMENT_TYP,
    TRUST_MARK_STATUS_TYP,
    TRUST_MARK_TYP,
    FederationRefused,
    Refusal,
    verify_trust_mark,
)

# The broker-specific metadata entries (OpenID Federation §5.1 allows other entity types).
BROKER_ENTITY_TYPE = "health_consent_broker"
APP_ENTITY_TYPE = "health_consent_app"
HOLDER_ENTITY_TYPE = "health_data_holder"

# Apps and holders the fetch endpoint answers for: suspended ones too, so that peers learn of
# the suspension from the statement itself; pending, refused and deleted ones are unknown.
PUBLISHED_APP_STATUSES = ("approved", "suspended")
PUBLISHED_HOLDER_STATUSES = ("approved", "suspended")
# The list endpoint names only the entities in good standing.
LISTED_STATUSES = ("approved",)

# Registration metadata left out of the app's statement: people's contact addresses.
PRIVATE_CLIENT_METADATA = frozenset({"contacts"})


class Signer(Protocol):
    def sign(self, claims: dict[str, Any], typ: str) -> str: ...

    def public_jwks(self, now: datetime | None = None) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Federation:
    """What every document of this broker needs: who signs, for how long, and when it is."""

    issuer: str
    signer: Signer
    statement_lifetime: int
    trust_mark_lifetime: int
    now: datetime

    @property
    def iat(self) -> int:
        return int(self.now.timestamp())

    def sign_statement(self, claims: dict[str, Any]) -> str:
        return self.signer.sign(claims, typ=ENTITY_STATEMENT_TYP)

    def jwks(self) -> dict[str, Any]:
        return self.signer.public_jwks(self.now)


# -- entity identifiers --------------------------------------------------------------------


def app_entity_id(issuer: str, client_id: str) -> str:
    return f"{issuer}/apps/{client_id}"


def holder_entity_id(issuer: str, identifier: str) -> str:
    return f"{issuer}/holders/{identifier}"


def charter_trust_mark_type(issuer: str, charter_version: str) -> str:
    """The type of this broker's mark "passes charter ``charter_version`` here"."""
    return f"{issuer}/trust-marks/charter/{charter_version}"


def parse_entity_id(issuer: str, entity_id: str) -> tuple[str, str] | None:
    """``("app", client_id)`` or ``("holder", identifier)`` for an entity of this broker."""
    for kind, prefix in (("app", f"{issuer}/apps/"), ("holder", f"{issuer}/holders/")):
        if entity_id.startswith(prefix):
            rest = entity_id[len(prefix) :]
            if rest and "/" not in rest and len(rest) <= 64:
                return kind, rest
    return None


# -- the entity configuration ----------------------------------------------------------------


def federation_entity_metadata(issuer: str) -> dict[str, Any]:
    """§5.1.1 ``federation_entity``: where the fetch, list and status endpoints are."""
    return {
        "federation_fetch_endpoint": f"{issuer}/federation/fetch",
        "federation_list_endpoint": f"{issuer}/federation/list",
        "federation_trust_mark_status_endpoint": f"{issuer}/federation/trust_mark_status",
    }


def _published_trust_marks(tokens: Sequence[str]) -> list[dict[str, str]]:
    """§3.1 ``trust_marks``: each mark others issued to this broker, with its type.

    The marks come from the operator's settings and are published as given; their type is
    read from their payload, and a mark without one is left out rather than mislabelled.
    """
    marks = []
    for token in tokens:
        try:
            claims = _payload(token)
        except (JoseError, ValueError):
            continue
        mark_type = claims.get("trust_mark_type")
        if isinstance(mark_type, str) and mark_type:
            marks.append({"trust_mark_type": mark_type, "trust_mark": token})
    return marks


def _payload(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    value = strictjson.loads(b64url_decode(parts[1], "payload"))
    if not isinstance(value, dict):
        raise ValueError("payload is not an object")
    return value


def entity_configuration(
    fed: Federation,
    *,
    as_metadata: Mapping[str, Any],
    charter_version: str,
    policy_mode: str,
    authority_hints: Sequence[str],
    trust_marks: Sequence[str],
) -> str:
    """§3.1 / §9: the broker's own statement about itself, signed with its own key."""
    claims: dict[str, Any] = {
        "iss": fed.issuer,
        "sub": fed.issuer,
        "iat": fed.iat,
        "exp": fed.iat + fed.statement_lifetime,
        "jwks": fed.jwks(),
        "metadata": {
            "federation_entity": federation_entity_metadata(fed.issuer),
            "oauth_authorization_server": dict(as_metadata),
            BROKER_ENTITY_TYPE: {
                "charter_version": charter_version,
                "policy_mode": policy_mode,
                "charter_trust_mark_type": charter_trust_mark_type(fed.issuer, charter_version),
                "catalog_endpoint": as_metadata.get("catalog_endpoint"),
            },
        },
    }
    # §3.1: authority_hints is absent for a trust anchor, never an empty list.
    if authority_hints:
        claims["authority_hints"] = list(authority_hints)
    marks = _published_trust_marks(trust_marks)
    if marks:
        claims["trust_marks"] = marks
    return fed.sign_statement(claims)


# -- trust marks -----------------------------------------------------------------------------


def charter_trust_mark(fed: Federation, app: App, charter_version: str) -> str | None:
    """§7.1: the app passes the charter in force here; ``None`` unless it is approved under it."""
    verdict = app.verdict or {}
    if app.status != "approved" or verdict.get("charter_version") != charter_version:
        return None
    claims = {
        "iss": fed.issuer,
        "sub": app_entity_id(fed.issuer, app.client_id),
        "trust_mark_type": charter_trust_mark_type(fed.issuer, charter_version),
        "iat": fed.iat,
        "exp": fed.iat + fed.trust_mark_lifetime,
        # Not a registered claim: the mark vouches for this manifest, and stops being active
        # when the app changes it (the status endpoint compares them).
        "charter_manifest_sha256": app.manifest_sha256,
        "ref": f"{fed.issuer}/api/catalog/apps/{app.client_id}",
    }
    return fed.signer.sign(claims, typ=TRUST_MARK_TYP)


def trust_mark_status(session: Session, fed: Federation, *, trust_mark: str, charter_version: str) -> str:
    """§8.4: ``active``, ``expired``, ``revoked`` or ``invalid`` for a mark this broker issued.

    Revoked once the app is no longer approved (suspended by a charter re-check, refused by an
    operator, deleted), once another charter version is in force, or once the app's manifest
    is no longer the one the mark vouched for.
    """
    try:
        mark = verify_trust_mark(
            trust_mark,
            issuer=fed.issuer,
            issuer_jwks=fed.jwks(),
            subject=None,  # looked up below: the subject must be one of our apps
            trust_mark_type=None,  # compared below with the type of the charter in force
            now=fed.now,
            leeway=timedelta(0),  # our own clock signed it: no skew to allow for
        )
    except FederationRefused as exc:
        return "expired" if exc.reason is Refusal.EXPIRED else "invalid"
    if "exp" not in mark.claims:
        return "invalid"  # every mark this broker issues expires
    entity = parse_entity_id(fed.issuer, mark.claims["sub"])
    if entity is None or entity[0] != "app":
        return "invalid"
    app = repository.get_app(session, entity[1])
    if app is None:
        return "invalid"
    verdict = app.verdict or {}
    if (
        app.status != "approved"
        or mark.trust_mark_type != charter_trust_mark_type(fed.issuer, charter_version)
        or verdict.get("charter_version") != charter_version
        or mark.claims.get("charter_manifest_sha256") != app.manifest_sha256
    ):
        return "revoked"
    return "active"


def trust_mark_status_response(fed: Federation, *, trust_mark: str, status: str) -> str:
    """§8.4.2: the signed answer, naming the very mark it is about."""
    claims = {"iss": fed.issuer, "iat": fed.iat, "trust_mark": trust_mark, "status": status}
    return fed.signer.sign(claims, typ=TRUST_MARK_STATUS_TYP)


# -- subordinate statements ----------------------------------------------------------------


def _app_statement(fed: Federation, app: App, charter_version: str) -> dict[str, Any]:
    client = {k: v for k, v in app.client_metadata.items() if k not in PRIVATE_CLIENT_METADATA}
    client["client_id"] = app.client_id
    verdict = app.verdict or {}
    claims: dict[str, Any] = {
        "metadata": {
            "oauth_client": client,
            APP_ENTITY_TYPE: {
                "client_id": app.client_id,
                "status": app.status,
                "publisher_name": app.publisher_name,
                "charter_manifest_sha256": app.manifest_sha256,
                "charter_version": verdict.get("charter_version"),
                "verdict": verdict.get("status"),
            },
        },
    }
    jwks = app.client_metadata.get("jwks")
    if isinstance(jwks, dict):
        claims["jwks"] = jwks
    mark = charter_trust_mark(fed, app, charter_version)
    if mark is not None:
        claims["trust_marks"] = [
            {"trust_mark_type": charter_trust_mark_type(fed.issuer, charter_version), "trust_mark": mark}
        ]
    return claims


def _holder_statement(holder: Holder) -> dict[str, Any]:
    resource: dict[str, Any] = {"resource": holder.base_url, "resource_name": holder.legal_name}
    if holder.jwks_uri:
        resource["jwks_uri"] = holder.jwks_uri
    claims: dict[str, Any] = {
        "metadata": {
            "oauth_resource": resource,
            HOLDER_ENTITY_TYPE: {
                "identifier": holder.identifier,
                "status": holder.status,
                "base_url": holder.base_url,
                "categories": list(holder.categories),
                "release_step_categories": list(holder.release_step_categories),
                "link_endpoint": holder.link_endpoint,
            },
        },
    }
    if holder.jwks:
        claims["jwks"] = holder.jwks
    return claims


def subordinate_statement(session: Session, fed: Federation, *, sub: str, charter_version: str) -> str:
    """§8.1.2: the broker's signed statement about one of its apps or holders."""
    entity = parse_entity_id(fed.issuer, sub)
    body: dict[str, Any] | None = None
    if entity is not None and entity[0] == "app":
        app = repository.get_app(session, entity[1])
        if app is not None and app.status in PUBLISHED_APP_STATUSES:
            body = _app_statement(fed, app, charter_version)
    elif entity is not None:
        holder = repository.get_holder(session, entity[1])
        if holder is not None and holder.status in PUBLISHED_HOLDER_STATUSES:
            body = _holder_statement(holder)
    else:
        # A broker this one trusts with its keys pinned: as its superior (a trust anchor),
        # this broker vouches for those keys (§3.1), which is what lets the peer roll over.
        peer = repository.get_peer(session, sub)
        if peer is not None:
            body = {"jwks": peer.jwks, "metadata": {"federation_entity": federation_entity_metadata(sub)}}
    if body is None:
        raise NotFound(f"no subordinate entity {sub!r} at this broker", error="not_found")
    claims = {
        "iss": fed.issuer,
        "sub": sub,
        "iat": fed.iat,
        "exp": fed.iat + fed.statement_lifetime,
        "source_endpoint": f"{fed.issuer}/federation/fetch",
        **body,
    }
    return fed.sign_statement(claims)


def subordinate_ids(
    session: Session,
    issuer: str,
    *,
    entity_type: str | None,
    trust_mark_type: str | None,
    charter_version: str,
) -> list[str]:
    """§8.2: the entity ids of the apps and holders in good standing, filtered as asked."""
    want_apps = entity_type in (None, "oauth_client", APP_ENTITY_TYPE)
    want_holders = entity_type in (None, "oauth_resource", HOLDER_ENTITY_TYPE)
    if trust_mark_type is not None:
        # Every approved app carries the charter mark of the version in force, and only it.
        if trust_mark_type != charter_trust_mark_type(issuer, charter_version):
            return []
        want_holders = False
    ids: list[str] = []
    if entity_type in (None, "federation_entity") and trust_mark_type is None:
        ids += list(repository.peer_ids(session))
    if want_apps:
        ids += [app_entity_id(issuer, c) for c in repository.app_ids(session, LISTED_STATUSES)]
    if want_holders:
        ids += [holder_entity_id(issuer, h) for h in repository.holder_ids(session, LISTED_STATUSES)]
    return ids

"""The authorization server: authorization requests, codes, tokens (DESIGN steps 5, 6, 9).

authlib's server classes are synchronous and framework-bound; the broker uses authlib's
primitives (PKCE) and spells out the flow itself, because most of what it must enforce is
not in authlib: PKCE S256 for every client, RFC 9396 authorization details, RFC 8707
resource indicators, RFC 9126 pushed requests, RFC 9207 ``iss``, the consent record, and the
Token Status List.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast
from urllib.parse import urlencode

from authlib.oauth2.rfc7636 import create_s256_code_challenge
from sqlalchemy import Table, and_, bindparam, select
from sqlalchemy.orm import Session

from broker import strictjson
from broker.audit.log import append_event
from broker.audit.tags import EventTag
from broker.catalog.models import App, Holder
from broker.charter import Charter, allowed_categories
from broker.consent.models import (
    AuthorizationCode,
    AuthorizationRequest,
    ConsentRecord,
    HolderLink,
    RefreshToken,
)
from broker.consent.proofs import JoseError, verify_jwt
from broker.consent.service import VALID, effective_status, reissue_status_entry, status_reference
from broker.db import KeepChanges
from broker.errors import (
    BrokerError,
    InvalidAuthorizationDetails,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    UnsupportedGrantType,
)
from broker.keys import KeyStore
from broker.opaque import new_secret, secret_digest
from broker.settings import Settings

AUTHORIZATION_REQUEST_TTL = timedelta(minutes=10)  # time for the patient to log in and decide
PAR_TTL = timedelta(seconds=90)  # RFC 9126 §2.2: short-lived request_uri
CODE_TTL = timedelta(seconds=60)  # RFC 6749 §4.1.2 recommends at most 10 minutes
REFRESH_IDLE = timedelta(days=30)
PAR_PREFIX = "urn:ietf:params:oauth:request_uri:"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_PKCE = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")  # RFC 7636 §4.1 and §4.2
_CHALLENGE = re.compile(r"^[A-Za-z0-9\-_]{43}$")  # base64url of a SHA-256 digest


class ReplayRefused(InvalidGrant, KeepChanges):
    """A spent code or refresh token came back: refused, and what it produced is revoked."""


class AuthorizationPageError(BrokerError):
    """An error the broker must show on a page, never as a redirect (RFC 6749 §4.1.2.1,
    RFC 9700 §4.11.2): unknown client, unregistered redirect URI, app not approved."""

    status = 400
    slug = "authorization-refused"
    title = "This app cannot ask for your consent"


@dataclass
class RedirectError(Exception):
    """An RFC 6749 §4.1.2.1 error sent back to the app's verified redirect URI, with ``iss``."""

    redirect_uri: str
    error: str
    description: str
    state: str | None
    issuer: str

    def location(self) -> str:
        return authorization_response(
            self.redirect_uri,
            self.issuer,
            state=self.state,
            error=self.error,
            error_description=self.description,
        )


_ERRORS_BY_CODE: dict[str, type[OAuthError]] = {
    cls.error: cls for cls in (InvalidScope, InvalidAuthorizationDetails, InvalidGrant, InvalidTarget)
}


def error_for_code(code: str, description: str) -> BrokerError:
    """The broker error that renders as RFC error ``code`` (``invalid_request`` otherwise)."""
    cls = _ERRORS_BY_CODE.get(code)
    return cls(description) if cls is not None else InvalidRequest(description)


def authorization_response(redirect_uri: str, issuer: str, **params: str | None) -> str:
    """The redirect back to the app; RFC 9207 ``iss`` on every response, errors included."""
    query = {k: v for k, v in params.items() if v is not None}
    query["iss"] = issuer
    separator = "&" if "?" in redirect_uri else "?"
    return redirect_uri + separator + urlencode(query)


# -- what an app asks for --------------------------------------------------------------------


@dataclass(frozen=True)
class Requested:
    """One requested RFC 9396 ``health_data`` detail, checked against the approved manifest."""

    purpose: str
    categories: tuple[str, ...]
    holder: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"purpose": self.purpose, "categories": list(self.categories), "holder": self.holder}


def _manifest_requests(app: App) -> list[dict[str, Any]]:
    return list(app.client_metadata["charter_manifest"]["data_requests"])


def parse_requested(
    app: App, charter: Charter, *, scope: str | None, authorization_details: str | None
) -> list[Requested]:
    """Scopes naming categories, or RFC 9396 details; nothing beyond the approved manifest.

    With neither, the app asks for everything its manifest declares.
    """
    manifest = app.client_metadata["charter_manifest"]
    requests = _manifest_requests(app)
    if authorization_details:
        try:
            details = strictjson.loads(authorization_details)
        except ValueError:
            raise InvalidAuthorizationDetails("authorization_details: not valid JSON") from None
        if not isinstance(details, list) or not details or len(details) > 20:
            raise InvalidAuthorizationDetails("authorization_details: a JSON array of 1 to 20 objects")
        out = []
        for i, detail in enumerate(details):
            where = f"authorization_details[{i}]"
            if not isinstance(detail, dict) or detail.get("type") != "health_data":
                raise InvalidAuthorizationDetails(f'{where}: type must be "health_data"')
            purpose = detail.get("purpose")
            categories = detail.get("categories")
            holder = detail.get("holder")
            if not isinstance(purpose, str) or not isinstance(categories, list) or not categories:
                raise InvalidAuthorizationDetails(f"{where}: purpose and categories are required")
            if holder is not None and not isinstance(holder, str):
                raise InvalidAuthorizationDetails(f"{where}.holder: must be a holder identifier")
            allowed = allowed_categories(charter, manifest, purpose)
            for category in categories:
                if not isinstance(category, str) or category not in allowed:
                    raise InvalidAuthorizationDetails(
                        f"{where}: {category!r} for {purpose!r} is outside the app's approved "
                        "manifest (charter art. 06c)"
                    )
            out.append(Requested(purpose, tuple(dict.fromkeys(categories)), holder))
        return out
    if scope:
        wanted = scope.split()
        by_purpose: dict[str, list[str]] = {}
        for category in wanted:
            matches = [r["purpose"] for r in requests if r["category"] == category]
            if not matches:
                raise InvalidScope(
                    f"scope: {category!r} is not in the app's approved manifest (charter art. 06c)"
                )
            for purpose in matches:
                if category in allowed_categories(charter, manifest, purpose):
                    by_purpose.setdefault(purpose, []).append(category)
        if not by_purpose:
            raise InvalidScope("scope: no category the charter allows for this app")
        return [Requested(p, tuple(dict.fromkeys(c))) for p, c in by_purpose.items()]
    by_purpose = {}
    for r in requests:
        if r["category"] in allowed_categories(charter, manifest, r["purpose"]):
            by_purpose.setdefault(r["purpose"], []).append(r["category"])
    return [Requested(p, tuple(c)) for p, c in by_purpose.items()]


def check_client_and_redirect(session: Session, client_id: str | None, redirect_uri: str | None) -> App:
    """The first checks, whose failures are shown on a page and never redirected."""
    app = session.get(App, client_id) if client_id else None
    if app is None or app.status == "deleted":
        raise AuthorizationPageError("unknown app (client_id)")
    # RFC 9700 §2.1: exact string comparison with a registered URI.
    if not redirect_uri or redirect_uri not in app.client_metadata["redirect_uris"]:
        raise AuthorizationPageError("the redirect URI is not one this app registered")
    if app.status != "approved":
        raise AuthorizationPageError(
            f"this app is {app.status}: it does not meet the charter «Mes données, ma santé» "
            "and cannot ask for your consent",
            app_status=app.status,
        )
    return app


@dataclass(frozen=True)
class AuthorizationParams:
    client_id: str
    redirect_uri: str
    state: str
    code_challenge: str
    requested: list[Requested] = field(default_factory=list)


def check_authorization_params(
    app: App, charter: Charter, params: Mapping[str, str], issuer: str
) -> AuthorizationParams:
    """RFC 6749 §4.1.1 with RFC 7636 and RFC 9396; errors go back to the app, with ``iss``."""
    redirect_uri = params["redirect_uri"]
    state = params.get("state") or None

    def fail(error: str, description: str) -> RedirectError:
        return RedirectError(redirect_uri, error, description, state, issuer)

    if params.get("response_type") != "code":
        raise fail("unsupported_response_type", "only response_type=code is supported")
    if not state or len(state) > 500:
        raise fail("invalid_request", "state is required (at most 500 characters)")
    challenge = params.get("code_challenge")
    method = params.get("code_challenge_method")
    # RFC 9700 §2.1.1: PKCE for every client; S256 only (a missing method means "plain").
    if not challenge or method != "S256":
        raise fail("invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256")
    if not _CHALLENGE.match(challenge):
        raise fail("invalid_request", "code_challenge must be the base64url SHA-256 of the verifier")
    if "request" in params:
        raise fail("request_not_supported", "request objects are not supported; use PAR")
    try:
        requested = parse_requested(
            app, charter, scope=params.get("scope"), authorization_details=params.get("authorization_details")
        )
    except OAuthError as exc:
        raise fail(exc.error, exc.detail) from None
    return AuthorizationParams(app.client_id, redirect_uri, state, challenge, requested)


def store_authorization_request(
    session: Session, checked: AuthorizationParams, *, pushed: bool, now: datetime
) -> AuthorizationRequest:
    request = AuthorizationRequest(
        id=secrets.token_urlsafe(32),
        client_id=checked.client_id,
        redirect_uri=checked.redirect_uri,
        state=checked.state,
        code_challenge=checked.code_challenge,
        requested=[r.to_json() for r in checked.requested],
        pushed=pushed,
        created_at=now,
        expires_at=now + (PAR_TTL if pushed else AUTHORIZATION_REQUEST_TTL),
    )
    session.add(request)
    return request


def pending_request(session: Session, request_id: str, now: datetime) -> AuthorizationRequest:
    request = session.get(AuthorizationRequest, request_id)
    if request is None or request.used_at is not None or request.expires_at <= now:
        raise AuthorizationPageError(
            "this consent request has expired or was already answered; go back to the app and start again"
        )
    return request


def requested_of(request: AuthorizationRequest) -> list[Requested]:
    return [Requested(r["purpose"], tuple(r["categories"]), r.get("holder")) for r in request.requested]


# -- codes -----------------------------------------------------------------------------------


def issue_code(
    session: Session,
    *,
    request: AuthorizationRequest,
    consent: ConsentRecord,
    secret_key: bytes,
    now: datetime,
) -> str:
    code = new_secret("hcb_code")
    session.add(
        AuthorizationCode(
            code_hash=secret_digest(secret_key, code),
            client_id=request.client_id,
            patient_id=consent.patient_id,
            consent_id=consent.id,
            redirect_uri=request.redirect_uri,
            code_challenge=request.code_challenge,
            created_at=now,
            expires_at=now + CODE_TTL,
        )
    )
    return code


# -- the token endpoint ---------------------------------------------------------------------
#
# The token endpoint is the broker's hot path: every app refreshes every few minutes. It reads
# with single Core statements (no ORM identity map, no unit-of-work flush), signs, then writes
# with two statements at the end, so that SQLite's database-wide write lock is held only for
# the writes and the commit (DESIGN, performance notes).

_RT = cast(Table, RefreshToken.__table__)
_CONSENTS = cast(Table, ConsentRecord.__table__)
_HOLDERS = cast(Table, Holder.__table__)
_LINKS = cast(Table, HolderLink.__table__)
_APPS = cast(Table, App.__table__)


def pairwise_subject(secret_key: bytes, patient_id: str, client_id: str) -> str:
    """A per-app pseudonym: two apps cannot correlate a patient through ``sub`` (step 6)."""
    digest = hmac.new(secret_key, f"sub|{client_id}|{patient_id}".encode(), hashlib.sha256).digest()
    return "p_" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


class Client(NamedTuple):
    """The authenticated app, as much of it as the token endpoint needs."""

    client_id: str
    status: str


class ConsentFacts(NamedTuple):
    """What the token endpoint reads of a consent record."""

    id: str
    patient_id: str
    client_id: str
    grants: list[dict[str, Any]]
    status: str
    expires_at: datetime
    status_entry_id: int

    @classmethod
    def of(cls, record: ConsentRecord) -> ConsentFacts:
        return cls(
            record.id,
            record.patient_id,
            record.client_id,
            record.grants,
            record.status,
            record.expires_at,
            record.status_entry_id,
        )


class HolderFacts(NamedTuple):
    identifier: str
    base_url: str
    status: str
    link_handle: str | None  # the patient's active link there, if any


@dataclass
class TokenContext:
    settings: Settings
    keystore: KeyStore
    now: datetime
    authenticate: Callable[[Session, Mapping[str, str]], Client]  # client authentication
    # Thumbprint of the DPoP key proven with this request (RFC 9449 §5), already verified.
    dpop_jkt: str | None = None


def _granted_holders(consent: ConsentFacts) -> dict[str, list[dict[str, Any]]]:
    by_holder: dict[str, list[dict[str, Any]]] = {}
    for grant in consent.grants:
        by_holder.setdefault(grant["holder"], []).append(grant)
    return by_holder


_HOLDERS_OF_CONSENT = (
    select(_HOLDERS.c.identifier, _HOLDERS.c.base_url, _HOLDERS.c.status, _LINKS.c.handle)
    .select_from(
        _HOLDERS.outerjoin(
            _LINKS,
            and_(
                _LINKS.c.holder_id == _HOLDERS.c.identifier,
                _LINKS.c.patient_id == bindparam("patient_id"),
                _LINKS.c.status == "active",
            ),
        )
    )
    .where(_HOLDERS.c.identifier.in_(bindparam("holder_ids", expanding=True)))
)


def _holders_of(session: Session, consent: ConsentFacts) -> dict[str, HolderFacts]:
    """The consent's holders, with the patient's link at each, in one statement."""
    rows = session.connection().execute(
        _HOLDERS_OF_CONSENT,
        {"patient_id": consent.patient_id, "holder_ids": list(_granted_holders(consent))},
    )
    return {row[0]: HolderFacts(*row) for row in rows}


def _select_holder(
    consent: ConsentFacts, holders: Mapping[str, HolderFacts], resource: str | None
) -> HolderFacts:
    """RFC 8707: the holder whose API ``resource`` names (base URL or identifier)."""
    candidates = [
        holders[h] for h in _granted_holders(consent) if h in holders and holders[h].status == "approved"
    ]
    if not candidates:
        raise InvalidGrant("no approved holder remains under this consent")
    if resource is None:
        return candidates[0]
    for holder in candidates:
        if resource in (holder.base_url, holder.identifier):
            return holder
    raise InvalidTarget("resource: not a holder this consent covers")


def _check_consent_usable(consent: ConsentFacts, app: Client, now: datetime) -> None:
    status = effective_status(consent, app, now)
    if status != VALID:
        reason = (
            "the app is suspended (charter)"
            if app.status != "approved"
            else ("the consent was withdrawn or has expired")
        )
        raise InvalidGrant(reason)


def _token_lifetime(ctx: TokenContext, consent: ConsentFacts) -> int:
    """Seconds an access token lives: the setting, cut at the consent's end (which the
    patient may have moved earlier), so that no token outlives the consent."""
    left = int(consent.expires_at.timestamp()) - int(ctx.now.timestamp())
    return max(1, min(ctx.settings.token_lifetime, left))


def _access_token(
    ctx: TokenContext, consent: ConsentFacts, app: Client, holder: HolderFacts
) -> tuple[str, str]:
    issuer = ctx.settings.issuer
    grants = _granted_holders(consent)[holder.identifier]
    if holder.link_handle is None:
        raise InvalidGrant("the patient is no longer linked to this holder")
    uri, idx = status_reference(consent.status_entry_id, issuer)
    categories = sorted({c for g in grants for c in g["categories"]})
    now = int(ctx.now.timestamp())
    jti = secrets.token_urlsafe(16)
    claims = {
        "iss": issuer,
        "sub": pairwise_subject(ctx.settings.secret_key, consent.patient_id, app.client_id),
        "aud": holder.base_url,
        "iat": now,
        "nbf": now,
        "exp": now + _token_lifetime(ctx, consent),
        "jti": jti,
        "client_id": app.client_id,
        "scope": " ".join(categories),
        "authorization_details": grants,
        "consent_id": consent.id,
        "link_handle": holder.link_handle,
        "status": {"status_list": {"idx": idx, "uri": uri}},
    }
    if ctx.dpop_jkt:
        claims["cnf"] = {"jkt": ctx.dpop_jkt}  # RFC 9449 §6.1: sender-constrained
    # RFC 9068 §2.1: typ "at+jwt", so an access token cannot pass for any other JWT.
    return ctx.keystore.sign(claims, typ="at+jwt"), jti


def _store_refresh_token(
    session: Session, ctx: TokenContext, consent: ConsentFacts, family_id: str, token: str
) -> str:
    session.connection().execute(
        _RT.insert(),
        {
            "token_hash": secret_digest(ctx.settings.secret_key, token),
            "family_id": family_id,
            "consent_id": consent.id,
            "client_id": consent.client_id,
            "created_at": ctx.now,
            "expires_at": min(consent.expires_at, ctx.now + REFRESH_IDLE),
            "used_at": None,
            "revoked_at": None,
            "dpop_jkt": ctx.dpop_jkt,
        },
    )
    return token


def _token_response(
    ctx: TokenContext,
    consent: ConsentFacts,
    app: Client,
    holders: Mapping[str, HolderFacts],
    holder: HolderFacts,
    refresh: str,
) -> tuple[dict[str, Any], str]:
    access, jti = _access_token(ctx, consent, app, holder)
    details = []
    for holder_id, grants in _granted_holders(consent).items():
        target = holders.get(holder_id)
        for grant in grants:
            # RFC 9396 §2.2 ``locations``: where the app takes the token (DESIGN step 8).
            details.append({**grant, "locations": [target.base_url] if target else []})
    return {
        "access_token": access,
        "token_type": "DPoP" if ctx.dpop_jkt else "Bearer",
        "expires_in": _token_lifetime(ctx, consent),
        "refresh_token": refresh,
        "scope": " ".join(sorted({c for g in consent.grants for c in g["categories"]})),
        "authorization_details": details,
        "consent_id": consent.id,
    }, jti


def _record_tokens(
    session: Session, ctx: TokenContext, tag: EventTag, consent: ConsentFacts, holder: HolderFacts, jti: str
) -> None:
    """The audit log's record of tokens given to an app (same transaction, one INSERT)."""
    grants = _granted_holders(consent)[holder.identifier]
    append_event(
        session,
        tag=tag,
        patient_id=consent.patient_id,
        actor=f"app:{consent.client_id}",
        details={
            "app": consent.client_id,
            "holder": holder.identifier,
            "categories": sorted({c for g in grants for c in g["categories"]}),
            "consent_id": consent.id,
            "token_jti": jti,
            "sender_constrained": ctx.dpop_jkt is not None,
        },
        at=ctx.now,
    )


def _revoke_family(session: Session, family_id: str, now: datetime) -> None:
    session.connection().execute(
        _RT.update().where(_RT.c.family_id == family_id, _RT.c.revoked_at.is_(None)).values(revoked_at=now)
    )


def token_request(session: Session, form: Mapping[str, str], ctx: TokenContext) -> dict[str, Any]:
    """RFC 6749 §4.1.3 and §6, with PKCE (RFC 7636) and resource indicators (RFC 8707)."""
    app = ctx.authenticate(session, form)
    grant_type = form.get("grant_type")
    if grant_type == "authorization_code":
        return _code_grant(session, form, ctx, app)
    if grant_type == "refresh_token":
        return _refresh_grant(session, form, ctx, app)
    raise UnsupportedGrantType("grant_type must be authorization_code or refresh_token")


def _code_grant(session: Session, form: Mapping[str, str], ctx: TokenContext, app: Client) -> dict[str, Any]:
    code = form.get("code")
    if not code:
        raise InvalidRequest("code is required")
    row = session.get(AuthorizationCode, secret_digest(ctx.settings.secret_key, code), with_for_update=True)
    if row is None or row.client_id != app.client_id:
        raise InvalidGrant("the authorization code is invalid")
    if row.used_at is not None:
        # RFC 9700 §4.2.4: a replayed code revokes what it produced.
        if row.family_id:
            _revoke_family(session, row.family_id, ctx.now)
        # Access tokens are JWTs: the only way to stop those the code produced is their status.
        replayed = session.get(ConsentRecord, row.consent_id, with_for_update=True)
        if replayed is not None:
            reissue_status_entry(session, replayed, ctx.now)
        raise ReplayRefused("the authorization code was already used; its tokens are revoked")
    if row.expires_at <= ctx.now:
        raise InvalidGrant("the authorization code has expired")
    # RFC 9700 §4.5.3.1: identical redirect_uri.
    if form.get("redirect_uri") != row.redirect_uri:
        raise InvalidGrant("redirect_uri differs from the one in the authorization request")
    verifier = form.get("code_verifier")
    if not verifier or not _PKCE.match(verifier):
        raise InvalidGrant("code_verifier is required (43 to 128 characters)")
    if not hmac.compare_digest(create_s256_code_challenge(verifier), row.code_challenge):
        raise InvalidGrant("code_verifier does not match the code_challenge")
    record = session.get(ConsentRecord, row.consent_id, with_for_update=True)
    if record is None:
        raise InvalidGrant("the consent no longer exists")
    consent = ConsentFacts.of(record)
    _check_consent_usable(consent, app, ctx.now)
    holders = _holders_of(session, consent)
    holder = _select_holder(consent, holders, form.get("resource"))
    family_id = "fam_" + secrets.token_urlsafe(16)
    refresh = new_secret("hcb_rt")
    # Everything is read and signed first; the writes come last, so that the write lock
    # (SQLite's is database-wide) is held only for them and the commit.
    body, jti = _token_response(ctx, consent, app, holders, holder, refresh)
    row.used_at = ctx.now
    row.family_id = family_id
    session.flush()
    _store_refresh_token(session, ctx, consent, family_id, refresh)
    _record_tokens(session, ctx, EventTag.TOKEN_ISSUED, consent, holder, jti)
    return body


_REFRESH_LOOKUP = (
    select(
        _RT.c.family_id,
        _RT.c.client_id,
        _RT.c.expires_at,
        _RT.c.used_at,
        _RT.c.revoked_at,
        _RT.c.dpop_jkt,
        _CONSENTS.c.id,
        _CONSENTS.c.patient_id,
        _CONSENTS.c.client_id,
        _CONSENTS.c.grants,
        _CONSENTS.c.status,
        _CONSENTS.c.expires_at,
        _CONSENTS.c.status_entry_id,
    )
    .select_from(_RT.join(_CONSENTS, _CONSENTS.c.id == _RT.c.consent_id))
    .where(_RT.c.token_hash == bindparam("token_hash"))
    # Lock order, everywhere: the consent first, then what hangs from it. A revocation takes
    # the same locks in the same order, so a refresh racing a revocation waits, never
    # deadlocks. (The refresh token's row is locked by the claiming UPDATE below.)
    .with_for_update(of=_CONSENTS)
)

_CLAIM_REFRESH = (
    _RT.update()
    .where(_RT.c.token_hash == bindparam("spent_hash"), _RT.c.used_at.is_(None))
    .values(used_at=bindparam("now"))
)


def _refresh_grant(
    session: Session, form: Mapping[str, str], ctx: TokenContext, app: Client
) -> dict[str, Any]:
    token = form.get("refresh_token")
    if not token:
        raise InvalidRequest("refresh_token is required")
    token_hash = secret_digest(ctx.settings.secret_key, token)
    connection = session.connection()
    found = connection.execute(_REFRESH_LOOKUP, {"token_hash": token_hash}).first()
    if found is None or found[1] != app.client_id:
        raise InvalidGrant("the refresh token is invalid")
    family_id, _, expires_at, used_at, revoked_at, dpop_jkt = found[:6]
    consent = ConsentFacts._make(found[6:])
    if used_at is not None:
        # RFC 9700 §4.14.2: reuse of a rotated token revokes the whole family.
        _revoke_family(session, family_id, ctx.now)
        raise ReplayRefused("the refresh token was already used; its family is revoked")
    if revoked_at is not None or expires_at <= ctx.now:
        raise InvalidGrant("the refresh token is revoked or expired")
    # RFC 9449 §5: a refresh token bound to a DPoP key is used with a proof of that key.
    if dpop_jkt is not None and dpop_jkt != ctx.dpop_jkt:
        raise InvalidGrant("this refresh token is bound to a DPoP key: send a proof of it")
    _check_consent_usable(consent, app, ctx.now)
    holders = _holders_of(session, consent)
    holder = _select_holder(consent, holders, form.get("resource"))
    refresh = new_secret("hcb_rt")
    body, jti = _token_response(ctx, consent, app, holders, holder, refresh)  # reads first, as above
    # The claim is the check that counts: of two requests racing with the same token, one
    # UPDATE finds it unused; the other finds it spent and is treated as a reuse.
    claimed = connection.execute(_CLAIM_REFRESH, {"spent_hash": token_hash, "now": ctx.now})
    if claimed.rowcount != 1:
        _revoke_family(session, family_id, ctx.now)
        raise ReplayRefused("the refresh token was already used; its family is revoked")
    _store_refresh_token(session, ctx, consent, family_id, refresh)
    _record_tokens(session, ctx, EventTag.TOKEN_REFRESHED, consent, holder, jti)
    return body


def introspect_token(
    session: Session, token: str, *, holder: Holder, keystore: KeyStore, issuer: str, now: datetime
) -> dict[str, Any]:
    """RFC 7662 §2.2 for a holder: ``active`` only for a well-signed, unexpired token meant
    for this holder whose consent is in force and whose app is approved — not merely for a
    good signature, as authlib's JWT introspection would answer."""
    inactive = {"active": False}
    keystore.refresh()
    try:
        verified = verify_jwt(
            token,
            keys=keystore.public_jwks(now),
            algorithms=("ES256",),
            types=("at+jwt",),
            typ_required=True,
            issuer=issuer,
            audiences=(holder.base_url,),
            required_claims=("iss", "sub", "aud", "exp", "iat", "jti", "client_id", "consent_id"),
            now=now,
            leeway=timedelta(seconds=30),
        )
    except JoseError:
        return inactive
    claims = verified.claims
    consent = session.get(ConsentRecord, claims["consent_id"])
    app = session.get(App, claims["client_id"])
    if consent is None or app is None or consent.client_id != app.client_id:
        return inactive
    reference = claims.get("status", {}).get("status_list", {})
    if reference.get("idx") != status_reference(consent.status_entry_id, issuer)[1]:
        return inactive  # a token from an earlier grant of a consent granted again
    if effective_status(consent, app, now) != VALID:
        return inactive
    answer: dict[str, Any] = {
        key: claims[key]
        for key in (
            "scope",
            "client_id",
            "sub",
            "aud",
            "iss",
            "exp",
            "iat",
            "jti",
            "authorization_details",
            "consent_id",
            "link_handle",
            "cnf",
        )
        if key in claims
    }
    return {"active": True, "token_type": "DPoP" if "cnf" in claims else "Bearer", **answer}


def revoke_token(
    session: Session, form: Mapping[str, str], app: App, secret_key: bytes, now: datetime
) -> None:
    """RFC 7009 §2.1: an app revokes one of its refresh tokens (and its family)."""
    token = form.get("token")
    if not token:
        raise InvalidRequest("token is required")
    row = session.get(RefreshToken, secret_digest(secret_key, token))
    # §2.2: an unknown or foreign token gets the same 200, so the endpoint reveals nothing.
    if row is not None and row.client_id == app.client_id:
        _revoke_family(session, row.family_id, now)


def check_client_id_only(session: Session, form: Mapping[str, str]) -> App:
    """Public clients (token_endpoint_auth_method "none"): PKCE is their only proof."""
    client_id = form.get("client_id")
    app = session.get(App, client_id) if client_id else None
    if app is None or app.status == "deleted":
        raise InvalidClient("unknown client")
    if app.token_endpoint_auth_method != "none":  # noqa: S105 (a method name, not a secret)
        raise InvalidClient("this client must authenticate with private_key_jwt")
    return app


_PUBLIC_CLIENT = select(_APPS.c.status, _APPS.c.token_endpoint_auth_method).where(
    _APPS.c.client_id == bindparam("client_id")
)


def public_token_client(session: Session, form: Mapping[str, str]) -> Client:
    """``check_client_id_only`` for the token endpoint, in one Core statement."""
    client_id = form.get("client_id")
    found = (
        session.connection().execute(_PUBLIC_CLIENT, {"client_id": client_id}).first() if client_id else None
    )
    if client_id is None or found is None or found[0] == "deleted":
        raise InvalidClient("unknown client")
    if found[1] != "none":
        raise InvalidClient("this client must authenticate with private_key_jwt")
    return Client(client_id, found[0])

"""The events of the audit log, one tag each: ``source:subject:action``.

``source`` is who acted (``app``, ``holder``, ``patient``, ``operator``, ``broker``), then
what it acted on and what happened. Tags are data in the log: once written they are never
renamed, only added.
"""

from __future__ import annotations

from enum import StrEnum


class EventTag(StrEnum):
    # Apps (RFC 7591 / 7592) and the charter's verdicts on them.
    APP_REGISTERED = "app:registration:created"
    APP_UPDATED = "app:registration:updated"
    APP_DELETED = "app:registration:deleted"
    APP_SUSPENDED = "broker:app:suspended"  # a charter re-check no longer passes
    APP_RESTORED = "broker:app:restored"
    APP_RECHECKED = "broker:app:rechecked"  # a new charter version, same outcome
    APP_DECIDED = "operator:app:decided"  # an operator settled a review, with a reason
    CHARTER_APPLIED = "operator:charter:applied"
    # Holders, registered and approved by the operator.
    HOLDER_REGISTERED = "operator:holder:registered"
    HOLDER_APPROVED = "operator:holder:approved"
    # The patient's own acts.
    LINK_CREATED = "patient:link:created"
    LINK_REMOVED = "patient:link:removed"
    CONSENT_GRANTED = "patient:consent:granted"
    CONSENT_CHANGED = "patient:consent:changed"
    CONSENT_REVOKED = "patient:consent:revoked"
    CONSENT_EXPIRED = "patient:consent:expired"
    DELEGATION_GIVEN = "patient:delegation:given"
    DELEGATION_WITHDRAWN = "patient:delegation:withdrawn"
    DOWNLOAD_GRANTED = "patient:download:granted"  # a one-time download of one's own data
    # A caregiver's answers to an invitation, and what the broker refused them.
    DELEGATION_ACCEPTED = "caregiver:delegation:accepted"
    DELEGATION_DECLINED = "caregiver:delegation:declined"
    DELEGATION_ENDED = "caregiver:delegation:ended"  # the caregiver stopped helping
    CAREGIVER_VIEWED = "caregiver:consents:viewed"
    CAREGIVER_REFUSED = "broker:caregiver:refused"  # beyond the limits, or no longer allowed
    # Tokens, written by the token endpoint.
    TOKEN_ISSUED = "broker:token:issued"  # noqa: S105 (a tag, not a secret)
    TOKEN_REFRESHED = "broker:token:refreshed"  # noqa: S105 (a tag, not a secret)
    TOKEN_REVOKED = "broker:token:revoked"  # noqa: S105 (a tag, not a secret)
    # A holder's access receipt: data left the holder for an app.
    DATA_RELEASED = "holder:data:released"


CONSENT_TAGS = frozenset(
    {EventTag.CONSENT_GRANTED, EventTag.CONSENT_CHANGED, EventTag.CONSENT_REVOKED, EventTag.CONSENT_EXPIRED}
)

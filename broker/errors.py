"""The broker's errors, one tree.

::

    BrokerError                       RFC 9457 problem details on the API
    ├── NotFound                      404
    ├── Unauthorized                  401
    ├── Conflict                      409
    ├── InvalidRequest                400
    └── OAuthError                    RFC 6749 §5.2 form on OAuth endpoints
        ├── InvalidClientMetadata     RFC 7591 §3.2.2
        ├── InvalidRedirectURI        RFC 7591 §3.2.2
        └── InvalidToken              RFC 6750 §3.1 (registration access token)

Routes raise them; ``broker.app`` renders them. Every answer names what is wrong.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "https://consent-broker.example/problems/"


class BrokerError(Exception):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        """RFC 9457 §3 members, plus extension members given as ``extra``."""
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class InvalidRequest(BrokerError):
    status = 400
    slug = "invalid-request"
    title = "The request is not valid"


class Unauthorized(BrokerError):
    status = 401
    slug = "unauthorized"
    title = "Authentication is required"


class Forbidden(BrokerError):
    status = 403
    slug = "forbidden"
    title = "Not allowed"


class NotFound(BrokerError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(BrokerError):
    status = 409
    slug = "conflict"
    title = "Conflicts with the current state"


class DamagedLog(BrokerError):
    """The audit log does not match its own signed checkpoints: never served as if it did."""

    status = 500
    slug = "audit-log-damaged"
    title = "The audit log is damaged"


class OAuthError(BrokerError):
    """An error on an OAuth endpoint, rendered as ``{"error", "error_description"}``."""

    status = 400
    error: ClassVar[str] = "invalid_request"

    def oauth_body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.detail}


class InvalidClientMetadata(OAuthError):
    error = "invalid_client_metadata"


class InvalidRedirectURI(OAuthError):
    error = "invalid_redirect_uri"


class InvalidToken(OAuthError):
    status = 401
    error = "invalid_token"


class InvalidClient(OAuthError):
    status = 401
    error = "invalid_client"


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class InvalidAuthorizationDetails(OAuthError):
    """RFC 9396 §5."""

    error = "invalid_authorization_details"


class InvalidTarget(OAuthError):
    """RFC 8707 §2: the ``resource`` is not one this client may get a token for."""

    error = "invalid_target"


class UnsupportedTokenType(OAuthError):
    """RFC 7009 §2.2.1."""

    error = "unsupported_token_type"


class InvalidDPoPProof(OAuthError):
    """RFC 9449 §5.1."""

    error = "invalid_dpop_proof"

"""The SDK's errors, one tree.

::

    BrokerSDKError
    ├── VerificationError             a holder refuses a presented token (RFC 6750 §3.1 codes)
    │   ├── TokenInvalid              401 invalid_token: forged, malformed, not for this holder
    │   │   ├── TokenExpired          401 invalid_token: exp has passed
    │   │   ├── TokenRevoked          401 invalid_token: the consent was withdrawn
    │   │   │   └── AppSuspended      401 invalid_token: the app is suspended under the charter
    │   │   └── DPoPProofInvalid      401 invalid_dpop_proof (RFC 9449 §7.1)
    │   ├── InsufficientScope         403 insufficient_scope: a category the consent does not grant
    │   └── BrokerUnavailable         503: the status cannot be known within its bound (fail closed)
    ├── ClientError                   an app's dealings with the broker or a holder
    │   ├── OAuthError                an RFC 6749 §5.2 / RFC 7591 §3.2.2 error answer
    │   │   └── ConsentRevoked        the consent behind a grant is gone (invalid_grant, 401)
    │   ├── BrokerUnreachable         the broker could not be reached
    │   └── ReceiptRejected           the broker refused an access receipt (4xx): not retried
    └── ExportUnreadable              a document given as an audit export is not one

Each error has ``reason``, a short stable code naming the failed check (``"alg"``,
``"aud"``, ``"status"``…), so that holders can count refusals without parsing messages.
Messages never contain the token or key material.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AppSuspended",
    "BrokerSDKError",
    "BrokerUnavailable",
    "BrokerUnreachable",
    "ClientError",
    "ConsentRevoked",
    "DPoPProofInvalid",
    "ExportUnreadable",
    "InsufficientScope",
    "OAuthError",
    "ReceiptRejected",
    "TokenExpired",
    "TokenInvalid",
    "TokenRevoked",
    "VerificationError",
]


class BrokerSDKError(Exception):
    """Every error the SDK raises on purpose."""


class VerificationError(BrokerSDKError):
    """A presented access token was refused; ``error`` is the RFC 6750 code to answer with."""

    error: ClassVar[str] = "invalid_token"
    status_code: ClassVar[int] = 401

    def __init__(self, description: str, *, reason: str = "invalid") -> None:
        super().__init__(description)
        self.description = description
        self.reason = reason


class TokenInvalid(VerificationError):
    """Malformed, forged, of the wrong type, for another audience or issuer, not yet valid."""


class TokenExpired(TokenInvalid):
    """The token's ``exp`` has passed (beyond the leeway)."""


class TokenRevoked(TokenInvalid):
    """The consent behind the token was withdrawn (or has expired) at the broker."""


class AppSuspended(TokenRevoked):
    """The app that holds the token is suspended under the charter (status SUSPENDED)."""


class DPoPProofInvalid(TokenInvalid):
    """The DPoP proof of a sender-constrained token is missing or wrong (RFC 9449 §7.1)."""

    error = "invalid_dpop_proof"


class InsufficientScope(VerificationError):
    """The request needs a data category the token does not grant."""

    error = "insufficient_scope"
    status_code = 403

    def __init__(self, description: str, *, missing: frozenset[str] = frozenset(), reason: str = "scope"):
        super().__init__(description, reason=reason)
        self.missing = missing


class BrokerUnavailable(VerificationError):
    """The broker's keys or the consent's status cannot be known within their staleness
    bound: the verifier fails closed. Not the client's fault: answer 503 and retry later."""

    error = "temporarily_unavailable"
    status_code = 503


class ClientError(BrokerSDKError):
    """An app-side failure talking to the broker or a holder."""


class OAuthError(ClientError):
    """An error answer of the broker (RFC 6749 §5.2, RFC 7591 §3.2.2) or a holder (RFC 6750)."""

    def __init__(self, error: str, description: str = "", *, status: int = 400, body: Any = None) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status
        self.body = body


class ConsentRevoked(OAuthError):
    """The patient withdrew the consent (or the app was suspended): the grant is over.

    Raised when a refresh answers ``invalid_grant`` or a holder refuses a fresh token.
    """


class BrokerUnreachable(ClientError):
    """The broker did not answer (connection error, timeout, or a 5xx)."""


class ReceiptRejected(ClientError):
    """The broker refused an access receipt with a 4xx answer; it is not retried."""

    def __init__(self, status: int, problem: Any) -> None:
        detail = problem.get("detail") if isinstance(problem, dict) else None
        super().__init__(f"receipt refused ({status}): {detail or problem!r}")
        self.status = status
        self.problem = problem


class ExportUnreadable(BrokerSDKError):
    """The document is not an audit export this SDK can read (not JSON, another format…)."""

"""SDK of the health consent broker.

For holders: :class:`HolderVerifier` (and :func:`verify_token`, :class:`BrokerAuthMiddleware`)
checks broker access tokens; :class:`ReceiptSender` reports each release to the broker;
:mod:`broker_sdk.link` is the holder's side of the patient link step. For apps:
:class:`AppClient` registers, asks for consent, gets and refreshes tokens and calls holders.
For patients: :func:`verify_export` checks an audit export offline.
"""

from broker_sdk._jose import load_private_key
from broker_sdk.app import (
    AccessToken,
    AppClient,
    AuthorizationRequest,
    Grant,
    HolderGrant,
    Registration,
    Verdict,
    load_manifest,
)
from broker_sdk.asgi import BrokerAuthMiddleware
from broker_sdk.audit import (
    CheckpointResult,
    EntryResult,
    ExportProblem,
    ExportReport,
    verify_export,
    verify_inclusion,
)
from broker_sdk.download import DownloadEndpoint, DownloadVerifier, handle_download
from broker_sdk.dpop import DPoPKey, MemoryReplayCache, ReplayCache
from broker_sdk.errors import (
    AppSuspended,
    BrokerSDKError,
    BrokerUnavailable,
    BrokerUnreachable,
    ClientError,
    ConsentRevoked,
    DPoPProofInvalid,
    ExportUnreadable,
    InsufficientScope,
    OAuthError,
    ReceiptRejected,
    TokenExpired,
    TokenInvalid,
    TokenRevoked,
    VerificationError,
)
from broker_sdk.federation import IssuerResolver, ResolvedIssuer, federated_verifier
from broker_sdk.link import (
    LinkRequest,
    LinkRequestError,
    link_response,
    link_token,
    new_handle,
    parse_link_request,
)
from broker_sdk.receipts import DeliveryReport, ReceiptSender
from broker_sdk.verifier import HolderVerifier, VerifiedToken, verify_token

__version__ = "0.2.0"

__all__ = [
    "AccessToken",
    "AppClient",
    "AppSuspended",
    "AuthorizationRequest",
    "BrokerAuthMiddleware",
    "BrokerSDKError",
    "BrokerUnavailable",
    "BrokerUnreachable",
    "CheckpointResult",
    "ClientError",
    "ConsentRevoked",
    "DPoPKey",
    "DPoPProofInvalid",
    "DeliveryReport",
    "DownloadEndpoint",
    "DownloadVerifier",
    "EntryResult",
    "ExportProblem",
    "ExportReport",
    "ExportUnreadable",
    "Grant",
    "HolderGrant",
    "HolderVerifier",
    "InsufficientScope",
    "IssuerResolver",
    "LinkRequest",
    "LinkRequestError",
    "MemoryReplayCache",
    "OAuthError",
    "ReceiptRejected",
    "ReceiptSender",
    "Registration",
    "ReplayCache",
    "ResolvedIssuer",
    "TokenExpired",
    "TokenInvalid",
    "TokenRevoked",
    "Verdict",
    "VerificationError",
    "VerifiedToken",
    "__version__",
    "federated_verifier",
    "handle_download",
    "link_response",
    "link_token",
    "load_manifest",
    "load_private_key",
    "new_handle",
    "parse_link_request",
    "verify_export",
    "verify_inclusion",
    "verify_token",
]

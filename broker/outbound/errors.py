"""The one error of the outbound client (S6)."""

from __future__ import annotations

from broker.errors import BrokerError

PUBLIC_MESSAGE = "the URL could not be fetched"


class OutboundRefused(BrokerError):
    """A fetch was refused or failed, whatever the cause.

    The message shown to anyone outside the broker is always ``PUBLIC_MESSAGE``, so that a
    developer cannot map the internal network by telling a blocked address from a timeout or a
    TLS error (SECURITY.md S6). The cause is in ``reason``: logged on ``broker.outbound``, read
    by tests, never sent.
    """

    status = 502
    slug = "outbound-refused"
    title = "A remote document could not be fetched"

    def __init__(self, reason: str) -> None:
        super().__init__(PUBLIC_MESSAGE)
        self.reason = reason

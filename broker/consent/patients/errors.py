"""Errors of the patient pages.

::

    BrokerError (broker.errors)
    ├── Forbidden
    │   └── CsrfRejected          403: missing, wrong or cross-site form
    ├── TooManyAttempts           429: log-in throttled; carries ``retry_after`` seconds
    ├── HashingBusy               503: too many password checks at once (passwords.py)
    └── ExternalLoginFailed       400: the external OpenID Connect log-in did not succeed

Pages render them as readable HTML in the visitor's language (``pages.page_error_handler``);
``code`` names the message to show.
"""

from __future__ import annotations

from typing import ClassVar

from broker.errors import BrokerError, Forbidden


class CsrfRejected(Forbidden):
    slug = "csrf-rejected"
    title = "The form could not be verified"
    code: ClassVar[str] = "csrf"


class TooManyAttempts(BrokerError):
    status = 429
    slug = "too-many-attempts"
    title = "Too many log-in attempts"
    code: ClassVar[str] = "throttled"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class ExternalLoginFailed(BrokerError):
    status = 400
    slug = "external-login-failed"
    title = "The external log-in did not succeed"
    code: ClassVar[str] = "external_login"

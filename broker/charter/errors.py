"""The charter's exceptions.

    CharterError                  base class; never raised itself
    ├── CharterDataError          a charter data file is unreadable or inconsistent
    ├── UnknownCharterVersion     no packaged charter has the requested version (also a LookupError)
    └── RuleSetError              evaluate() was given no rules, twice the same rule,
                                  or a rule citing an article the charter lacks

`evaluate()` raises none of them because of the registration it checks: whatever the app
sent is answered with a verdict. They signal a broken deployment, not a bad app.
"""

from __future__ import annotations

__all__ = ["CharterDataError", "CharterError", "RuleSetError", "UnknownCharterVersion"]


class CharterError(Exception):
    """Base class of the charter's exceptions."""


class CharterDataError(CharterError):
    """A charter data file is missing a field, has a wrong type or contradicts itself.

    The message names the file and the JSON path of the first problem found.
    """


class UnknownCharterVersion(CharterError, LookupError):
    """No charter with this version is packaged."""


class RuleSetError(CharterError):
    """The rules handed to `evaluate()` cannot judge anything.

    An empty rule set would approve every app, so it is an error and never a pass
    (STYLE.md, convention 3). A rule citing an article that the charter does not define could
    not tell anyone which article was broken (CHARTER.md, article 09).
    """

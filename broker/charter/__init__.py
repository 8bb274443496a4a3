"""The charter «Mes données, ma santé» as code: versioned data, pure rules, verdicts.

    from broker.charter import evaluate, load_charter

    charter = load_charter()                      # the latest packaged version
    verdict = evaluate(registration, charter)     # registration: parsed RFC 7591 JSON
    verdict.status                                # "approved" | "refused" | "needs_review"
    verdict.to_json()                             # MANIFEST.md's charter_verdict, less
                                                  # checked_at and manifest_sha256
    manifest_digest(registration)                 # for manifest_sha256

The package imports nothing else from `broker` (STYLE.md, convention 12): it is a pure function
of a manifest and a data file, so every broker, peer brokers included, reaches the same verdict.

Exceptions (none is raised because of what an app sent):

    CharterError
    ├── CharterDataError        a charter data file is unreadable or inconsistent
    ├── UnknownCharterVersion   no packaged charter has this version (also a LookupError)
    └── RuleSetError            no rules, a repeated rule, or a rule citing an unknown article
"""

from __future__ import annotations

from broker.charter.engine import (
    Finding,
    Status,
    Verdict,
    allowed_categories,
    evaluate,
    manifest_digest,
    requested_categories,
)
from broker.charter.errors import CharterDataError, CharterError, RuleSetError, UnknownCharterVersion
from broker.charter.loading import (
    available_versions,
    load_charter,
    load_charter_file,
    parse_charter,
)
from broker.charter.rules import MALFORMED_RULES, RULES, Rule, Severity
from broker.charter.vocabulary import (
    Article,
    BusinessModel,
    Category,
    Certification,
    Charter,
    Purpose,
    Text,
    TypologyGroup,
)

__all__ = [
    "MALFORMED_RULES",
    "RULES",
    "Article",
    "BusinessModel",
    "Category",
    "Certification",
    "Charter",
    "CharterDataError",
    "CharterError",
    "Finding",
    "Purpose",
    "Rule",
    "RuleSetError",
    "Severity",
    "Status",
    "Text",
    "TypologyGroup",
    "UnknownCharterVersion",
    "Verdict",
    "allowed_categories",
    "available_versions",
    "evaluate",
    "load_charter",
    "load_charter_file",
    "manifest_digest",
    "parse_charter",
    "requested_categories",
]

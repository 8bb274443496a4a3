"""Judging a registration against a charter, and what an approved manifest allows at run time.

`evaluate()` is pure: the registration and the charter in, a verdict out. No clock (the caller
adds `checked_at`), no I/O, no randomness, and findings in a stable order (rule order, then
document order), so the same input gives the same verdict on every broker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from broker.charter.canonical import sha256_hex
from broker.charter.errors import RuleSetError
from broker.charter.manifest import MANIFEST_FIELD, Manifest, parse_manifest, parse_registration
from broker.charter.rules import MALFORMED_RULES, RULES, Problem, Rule, RuleInput, Severity
from broker.charter.vocabulary import Charter, Text

__all__ = [
    "Finding",
    "Status",
    "Verdict",
    "allowed_categories",
    "evaluate",
    "manifest_digest",
    "requested_categories",
]


class Status(StrEnum):
    APPROVED = "approved"
    REFUSED = "refused"
    NEEDS_REVIEW = "needs_review"


@dataclass(frozen=True, slots=True)
class Finding:
    """One fault: which rule and article, where in the registration, and what it means."""

    rule: str
    article: str
    severity: Severity
    # JSON path of the field, e.g. "charter_manifest.data_requests[2]"; "$" is the document.
    field: str
    # For the app developer: what to change.
    message: Text
    # For the patient: what it means for them.
    patient_message: Text

    def to_json(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "article": self.article,
            "severity": str(self.severity),
            "field": self.field,
            "message": self.message.to_json(),
            "patient_message": self.patient_message.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """The charter's answer for one registration under one charter version."""

    status: Status
    charter_version: str
    findings: tuple[Finding, ...]

    @property
    def malformed(self) -> bool:
        """Whether the registration breaks the manifest's form (MANIFEST.md: answer 400)."""
        return any(finding.rule in MALFORMED_RULES for finding in self.findings)

    @property
    def articles(self) -> tuple[str, ...]:
        """The articles the findings cite, each once, in the order of the findings."""
        return tuple(dict.fromkeys(finding.article for finding in self.findings))

    def to_json(self) -> dict[str, object]:
        """The `charter_verdict` of MANIFEST.md, less `checked_at` and `manifest_sha256`."""
        return {
            "status": str(self.status),
            "charter_version": self.charter_version,
            "findings": [finding.to_json() for finding in self.findings],
        }


class _Params(dict[str, str]):
    # A template naming a parameter the problem did not give keeps its placeholder instead of
    # raising: evaluate() must answer every registration. Tests check no placeholder is left.
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _render(template: Text, problem: Problem) -> Text:
    def in_language(lang: str) -> str:
        values = _Params(field=problem.field)
        for key, value in problem.params:
            values[key] = value.get(lang) if isinstance(value, Text) else value
        return template.get(lang).format_map(values)

    return Text(fr=in_language("fr"), en=in_language("en"))


def _finding(rule: Rule, problem: Problem) -> Finding:
    template = rule.messages.get(problem.reason)
    if template is None:
        raise RuleSetError(f"rule {rule.id} gave reason {problem.reason!r} without a message")
    return Finding(
        rule=rule.id,
        article=rule.article,
        severity=rule.severity,
        field=problem.field,
        message=_render(template, problem),
        patient_message=_render(rule.patient, problem),
    )


def _check_rules(rules: Sequence[Rule], charter: Charter) -> None:
    if not rules:
        raise RuleSetError("no rules to evaluate: an empty rule set would approve every app")
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise RuleSetError(f"rule {rule.id} is given twice")
        seen.add(rule.id)
        if rule.article not in charter.articles:
            raise RuleSetError(
                f"rule {rule.id} cites article {rule.article}, which charter {charter.version} "
                "does not define"
            )


def _status(findings: Sequence[Finding]) -> Status:
    severities = {finding.severity for finding in findings}
    if Severity.REFUSE in severities:
        return Status.REFUSED
    if Severity.NEEDS_REVIEW in severities:
        return Status.NEEDS_REVIEW
    return Status.APPROVED


def evaluate(
    registration: object,
    charter: Charter,
    *,
    allow_loopback_http: bool = False,
    rules: Sequence[Rule] = RULES,
) -> Verdict:
    """Run every rule on a registration document and collect all findings.

    `registration` is the whole RFC 7591 client metadata document as parsed JSON, with
    `redirect_uris` and `charter_manifest`. Any JSON-shaped value is answered with a verdict;
    one that is not even an object is refused by `manifest.well_formed`.

    `allow_loopback_http` accepts http redirect URIs on a loopback host (RFC 8252 §7.3); only
    a development deployment passes True.

    Raises `RuleSetError` if `rules` is empty, repeats a rule, or cites an article the charter
    does not define: a broken deployment, never a fault of the app.
    """
    _check_rules(rules, charter)
    given = RuleInput(
        registration=parse_registration(registration),
        charter=charter,
        allow_loopback_http=allow_loopback_http,
    )
    findings = tuple(_finding(rule, problem) for rule in rules for problem in rule.check(given))
    return Verdict(status=_status(findings), charter_version=charter.version, findings=findings)


def manifest_digest(document: object) -> str:
    """SHA-256 hex of canonical JSON: sorted keys, no whitespace, UTF-8, no ASCII escapes."""
    return sha256_hex(document)


def _manifest_view(manifest: object) -> Manifest | None:
    # Callers hold either the charter_manifest object or the registration that contains it.
    if isinstance(manifest, Mapping) and MANIFEST_FIELD in manifest and "data_requests" not in manifest:
        manifest = manifest[MANIFEST_FIELD]
    return parse_manifest(manifest)


def requested_categories(manifest: object) -> frozenset[str]:
    """Every category the manifest's well-formed data requests name.

    `manifest` is the `charter_manifest` object, or the registration that contains it.
    """
    view = _manifest_view(manifest)
    if view is None or view.data_requests is None:
        return frozenset()
    return frozenset(r.category for r in view.data_requests if r.category is not None)


def allowed_categories(charter: Charter, manifest: object, purpose: str) -> frozenset[str]:
    """The categories an app may ask a patient for, for one purpose (art. 06c at run time).

    Those its approved manifest requests for `purpose`, provided the manifest declares the
    purpose and the charter lets it justify them. Anything else, including everything when the
    purpose is unknown or the manifest unreadable, is not allowed: consent and token code ask
    this, so that nothing outside the approved manifest can ever be requested later.
    """
    view = _manifest_view(manifest)
    charter_purpose = charter.purposes.get(purpose)
    if view is None or view.data_requests is None or view.purposes is None or charter_purpose is None:
        return frozenset()
    if not any(p.id == purpose for p in view.purposes):
        return frozenset()
    return frozenset(
        r.category
        for r in view.data_requests
        if r.purpose == purpose
        and r.category is not None
        and r.category in charter.categories
        and charter_purpose.allows(r.category)
    )

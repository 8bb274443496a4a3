"""The charter's rules, in the order their findings are listed.

Each rule is a `Rule` with a stable dotted id, the article it enforces, a severity and texts for
the app developer and the patient (see `broker.charter.rules.base`). The order follows the
manifest from its form to its content, then the way back to the app, so that a developer reads
the findings top to bottom.
"""

from __future__ import annotations

from broker.charter.rules.base import Problem, Rule, RuleInput, Severity
from broker.charter.rules.information import (
    business_model_conflict_of_interest,
    business_model_declared,
    business_model_not_forbidden,
    funding_disclosed,
    publisher_identity_complete,
    purpose_described,
    purpose_user_facing,
    third_parties_disclosed,
)
from broker.charter.rules.minimisation import (
    category_allowed_by_purpose,
    request_justified,
    research_never_bundled,
    retention_bounded,
    sensitive_category_opt_in,
)
from broker.charter.rules.rights import rights_exercisable
from broker.charter.rules.security import (
    certification_review,
    health_data_certified,
    hosting_declared,
    outside_eu_review,
    redirect_uris_https,
    transfer_declared_consistently,
)
from broker.charter.rules.shape import known_vocabulary, well_formed

__all__ = ["MALFORMED_RULES", "RULES", "Problem", "Rule", "RuleInput", "Severity"]

RULES: tuple[Rule, ...] = (
    well_formed,
    known_vocabulary,
    purpose_user_facing,
    purpose_described,
    publisher_identity_complete,
    business_model_declared,
    business_model_not_forbidden,
    business_model_conflict_of_interest,
    funding_disclosed,
    third_parties_disclosed,
    category_allowed_by_purpose,
    request_justified,
    sensitive_category_opt_in,
    research_never_bundled,
    retention_bounded,
    rights_exercisable,
    hosting_declared,
    health_data_certified,
    certification_review,
    transfer_declared_consistently,
    outside_eu_review,
    redirect_uris_https,
)

# Findings of these rules make a registration *malformed* in the sense of MANIFEST.md
# (400 invalid_client_metadata, nothing stored) rather than well formed but refused.
MALFORMED_RULES = frozenset({well_formed.id, known_vocabulary.id})

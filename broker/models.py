"""Every table of the broker, gathered for Alembic and the schema test."""

from broker.audit import models as audit_models
from broker.catalog import models as catalog_models
from broker.consent import download as download_models
from broker.consent import models as consent_models
from broker.consent.caregivers import models as caregiver_models
from broker.consent.patients import models as patient_models
from broker.db import Base
from broker.federation import models as federation_models

metadata = Base.metadata

__all__ = [
    "audit_models",
    "caregiver_models",
    "catalog_models",
    "consent_models",
    "download_models",
    "federation_models",
    "metadata",
    "patient_models",
]

"""Every table of the broker, gathered for Alembic and the schema test."""

from broker.catalog import models as catalog_models
from broker.consent import models as consent_models
from broker.consent.patients import models as patient_models
from broker.db import Base

metadata = Base.metadata

__all__ = ["catalog_models", "consent_models", "metadata", "patient_models"]

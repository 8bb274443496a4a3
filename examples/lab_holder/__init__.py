"""A demo laboratory (``labo-demo``): FHIR R4 Observations behind broker tokens."""

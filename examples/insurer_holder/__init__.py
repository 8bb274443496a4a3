"""A demo health insurer (``assurance-demo``): reimbursements as FHIR R4 ExplanationOfBenefit."""

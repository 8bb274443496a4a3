"""The laboratory's own records: a few synthetic patients and their results as FHIR R4.

Everything is generated deterministically (the same values on every machine) and every
resource is validated with ``fhir.resources`` before it is served. Codes are LOINC, units
UCUM. These values are what the end-to-end test looks for in the broker's database, logs and
traffic, and must never find.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

from examples.common.values import between

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
PARIS = timezone(timedelta(hours=1))
FIRST_VISIT = date(2025, 1, 6)


@dataclass(frozen=True)
class LabPatient:
    record_id: str  # the laboratory's own record number
    family: str
    given: tuple[str, ...]
    birth_date: str
    gender: str
    username: str  # the patient's log-in at the laboratory's own site (link step)
    password: str
    diabetic: bool

    @property
    def display(self) -> str:
        return f"{self.family.upper()} {' '.join(self.given)}"


PATIENTS: tuple[LabPatient, ...] = (
    LabPatient(
        "LBM-69-004217",
        "Martin",
        ("Gaëlle", "Josiane"),
        "1971-05-09",
        "female",
        "gaelle.martin",
        "labo-gaelle-2026",
        diabetic=True,
    ),
    LabPatient(
        "LBM-69-005530",
        "Dubois",
        ("Antoine", "Lucien"),
        "1964-11-23",
        "male",
        "antoine.dubois",
        "labo-antoine-2026",
        diabetic=False,
    ),
    LabPatient(
        "LBM-69-007781",
        "Bernard",
        ("Colette",),
        "1958-02-17",
        "female",
        "colette.bernard",
        "labo-colette-2026",
        diabetic=True,
    ),
)


@dataclass(frozen=True)
class Test:
    key: str
    loinc: str
    loinc_display: str
    label: str  # French, as the laboratory prints it
    unit: str
    low: float
    high: float
    decimals: int
    every_months: int
    reference: tuple[float, float]


# Target ranges differ for a diabetic patient: their values are drawn from a higher band.
TESTS = (
    Test(
        "glucose",
        "14771-0",
        "Fasting glucose [Moles/volume] in Serum or Plasma",
        "Glycémie à jeun",
        "mmol/L",
        4.21,
        6.09,
        2,
        1,
        (3.9, 6.1),
    ),
    Test(
        "hba1c",
        "4548-4",
        "Hemoglobin A1c/Hemoglobin.total in Blood",
        "Hémoglobine glyquée (HbA1c)",
        "%",
        4.6,
        5.9,
        1,
        3,
        (4.0, 6.0),
    ),
    Test(
        "cholesterol",
        "2093-3",
        "Cholesterol [Mass/volume] in Serum or Plasma",
        "Cholestérol total",
        "g/L",
        1.52,
        2.38,
        2,
        6,
        (1.5, 2.0),
    ),
)
DIABETIC_BANDS = {"glucose": (6.31, 9.87), "hba1c": (6.6, 8.9), "cholesterol": (1.71, 2.64)}
MONTHS = 12


def patient_resource(patient: LabPatient) -> dict[str, Any]:
    resource = {
        "resourceType": "Patient",
        "id": patient.record_id,
        "identifier": [{"system": "urn:oid:1.2.250.1.999.69.1", "value": patient.record_id}],
        "name": [{"family": patient.family, "given": list(patient.given)}],
        "gender": patient.gender,
        "birthDate": patient.birth_date,
    }
    Patient.model_validate(resource)
    return resource


def _observation(patient: LabPatient, test: Test, month: int) -> dict[str, Any]:
    low, high = DIABETIC_BANDS[test.key] if patient.diabetic else (test.low, test.high)
    value = between(low, high, test.decimals, patient.record_id, test.key, month)
    if f"{value:.{test.decimals}f}" != str(value):
        # No trailing zero ("2.3" for 2.30): every value is served with all its decimals, so
        # the end-to-end test can search for it without matching unrelated text.
        value = round(value + 10**-test.decimals, test.decimals)
    day = FIRST_VISIT + timedelta(days=30 * month + int(between(0, 6, 0, patient.record_id, month)))
    taken = datetime(day.year, day.month, day.day, 7, 40 + month, tzinfo=PARIS)
    issued = taken + timedelta(hours=9, minutes=month)
    return {
        "resourceType": "Observation",
        "id": f"{patient.record_id}-{test.key}-{month:02d}",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                        "display": "Laboratory",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": LOINC, "code": test.loinc, "display": test.loinc_display}],
            "text": test.label,
        },
        "subject": {"reference": f"Patient/{patient.record_id}", "display": patient.display},
        "effectiveDateTime": taken.isoformat(),
        "issued": issued.isoformat(),
        "valueQuantity": {"value": value, "unit": test.unit, "system": UCUM, "code": test.unit},
        "referenceRange": [
            {
                "low": {"value": test.reference[0], "unit": test.unit, "system": UCUM, "code": test.unit},
                "high": {"value": test.reference[1], "unit": test.unit, "system": UCUM, "code": test.unit},
            }
        ],
    }


@functools.cache
def observations(record_id: str) -> tuple[dict[str, Any], ...]:
    """Every result of one patient, oldest first, each validated as a FHIR Observation."""
    patient = next(p for p in PATIENTS if p.record_id == record_id)
    out = []
    for test in TESTS:
        for month in range(0, MONTHS, test.every_months):
            resource = _observation(patient, test, month)
            Observation.model_validate(resource)  # raises on anything FHIR R4 would refuse
            out.append(resource)
    out.sort(key=lambda r: r["effectiveDateTime"])
    return tuple(out)


def search(record_id: str, code: str | None = None) -> list[dict[str, Any]]:
    """``GET Observation?code=`` for one patient: LOINC codes (``system|code`` accepted),
    separated by commas (FHIR's "or")."""
    wanted = {c.split("|")[-1] for c in code.split(",")} if code else None
    return [r for r in observations(record_id) if wanted is None or r["code"]["coding"][0]["code"] in wanted]


def searchset(resources: list[dict[str, Any]], base_url: str) -> dict[str, Any]:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {
                "fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }
    Bundle.model_validate(bundle)
    return bundle


def find_by_login(username: str, password: str) -> LabPatient | None:
    import hmac

    for patient in PATIENTS:
        # Compare both fields in constant time; a demo, but the habit is the point.
        same_user = hmac.compare_digest(patient.username.encode(), username.strip().lower().encode())
        same_password = hmac.compare_digest(patient.password.encode(), password.encode())
        if same_user and same_password:
            return patient
    return None


def served_values() -> dict[str, set[str]]:
    """What this holder serves and the broker must never see: values, codes, names, ids."""
    values: set[str] = set()
    codes: set[str] = {t.loinc for t in TESTS}
    names: set[str] = set()
    for patient in PATIENTS:
        names |= {patient.display, patient.record_id, patient.birth_date, *patient.given[1:]}
        for r in observations(patient.record_id):
            values.add(f"{r['valueQuantity']['value']}")
            values.add(r["effectiveDateTime"])
    return {"values": values, "codes": codes, "names": names}

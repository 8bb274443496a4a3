"""Properties of `evaluate()`: deterministic, total on any JSON-shaped value, refusing malformed
manifests at the faulty field, and never approving a manifest that holds a forbidden element."""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.charter import Charter, Severity, Status, evaluate, load_charter
from tests.charter.manifests import COMPLIANT, request, varied_app

CHARTER = load_charter("1.0")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)

compliant_documents = st.sampled_from(sorted(COMPLIANT)).map(lambda name: copy.deepcopy(COMPLIANT[name]))
varied_documents = st.builds(
    # Seeded, reproducible test data: not a secret.
    lambda seed, number: varied_app(random.Random(seed), CHARTER, number),  # noqa: S311
    st.integers(min_value=0, max_value=2**32),
    st.integers(min_value=0, max_value=10_000),
)
documents = compliant_documents | varied_documents


def _paths(value: Any, path: str = "") -> list[str]:
    """Every member and item path inside a document, as findings write them."""
    found = []
    if isinstance(value, dict):
        for key, child in value.items():
            child_path = f"{path}.{key}" if path else key
            found += [child_path, *_paths(child, child_path)]
    elif isinstance(value, list):
        for index, child in enumerate(value):
            child_path = f"{path}[{index}]"
            found += [child_path, *_paths(child, child_path)]
    return found


def _set(document: Any, path: str, value: Any) -> Any:
    result = copy.deepcopy(document)
    steps = [name if name else int(index) for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path)]
    target = result
    for step in steps[:-1]:
        target = target[step]
    target[steps[-1]] = value
    return result


M = r"charter_manifest"
ITEM = r"\[\d+\]"
STRING, OPTIONAL_STRING, BOOLEAN, INTEGER, OBJECT, ARRAY = (
    "string",
    "optional string",
    "boolean",
    "integer",
    "object",
    "array",
)
# The contract's members and their JSON types (MANIFEST.md); anything else may hold anything.
CONTRACT: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), t)
    for p, t in [
        ("redirect_uris", ARRAY),
        (rf"redirect_uris{ITEM}", STRING),
        (M, OBJECT),
        (rf"{M}\.(publisher|business_model|retention|rights|hosting)", OBJECT),
        (
            rf"{M}\.publisher\.(legal_name|registration_number|country|address|contact_email|dpo_email)",
            STRING,
        ),
        (rf"{M}\.business_model\.(model|description)", STRING),
        (rf"{M}\.(business_model\.funding_sources|purposes|data_requests|third_parties)", ARRAY),
        (rf"{M}\.(business_model\.funding_sources|purposes|data_requests|third_parties){ITEM}", OBJECT),
        (rf"{M}\.business_model\.funding_sources{ITEM}\.(name|kind)", STRING),
        (rf"{M}\.purposes{ITEM}\.(id|description)", STRING),
        (rf"{M}\.data_requests{ITEM}\.(category|purpose|justification)", STRING),
        (rf"{M}\.data_requests{ITEM}\.optional", BOOLEAN),
        (rf"{M}\.retention\.days", INTEGER),
        (rf"{M}\.retention\.description", OPTIONAL_STRING),
        (rf"{M}\.rights\.(access|rectification|erasure|portability)", STRING),
        (rf"{M}\.hosting\.(provider|country)", STRING),
        (rf"{M}\.hosting\.(health_data_certification|certificate_id)", OPTIONAL_STRING),
        (rf"{M}\.third_parties{ITEM}\.(name|purpose|country)", STRING),
        (rf"{M}\.data_leaves_eu", BOOLEAN),
    ]
]


def _expected_type(path: str) -> str | None:
    for pattern, json_type in CONTRACT:
        if pattern.fullmatch(path):
            return json_type
    return None


def _fits(value: object, json_type: str) -> bool:
    return {
        STRING: isinstance(value, str),
        OPTIONAL_STRING: value is None or isinstance(value, str),
        BOOLEAN: isinstance(value, bool),
        INTEGER: isinstance(value, int) and not isinstance(value, bool),
        OBJECT: isinstance(value, dict),
        ARRAY: isinstance(value, list),
    }[json_type]


def _check_verdict_shape(document: object, charter: Charter = CHARTER) -> None:
    verdict = evaluate(document, charter)
    assert verdict.status in set(Status)
    json.dumps(verdict.to_json(), ensure_ascii=False)
    severities = {f.severity for f in verdict.findings}
    if Severity.REFUSE in severities:
        assert verdict.status == Status.REFUSED
    elif severities:
        assert verdict.status == Status.NEEDS_REVIEW
    else:
        assert verdict.status == Status.APPROVED


@given(document=json_values)
def test_total_on_any_json_value(document: object) -> None:
    _check_verdict_shape(document)
    if not isinstance(document, dict):
        verdict = evaluate(document, CHARTER)
        assert verdict.status == Status.REFUSED
        assert [(f.rule, f.field) for f in verdict.findings] == [("manifest.well_formed", "$")]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents, data=st.data())
def test_total_on_any_value_anywhere_in_a_manifest(document: dict[str, Any], data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(_paths(document)), label="path")
    value = data.draw(json_values, label="value")
    broken = _set(document, path, value)
    _check_verdict_shape(broken)

    json_type = _expected_type(path)
    if json_type is not None and not _fits(value, json_type):
        verdict = evaluate(broken, CHARTER)
        assert verdict.status == Status.REFUSED
        assert verdict.malformed
        assert ("manifest.well_formed", path) in {(f.rule, f.field) for f in verdict.findings}


# One value of each JSON type, plus the traps: bool is an int in Python, 1.0 is not an integer.
REPRESENTATIVES: list[object] = [None, True, False, 0, 730, 1.0, "", "x", [], ["x"], {}, {"x": 1}]


def test_every_contract_member_refuses_every_wrong_type() -> None:
    checked = 0
    for name, document in COMPLIANT.items():
        for path in _paths(document):
            json_type = _expected_type(path)
            if json_type is None:
                continue
            for value in REPRESENTATIVES:
                verdict = evaluate(_set(document, path, value), CHARTER)
                if _fits(value, json_type):
                    continue
                checked += 1
                found = {(f.rule, f.field) for f in verdict.findings}
                assert ("manifest.well_formed", path) in found, (name, path, value)
                assert verdict.status == Status.REFUSED
    assert checked > 1000


@given(document=documents, data=st.data())
def test_removing_a_contract_member_is_malformed(document: dict[str, Any], data: st.DataObject) -> None:
    required = [
        p
        for p in _paths(document)
        if _expected_type(p) not in (None, OPTIONAL_STRING) and not p.endswith("]")
    ]
    path = data.draw(st.sampled_from(required), label="path")
    *_, key = re.split(r"\.", path)
    parent_path = path[: -len(key) - 1]
    broken = copy.deepcopy(document)
    parent: Any = broken
    for step in [s for s in re.findall(r"([^.\[\]]+)|\[(\d+)\]", parent_path)]:
        parent = parent[step[0]] if step[0] else parent[int(step[1])]
    del parent[key]
    verdict = evaluate(broken, CHARTER)
    assert verdict.status == Status.REFUSED
    assert ("manifest.well_formed", path) in {(f.rule, f.field) for f in verdict.findings}


@given(document=documents | json_values)
def test_deterministic(document: object) -> None:
    first = evaluate(document, CHARTER)
    assert evaluate(copy.deepcopy(document), CHARTER) == first
    assert evaluate(document, load_charter("1.0")).to_json() == first.to_json()


@given(document=varied_documents)
def test_generated_compliant_apps_are_never_refused(document: dict[str, Any]) -> None:
    verdict = evaluate(document, CHARTER)
    assert verdict.status != Status.REFUSED, verdict.findings
    assert {f.rule for f in verdict.findings} <= {"business_model.conflict_of_interest"}


# Each adds one element the charter forbids; the draw picks the details.
Mutation = Callable[[dict[str, Any], st.DataObject], None]


def _manifest(document: dict[str, Any]) -> dict[str, Any]:
    manifest: dict[str, Any] = document["charter_manifest"]
    return manifest


def _forbidden_model(document: dict[str, Any], data: st.DataObject) -> None:
    forbidden = sorted(m.id for m in CHARTER.business_models.values() if m.forbidden)
    _manifest(document)["business_model"]["model"] = data.draw(st.sampled_from(forbidden))


def _unjustified_category(document: dict[str, Any], data: st.DataObject) -> None:
    declared = {p["id"] for p in _manifest(document)["purposes"]}
    pairs = [
        (category, purpose.id)
        for purpose in CHARTER.purposes.values()
        for category in CHARTER.categories
        if purpose.id not in declared or not purpose.allows(category)
    ]
    category, purpose = data.draw(st.sampled_from(pairs))
    _manifest(document)["data_requests"].append(request(category, purpose, optional=data.draw(st.booleans())))


def _sensitive_without_justification(document: dict[str, Any], data: st.DataObject) -> None:
    category = data.draw(st.sampled_from(sorted(c.id for c in CHARTER.categories.values() if c.sensitive)))
    purposes = [p["id"] for p in _manifest(document)["purposes"]]
    purpose = data.draw(st.sampled_from(purposes))
    why = data.draw(
        st.sampled_from(["", " ", "needed", "x" * (CHARTER.sensitive_justification_min_chars - 1)])
    )
    _manifest(document)["data_requests"].append(request(category, purpose, optional=True, why=why))


def _research_bundled(document: dict[str, Any], data: st.DataObject) -> None:
    manifest = _manifest(document)
    if not any(p["id"] == "research_contribution" for p in manifest["purposes"]):
        manifest["purposes"].append({"id": "research_contribution", "description": "Optional research."})
    non_sensitive = sorted(c.id for c in CHARTER.categories.values() if not c.sensitive)
    category = data.draw(st.sampled_from(non_sensitive))
    manifest["data_requests"].append(request(category, "research_contribution", optional=False))


def _http_redirect(document: dict[str, Any], data: st.DataObject) -> None:
    host = data.draw(st.sampled_from(["app.example", "127.0.0.1", "localhost", "[::1]"]))
    document["redirect_uris"].append(f"http://{host}/callback")


def _retention_too_long(document: dict[str, Any], data: st.DataObject) -> None:
    extra = data.draw(st.integers(min_value=1, max_value=10**9))
    _manifest(document)["retention"]["days"] = CHARTER.retention_max_days + extra


def _right_without_channel(document: dict[str, Any], data: st.DataObject) -> None:
    right = data.draw(st.sampled_from(["access", "rectification", "erasure", "portability"]))
    _manifest(document)["rights"][right] = data.draw(
        st.sampled_from(["", "on request", "http://x.example/r"])
    )


MUTATIONS: list[Mutation] = [
    _forbidden_model,
    _unjustified_category,
    _sensitive_without_justification,
    _research_bundled,
    _http_redirect,
    _retention_too_long,
    _right_without_channel,
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    document=documents, mutations=st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3), data=st.data()
)
def test_adding_a_forbidden_element_never_passes(
    document: dict[str, Any], mutations: list[Mutation], data: st.DataObject
) -> None:
    broken = copy.deepcopy(document)
    for mutate in mutations:
        mutate(broken, data)
    verdict = evaluate(broken, CHARTER)
    assert verdict.status == Status.REFUSED
    assert verdict.findings

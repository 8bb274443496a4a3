"""A typed view of a registration document, built from any JSON-shaped value without raising.

The registration is RFC 7591 client metadata with the `charter_manifest` extension object
(MANIFEST.md). Reading it answers two questions at once:

- *Is it well formed?* Every member the contract requires is present and has its JSON type.
  Each problem is recorded with the JSON path of the member (`ShapeProblem`); the
  `manifest.well_formed` rule turns them into findings.
- *What does it say?* The typed view holds what could be read. A member that is missing or has
  the wrong type is `None` (or its entry is left out of a list, keeping the others' indices),
  so the other rules skip it instead of reporting the same fault a second time.

Members the contract does not name are ignored: MANIFEST.md lets developers add fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "MANIFEST_FIELD",
    "RIGHTS",
    "DataRequest",
    "DeclaredBusinessModel",
    "DeclaredPurpose",
    "FundingSource",
    "Hosting",
    "Manifest",
    "Publisher",
    "Registration",
    "Retention",
    "ShapeProblem",
    "ThirdParty",
    "parse_manifest",
    "parse_registration",
]

MANIFEST_FIELD = "charter_manifest"
# Art. 06d names four rights; MANIFEST.md names one member of `rights` for each.
RIGHTS = ("access", "rectification", "erasure", "portability")

JsonType = Literal["object", "array", "string", "boolean", "integer"]
JsonObject = Mapping[object, object]


@dataclass(frozen=True, slots=True)
class ShapeProblem:
    """A required member is missing (or null), or a member has the wrong JSON type."""

    field: str
    expected: JsonType
    missing: bool


@dataclass(frozen=True, slots=True)
class Publisher:
    legal_name: str | None
    registration_number: str | None
    country: str | None
    address: str | None
    contact_email: str | None
    dpo_email: str | None


@dataclass(frozen=True, slots=True)
class FundingSource:
    index: int
    name: str | None
    kind: str | None


@dataclass(frozen=True, slots=True)
class DeclaredBusinessModel:
    model: str | None
    description: str | None
    funding_sources: tuple[FundingSource, ...] | None


@dataclass(frozen=True, slots=True)
class DeclaredPurpose:
    index: int
    id: str | None
    description: str | None


@dataclass(frozen=True, slots=True)
class DataRequest:
    index: int
    category: str | None
    purpose: str | None
    optional: bool | None
    justification: str | None


@dataclass(frozen=True, slots=True)
class Retention:
    days: int | None
    description: str | None


@dataclass(frozen=True, slots=True)
class Hosting:
    provider: str | None
    country: str | None
    health_data_certification: str | None
    certificate_id: str | None


@dataclass(frozen=True, slots=True)
class ThirdParty:
    index: int
    name: str | None
    purpose: str | None
    country: str | None


@dataclass(frozen=True, slots=True)
class Manifest:
    publisher: Publisher | None
    business_model: DeclaredBusinessModel | None
    purposes: tuple[DeclaredPurpose, ...] | None
    data_requests: tuple[DataRequest, ...] | None
    retention: Retention | None
    # In the order of RIGHTS; None for a right whose member is missing or not a string.
    rights: tuple[tuple[str, str | None], ...] | None
    hosting: Hosting | None
    third_parties: tuple[ThirdParty, ...] | None
    data_leaves_eu: bool | None


@dataclass(frozen=True, slots=True)
class Registration:
    # (JSON path, URI) for each string in `redirect_uris`.
    redirect_uris: tuple[tuple[str, str], ...] | None
    manifest: Manifest | None
    problems: tuple[ShapeProblem, ...]


class _Reader:
    """Reads members of JSON objects, recording what is missing or mistyped."""

    def __init__(self) -> None:
        self.problems: list[ShapeProblem] = []

    def _get(self, parent: JsonObject, key: str, path: str, expected: JsonType) -> object:
        value = parent.get(key)
        if value is None:
            # A null required member says nothing, as if it were absent.
            self.problems.append(ShapeProblem(path, expected, missing=True))
        return value

    def _wrong(self, path: str, expected: JsonType) -> None:
        self.problems.append(ShapeProblem(path, expected, missing=False))

    def as_object(self, value: object, path: str) -> JsonObject | None:
        if isinstance(value, dict):
            return value
        self._wrong(path, "object")
        return None

    def member_object(self, parent: JsonObject, key: str, path: str) -> JsonObject | None:
        value = self._get(parent, key, path, "object")
        return None if value is None else self.as_object(value, path)

    def member_array(self, parent: JsonObject, key: str, path: str) -> list[object] | None:
        value = self._get(parent, key, path, "array")
        if value is None:
            return None
        if isinstance(value, list):
            return value
        self._wrong(path, "array")
        return None

    def string(self, parent: JsonObject, key: str, path: str, *, required: bool = True) -> str | None:
        value = self._get(parent, key, path, "string") if required else parent.get(key)
        if value is None or isinstance(value, str):
            return value
        self._wrong(path, "string")
        return None

    def boolean(self, parent: JsonObject, key: str, path: str) -> bool | None:
        value = self._get(parent, key, path, "boolean")
        if value is None or isinstance(value, bool):
            return value
        self._wrong(path, "boolean")
        return None

    def integer(self, parent: JsonObject, key: str, path: str) -> int | None:
        value = self._get(parent, key, path, "integer")
        if value is None:
            return None
        # bool is an int in Python, not in JSON.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        self._wrong(path, "integer")
        return None

    def items(self, parent: JsonObject, key: str, path: str) -> list[tuple[int, str, JsonObject]] | None:
        """The objects of an array member with their index and path; other items are problems."""
        array = self.member_array(parent, key, path)
        if array is None:
            return None
        found = []
        for index, item in enumerate(array):
            item_path = f"{path}[{index}]"
            data = self.as_object(item, item_path)
            if data is not None:
                found.append((index, item_path, data))
        return found


def _read_manifest(r: _Reader, data: JsonObject, base: str) -> Manifest:
    publisher = None
    if (p := r.member_object(data, "publisher", f"{base}.publisher")) is not None:
        path = f"{base}.publisher"
        publisher = Publisher(
            legal_name=r.string(p, "legal_name", f"{path}.legal_name"),
            registration_number=r.string(p, "registration_number", f"{path}.registration_number"),
            country=r.string(p, "country", f"{path}.country"),
            address=r.string(p, "address", f"{path}.address"),
            contact_email=r.string(p, "contact_email", f"{path}.contact_email"),
            dpo_email=r.string(p, "dpo_email", f"{path}.dpo_email"),
        )

    business_model = None
    if (b := r.member_object(data, "business_model", f"{base}.business_model")) is not None:
        path = f"{base}.business_model"
        sources = r.items(b, "funding_sources", f"{path}.funding_sources")
        business_model = DeclaredBusinessModel(
            model=r.string(b, "model", f"{path}.model"),
            description=r.string(b, "description", f"{path}.description"),
            funding_sources=None
            if sources is None
            else tuple(
                FundingSource(index, r.string(s, "name", f"{p}.name"), r.string(s, "kind", f"{p}.kind"))
                for index, p, s in sources
            ),
        )

    purposes = None
    if (items := r.items(data, "purposes", f"{base}.purposes")) is not None:
        purposes = tuple(
            DeclaredPurpose(
                index, r.string(d, "id", f"{p}.id"), r.string(d, "description", f"{p}.description")
            )
            for index, p, d in items
        )

    data_requests = None
    if (items := r.items(data, "data_requests", f"{base}.data_requests")) is not None:
        data_requests = tuple(
            DataRequest(
                index=index,
                category=r.string(d, "category", f"{p}.category"),
                purpose=r.string(d, "purpose", f"{p}.purpose"),
                optional=r.boolean(d, "optional", f"{p}.optional"),
                justification=r.string(d, "justification", f"{p}.justification"),
            )
            for index, p, d in items
        )

    retention = None
    if (t := r.member_object(data, "retention", f"{base}.retention")) is not None:
        path = f"{base}.retention"
        retention = Retention(
            days=r.integer(t, "days", f"{path}.days"),
            description=r.string(t, "description", f"{path}.description", required=False),
        )

    rights = None
    if (g := r.member_object(data, "rights", f"{base}.rights")) is not None:
        rights = tuple((right, r.string(g, right, f"{base}.rights.{right}")) for right in RIGHTS)

    hosting = None
    if (h := r.member_object(data, "hosting", f"{base}.hosting")) is not None:
        path = f"{base}.hosting"
        # The certification is only required when health data is requested; the rule on
        # certified hosting says so, with its article, rather than the shape check.
        hosting = Hosting(
            provider=r.string(h, "provider", f"{path}.provider"),
            country=r.string(h, "country", f"{path}.country"),
            health_data_certification=r.string(
                h, "health_data_certification", f"{path}.health_data_certification", required=False
            ),
            certificate_id=r.string(h, "certificate_id", f"{path}.certificate_id", required=False),
        )

    third_parties = None
    if (items := r.items(data, "third_parties", f"{base}.third_parties")) is not None:
        third_parties = tuple(
            ThirdParty(
                index=index,
                name=r.string(d, "name", f"{p}.name"),
                purpose=r.string(d, "purpose", f"{p}.purpose"),
                country=r.string(d, "country", f"{p}.country"),
            )
            for index, p, d in items
        )

    return Manifest(
        publisher=publisher,
        business_model=business_model,
        purposes=purposes,
        data_requests=data_requests,
        retention=retention,
        rights=rights,
        hosting=hosting,
        third_parties=third_parties,
        data_leaves_eu=r.boolean(data, "data_leaves_eu", f"{base}.data_leaves_eu"),
    )


def parse_registration(document: object) -> Registration:
    """Read a whole registration document (client metadata with `charter_manifest`)."""
    r = _Reader()
    root = r.as_object(document, "$")
    if root is None:
        return Registration(redirect_uris=None, manifest=None, problems=tuple(r.problems))
    redirect_uris = None
    if (uris := r.member_array(root, "redirect_uris", "redirect_uris")) is not None:
        found = []
        for index, uri in enumerate(uris):
            if isinstance(uri, str):
                found.append((f"redirect_uris[{index}]", uri))
            else:
                r.problems.append(ShapeProblem(f"redirect_uris[{index}]", "string", missing=False))
        redirect_uris = tuple(found)
    manifest = None
    if (data := r.member_object(root, MANIFEST_FIELD, MANIFEST_FIELD)) is not None:
        manifest = _read_manifest(r, data, MANIFEST_FIELD)
    return Registration(redirect_uris=redirect_uris, manifest=manifest, problems=tuple(r.problems))


def parse_manifest(manifest: object) -> Manifest | None:
    """Read a `charter_manifest` object on its own; None if it is not an object.

    Used at run time on an approved manifest, so shape problems are not reported here.
    """
    if not isinstance(manifest, dict):
        return None
    return _read_manifest(_Reader(), manifest, MANIFEST_FIELD)

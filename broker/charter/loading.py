"""Reading a charter data file, checking it holds together, and finding the packaged versions.

A data file is checked completely before anything uses it: a purpose naming an unknown category,
a forbidden business model without an article, a duplicated id or a misspelt key raise
`CharterDataError` naming the file and the JSON path, instead of silently weakening a rule.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from broker.charter.canonical import sha256_hex
from broker.charter.errors import CharterDataError, UnknownCharterVersion
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

__all__ = ["available_versions", "load_charter", "load_charter_file", "parse_charter"]

_FILE_NAME = re.compile(r"^charter-(\d+(?:\.\d+)*)\.json$")
_VERSION = re.compile(r"^\d+(?:\.\d+)*$")
_VOCABULARY_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_ARTICLE_ID = re.compile(r"^\d{2}[a-z]?$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")

_T = TypeVar("_T")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads keeps the last of two equal keys; in a charter that would hide an edit.
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise CharterDataError(f"duplicate key {key!r}")
        result[key] = value
    return result


class _Reader:
    """Typed access to the parsed JSON, raising `CharterDataError` with the file and path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> CharterDataError:
        return CharterDataError(f"{self.source}: {path}: {problem}")

    def obj(self, value: object, path: str, keys: set[str]) -> Mapping[str, object]:
        if not isinstance(value, dict):
            raise self.fail(path, "must be an object")
        missing = sorted(keys - value.keys())
        if missing:
            raise self.fail(path, f"missing {', '.join(missing)}")
        unknown = sorted(str(key) for key in value.keys() - keys)
        if unknown:
            raise self.fail(path, f"unknown {', '.join(unknown)}")
        return value

    def string(self, value: object, path: str, pattern: re.Pattern[str] | None = None) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, "must be a non-empty string")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(path, f"{value!r} does not match {pattern.pattern}")
        return value

    def boolean(self, value: object, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, "must be true or false")
        return value

    def integer(self, value: object, path: str, minimum: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.fail(path, f"must be an integer >= {minimum}")
        return value

    def array(self, value: object, path: str) -> list[object]:
        if not isinstance(value, list):
            raise self.fail(path, "must be an array")
        return value

    def strings(self, value: object, path: str, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
        items = tuple(
            self.string(item, f"{path}[{index}]", pattern)
            for index, item in enumerate(self.array(value, path))
        )
        for index, item in enumerate(items):
            if item in items[:index]:
                raise self.fail(f"{path}[{index}]", f"{item!r} is listed twice")
        return items

    def text(self, value: object, path: str) -> Text:
        data = self.obj(value, path, {"fr", "en"})
        return Text(fr=self.string(data["fr"], f"{path}.fr"), en=self.string(data["en"], f"{path}.en"))

    def entries(
        self, value: object, path: str, build: Callable[[Mapping[str, object], str], _T]
    ) -> Mapping[str, _T]:
        """A list of objects with an `id` each, as a read-only mapping in file order."""
        result: dict[str, _T] = {}
        for index, item in enumerate(self.array(value, path)):
            item_path = f"{path}[{index}]"
            if not isinstance(item, dict):
                raise self.fail(item_path, "must be an object")
            entry_id = self.string(item.get("id"), f"{item_path}.id")
            if entry_id in result:
                raise self.fail(f"{item_path}.id", f"{entry_id!r} is defined twice")
            result[entry_id] = build(item, item_path)
        if not result:
            raise self.fail(path, "must not be empty")
        return MappingProxyType(result)


def parse_charter(data: object, source: str = "<charter>") -> Charter:
    """Build a `Charter` from parsed JSON, checking every field and cross-reference."""
    r = _Reader(source)
    top = r.obj(
        data,
        "$",
        {
            "version",
            "date",
            "title",
            "source",
            "retention_max_days",
            "sensitive_justification_min_chars",
            "eea_countries",
            "health_data_certifications",
            "typology_groups",
            "articles",
            "categories",
            "purposes",
            "business_models",
        },
    )
    version = r.string(top["version"], "version", _VERSION)
    date_text = r.string(top["date"], "date")
    try:
        date = datetime.date.fromisoformat(date_text)
    except ValueError:
        raise r.fail("date", f"{date_text!r} is not an ISO 8601 date") from None

    def article(item: Mapping[str, object], path: str) -> Article:
        data = r.obj(item, path, {"id", "title"})
        return Article(
            id=r.string(data["id"], f"{path}.id", _ARTICLE_ID), titles=r.text(data["title"], f"{path}.title")
        )

    def group(item: Mapping[str, object], path: str) -> TypologyGroup:
        data = r.obj(item, path, {"id", "label"})
        return TypologyGroup(
            id=r.string(data["id"], f"{path}.id", _VOCABULARY_ID),
            labels=r.text(data["label"], f"{path}.label"),
        )

    articles = r.entries(top["articles"], "articles", article)
    groups = r.entries(top["typology_groups"], "typology_groups", group)

    def category(item: Mapping[str, object], path: str) -> Category:
        data = r.obj(item, path, {"id", "label", "description", "group", "fhir", "sensitive", "health_data"})
        group_id = r.string(data["group"], f"{path}.group")
        if group_id not in groups:
            raise r.fail(f"{path}.group", f"unknown typology group {group_id!r}")
        sensitive = r.boolean(data["sensitive"], f"{path}.sensitive")
        health_data = r.boolean(data["health_data"], f"{path}.health_data")
        if sensitive and not health_data:
            raise r.fail(f"{path}.health_data", "a sensitive category is health data")
        return Category(
            id=r.string(data["id"], f"{path}.id", _VOCABULARY_ID),
            labels=r.text(data["label"], f"{path}.label"),
            descriptions=r.text(data["description"], f"{path}.description"),
            group=group_id,
            fhir=r.strings(data["fhir"], f"{path}.fhir"),
            sensitive=sensitive,
            health_data=health_data,
        )

    categories = r.entries(top["categories"], "categories", category)

    def purpose(item: Mapping[str, object], path: str) -> Purpose:
        data = r.obj(
            item,
            path,
            {"id", "label", "description", "user_facing", "categories", "allows_sensitive", "never_bundled"},
        )
        allowed = r.strings(data["categories"], f"{path}.categories")
        for index, category_id in enumerate(allowed):
            if category_id not in categories:
                raise r.fail(f"{path}.categories[{index}]", f"unknown category {category_id!r}")
        if not allowed:
            raise r.fail(f"{path}.categories", "a purpose must justify at least one category")
        allows_sensitive = r.boolean(data["allows_sensitive"], f"{path}.allows_sensitive")
        if allows_sensitive != any(categories[c].sensitive for c in allowed):
            raise r.fail(
                f"{path}.allows_sensitive",
                "must be true exactly when the purpose lists a sensitive category",
            )
        return Purpose(
            id=r.string(data["id"], f"{path}.id", _VOCABULARY_ID),
            labels=r.text(data["label"], f"{path}.label"),
            descriptions=r.text(data["description"], f"{path}.description"),
            user_facing=r.boolean(data["user_facing"], f"{path}.user_facing"),
            categories=frozenset(allowed),
            allows_sensitive=allows_sensitive,
            never_bundled=r.boolean(data["never_bundled"], f"{path}.never_bundled"),
        )

    def business_model(item: Mapping[str, object], path: str) -> BusinessModel:
        data = r.obj(item, path, {"id", "label", "description", "forbidden", "article", "needs_review"})
        forbidden = r.boolean(data["forbidden"], f"{path}.forbidden")
        needs_review = r.boolean(data["needs_review"], f"{path}.needs_review")
        article_id: str | None = None
        if forbidden:
            article_id = r.string(data["article"], f"{path}.article")
            if article_id not in articles:
                raise r.fail(f"{path}.article", f"unknown article {article_id!r}")
            if needs_review:
                raise r.fail(f"{path}.needs_review", "a forbidden model is refused, not reviewed")
        elif data["article"] is not None:
            raise r.fail(f"{path}.article", "only a forbidden model cites an article")
        return BusinessModel(
            id=r.string(data["id"], f"{path}.id", _VOCABULARY_ID),
            labels=r.text(data["label"], f"{path}.label"),
            descriptions=r.text(data["description"], f"{path}.description"),
            forbidden=forbidden,
            article=article_id,
            needs_review=needs_review,
        )

    def certification(item: Mapping[str, object], path: str) -> Certification:
        data = r.obj(item, path, {"id", "country", "label"})
        return Certification(
            id=r.string(data["id"], f"{path}.id"),
            country=r.string(data["country"], f"{path}.country", _COUNTRY),
            labels=r.text(data["label"], f"{path}.label"),
        )

    return Charter(
        version=version,
        date=date,
        titles=r.text(top["title"], "title"),
        source=r.string(top["source"], "source"),
        articles=articles,
        purposes=r.entries(top["purposes"], "purposes", purpose),
        business_models=r.entries(top["business_models"], "business_models", business_model),
        categories=categories,
        typology_groups=groups,
        retention_max_days=r.integer(top["retention_max_days"], "retention_max_days", 1),
        sensitive_justification_min_chars=r.integer(
            top["sensitive_justification_min_chars"], "sensitive_justification_min_chars", 1
        ),
        health_data_certifications=r.entries(
            top["health_data_certifications"], "health_data_certifications", certification
        ),
        eea_countries=frozenset(r.strings(top["eea_countries"], "eea_countries", _COUNTRY)),
        sha256=sha256_hex(data),
    )


def _parse_bytes(raw: bytes, source: str) -> Charter:
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
    except CharterDataError as exc:
        raise CharterDataError(f"{source}: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CharterDataError(f"{source}: not valid UTF-8 JSON: {exc}") from exc
    return parse_charter(data, source)


def load_charter_file(path: str | Path) -> Charter:
    """Load and check a charter data file from anywhere (tests, a deployment's own charter)."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise CharterDataError(f"{file}: cannot be read: {exc}") from exc
    return _parse_bytes(raw, file.name)


def _packaged_files() -> dict[str, str]:
    """Packaged versions and their file names."""
    found: dict[str, str] = {}
    for entry in (resources.files("broker.charter") / "data").iterdir():
        match = _FILE_NAME.fullmatch(entry.name)
        if match:
            found[match.group(1)] = entry.name
    return found


@functools.cache
def _available() -> tuple[str, ...]:
    return tuple(sorted(_packaged_files(), key=_version_key))


def available_versions() -> list[str]:
    """The packaged charter versions, oldest first."""
    return list(_available())


@functools.cache
def _load_packaged(version: str) -> Charter:
    name = _packaged_files().get(version)
    if name is None:
        raise UnknownCharterVersion(
            f"no packaged charter has version {version!r}; available: {', '.join(_available())}"
        )
    raw = (resources.files("broker.charter") / "data" / name).read_bytes()
    charter = _parse_bytes(raw, name)
    if charter.version != version:
        raise CharterDataError(f"{name}: declares version {charter.version!r}")
    return charter


def load_charter(version: str | None = None) -> Charter:
    """The packaged charter with this version, or the latest one; loaded once per process."""
    if version is None:
        versions = _available()
        if not versions:
            raise CharterDataError("no charter data file is packaged")
        version = versions[-1]
    return _load_packaged(version)

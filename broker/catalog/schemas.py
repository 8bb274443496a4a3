"""Validation of what holders and app developers send: shape, types, vocabularies, URIs.

A malformed registration is refused here with an RFC 7591 error naming the field, and
nothing is stored. A well-formed one goes on to the charter, which judges its content
(MANIFEST.md, "Answers"). Unknown top-level client metadata is dropped, as RFC 7591 §2
requires ("MUST ignore any client metadata … that it does not understand").
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from jwcrypto import jwk
from jwcrypto.common import JWException

from broker.charter import Charter
from broker.errors import InvalidClientMetadata, InvalidRedirectURI, InvalidRequest

MAX_TEXT = 2000
MAX_NAME = 100
MAX_ITEMS = 50
MAX_URI = 2000

_EMAIL = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$")
_HOLDER_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")

# Standard RFC 7591 / RFC 7592 metadata the broker understands and keeps.
_URI_FIELDS = ("client_uri", "logo_uri", "policy_uri", "tos_uri")
_TEXT_FIELDS = ("software_id", "software_version")
_AUTH_METHODS = ("private_key_jwt", "none")
_GRANT_TYPES = ("authorization_code", "refresh_token")
_ALLOWED_KEY_TYPES = {"EC": ("P-256", "P-384", "P-521"), "OKP": ("Ed25519",), "RSA": None}


def _is_control(char: str) -> bool:
    # Cc: C0/C1 controls; Cf: format characters, which include the bidi overrides used to
    # disguise an app's name (W9).
    return unicodedata.category(char) in ("Cc", "Cf")


def fold(text: str) -> str:
    """Case- and accent-insensitive form used for uniqueness and search."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.split())


class _Checker:
    """Walks a JSON document, raising ``error_class`` with the path of the first bad field."""

    def __init__(self, error_class: type[InvalidRequest] | type[InvalidClientMetadata]) -> None:
        self.error_class = error_class

    def fail(self, path: str, problem: str) -> Exception:
        return self.error_class(f"{path}: {problem}", field=path)

    def obj(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, "must be a JSON object")
        return value

    def array(self, value: Any, path: str, max_items: int = MAX_ITEMS) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, "must be a JSON array")
        if len(value) > max_items:
            raise self.fail(path, f"must have at most {max_items} items")
        return value

    def text(self, value: Any, path: str, max_len: int = MAX_TEXT, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.fail(path, "must be a string")
        if len(value) > max_len:
            raise self.fail(path, f"must be at most {max_len} characters")
        if not allow_empty and not value.strip():
            raise self.fail(path, "must not be empty")
        allowed = "\n\t" if max_len > MAX_NAME else ""
        if any(_is_control(c) and c not in allowed for c in value):
            raise self.fail(path, "must not contain control or bidi-override characters")
        return value

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, "must be true or false")
        return value

    def one_of(self, value: Any, path: str, allowed: Collection[str], what: str) -> str:
        text = self.text(value, path, max_len=64)
        if text not in allowed:
            raise self.fail(path, f"unknown {what} {text!r}; expected one of {sorted(allowed)}")
        return text

    def email(self, value: Any, path: str) -> str:
        text = self.text(value, path, max_len=254)
        if not _EMAIL.match(text):
            raise self.fail(path, f"{text!r} is not an e-mail address")
        return text

    def web_uri(self, value: Any, path: str, dev_mode: bool) -> str:
        text = self.text(value, path, max_len=MAX_URI)
        problem = web_uri_problem(text, dev_mode)
        if problem:
            raise self.fail(path, problem)
        return text


def _is_loopback_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def web_uri_problem(uri: str, dev_mode: bool) -> str | None:
    """Why ``uri`` is not an acceptable https URL, or ``None``."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return f"{uri!r} is not a valid URL"
    del port
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return f"{uri!r} must be an absolute https URL"
    if parts.username is not None or parts.password is not None:
        return "must not contain a user name or password"
    if parts.scheme == "http" and not (dev_mode and _is_loopback_host(parts.hostname)):
        if _is_loopback_host(parts.hostname):
            return "http loopback URLs are allowed only in development mode; use https"
        return "must use https"
    if "*" in uri:
        return "must not contain a wildcard"
    if any(c.isspace() or _is_control(c) for c in uri):
        return "must not contain spaces or control characters"
    return None


def redirect_uri_problem(uri: str, dev_mode: bool) -> str | None:
    """RFC 9700 §2.1 and §2.6: exact, https, no fragment, no wildcard."""
    problem = web_uri_problem(uri, dev_mode)
    if problem:
        return problem
    if "#" in uri:
        return "must not contain a fragment (RFC 6749 §3.1.2)"
    return None


@dataclass(frozen=True)
class ClientRegistration:
    """A validated registration request: the metadata to keep, and facts the catalog indexes."""

    metadata: dict[str, Any]
    client_name: str
    publisher_name: str
    business_model: str
    data_leaves_eu: bool
    purposes: tuple[str, ...]
    categories: tuple[str, ...]
    token_endpoint_auth_method: str


def _validate_jwks(value: Any, path: str, checker: _Checker) -> dict[str, Any]:
    document = checker.obj(value, path)
    keys = checker.array(document.get("keys"), f"{path}.keys", max_items=10)
    if not keys:
        raise checker.fail(f"{path}.keys", "must hold at least one public key")
    for index, item in enumerate(keys):
        key_path = f"{path}.keys[{index}]"
        checker.obj(item, key_path)
        try:
            key = jwk.JWK(**item)
            # Building the verification key checks the point is on the curve, the modulus, …
            key.get_op_key("verify")
        except (JWException, ValueError, TypeError) as exc:
            raise checker.fail(key_path, f"is not a valid JWK ({exc})") from None
        if key.has_private:
            raise checker.fail(key_path, "holds a private key; send only the public part")
        kty = item.get("kty")
        if kty not in _ALLOWED_KEY_TYPES:
            raise checker.fail(key_path, "key type must be EC, OKP (Ed25519) or RSA")
        curves = _ALLOWED_KEY_TYPES[kty]
        if curves is not None and item.get("crv") not in curves:
            raise checker.fail(key_path, f"curve must be one of {list(curves)}")
        if kty == "RSA" and key.key_size < 2048:
            raise checker.fail(key_path, "RSA keys must be at least 2048 bits")
        if not isinstance(item.get("kid"), str) or not item["kid"]:
            raise checker.fail(key_path, "must have a kid")
    return {"keys": keys}


def _validate_manifest(value: Any, charter: Charter, dev_mode: bool, c: _Checker) -> dict[str, Any]:
    """The structure the broker needs to store and index an app; the charter judges the rest."""
    path = "charter_manifest"
    manifest = c.obj(value, path)
    publisher = c.obj(manifest.get("publisher"), f"{path}.publisher")
    c.text(publisher.get("legal_name"), f"{path}.publisher.legal_name", max_len=300)
    for key in ("registration_number", "country", "address"):
        if key in publisher:
            c.text(publisher[key], f"{path}.publisher.{key}", max_len=300, allow_empty=True)
    for key in ("contact_email", "dpo_email"):
        if key in publisher:
            c.email(publisher[key], f"{path}.publisher.{key}")

    model = c.obj(manifest.get("business_model"), f"{path}.business_model")
    c.one_of(model.get("model"), f"{path}.business_model.model", charter.business_models, "business model")
    if "description" in model:
        c.text(model["description"], f"{path}.business_model.description", allow_empty=True)
    if "funding_sources" in model:
        for i, source in enumerate(
            c.array(model["funding_sources"], f"{path}.business_model.funding_sources")
        ):
            source_path = f"{path}.business_model.funding_sources[{i}]"
            c.obj(source, source_path)
            c.text(source.get("name"), f"{source_path}.name", max_len=300)

    purposes = c.array(manifest.get("purposes"), f"{path}.purposes", max_items=len(charter.purposes))
    declared: list[str] = []
    for i, purpose in enumerate(purposes):
        p_path = f"{path}.purposes[{i}]"
        c.obj(purpose, p_path)
        pid = c.one_of(purpose.get("id"), f"{p_path}.id", charter.purposes, "purpose")
        if pid in declared:
            raise c.fail(f"{p_path}.id", f"purpose {pid!r} is declared twice")
        declared.append(pid)
        if "description" in purpose:
            c.text(purpose["description"], f"{p_path}.description", allow_empty=True)

    requests = c.array(manifest.get("data_requests"), f"{path}.data_requests")
    seen: set[tuple[str, str]] = set()
    for i, request in enumerate(requests):
        r_path = f"{path}.data_requests[{i}]"
        c.obj(request, r_path)
        category = c.one_of(
            request.get("category"), f"{r_path}.category", charter.categories, "data category"
        )
        purpose_id = c.one_of(request.get("purpose"), f"{r_path}.purpose", charter.purposes, "purpose")
        if (category, purpose_id) in seen:
            raise c.fail(r_path, f"{category!r} is requested twice for {purpose_id!r}")
        seen.add((category, purpose_id))
        if "optional" in request:
            c.boolean(request["optional"], f"{r_path}.optional")
        if "justification" in request:
            c.text(request["justification"], f"{r_path}.justification", allow_empty=True)

    if "retention" in manifest:
        retention = c.obj(manifest["retention"], f"{path}.retention")
        days = retention.get("days")
        if days is not None and (isinstance(days, bool) or not isinstance(days, int) or days < 0):
            raise c.fail(f"{path}.retention.days", "must be a whole number of days")
        if "description" in retention:
            c.text(retention["description"], f"{path}.retention.description", allow_empty=True)
    if "rights" in manifest:
        rights = c.obj(manifest["rights"], f"{path}.rights")
        for key, right in rights.items():
            c.text(right, f"{path}.rights.{key}", max_len=MAX_URI, allow_empty=True)
    if "hosting" in manifest:
        hosting = c.obj(manifest["hosting"], f"{path}.hosting")
        for key, item in hosting.items():
            c.text(item, f"{path}.hosting.{key}", max_len=300, allow_empty=True)
    if "third_parties" in manifest:
        for i, party in enumerate(c.array(manifest["third_parties"], f"{path}.third_parties")):
            t_path = f"{path}.third_parties[{i}]"
            c.obj(party, t_path)
            c.text(party.get("name"), f"{t_path}.name", max_len=300)
    if "data_leaves_eu" not in manifest:
        raise c.fail(f"{path}.data_leaves_eu", "is required (true or false)")
    c.boolean(manifest["data_leaves_eu"], f"{path}.data_leaves_eu")
    return dict(manifest)


def validate_client_registration(body: Any, charter: Charter, *, dev_mode: bool) -> ClientRegistration:
    """RFC 7591 §2 and §3.2.2 checks of a registration (or RFC 7592 update) request."""
    c = _Checker(InvalidClientMetadata)
    document = c.obj(body, "request body")
    if "software_statement" in document:
        raise InvalidClientMetadata(
            "software_statement: software statements are not accepted by this broker; "
            "send the metadata directly"
        )
    # RFC 7592 §2.2: an update carries client_id, which the route checks and removes first.
    for forbidden in (
        "client_id",
        "client_secret",
        "registration_access_token",
        "registration_client_uri",
        "client_id_issued_at",
    ):
        if forbidden in document:
            raise c.fail(forbidden, "is assigned by the broker and cannot be chosen")

    redirect_uris = document.get("redirect_uris")
    if not isinstance(redirect_uris, list) or not redirect_uris:
        raise InvalidRedirectURI(
            "redirect_uris: at least one redirect URI is required", field="redirect_uris"
        )
    if len(redirect_uris) > 10:
        raise InvalidRedirectURI("redirect_uris: at most 10 redirect URIs", field="redirect_uris")
    for i, uri in enumerate(redirect_uris):
        if not isinstance(uri, str) or len(uri) > MAX_URI:
            raise InvalidRedirectURI(f"redirect_uris[{i}]: must be a URL string", field=f"redirect_uris[{i}]")
        problem = redirect_uri_problem(uri, dev_mode)
        if problem:
            raise InvalidRedirectURI(f"redirect_uris[{i}]: {problem}", field=f"redirect_uris[{i}]")
    if len(set(redirect_uris)) != len(redirect_uris):
        raise InvalidRedirectURI("redirect_uris: the same URI is listed twice", field="redirect_uris")

    client_name = c.text(document.get("client_name"), "client_name", max_len=MAX_NAME)
    kept: dict[str, Any] = {"client_name": client_name, "redirect_uris": list(redirect_uris)}

    grant_types = document.get("grant_types", ["authorization_code"])
    for i, grant in enumerate(c.array(grant_types, "grant_types", max_items=2)):
        c.one_of(grant, f"grant_types[{i}]", _GRANT_TYPES, "grant type")
    if "authorization_code" not in grant_types:
        raise c.fail("grant_types", "must include authorization_code")
    kept["grant_types"] = list(dict.fromkeys(grant_types))
    response_types = document.get("response_types", ["code"])
    if c.array(response_types, "response_types", max_items=1) != ["code"]:
        raise c.fail("response_types", 'only ["code"] is supported (RFC 9700 §2.1.2)')
    kept["response_types"] = ["code"]

    has_keys = "jwks" in document or "jwks_uri" in document
    method = document.get("token_endpoint_auth_method", "private_key_jwt" if has_keys else "none")
    c.one_of(method, "token_endpoint_auth_method", _AUTH_METHODS, "authentication method")
    kept["token_endpoint_auth_method"] = method
    if "jwks" in document and "jwks_uri" in document:
        raise c.fail("jwks", "send jwks or jwks_uri, not both (RFC 7591 §2)")
    if "jwks" in document:
        kept["jwks"] = _validate_jwks(document["jwks"], "jwks", c)
    if "jwks_uri" in document:
        kept["jwks_uri"] = c.web_uri(document["jwks_uri"], "jwks_uri", dev_mode)
    if method == "private_key_jwt" and not has_keys:
        raise c.fail("jwks", "private_key_jwt needs the app's public keys (jwks or jwks_uri)")

    for key in _URI_FIELDS:
        if key in document:
            kept[key] = c.web_uri(document[key], key, dev_mode)
    for key in _TEXT_FIELDS:
        if key in document:
            kept[key] = c.text(document[key], key, max_len=200)
    if "contacts" in document:
        kept["contacts"] = [
            c.email(item, f"contacts[{i}]")
            for i, item in enumerate(c.array(document["contacts"], "contacts", max_items=10))
        ]

    if "charter_manifest" not in document:
        raise c.fail("charter_manifest", "is required: the charter manifest of the app")
    manifest = _validate_manifest(document["charter_manifest"], charter, dev_mode, c)
    kept["charter_manifest"] = manifest

    return ClientRegistration(
        metadata=kept,
        client_name=client_name,
        publisher_name=manifest["publisher"]["legal_name"],
        business_model=manifest["business_model"]["model"],
        data_leaves_eu=manifest["data_leaves_eu"],
        purposes=tuple(p["id"] for p in manifest["purposes"]),
        categories=tuple(dict.fromkeys(r["category"] for r in manifest["data_requests"])),
        token_endpoint_auth_method=method,
    )


@dataclass(frozen=True)
class HolderDeclaration:
    identifier: str
    legal_name: str
    base_url: str
    categories: tuple[str, ...]
    release_step_categories: tuple[str, ...]
    jwks: dict[str, Any] | None
    jwks_uri: str | None
    link_endpoint: str | None = None
    download_endpoint: str | None = None


def validate_holder(body: Any, charter: Charter, *, dev_mode: bool) -> HolderDeclaration:
    """A holder's declaration (DESIGN step 3), from the admin API or the command line."""
    c = _Checker(InvalidRequest)
    document = c.obj(body, "request body")
    identifier = c.text(document.get("identifier"), "identifier", max_len=64)
    if not _HOLDER_ID.match(identifier):
        raise c.fail("identifier", "use lower-case letters, digits and dashes (e.g. labo-demo)")
    legal_name = c.text(document.get("legal_name"), "legal_name", max_len=200)
    base_url = c.web_uri(document.get("base_url"), "base_url", dev_mode)
    if "#" in base_url or "?" in base_url:
        raise c.fail("base_url", "must have no query and no fragment")
    categories = c.array(document.get("categories"), "categories", max_items=len(charter.categories))
    if not categories:
        raise c.fail("categories", "a holder serves at least one data category")
    for i, category in enumerate(categories):
        c.one_of(category, f"categories[{i}]", charter.categories, "data category")
    release = c.array(document.get("release_step_categories", []), "release_step_categories")
    for i, category in enumerate(release):
        c.one_of(category, f"release_step_categories[{i}]", charter.categories, "data category")
        if category not in categories:
            raise c.fail(f"release_step_categories[{i}]", f"{category!r} is not among categories")
    jwks = _validate_jwks(document["jwks"], "jwks", c) if "jwks" in document else None
    jwks_uri = c.web_uri(document["jwks_uri"], "jwks_uri", dev_mode) if "jwks_uri" in document else None
    if (jwks is None) == (jwks_uri is None):
        raise c.fail("jwks", "give exactly one of jwks or jwks_uri (keys that sign access receipts)")
    endpoints: dict[str, str | None] = {"link_endpoint": None, "download_endpoint": None}
    for name in endpoints:
        if name in document:
            endpoints[name] = c.web_uri(document[name], name, dev_mode)
            if "#" in (endpoints[name] or ""):
                raise c.fail(name, "must have no fragment")
    if endpoints["download_endpoint"] is not None and "?" in endpoints["download_endpoint"]:
        raise c.fail("download_endpoint", "must have no query (the token goes in the body)")
    return HolderDeclaration(
        link_endpoint=endpoints["link_endpoint"],
        download_endpoint=endpoints["download_endpoint"],
        identifier=identifier,
        legal_name=legal_name,
        base_url=base_url.rstrip("/"),
        categories=tuple(dict.fromkeys(categories)),
        release_step_categories=tuple(dict.fromkeys(release)),
        jwks=jwks,
        jwks_uri=jwks_uri,
    )

"""The broker's settings: one frozen object read once from ``BROKER_*`` variables.

Each field names the variable that sets it. ``Settings.from_env()`` is called once by
``create_app`` and by the command line; domain code receives the object, it never reads the
environment itself.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

PolicyMode = Literal["gate", "label"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """A ``BROKER_*`` variable holds a value the broker cannot use."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(name, f"expected true or false, got {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(name, f"expected an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(name, f"expected an integer from {low} to {high}, got {value}")
    return value


def _ports(env: Mapping[str, str], name: str) -> frozenset[int]:
    raw = env.get(name, "").strip()
    if not raw:
        return frozenset({443})
    ports = set()
    for item in raw.split(","):
        if not item.strip().isdigit() or not 1 <= int(item) <= 65535:
            raise SettingsError(name, f"expected port numbers separated by commas, got {raw!r}")
        ports.add(int(item))
    return frozenset(ports)


def _networks(env: Mapping[str, str], name: str) -> tuple[IPNetwork, ...]:
    raw = env.get(name, "").strip()
    networks = []
    for item in raw.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SettingsError(name, f"expected IP addresses or networks (CIDR), got {item!r}") from None
    return tuple(networks)


def _database_url(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    scheme = value.split(":", 1)[0]
    if not (scheme.startswith("sqlite") or scheme.startswith("postgresql")):
        raise SettingsError(
            name, f"expected a sqlite:/// or postgresql+psycopg:// URL, got scheme {scheme!r}"
        )
    return value


def _issuer(env: Mapping[str, str], name: str, default: str, dev_mode: bool) -> str:
    value = env.get(name, "").strip() or default
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise SettingsError(name, f"expected an absolute https URL, got {value!r}")
    if parts.query or parts.fragment:
        # RFC 8414 §2: the issuer has no query or fragment component.
        raise SettingsError(name, "the issuer URL must have no query and no fragment")
    if parts.scheme == "http" and not (dev_mode and parts.hostname in ("127.0.0.1", "localhost", "::1")):
        raise SettingsError(
            name, "http is allowed only for a loopback issuer in development mode (BROKER_DEV_MODE)"
        )
    return value.rstrip("/")


@dataclass(frozen=True)
class Settings:
    """Every setting of one broker deployment."""

    #: BROKER_DATABASE_URL — SQLAlchemy URL; SQLite file under ./var by default.
    database_url: str = "sqlite:///var/broker.db"
    #: BROKER_ISSUER — the public URL of this broker (OAuth ``iss``).
    issuer: str = "http://127.0.0.1:8000"
    #: BROKER_HOST / BROKER_PORT — where ``broker serve`` listens.
    host: str = "127.0.0.1"
    port: int = 8000
    #: BROKER_KEY_DIR — signing keys and the development secret; created 0700.
    key_dir: Path = Path("var/keys")
    #: BROKER_DEMO — seed the demo holder, app and patients at start.
    demo: bool = False
    #: BROKER_DEV_MODE — allows loopback http redirect URIs and issuer; never in production.
    dev_mode: bool = False
    #: BROKER_SECRET_KEY — HMAC key for stored opaque secrets (registration tokens …).
    #: Required outside development mode; in development it is kept in the key directory.
    secret_key: bytes = field(default=b"", repr=False)
    #: BROKER_POLICY_MODE — ``gate`` (refused apps are not listed) or ``label``.
    policy_mode: PolicyMode = "gate"
    #: BROKER_MAX_BODY_BYTES — largest request body accepted (413 beyond).
    max_body_bytes: int = 64 * 1024
    #: BROKER_HEADER_TIMEOUT — seconds a client has to send a request's head once it has
    #: connected or begun it (slowloris: a head sent byte by byte); 408 and closed beyond.
    header_timeout: int = 10
    #: BROKER_BODY_TIMEOUT — seconds a client has to send a request's body once its head is in;
    #: 408 and closed beyond (a body trickled slowly must not hold the connection).
    body_timeout: int = 30
    #: BROKER_TOKEN_LIFETIME — seconds an access token lives (≤ 300, DESIGN step 6).
    token_lifetime: int = 300
    # Threads doing database work at once per process, and the connection pool's size: more
    # threads than cores only fight over the GIL (and over SQLite's one writer).
    db_threads: int = 8
    #: BROKER_CHARTER_VERSION — the charter version this broker enforces (latest if empty).
    charter_version: str | None = None
    #: BROKER_SESSION_IDLE_TIMEOUT — seconds without activity after which a patient's session
    #: ends (OWASP Session Management: 15–30 min for sensitive services).
    session_idle_timeout: int = 30 * 60
    #: BROKER_SESSION_ABSOLUTE_TIMEOUT — seconds after log-in at which a session ends anyway.
    session_absolute_timeout: int = 12 * 3600
    #: BROKER_ARGON2_MEMORY_KIB / BROKER_ARGON2_TIME_COST / BROKER_ARGON2_PARALLELISM — the
    #: argon2id cost of patients' passwords; never below the OWASP minimum (19 MiB, t=2, p=1).
    #: The defaults are RFC 9106's "low memory" profile. Changing them rehashes at next log-in.
    argon2_memory_kib: int = 64 * 1024
    argon2_time_cost: int = 3
    argon2_parallelism: int = 4
    #: BROKER_PASSWORD_HASH_CONCURRENCY — password hashes computed at once (one per core is
    #: right); further log-ins wait, so that a flood of them cannot starve other requests.
    password_hash_concurrency: int = 2
    #: BROKER_OIDC_ISSUER — an external OpenID Connect provider patients may log in with
    #: (e.g. FranceConnect); empty: none. Its discovery document is read from the issuer.
    oidc_issuer: str | None = None
    #: BROKER_OIDC_CLIENT_ID / BROKER_OIDC_CLIENT_SECRET — the broker's client at that provider;
    #: the redirect URI to register there is ``<BROKER_ISSUER>/login/oidc/callback``.
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = field(default=None, repr=False)
    #: BROKER_OIDC_NAME — the provider's name on the log-in button ("Se connecter avec …").
    oidc_name: str = "FranceConnect"
    #: BROKER_OIDC_SCOPES — scopes asked of the provider, separated by spaces; ``openid`` first.
    oidc_scopes: str = "openid"
    #: BROKER_AUDIT_INTERVAL — seconds between two runs of the audit log's sequencer in each
    #: broker process (it places new events in the tree and signs a checkpoint); 0: never in
    #: the background, only on demand (proofs, ``broker audit sequence``).
    audit_interval: int = 5
    #: BROKER_OUTBOUND_ALLOWED_PORTS — ports the broker may fetch https URLs on (jwks_uri, peer
    #: brokers), separated by commas; 443 only by default (SECURITY.md S1).
    outbound_allowed_ports: frozenset[int] = frozenset({443})
    #: BROKER_FEDERATION_STATEMENT_LIFETIME — seconds the entity configuration and the
    #: subordinate statements stay valid (OpenID Federation ``exp``); a day by default.
    federation_statement_lifetime: int = 24 * 3600
    #: BROKER_FEDERATION_TRUST_MARK_LIFETIME — seconds a charter trust mark stays valid; its
    #: status endpoint answers revoked sooner when the app loses its approval.
    federation_trust_mark_lifetime: int = 24 * 3600
    #: BROKER_FEDERATION_AUTHORITY_HINTS — entity ids of this broker's superiors (trust anchors
    #: or intermediates), separated by spaces; none by default.
    federation_authority_hints: tuple[str, ...] = ()
    #: BROKER_FEDERATION_TRUST_MARKS — trust marks issued to this broker by others (compact
    #: JWTs separated by spaces), published in its entity configuration as they are.
    federation_trust_marks: tuple[str, ...] = field(default=(), repr=False)
    #: BROKER_TRUSTED_PROXIES — addresses or networks (CIDR, separated by commas or spaces) of
    #: the reverse proxies in front of the broker. Only a request whose peer is one of them has
    #: its ``X-Forwarded-For`` believed (SECURITY A1 §4.13); none by default.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    #: BROKER_RATE_LIMIT_ADDRESS / BROKER_RATE_LIMIT_CLIENT / BROKER_RATE_LIMIT_PATIENT —
    #: requests per minute allowed on the log-in, sign-up, registration, authorization and
    #: token endpoints, per client address, per app (client id) and per patient (e-mail on
    #: log-in and sign-up, session on authorization); 0 switches that limit off. Counted in
    #: each process's memory (broker/ops/limits.py says what that means with several nodes).
    rate_limit_address: int = 300
    rate_limit_client: int = 600
    rate_limit_patient: int = 60
    #: BROKER_METRICS_TOKEN — the bearer secret that ``/metrics`` asks for. Without it the
    #: metrics are served in development mode only; in production ``/metrics`` answers 404.
    metrics_token: str | None = field(default=None, repr=False)
    #: BROKER_FEDERATION_SYNC_INTERVAL — seconds between two synchronisations with every
    #: trusted peer in each broker process; an app suspended at its origin is suspended here
    #: within this period. 0: only on demand (``broker federation sync``).
    federation_sync_interval: int = 300

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer and self.oidc_client_id)

    @property
    def embedded_database(self) -> bool:
        """SQLite: one machine, short units of work, one writer at a time."""
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        dev_mode = _bool(env, "BROKER_DEV_MODE", False)
        key_dir = Path(env.get("BROKER_KEY_DIR", "").strip() or "var/keys")
        policy = env.get("BROKER_POLICY_MODE", "").strip() or "gate"
        if policy not in ("gate", "label"):
            raise SettingsError("BROKER_POLICY_MODE", f"expected gate or label, got {policy!r}")
        raw_secret = env.get("BROKER_SECRET_KEY", "")
        if raw_secret:
            if len(raw_secret) < 32:
                raise SettingsError("BROKER_SECRET_KEY", "must be at least 32 characters long")
            secret = raw_secret.encode()
        elif dev_mode:
            secret = _development_secret(key_dir)
        else:
            raise SettingsError(
                "BROKER_SECRET_KEY",
                "is required outside development mode (set BROKER_DEV_MODE=true for a local try)",
            )
        host = env.get("BROKER_HOST", "").strip() or "127.0.0.1"
        port = _int(env, "BROKER_PORT", 8000, 1, 65535)
        idle = _int(env, "BROKER_SESSION_IDLE_TIMEOUT", cls.session_idle_timeout, 60, 24 * 3600)
        absolute = _int(env, "BROKER_SESSION_ABSOLUTE_TIMEOUT", cls.session_absolute_timeout, 300, 7 * 86400)
        if absolute < idle:
            raise SettingsError(
                "BROKER_SESSION_ABSOLUTE_TIMEOUT", "must not be shorter than BROKER_SESSION_IDLE_TIMEOUT"
            )
        oidc_issuer = env.get("BROKER_OIDC_ISSUER", "").strip() or None
        oidc_client_id = env.get("BROKER_OIDC_CLIENT_ID", "").strip() or None
        oidc_client_secret = env.get("BROKER_OIDC_CLIENT_SECRET", "").strip() or None
        if oidc_issuer:
            # The issuer is compared exactly with the ID token's ``iss`` (OIDC Core §3.1.3.7).
            oidc_issuer = _issuer(env, "BROKER_OIDC_ISSUER", oidc_issuer, dev_mode)
            if not oidc_client_id:
                raise SettingsError("BROKER_OIDC_CLIENT_ID", "is required when BROKER_OIDC_ISSUER is set")
            if not oidc_client_secret:
                raise SettingsError("BROKER_OIDC_CLIENT_SECRET", "is required when BROKER_OIDC_ISSUER is set")
        scopes = env.get("BROKER_OIDC_SCOPES", "").strip() or "openid"
        if "openid" not in scopes.split():
            raise SettingsError("BROKER_OIDC_SCOPES", "must contain openid")
        return cls(
            database_url=_database_url(env, "BROKER_DATABASE_URL", cls.database_url),
            issuer=_issuer(env, "BROKER_ISSUER", f"http://{host}:{port}", dev_mode),
            host=host,
            port=port,
            key_dir=key_dir,
            demo=_bool(env, "BROKER_DEMO", False),
            dev_mode=dev_mode,
            secret_key=secret,
            policy_mode=policy,  # type: ignore[arg-type]
            max_body_bytes=_int(env, "BROKER_MAX_BODY_BYTES", 64 * 1024, 1024, 10 * 1024 * 1024),
            header_timeout=_int(env, "BROKER_HEADER_TIMEOUT", 10, 1, 300),
            body_timeout=_int(env, "BROKER_BODY_TIMEOUT", 30, 1, 3600),
            token_lifetime=_int(env, "BROKER_TOKEN_LIFETIME", 300, 30, 300),
            db_threads=_int(env, "BROKER_DB_THREADS", 8, 1, 64),
            charter_version=env.get("BROKER_CHARTER_VERSION", "").strip() or None,
            session_idle_timeout=idle,
            session_absolute_timeout=absolute,
            argon2_memory_kib=_int(env, "BROKER_ARGON2_MEMORY_KIB", 64 * 1024, 19456, 4 * 1024 * 1024),
            argon2_time_cost=_int(env, "BROKER_ARGON2_TIME_COST", 3, 2, 64),
            argon2_parallelism=_int(env, "BROKER_ARGON2_PARALLELISM", 4, 1, 64),
            password_hash_concurrency=_int(env, "BROKER_PASSWORD_HASH_CONCURRENCY", 2, 1, 64),
            oidc_issuer=oidc_issuer,
            oidc_client_id=oidc_client_id,
            oidc_client_secret=oidc_client_secret,
            oidc_name=env.get("BROKER_OIDC_NAME", "").strip() or "FranceConnect",
            oidc_scopes=scopes,
            audit_interval=_int(env, "BROKER_AUDIT_INTERVAL", 5, 0, 3600),
            outbound_allowed_ports=_ports(env, "BROKER_OUTBOUND_ALLOWED_PORTS"),
            federation_statement_lifetime=_int(
                env, "BROKER_FEDERATION_STATEMENT_LIFETIME", 24 * 3600, 300, 7 * 86400
            ),
            federation_trust_mark_lifetime=_int(
                env, "BROKER_FEDERATION_TRUST_MARK_LIFETIME", 24 * 3600, 300, 30 * 86400
            ),
            federation_authority_hints=tuple(
                # each hint checked alone, with the issuer's rules (an entity id is an issuer)
                _issuer({}, "BROKER_FEDERATION_AUTHORITY_HINTS", hint, dev_mode)
                for hint in env.get("BROKER_FEDERATION_AUTHORITY_HINTS", "").split()
            ),
            federation_trust_marks=tuple(env.get("BROKER_FEDERATION_TRUST_MARKS", "").split()),
            trusted_proxies=_networks(env, "BROKER_TRUSTED_PROXIES"),
            rate_limit_address=_int(env, "BROKER_RATE_LIMIT_ADDRESS", cls.rate_limit_address, 0, 10**6),
            rate_limit_client=_int(env, "BROKER_RATE_LIMIT_CLIENT", cls.rate_limit_client, 0, 10**6),
            rate_limit_patient=_int(env, "BROKER_RATE_LIMIT_PATIENT", cls.rate_limit_patient, 0, 10**6),
            metrics_token=_metrics_token(env, "BROKER_METRICS_TOKEN"),
            federation_sync_interval=_int(env, "BROKER_FEDERATION_SYNC_INTERVAL", 300, 0, 7 * 86400),
        )


def _metrics_token(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    if value and len(value) < 32:
        raise SettingsError(name, "must be at least 32 characters long")
    return value or None


def _development_secret(key_dir: Path) -> bytes:
    """The development HMAC secret, kept in the key directory.

    Never a fresh random value per process: several workers or a restart would disagree and
    every stored registration token would stop matching.
    """
    path = key_dir / "development-secret"
    if not path.exists():
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first; read theirs
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()

"""Token endpoint: the refresh_token grant under load, the broker against two reference servers.

Runs ``broker serve --workers 2`` as its own process on SQLite (a temporary file) and on
PostgreSQL (a schema of its own, created and dropped here), and two references, all on this
machine in this run:

- node ``oidc-provider`` from the npm registry (installed into a temporary directory at each
  run; 2 cluster workers, in-memory adapter, refresh tokens rotated on every use, ES256 JWT
  access tokens);
- ``django-oauth-toolkit`` from PyPI, the stack of CMS Blue Button 2.0 (installed into a
  temporary venv at each run from bench/reference/django-oauth-toolkit/requirements.txt): its
  stock ``TokenView`` under gunicorn (2 ``gthread`` workers of 8 threads), a public client,
  refresh tokens rotated on every use with ``REFRESH_TOKEN_REUSE_PROTECTION`` (a reused one
  revokes its family, as in the broker), opaque access tokens stored in the database. It runs
  on the same two backends as the broker: a SQLite file of its own, and a PostgreSQL schema of
  its own.

Each server gets the same load: ``--concurrency`` chains, each one keep-alive HTTP/1.1
connection to 127.0.0.1 that posts a refresh grant, takes the new refresh token from the answer
and posts the next one (refresh tokens rotate: a spent one is refused and revokes its family).
After ``--warmup`` seconds, answers are counted for ``--duration`` seconds.

Prints one table: throughput, p50/p99 latency, errors, server CPU time per request, each row's
throughput as a ratio of oidc-provider's, and each broker row's throughput as a ratio of
django-oauth-toolkit's on the same backend. No assertion about time. Target (issue 4): at least
the reference's throughput.

    .venv/bin/python bench/tokens.py [--concurrency 16] [--duration 10] [--warmup 2]
                                     [--no-reference] [--no-dot] [--no-sqlite] [--no-postgres]

The load generator is a small asyncio HTTP/1.1 client written here (not httpx), so that its
own cost stays low: it shares the 2 cores with the server it measures.
"""
# ruff: noqa: S603, S607  (the bench starts its own servers, npm, pip, ss and py-spy)

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from argon2 import PasswordHasher
from authlib.integrations.httpx_client import OAuth2Client
from sqlalchemy import text
from sqlalchemy.engine import make_url

from broker.catalog import service as catalog
from broker.charter import load_charter
from broker.consent.patients.service import create_local_account
from broker.consent.service import link_patient
from broker.db import make_engine, make_session_factory, transaction, utcnow
from broker.migrate import upgrade
from tests.factories import app_registration, holder_declaration

ROOT = Path(__file__).resolve().parent.parent
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REFERENCE_DIR = Path(__file__).resolve().parent / "reference" / "oidc-provider"
DOT_DIR = Path(__file__).resolve().parent / "reference" / "django-oauth-toolkit"
DOT_THREADS = 8  # gunicorn gthread threads per worker
DOT_LABEL = "django-oauth-toolkit"
SECRET_KEY = "bench-secret-key-of-at-least-32-bytes"  # noqa: S105 (a throwaway bench key)
PASSWORD = "une phrase de passe assez longue pour le banc"  # noqa: S105 (bench patients)
REDIRECT_URI = "http://127.0.0.1:9/callback"  # never contacted: the 303 is read
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- servers ---------------------------------------------------------------------------------


def stop(process: subprocess.Popen[Any], sig: int = signal.SIGINT) -> None:
    """Stop a server and everything it forked (it leads its own process group)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


@contextmanager
def running(
    argv: list[str], env: dict[str, str], ready_url: str, log: Path, cwd: Path | None = None
) -> Iterator[subprocess.Popen[Any]]:
    with log.open("w") as out:
        process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield process
    finally:
        stop(process)


# -- the load generator ----------------------------------------------------------------------


class HttpError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection: request, then read the whole answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
        if method == "POST":
            head += f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            payload = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            payload = b"".join(p[:-2] for p in parts)
        else:
            raise HttpError("answer without a length")
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, payload


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    first_error: str = ""
    broken_chains: int = 0
    spread: list[int] = field(default_factory=list)  # connections held by each server process
    cpu_seconds: float | None = None  # CPU time of the server's processes in the counted window


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every live process in a process group, from /proc."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def connection_spread(port: int) -> list[int]:
    """How many of the load's connections each server process holds (from ``ss``)."""
    ss = shutil.which("ss")
    if not ss:
        return []
    out = subprocess.run(
        [ss, "-tnpH", "state", "established"], capture_output=True, text=True, check=False
    ).stdout
    counts: dict[str, int] = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[2].endswith(f":{port}"):
            for pid in re.findall(r"pid=(\d+)", fields[-1]):
                counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts.values(), reverse=True)


async def drive(
    port: int,
    chains: int,
    client_id: str,
    seed: Callable[[Connection, int], Awaitable[str]],
    warmup: float,
    duration: float,
    server_pgid: int | None = None,
) -> LoadResult:
    result = LoadResult()
    # Every chain gets its refresh token (and, for the reference, its pinned connection) first.
    # Connections are opened one by one, as separate clients would, so that the server's
    # processes can share them out (one process that wakes first may otherwise accept them all).
    connections = [Connection(port) for _ in range(chains)]
    tokens = []
    for index, conn in enumerate(connections):
        await conn.open()
        tokens.append(await seed(conn, index))
        await asyncio.sleep(0.02)
    result.spread = connection_spread(port)
    start = time.perf_counter() + 0.05
    window = (start + warmup, start + warmup + duration)

    async def chain(index: int) -> None:
        conn, token = connections[index], tokens[index]
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        while True:
            sent = time.perf_counter()
            if sent >= window[1]:
                return
            body = urlencode(
                {"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id}
            ).encode()
            try:
                status, payload = await asyncio.wait_for(
                    conn.request("POST", "/token", body), REQUEST_TIMEOUT
                )
                answer = json.loads(payload) if status == 200 else None
            except (OSError, TimeoutError, asyncio.IncompleteReadError, HttpError, ValueError) as exc:
                status, payload, answer = 0, repr(exc).encode(), None
            done = time.perf_counter()
            counted = window[0] <= sent and done <= window[1]
            if answer is not None and "refresh_token" in answer:
                token = answer["refresh_token"]
                if counted:
                    result.requests += 1
                    result.latencies_ms.append((done - sent) * 1000)
                continue
            # The chain is broken: its token is spent or its family revoked. Count it and stop.
            if counted or sent >= window[0]:
                result.requests += 1
                result.errors += 1
            result.broken_chains += 1
            if not result.first_error:
                result.first_error = f"{status} {payload[:300]!r}"
            conn.close()
            return

    async def cpu_meter() -> None:
        # The server's CPU time per request: a figure the other loads on a shared machine
        # disturb less than throughput (they take cores away, not work per request).
        if server_pgid is None:
            return
        await asyncio.sleep(max(0.0, window[0] - time.perf_counter()))
        before = group_cpu_seconds(server_pgid)
        await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
        result.cpu_seconds = group_cpu_seconds(server_pgid) - before

    try:
        await asyncio.gather(cpu_meter(), *(chain(i) for i in range(chains)))
    finally:
        for conn in connections:
            conn.close()
    return result


@dataclass
class Row:
    server: str
    backend: str
    workers: int
    concurrency: int
    duration: float
    result: LoadResult

    @property
    def rate(self) -> float:
        return (self.result.requests - self.result.errors) / self.duration

    @property
    def cpu_per_request_ms(self) -> float | None:
        served = self.result.requests - self.result.errors
        if self.result.cpu_seconds is None or not served:
            return None
        return self.result.cpu_seconds * 1000 / served

    def cells(self, reference: float | None, same_backend: float | None = None) -> tuple[str, ...]:
        lat = self.result.latencies_ms
        p50 = statistics.median(lat) if lat else float("nan")
        p99 = statistics.quantiles(lat, n=100)[98] if len(lat) >= 2 else float("nan")
        ratio = f"{self.rate / reference:.2f}" if reference else "-"
        ratio_same_backend = f"{self.rate / same_backend:.2f}" if same_backend else "-"
        return (
            self.server,
            self.backend,
            str(self.workers),
            str(self.concurrency),
            "+".join(map(str, self.result.spread)) or "?",
            str(self.result.requests),
            str(self.result.errors),
            f"{self.rate:.0f}",
            f"{p50:.1f}",
            f"{p99:.1f}",
            f"{self.cpu_per_request_ms:.2f}" if self.cpu_per_request_ms else "?",
            ratio,
            ratio_same_backend,
        )


# -- the broker ------------------------------------------------------------------------------


def prepare_broker(url: str, patients: int) -> str:
    """One holder, one approved public app, ``patients`` patients each linked to the holder."""
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    charter = load_charter()
    password_hash = PasswordHasher().hash(PASSWORD)  # the same for all: one hash, not N
    with transaction(factory) as session:
        now = utcnow()
        catalog.add_holder(
            session,
            body=holder_declaration("labo-bench", base_url="https://labo-bench.example/fhir"),
            charter=charter,
            dev_mode=True,
            now=now,
        )
        catalog.approve_holder(session, identifier="labo-bench", operator="bench", now=now)
        registered = catalog.register_app(
            session,
            body=app_registration(redirect_uris=[REDIRECT_URI]),
            charter=charter,
            secret_key=SECRET_KEY.encode(),
            dev_mode=True,
            now=now,
        )
        client_id = registered.app.client_id
        for index in range(patients):
            patient = create_local_account(
                session,
                email=f"patient{index}@bench.example",
                display_name=f"Patient {index}",
                password_hash=password_hash,
                language="fr",
                now=now,
            )
            assert patient is not None
            link_patient(session, patient_id=patient.id, holder_id="labo-bench", now=now)
    engine.dispose()
    return client_id


def _hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    if not match:
        raise RuntimeError(f"no hidden input {name}")
    return match.group(1)


def log_in(browser: httpx.Client, index: int) -> None:
    """Bench patient ``index`` logs in on ``browser`` (an httpx client on the broker)."""
    page = browser.get("/login")
    logged = browser.post(
        "/login",
        data={
            "csrf_token": _hidden(page.text, "csrf_token"),
            "email": f"patient{index}@bench.example",
            "password": PASSWORD,
            "next": "/",
        },
    )
    if logged.status_code != 303:
        raise RuntimeError(f"log-in refused: {logged.status_code} {logged.text[:300]}")


def consent_and_exchange(browser: httpx.Client, issuer: str, client_id: str) -> dict[str, Any]:
    """The logged-in patient consents, the app exchanges the code (PKCE, public client)."""
    app = OAuth2Client(
        client_id=client_id,
        redirect_uri=REDIRECT_URI,
        token_endpoint_auth_method="none",  # noqa: S106 (a method name)
        code_challenge_method="S256",
        scope="lab_results device_measurements",  # one optional line ticked: see the report
        timeout=REQUEST_TIMEOUT,
    )
    verifier = secrets.token_urlsafe(48)
    url, _ = app.create_authorization_url(f"{issuer}/authorize", code_verifier=verifier)
    screen = browser.get(url, follow_redirects=True)
    if screen.status_code != 200:
        raise RuntimeError(f"no consent screen: {screen.status_code} {screen.text[:300]}")
    answer = browser.post(
        urlsplit(str(screen.url)).path,
        data={
            "csrf_token": _hidden(screen.text, "csrf_token"),
            "decision": "accept",
            "days": "90",
            "holder": re.findall(r'name="holder" value="([^"]+)"', screen.text),
            "item": re.findall(r'name="item" value="([^"]+)"[^>]*checked', screen.text),
        },
    )
    location = answer.headers.get("location", "")
    if answer.status_code != 303 or "code" not in parse_qs(urlsplit(location).query):
        raise RuntimeError(f"consent gave no code: {answer.status_code} {location} {answer.text[:300]}")
    try:
        return dict(
            app.fetch_token(f"{issuer}/token", authorization_response=location, code_verifier=verifier)
        )
    finally:
        app.close()


def refresh_token_through_consent(issuer: str, client_id: str, index: int) -> str:
    """What a patient and an app do: log in, consent, exchange the code (PKCE, public client)."""
    with httpx.Client(base_url=issuer, timeout=30) as browser:
        log_in(browser, index)
        return str(consent_and_exchange(browser, issuer, client_id)["refresh_token"])


def bench_broker(backend: str, url: str, args: argparse.Namespace, tmp: Path) -> Row:
    client_id = prepare_broker(url, args.concurrency)
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "BROKER_DATABASE_URL": url,
        "BROKER_KEY_DIR": str(tmp / f"keys-{backend}"),
        "BROKER_DEV_MODE": "true",
        "BROKER_SECRET_KEY": SECRET_KEY,
        "BROKER_PORT": str(port),
        "BROKER_ISSUER": issuer,
        # One client from one address on purpose: the abuse limits would stop the load.
        "BROKER_RATE_LIMIT_ADDRESS": "0",
        "BROKER_RATE_LIMIT_CLIENT": "0",
        "BROKER_RATE_LIMIT_PATIENT": "0",
    }
    argv = [sys.executable, "-m", "broker.cli", "serve", "--workers", str(args.workers)]
    log = tmp / f"broker-{backend}.log"
    with running(argv, env, f"{issuer}/jwks.json", log, cwd=ROOT) as server:
        try:
            tokens = [refresh_token_through_consent(issuer, client_id, i) for i in range(args.concurrency)]
        except Exception:
            print(f"# broker {backend} log tail:\n{log.read_text()[-4000:]}", file=sys.stderr)
            raise

        async def seed(_conn: Connection, index: int) -> str:
            return tokens[index]

        with profiling(server, args, backend):
            result = asyncio.run(
                drive(port, args.concurrency, client_id, seed, args.warmup, args.duration, server.pid)
            )
    if result.errors:
        print(f"# broker {backend}: first error: {result.first_error}", file=sys.stderr)
        print(f"# broker {backend} log tail:\n{log.read_text()[-2000:]}", file=sys.stderr)
    return Row("broker", backend, args.workers, args.concurrency, args.duration, result)


@contextmanager
def profiling(server: subprocess.Popen[Any], args: argparse.Namespace, backend: str) -> Iterator[None]:
    """Sample the broker's workers with py-spy during the run (``--profile DIR``)."""
    if not args.profile:
        yield
        return
    out_dir = Path(args.profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    pids = subprocess.run(
        ["pgrep", "-g", str(server.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    seconds = int(args.warmup + args.duration) + 1
    spies = []
    for pid in pids:
        if int(pid) == server.pid:
            continue  # the supervisor only watches its workers
        out = out_dir / f"{backend}-worker-{pid}.txt"
        spies.append(
            subprocess.Popen(
                [
                    args.py_spy,
                    "record",
                    "-p",
                    pid,
                    "-d",
                    str(seconds),
                    "-r",
                    "200",
                    "--gil",  # only the thread holding the GIL: where the CPU goes
                    "-f",
                    "raw",
                    "-o",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        print(f"# py-spy: {backend} worker {pid} -> {out}", file=sys.stderr)
    try:
        yield
    finally:
        for spy in spies:
            try:
                spy.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(timeout=10)


# -- the reference: node oidc-provider -------------------------------------------------------


def bench_reference(args: argparse.Namespace, tmp: Path) -> Row:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise RuntimeError("node and npm are needed for the reference server")
    where = tmp / "oidc-provider"
    where.mkdir()
    for name in ("package.json", "server.mjs"):
        shutil.copy(REFERENCE_DIR / name, where / name)
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=where,
        check=True,
        timeout=300,
        stdout=subprocess.DEVNULL,
    )
    version = json.loads((where / "node_modules" / "oidc-provider" / "package.json").read_text())["version"]
    port = free_port()
    env = {
        **os.environ,
        "BENCH_PORT": str(port),
        "BENCH_WORKERS": str(args.workers),
        "NODE_ENV": "production",
    }
    log = tmp / "reference.log"
    ready = f"http://127.0.0.1:{port}/.well-known/openid-configuration"
    with running([node, "server.mjs"], env, ready, log, cwd=where) as server:
        # Wait for every worker: the first one answering does not mean the others listen.
        time.sleep(1.0)

        async def seed(conn: Connection, _index: int) -> str:
            # On the chain's own connection, so the token lives in the worker that serves it.
            status, payload = await conn.request("GET", "/bench/seed")
            if status != 200:
                raise RuntimeError(f"seed failed: {status} {payload[:300]!r}")
            return str(json.loads(payload)["refresh_token"])

        result = asyncio.run(
            drive(port, args.concurrency, "bench-app", seed, args.warmup, args.duration, server.pid)
        )
    if result.errors:
        print(f"# reference: first error: {result.first_error}", file=sys.stderr)
        print(f"# reference log tail:\n{log.read_text()[-2000:]}", file=sys.stderr)
    node_version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return Row(
        f"oidc-provider {version} (node {node_version})",
        "memory",
        args.workers,
        args.concurrency,
        args.duration,
        result,
    )


# -- the second reference: django-oauth-toolkit ----------------------------------------------


def dot_venv(tmp: Path) -> Path:
    """A venv with the pinned Django, django-oauth-toolkit and gunicorn (made once per run)."""
    venv = tmp / "dot-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        installed = subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                str(DOT_DIR / "requirements.txt"),
            ],
            check=False,
            timeout=600,
            capture_output=True,
            text=True,
        )
        if installed.returncode != 0:
            raise RuntimeError(f"pip install for django-oauth-toolkit failed:\n{installed.stderr[-3000:]}")
    return venv


def django_database(url: str) -> dict[str, Any]:
    """One entry of Django's ``DATABASES`` from a SQLAlchemy URL (a schema rides in ``options``)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": parsed.database}
    database: dict[str, Any] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parsed.database or "",
        "USER": parsed.username or "",
        "PASSWORD": parsed.password or "",
        "HOST": parsed.host or "",
        "PORT": str(parsed.port or ""),
    }
    if "options" in parsed.query:
        database["OPTIONS"] = {"options": parsed.query["options"]}
    return database


def bench_dot(args: argparse.Namespace, tmp: Path, backend: str, url: str) -> Row:
    """DOT's stock TokenView behind gunicorn (gthread), the way Blue Button 2.0 serves it."""
    venv = dot_venv(tmp)
    python = str(venv / "bin" / "python")
    where = tmp / f"django-oauth-toolkit-{backend}"
    shutil.copytree(DOT_DIR, where, ignore=shutil.ignore_patterns("__pycache__"))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "benchsite.settings",
        "BENCH_DATABASE": json.dumps(django_database(url)),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    subprocess.run(
        [python, "-m", "django", "migrate", "--verbosity", "0"], cwd=where, env=env, check=True, timeout=300
    )
    seeded = subprocess.run(
        [python, "-m", "django", "bench_seed", "--chains", str(args.concurrency)],
        cwd=where,
        env=env,
        check=True,
        timeout=300,
        capture_output=True,
        text=True,
    )
    seed_answer = json.loads(seeded.stdout.strip().splitlines()[-1])
    tokens = seed_answer["refresh_tokens"]
    versions = subprocess.run(
        [
            python,
            "-c",
            "from importlib.metadata import version as v; "
            "print(v('django-oauth-toolkit'), v('Django'), v('gunicorn'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    port = free_port()
    argv = [
        str(venv / "bin" / "gunicorn"),
        "benchsite.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(args.workers),
        "--worker-class",
        "gthread",
        "--threads",
        str(DOT_THREADS),
        "--keep-alive",
        "30",  # seconds an idle keep-alive connection stays open (the default, 2, is short)
        "--log-level",
        "warning",
        "--no-control-socket",
    ]
    log = tmp / f"dot-{backend}.log"
    with running(argv, env, f"http://127.0.0.1:{port}/ready", log, cwd=where) as server:
        time.sleep(1.0)  # every worker booted, not only the first to answer

        async def seed(_conn: Connection, index: int) -> str:
            return str(tokens[index])

        result = asyncio.run(
            drive(
                port,
                args.concurrency,
                seed_answer["client_id"],
                seed,
                args.warmup,
                args.duration,
                server.pid,
            )
        )
    if result.errors:
        print(f"# django-oauth-toolkit {backend}: first error: {result.first_error}", file=sys.stderr)
        print(f"# django-oauth-toolkit {backend} log tail:\n{log.read_text()[-2000:]}", file=sys.stderr)
    return Row(
        f"{DOT_LABEL} {versions[0]} (Django {versions[1]}, gunicorn {versions[2]} gthread)",
        backend,
        args.workers,
        args.concurrency,
        args.duration,
        result,
    )


# -- main ------------------------------------------------------------------------------------


@contextmanager
def pg_schema(pg_url: str) -> Iterator[str]:
    """A schema of its own for one server's run: created here, dropped afterwards."""
    schema = f"bench_{secrets.token_hex(4)}"
    admin = make_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds counted")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds not counted, first")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--no-reference", action="store_true", help="skip node oidc-provider")
    parser.add_argument("--no-dot", action="store_true", help="skip django-oauth-toolkit")
    parser.add_argument("--profile", metavar="DIR", help="sample the broker's workers with py-spy into DIR")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy executable (with --profile)")
    args = parser.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-tokens-") as name:
        tmp = Path(name)
        reference = None if args.no_reference else bench_reference(args, tmp)
        if not args.no_sqlite:
            if not args.no_dot:
                rows.append(bench_dot(args, tmp, "sqlite", f"sqlite:///{tmp}/dot.db"))
            rows.append(bench_broker("sqlite", f"sqlite:///{tmp}/bench.db", args, tmp))
        if not args.no_postgres:
            pg_url = os.environ.get("BROKER_TEST_DATABASE_URL", PG_DEFAULT)
            if not args.no_dot:
                with pg_schema(pg_url) as url:
                    rows.append(bench_dot(args, tmp, "postgresql", url))
            with pg_schema(pg_url) as url:
                rows.append(bench_broker("postgresql", url, args, tmp))
        if reference is not None:
            rows.insert(0, reference)

    ref_rate = reference.rate if reference is not None else None
    print(
        f"Token endpoint, refresh_token grant (rotating), {args.concurrency} chains on keep-alive "
        f"connections, {args.warmup:g} s warm-up then {args.duration:g} s counted, 127.0.0.1"
    )
    if reference is not None:
        print(
            "reference: node oidc-provider, in-memory adapter, rotateRefreshToken: true, "
            "ES256 JWT access tokens"
        )
    dot_rates = {r.backend: r.rate for r in rows if r.server.startswith(DOT_LABEL)}
    if dot_rates:
        print(
            f"reference: {DOT_LABEL}, stock TokenView, public client, ROTATE_REFRESH_TOKEN and "
            "REFRESH_TOKEN_REUSE_PROTECTION on, opaque access tokens stored in the database, "
            f"gunicorn gthread ({args.workers} workers x {DOT_THREADS} threads), persistent DB connections"
        )
    print_table(
        ROW_HEADER,
        [r.cells(ref_rate, dot_rates.get(r.backend) if r.server == "broker" else None) for r in rows],
    )


# The columns of ``Row.cells``.
ROW_HEADER = (
    "server",
    "backend",
    "workers",
    "concurrency",
    "conns/process",
    "requests",
    "errors",
    "req/s",
    "p50 ms",
    "p99 ms",
    "cpu ms/req",
    "req/s / ref",
    "req/s / DOT (same backend)",
)


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()

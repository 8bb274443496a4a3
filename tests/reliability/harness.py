"""Several broker nodes on one PostgreSQL, as real processes, for the fault tests and bench/load.py.

- :class:`OwnPostgres`: a PostgreSQL cluster of our own in a temporary directory, on a free
  port, that a test may restart (the shared server on 5432 is never touched).
- :class:`Balancer`: a small reverse proxy (TCP, one upstream per connection, the next node
  when one does not answer), as nginx would stand in front of the nodes. It serves one
  issuer URL for every node and tells the holder's connections apart by what they ask for
  (metadata, keys, status lists, the push stream): those go to the holder's node and can be
  cut, to take the holder off the network for a while.
- :class:`Node`: one ``broker serve`` process; SIGKILL and restart.
- :class:`Patient`: a bench patient (``bench.tokens.prepare_broker``) who logs in once, then
  grants, has the app refresh, and withdraws.
"""

# ruff: noqa: S607  (the harness starts its own servers and PostgreSQL's tools)

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import Any

import httpx
from authlib.common.errors import AuthlibBaseError
from jwcrypto import jwk
from sqlalchemy import text, update

from bench.tokens import PASSWORD, SECRET_KEY, consent_and_exchange, log_in, prepare_broker  # noqa: F401
from broker.catalog.models import Holder
from broker.db import make_engine
from tests.e2e.proxy import RecordingProxy

ROOT = Path(__file__).resolve().parents[2]
HOLDER_ID = "labo-bench"
HOLDER_AUDIENCE = "https://labo-bench.example/fhir"
# What a holder asks a broker for; any other request is the patients' or the apps'.
HOLDER_PATHS = ("/.well-known/", "/jwks.json", "/status/", "/events/")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- PostgreSQL of our own -------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The directory of initdb and pg_ctl, newest version first; None when absent."""
    found = sorted(glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not found or shutil.which("runuser") is None:
        return None
    return Path(found[-1]).parent


class OwnPostgres:
    """A throwaway cluster run as the ``postgres`` OS user (we are root), trust auth, loopback."""

    def __init__(self) -> None:
        binaries = postgres_bin()
        if binaries is None:
            raise RuntimeError("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
        self.bin = binaries
        # Directly under /tmp: the postgres user must reach it (pytest's own are root-only).
        self.base = Path(tempfile.mkdtemp(prefix="broker-pg-"))
        self.data = self.base / "pgdata"
        self.port = free_port()
        self.log = self.base / "postgres.log"

    def _as_postgres(self, *argv: str, timeout: float = 120) -> None:
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout}\n{done.stderr}")

    def init(self) -> OwnPostgres:
        shutil.chown(self.base, "postgres", "postgres")
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        return self.start()

    def _ctl(self, action: str, *extra: str) -> None:
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        )
        self._as_postgres(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            action,
            *extra,
        )

    def start(self) -> OwnPostgres:
        self._ctl("start")
        return self

    def restart(self) -> None:
        """A fast restart: every connection is cut, open transactions roll back."""
        self._ctl("restart", "-m", "fast")

    def stop(self) -> None:
        try:
            self._ctl("stop", "-m", "immediate")
        except RuntimeError:
            pass
        shutil.rmtree(self.base, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


def new_schema(server_url: str, prefix: str) -> tuple[str, str]:
    """A fresh schema on ``server_url``: (its name, a URL whose search_path is it)."""
    from tests.e2e.stack import with_search_path

    schema = f"{prefix}_{os.getpid()}_{os.urandom(3).hex()}"
    engine = make_engine(server_url)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    return schema, with_search_path(server_url, schema)


def drop_schema(server_url: str, schema: str) -> None:
    engine = make_engine(server_url)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


# -- the reverse proxy -----------------------------------------------------------------------


class Balancer(RecordingProxy):
    """One listening port in front of the nodes; holder connections can be cut.

    The recording proxy's thread and loop, with its own way of serving a connection (nothing
    is recorded here).
    """

    def __init__(self, nodes: list[int], holder_node: int) -> None:
        super().__init__(free_port(), holder_node)
        self.port = self.listen_port
        self.nodes = nodes  # upstream ports
        self.holder_node = holder_node
        self.holder_cut = False
        self._turn = 0
        self._holder_writers: set[asyncio.StreamWriter] = set()

    def start(self) -> Balancer:
        super().start()
        return self

    def cut_holder(self, cut: bool) -> None:
        """Cut (or give back) the holder's network: its connections drop, new ones fail."""
        self.holder_cut = cut
        if cut:

            def drop() -> None:
                for writer in list(self._holder_writers):
                    writer.transport.abort()

            self._loop.call_soon_threadsafe(drop)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        path = head.split(b" ")[1].decode("latin-1") if head.count(b" ") >= 2 else ""
        holder = path.startswith(HOLDER_PATHS)
        if holder and self.holder_cut:
            writer.transport.abort()
            return
        if holder:
            order = [self.holder_node] + [p for p in self.nodes if p != self.holder_node]
        else:
            self._turn += 1
            order = self.nodes[self._turn % len(self.nodes) :] + self.nodes[: self._turn % len(self.nodes)]
        upstream = None
        for port in order:
            try:
                upstream = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue
        if upstream is None:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            writer.close()
            return
        up_reader, up_writer = upstream
        if holder:
            self._holder_writers.add(writer)
        up_writer.write(head)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            self._holder_writers.discard(writer)


# -- broker nodes ----------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    env: dict[str, str]
    log_dir: Path
    workers: int = 1
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> float:
        """Start and wait until it answers; returns how long that took (seconds)."""
        began = time.monotonic()
        log = (self.log_dir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "serve", "--workers", str(self.workers)],
            cwd=ROOT,
            env={**self.env, "BROKER_PORT": str(self.port)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        while True:
            try:
                if httpx.get(f"{self.url}/jwks.json", timeout=1).status_code == 200:
                    return time.monotonic() - began
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() - began > timeout:
                raise RuntimeError(f"node {self.name} did not start:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, the node and its workers: no shutdown, no goodbye."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        path = self.log_dir / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def rss_mib(self) -> float:
        """Resident memory of the node's processes (the server and its workers), MiB."""
        total = 0
        if self.process is None:
            return 0.0
        for status in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = status.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.process.pid:
                    total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, IndexError, ValueError):
                continue
        return total / (1024 * 1024)


@dataclass
class Brokers:
    """Two (or more) nodes on one database, one key directory, one issuer (the balancer)."""

    database_url: str
    base: Path
    nodes: list[Node] = field(default_factory=list)
    balancer: Balancer | None = None
    client_id: str = ""
    holder_key: jwk.JWK | None = None

    @classmethod
    def up(
        cls, database_url: str, base: Path, *, nodes: int = 2, patients: int = 4, workers: int = 1
    ) -> Brokers:
        base.mkdir(parents=True, exist_ok=True)
        self = cls(database_url, base)
        self.client_id = prepare_broker(database_url, patients)
        self.holder_key = give_holder_a_key(database_url)
        ports = [free_port() for _ in range(nodes)]
        self.balancer = Balancer(ports, holder_node=ports[-1]).start()
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "BROKER_DATABASE_URL": database_url,
            # One key directory for every node, as a shared volume would be: the nodes sign
            # with the same key and see a rotation at once (keys.py).
            "BROKER_KEY_DIR": str(base / "keys"),
            "BROKER_DEV_MODE": "true",
            "BROKER_SECRET_KEY": SECRET_KEY,
            "BROKER_ISSUER": self.issuer,
            "BROKER_AUDIT_INTERVAL": "1",
            # Every client of the load comes from one address on purpose: the abuse limits
            # (tests/ops/test_limits.py) would stop it.
            "BROKER_RATE_LIMIT_ADDRESS": "0",
            "BROKER_RATE_LIMIT_CLIENT": "0",
            "BROKER_RATE_LIMIT_PATIENT": "0",
        }
        for index, port in enumerate(ports):
            node = Node(f"node-{'ab'[index] if index < 2 else index}", env, base, workers=workers, port=port)
            self.nodes.append(node)
            node.start()
        return self

    @property
    def issuer(self) -> str:
        assert self.balancer is not None
        return f"http://127.0.0.1:{self.balancer.port}"

    def down(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.balancer is not None:
            self.balancer.close()

    def broker_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**self.nodes[0].env}
        return subprocess.run(
            [sys.executable, "-m", "broker.cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


def give_holder_a_key(database_url: str) -> jwk.JWK:
    """The bench holder's key pair: its public half registered, as an operator would."""
    key = jwk.JWK.generate(kty="EC", crv="P-256", kid=f"{HOLDER_ID}-key")
    public = key.export_public(as_dict=True)
    public.update(alg="ES256", use="sig")
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(update(Holder).where(Holder.identifier == HOLDER_ID).values(jwks={"keys": [public]}))
    engine.dispose()
    return key


# -- patients --------------------------------------------------------------------------------


class Retryable(Exception):
    """A clear, retryable failure: no answer, or 502/503 (with Retry-After)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Unclear(Exception):
    """Any other failure: a 5xx without Retry-After, an unexpected 4xx, a broken page."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def classify(response: httpx.Response, expected: tuple[int, ...]) -> None:
    if response.status_code in expected:
        return
    if response.status_code == 503 and response.headers.get("retry-after"):
        raise Retryable("503 retry-after")
    if response.status_code == 502:
        raise Retryable("502 no node")
    raise Unclear(f"http {response.status_code}", response.text[:300])


@dataclass
class Patient:
    """One bench patient, logged in on the issuer; the app's tokens for their consent."""

    index: int
    issuer: str
    client_id: str
    browser: httpx.Client = field(init=False)
    consent_id: str | None = None
    access_token: str | None = None
    refresh_token: str | None = None
    revoke_sent: float = 0.0  # when the last withdrawal was sent (monotonic)

    def __post_init__(self) -> None:
        self.browser = httpx.Client(base_url=self.issuer, timeout=10, trust_env=False)

    def close(self) -> None:
        self.browser.close()

    def _transport(self, call: Any) -> Any:
        try:
            return call()
        except httpx.TransportError as exc:
            raise Retryable(f"no answer ({type(exc).__name__})") from None

    def log_in(self) -> None:
        def call() -> None:
            try:
                log_in(self.browser, self.index)
            except RuntimeError as exc:
                raise Unclear("log-in", str(exc)) from None

        self._transport(call)

    def grant(self) -> None:
        def call() -> dict[str, Any]:
            try:
                return consent_and_exchange(self.browser, self.issuer, self.client_id)
            except RuntimeError as exc:
                match = re.search(r"(\d{3})", str(exc))
                if match and match.group(1) in ("502", "503"):
                    raise Retryable(f"{match.group(1)} during consent") from None
                raise Unclear("consent", str(exc)) from None
            except httpx.HTTPStatusError as exc:  # the token exchange answered an error
                classify(exc.response, ())
                raise  # classify always raises for an unexpected status
            except (AuthlibBaseError, ValueError, KeyError) as exc:  # the token exchange failed
                if "temporarily_unavailable" in str(exc):
                    raise Retryable("503 retry-after") from None
                raise Unclear("token exchange", repr(exc)) from None

        token = self._transport(call)
        self.consent_id = token["consent_id"]
        self.access_token = token["access_token"]
        self.refresh_token = token["refresh_token"]

    def refresh(self) -> None:
        assert self.refresh_token is not None
        response = self._transport(
            lambda: self.browser.post(
                "/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": self.refresh_token,
                    "client_id": self.client_id,
                },
            )
        )
        if response.status_code == 400 and response.json().get("error") == "invalid_grant":
            raise RefreshRefused(response.json().get("error_description", ""))
        classify(response, (200,))
        answer = response.json()
        self.access_token, self.refresh_token = answer["access_token"], answer["refresh_token"]

    def revoke(self, via: str | None = None) -> None:
        """Withdraw the consent on the consents page (``via``: another node's URL, same session)."""
        assert self.consent_id is not None
        with httpx.Client(
            base_url=via or self.issuer, cookies=self.browser.cookies, timeout=10, trust_env=False
        ) as client:
            page = self._transport(lambda: client.get("/my/consents"))
            classify(page, (200,))
            match = re.search(r'name="csrf_token" value="([^"]*)"', page.text)
            if match is None:
                raise Unclear("consents page", "no CSRF field")
            self.revoke_sent = time.monotonic()
            answer = self._transport(
                lambda: client.post(
                    f"/my/consents/{self.consent_id}/revoke", data={"csrf_token": match.group(1)}
                )
            )
            classify(answer, (303,))


class RefreshRefused(Exception):
    """invalid_grant on a refresh: the consent was withdrawn, or a lost answer made the app
    replay a spent token (the family is then revoked, RFC 9700 §4.14.2)."""

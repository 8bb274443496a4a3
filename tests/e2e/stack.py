"""The demo as real processes on free loopback ports: broker (behind a recording proxy), the
two example holders and the example app. Used by the end-to-end tests."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from sqlalchemy import MetaData, select, text
from sqlalchemy.engine import make_url

from broker.db import make_engine
from tests.e2e.proxy import RecordingProxy

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
HOLDERS = {"labo-demo": "lab_holder", "assurance-demo": "insurer_holder"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_search_path(url: str, schema: str) -> str:
    parsed = make_url(url)
    return parsed.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


@dataclass
class Database:
    url: str
    admin_url: str | None = None  # PostgreSQL: the server, to drop the schema afterwards
    schema: str | None = None

    @classmethod
    def sqlite(cls, directory: Path) -> Database:
        return cls(f"sqlite:///{directory / 'broker.db'}")

    @classmethod
    def postgresql(cls, server_url: str) -> Database:
        schema = f"broker_e2e_{os.getpid()}_{secrets.token_hex(3)}"
        engine = make_engine(server_url)
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine.dispose()
        return cls(with_search_path(server_url, schema), server_url, schema)

    def drop(self) -> None:
        if self.admin_url and self.schema:
            engine = make_engine(self.admin_url)
            with engine.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{self.schema}" CASCADE'))
            engine.dispose()

    def dump(self) -> str:
        """Every row of every table, as text."""
        engine = make_engine(self.url)
        metadata = MetaData()
        metadata.reflect(engine)
        lines = []
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                for row in conn.execute(select(table)):
                    values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row]
                    lines.append(f"{table.name}: " + " | ".join(values))
        engine.dispose()
        assert metadata.tables, "the broker's database has no table: the dump would prove nothing"
        return "\n".join(lines)

    def scalar(self, sql: str) -> Any:
        engine = make_engine(self.url)
        with engine.connect() as conn:
            value = conn.execute(text(sql)).scalar()
        engine.dispose()
        return value

    def column(self, sql: str) -> list[Any]:
        engine = make_engine(self.url)
        with engine.connect() as conn:
            values = list(conn.execute(text(sql)).scalars())
        engine.dispose()
        return values


@dataclass
class Stack:
    base: Path
    database: Database
    push: bool = True
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, IO[bytes]] = field(default_factory=dict)
    proxy: RecordingProxy | None = None

    def __post_init__(self) -> None:
        for name in ("broker", "proxy", "app", *HOLDERS):
            self.ports[name] = free_port()
        (self.base / "logs").mkdir(parents=True, exist_ok=True)

    # -- addresses ---------------------------------------------------------------------------
    @property
    def issuer(self) -> str:
        """The broker as everyone sees it: through the recording proxy."""
        return f"http://{self.host}:{self.ports['proxy']}"

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.ports[name]}"

    def state_dir(self, name: str) -> Path:
        return self.base / "var" / "examples" / name

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "BROKER_DATABASE_URL": self.database.url,
            "BROKER_KEY_DIR": str(self.base / "var" / "keys"),
            "BROKER_DEV_MODE": "true",
            "BROKER_DEMO": "false",
            "BROKER_ISSUER": self.issuer,
            "BROKER_HOST": self.host,
            "BROKER_PORT": str(self.ports["broker"]),
            # The lowest argon2id cost the broker accepts: log-ins are not what is tested here.
            "BROKER_ARGON2_MEMORY_KIB": "19456",
            "BROKER_ARGON2_TIME_COST": "2",
            "BROKER_ARGON2_PARALLELISM": "1",
        }

    # -- processes ---------------------------------------------------------------------------
    def run(self, *args: str) -> str:
        done = subprocess.run(
            [PYTHON, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, name: str, *args: str, ready: str) -> None:
        log = self.logs.get(name) or open(self.base / "logs" / f"{name}.log", "ab")
        self.logs[name] = log
        process = subprocess.Popen(
            [PYTHON, *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.processes[name] = process
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(ready, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert process.poll() is None, f"{name} stopped:\n{self.log(name)[-3000:]}"
            assert time.monotonic() < deadline, (
                f"{name} did not answer within 30 s:\n{self.log(name)[-3000:]}"
            )
            time.sleep(0.1)

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log(self, name: str) -> str:
        path = self.base / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_broker(self) -> None:
        self.start(
            "broker",
            "-m",
            "broker.cli",
            "serve",
            ready=f"{self.url('broker')}/.well-known/oauth-authorization-server",
        )

    def start_holder(self, identifier: str) -> None:
        module = HOLDERS[identifier]
        args = [
            "-m",
            f"examples.{module}",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.ports[identifier]),
            "--broker",
            self.issuer,
            "--state-dir",
            str(self.state_dir(identifier)),
        ]
        if not self.push:
            args.append("--no-push")
        self.start(identifier, *args, ready=f"{self.url(identifier)}/health")

    def start_app(self) -> None:
        self.start(
            "app",
            "-m",
            "examples.diabetes_app",
            "--host",
            self.host,
            "--port",
            str(self.ports["app"]),
            "--broker",
            self.issuer,
            "--state-dir",
            str(self.state_dir("diabetes-app")),
            ready=f"{self.url('app')}/health",
        )

    def up(self) -> Stack:
        self.run("-m", "broker.cli", "migrate")
        self.proxy = RecordingProxy(self.ports["proxy"], self.ports["broker"]).start()
        self.start_broker()
        # The operator registers and approves both holders from the documents they publish.
        for identifier, module in HOLDERS.items():
            document = self.run(
                "-m",
                f"examples.{module}",
                "registration",
                "--host",
                self.host,
                "--port",
                str(self.ports[identifier]),
                "--broker",
                self.issuer,
                "--state-dir",
                str(self.state_dir(identifier)),
            )
            path = self.base / f"{identifier}.json"
            path.write_text(document)
            self.run("-m", "broker.cli", "holders", "add", str(path))
            self.run("-m", "broker.cli", "holders", "approve", identifier)
        for identifier in HOLDERS:
            self.start_holder(identifier)
        self.start_app()  # registers itself through the SDK (RFC 7591) with its manifest
        return self

    def restart_holders(self, *, push: bool) -> None:
        self.push = push
        for identifier in HOLDERS:
            self.stop(identifier)
        for identifier in HOLDERS:
            self.start_holder(identifier)

    def down(self) -> None:
        for name in ("app", *HOLDERS, "broker"):
            self.stop(name)
        if self.proxy is not None:
            self.proxy.close()
        for log in self.logs.values():
            log.close()

    # -- the holders' receipt queues (the SDK's on-disk queue) ------------------------------
    def receipts(self, state: str) -> list[str]:
        jtis: list[str] = []
        for identifier in HOLDERS:
            path = self.state_dir(identifier) / "receipts.sqlite3"
            if path.exists():
                with sqlite3.connect(path) as queue:
                    rows = queue.execute("SELECT jti FROM receipts WHERE state = ?", (state,))
                    jtis += [f"{identifier} {jti}" for (jti,) in rows]
        return jtis


# -- the one rule: searching for what the holders served ------------------------------------


def served() -> dict[str, set[str]]:
    """Every observation value, code and patient name or identifier the holders can serve."""
    from examples.insurer_holder import data as insurer
    from examples.lab_holder import data as lab

    out: dict[str, set[str]] = {"values": set(), "codes": set(), "names": set()}
    for source in (lab.served_values(), insurer.served_values()):
        for kind, values in source.items():
            out[kind] |= values
    return out


def find_served(haystack: str, needles: dict[str, set[str]] | None = None) -> list[str]:
    """The served strings found in ``haystack``.

    A number is found only as a number of its own: not inside a longer number ("7.43" in a
    timestamp's "17.431") and not inside a base64url run, where the dot between a JWS payload
    ending in "9" and a signature starting with "55" would spell "9.55" by chance. Every
    other string (codes, names, identifiers) is searched as is.
    """
    needles = needles or served()
    found = []
    for kind, values in needles.items():
        for value in sorted(values):
            if kind == "values" and re.fullmatch(r"\d+\.\d+", value):
                if re.search(_number(value), haystack):
                    found.append(f"{kind}: {value}")
            elif value in haystack:
                found.append(f"{kind}: {value}")
    return found


def _number(value: str) -> str:
    return rf"(?<![\w.\-]){re.escape(value)}(?![\w\-]|\.\d)"


def where(haystack: str, findings: list[str], width: int = 80) -> str:
    """Each finding with the text around its first occurrence, to see what carried it."""
    out = []
    for finding in findings:
        kind, value = finding.split(": ", 1)
        match = re.search(_number(value) if kind == "values" else re.escape(value), haystack)
        if match:
            out.append(f"{finding}: …{haystack[max(0, match.start() - width) : match.end() + width]!r}…")
    return "\n".join(out)


def page_json(response: httpx.Response) -> Any:
    return json.loads(response.text)


def flatten(values: Iterable[Any]) -> str:
    return "\n".join(str(v) for v in values)

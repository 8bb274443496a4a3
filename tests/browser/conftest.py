"""A real broker process (the demo seeded, as ``make run`` does) and Debian's Chromium driven
by Playwright. Playwright's own browser downloads are never used: ``make test`` installs the
``chromium`` package when ``/usr/bin/chromium`` is missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.axe import axe_source
from tests.e2e.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("BROKER_TEST_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = ROOT / "docs" / "screenshots"
GAELLE = ("gaelle@demo.example", "gaelle-demo-patiente-2026")


@dataclass
class Broker:
    url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "broker.cli", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="package")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    base = tmp_path_factory.mktemp("browser")
    port = free_port()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "BROKER_DATABASE_URL": f"sqlite:///{base / 'broker.db'}",
        "BROKER_KEY_DIR": str(base / "keys"),
        "BROKER_DEV_MODE": "true",
        "BROKER_DEMO": "true",
        "BROKER_PORT": str(port),
        "BROKER_ISSUER": f"http://127.0.0.1:{port}",
        # The lowest argon2id cost the broker accepts: log-ins are not what is measured here.
        "BROKER_ARGON2_MEMORY_KIB": "19456",
        "BROKER_ARGON2_TIME_COST": "2",
        "BROKER_ARGON2_PARALLELISM": "1",
    }
    migrate = subprocess.run(
        [sys.executable, "-m", "broker.cli", "migrate"], cwd=ROOT, env=env, capture_output=True, timeout=120
    )
    assert migrate.returncode == 0, migrate.stderr
    log = open(base / "broker.log", "wb")  # closed when the fixture ends
    process = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/.well-known/oauth-authorization-server", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None, (base / "broker.log").read_text()
        assert time.monotonic() < deadline, "the broker did not answer within 30 s"
        time.sleep(0.1)
    found = Broker(url, env, process)
    # Gaëlle is linked to the demo laboratory, so that the catalog can point at her sources.
    links = base / "links.csv"
    links.write_text(f"email,holder\n{GAELLE[0]},labo-demo\n")
    found.cli("links", "import", str(links))
    try:
        yield found
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        output = (base / "broker.log").read_text(errors="replace")
        assert "Traceback" not in output, output[-3000:]


@pytest.fixture(scope="session")
def axe() -> str:
    return axe_source()


@pytest.fixture(scope="package")
def chromium() -> Iterator[Any]:
    # Package scope: Playwright's sync API runs an event loop in this thread while it is open,
    # and tests after these ones call asyncio.run(); it must be closed when they end.
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `make test` installs Debian's chromium package"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def new_page(chromium: Any) -> Iterator[Any]:
    """``new_page(language, width)``: a page in a fresh context (no cookie shared)."""
    contexts: list[Any] = []

    def make(language: str = "fr", width: int = 1280) -> Any:
        context = chromium.new_context(
            locale="fr-FR" if language == "fr" else "en-GB",
            extra_http_headers={"Accept-Language": language},
            viewport={"width": width, "height": 900},
        )
        context.set_default_timeout(15000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()

"""axe-core, from the npm registry, injected into pages by Playwright.

The package is installed once into ``var/npm`` (outside the repository's tracked files) with
the ordinary npm client; ``make test`` does it beforehand, and the tests do it themselves when
run alone. Nothing else is downloaded: the browser is Debian's Chromium.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NPM_PREFIX = ROOT / "var" / "npm"
AXE_SOURCE = NPM_PREFIX / "node_modules" / "axe-core" / "axe.min.js"
# WCAG 2.0 and 2.1, levels A and AA: what the issue asks the pages to meet.
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]
BLOCKING = ("serious", "critical")


def axe_source() -> str:
    if not AXE_SOURCE.exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed once, to install axe-core from the npm registry"
        NPM_PREFIX.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--prefix", str(NPM_PREFIX), "--no-audit", "--no-fund", "axe-core@4"],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return AXE_SOURCE.read_text()


def axe_violations(page: Any, source: str) -> list[dict[str, Any]]:
    """Every violation axe finds on ``page``, of any impact.

    The script is evaluated through the DevTools protocol, which the page's
    Content-Security-Policy does not govern: the policy stays as strict as patients get it.
    """
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(source)
    result = page.evaluate(
        "async (tags) => await window.axe.run(document, {runOnly: {type: 'tag', values: tags}})",
        AXE_TAGS,
    )
    return list(result["violations"])


def assert_accessible(page: Any, source: str) -> None:
    """No serious or critical violation on ``page``; the message names each one and where."""
    blocking = [v for v in axe_violations(page, source) if v.get("impact") in BLOCKING]
    report = [
        {
            "rule": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "where": [n["target"] for n in v["nodes"]][:5],
        }
        for v in blocking
    ]
    assert not blocking, f"{page.url}: " + json.dumps(report, ensure_ascii=False, indent=1)

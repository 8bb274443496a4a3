"""How long the charter takes: one manifest, and a re-check of 10,000 apps after a charter change.

Pure evaluation only (no database). Prints a table; asserts nothing, since timings depend on
the machine. Run: `.venv/bin/python bench/charter.py [--apps 10000] [--repeat 2000]`.

The apps are built by the test factory (tests/charter/manifests.py): varied compliant apps,
a fifth of them given one forbidden element. The "new charter version" is the stricter test
fixture tests/charter/data/charter-2.0.json (advertising forbidden, retention capped at 1095
days).
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.charter import (  # noqa: E402
    Charter,
    Status,
    evaluate,
    load_charter,
    load_charter_file,
    manifest_digest,
)
from tests.charter.manifests import COMPLIANT, changed, varied_app  # noqa: E402

V2 = ROOT / "tests" / "charter" / "data" / "charter-2.0.json"


def _timings_us(action: Callable[[], object], repeat: int) -> list[float]:
    for _ in range(min(repeat, 100)):  # warm caches and the interpreter
        action()
    found = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        action()
        found.append((time.perf_counter_ns() - start) / 1000)
    return found


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[94]


def _break(document: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    m = "charter_manifest"
    choices: list[dict[str, object]] = [
        {f"{m}.business_model.model": rng.choice(["sale_of_data", "data_brokerage"])},
        {"redirect_uris": ["http://app.example/callback"]},
        {f"{m}.retention.days": 99_999},
        {f"{m}.rights.erasure": ""},
        {f"{m}.hosting.health_data_certification": None},
    ]
    broken: dict[str, Any] = changed(document, rng.choice(choices))
    return broken


def _apps(count: int, charter: Charter) -> list[dict[str, Any]]:
    rng = random.Random(20261128)
    apps = []
    for number in range(count):
        document = varied_app(rng, charter, number)
        apps.append(_break(document, rng) if rng.random() < 0.2 else document)
    return apps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2_000)
    options = parser.parse_args()

    start = time.perf_counter()
    v1 = load_charter("1.0")
    load_ms = (time.perf_counter() - start) * 1000
    v2 = load_charter_file(V2)

    compliant = COMPLIANT["diabetes follow-up «Suivi Glycémie»"]
    refused = changed(
        compliant,
        {
            "charter_manifest.business_model.model": "sale_of_data",
            "redirect_uris": ["http://glycemie.example/callback"],
            "charter_manifest.rights.erasure": "",
        },
    )
    assert evaluate(compliant, v1).status == Status.APPROVED
    assert evaluate(refused, v1).status == Status.REFUSED

    rows: list[tuple[str, str, str, str]] = []
    for label, document in (("compliant", compliant), ("refused (3 findings)", refused)):
        times = _timings_us(functools.partial(evaluate, document, v1), options.repeat)
        rows.append(
            (
                f"evaluate one manifest, {label}",
                f"{statistics.median(times):.1f} µs",
                f"{_p95(times):.1f} µs",
                f"n={options.repeat}",
            )
        )
    times = _timings_us(lambda: manifest_digest(compliant), options.repeat)
    rows.append(
        (
            "manifest_digest, one manifest",
            f"{statistics.median(times):.1f} µs",
            f"{_p95(times):.1f} µs",
            f"n={options.repeat}",
        )
    )

    apps = _apps(options.apps, v1)
    before = [evaluate(app, v1).status for app in apps]
    start = time.perf_counter()
    after = [evaluate(app, v2).status for app in apps]
    recheck_s = time.perf_counter() - start
    start = time.perf_counter()
    for app in apps:
        evaluate(app, v2)
        manifest_digest(app)
    recheck_digest_s = time.perf_counter() - start
    rows.append(
        (
            f"re-check {len(apps):,} apps under charter {v2.version}",
            f"{recheck_s:.2f} s total",
            "",
            f"{recheck_s / len(apps) * 1e6:.1f} µs/app",
        )
    )
    rows.append(
        (
            f"re-check {len(apps):,} apps, with digests",
            f"{recheck_digest_s:.2f} s total",
            "",
            f"{recheck_digest_s / len(apps) * 1e6:.1f} µs/app",
        )
    )
    rows.append(("load charter 1.0 (cold, once per process)", f"{load_ms:.1f} ms", "", ""))

    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'median':>14}  {'p95':>10}  note")
    print(f"{'-' * width}  {'-' * 14}  {'-' * 10}  ----")
    for name, median, p95, note in rows:
        print(f"{name:<{width}}  {median:>14}  {p95:>10}  {note}")

    suspended = sum(
        1 for b, a in zip(before, after, strict=True) if b == Status.APPROVED and a != Status.APPROVED
    )
    print()
    print(f"statuses under {v1.version}: {dict(sorted(Counter(map(str, before)).items()))}")
    print(f"statuses under {v2.version}: {dict(sorted(Counter(map(str, after)).items()))}")
    print(f"approved under {v1.version} and no longer under {v2.version} (to suspend): {suspended}")


if __name__ == "__main__":
    main()

"""``make run``: the broker, the two demo holders and the demo app, each its own process.

Starts them on loopback (broker 8000, app 8001, laboratory 8002, insurer 8003), waits until
each answers, prints what to open and the demo accounts, and stops them all on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import httpx

from examples.common.keys import load_or_create_key

ROOT = Path(__file__).resolve().parents[1]
HOLDERS = (("lab_holder", "labo-demo"), ("insurer_holder", "assurance-demo"))

WALKTHROUGH = """
  Le courtier de consentement et sa démo sont prêts.

  Ouvrez  {broker}/login  et connectez-vous en patiente de démonstration :
      Gaëlle Martin    gaelle@demo.example     gaelle-demo-patiente-2026
      (ou Antoine Dubois  antoine@demo.example  antoine-demo-patient-2026)

  1. Relier vos sources : {broker}/my/sources → « Relier » le Laboratoire Démo ; vous voilà
     sur le site du laboratoire ({lab}), identifiez-vous avec le compte du laboratoire :
         gaelle.martin / labo-gaelle-2026      (antoine.dubois / labo-antoine-2026)
     Faites de même pour l'Assurance Démo ({insurer}) :
         gaelle.martin / assurance-gaelle-2026 (antoine.dubois / assurance-antoine-2026)
  2. Ouvrir l'application : le catalogue du courtier la présente ({broker}/catalog,
     « Suivi Glycémie ») ; son bouton « Connecter cette application » mène à {app}
  3. « Connecter mes données » : l'écran de consentement du courtier s'ouvre ; acceptez.
  4. Le graphique de votre glycémie s'affiche : les résultats viennent directement du
     laboratoire, sans passer par le courtier.
  5. Retirer le consentement : {broker}/my/consents → « Retirer ».
  6. Rechargez {app} : « Accès retiré », le laboratoire refuse désormais l'application.
  7. Et aussi :
     {broker}/my/history     tout ce qui s'est passé ;
     {broker}/my/download    vos données, du laboratoire et de l'assurance directement
                                        à votre navigateur ;
     {broker}/my/caregivers  confier vos accords à un proche (invitez antoine@demo.example,
                                        puis connectez-vous en Antoine pour accepter).

  Journaux des quatre serveurs : {logs}/
  Ctrl-C arrête tout.
"""


def _wait(url: str, process: subprocess.Popen[bytes], name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} stopped at start (exit code {process.returncode})")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{name} did not answer at {url} within {timeout:.0f} s")


def _demo_client_id(broker: str) -> str:
    answer = httpx.get(f"{broker}/api/catalog/apps", params={"q": "Suivi Glycémie"}, timeout=5.0)
    answer.raise_for_status()
    for app in answer.json()["items"]:
        if app["client_name"] == "Suivi Glycémie":
            return str(app["client_id"])
    raise SystemExit("the demo app is not in the catalog: is BROKER_DEMO=true set?")


def _stop(processes: Sequence[tuple[str, subprocess.Popen[bytes]]]) -> int:
    """Stop the servers, the broker last. Ctrl-C in a terminal reached them already (the
    whole process group gets it); any still running after a moment gets SIGTERM."""
    worst = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and any(p.poll() is None for _, p in processes):
        time.sleep(0.1)
    for _, process in reversed(processes):
        if process.poll() is None:
            process.terminate()
    for name, process in reversed(processes):
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
            print(f"{name} did not stop within 10 s: killed", file=sys.stderr)
        # uvicorn exits 0 on SIGINT; anything else is worth a non-zero exit here.
        worst = worst or (0 if code in (0, -signal.SIGINT, -signal.SIGTERM) else code)
    return worst


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.run", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--var", type=Path, default=ROOT / "var", help="state directory (keys, databases)")
    args = parser.parse_args(argv)
    host = args.host
    broker, app = f"http://{host}:8000", f"http://{host}:8001"
    lab, insurer = f"http://{host}:8002", f"http://{host}:8003"
    examples_state = args.var / "examples"
    # The holders' keys first: the broker's demo seeding registers their public halves.
    for _, identifier in HOLDERS:
        load_or_create_key(examples_state / identifier)
    env = {
        **os.environ,
        "BROKER_DEV_MODE": os.environ.get("BROKER_DEV_MODE", "true"),
        "BROKER_DEMO": os.environ.get("BROKER_DEMO", "true"),
        "PYTHONUNBUFFERED": "1",
    }
    python = sys.executable
    # Each server's log lines go to a file of its own: the console keeps the walkthrough.
    logs = args.var / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def log_file(name: str) -> IO[bytes]:
        return open(logs / f"{name}.log", "ab")  # the launcher lives as long as the servers

    processes: list[tuple[str, subprocess.Popen[bytes]]] = []
    # Ctrl-C reaches the whole process group: each server stops on its own, and the launcher
    # waits for them. Installed explicitly: a shell may start us with SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        broker_process = subprocess.Popen(  # noqa: S603 (our own interpreter and modules)
            [python, "-m", "broker.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=log_file("broker"),
            stderr=subprocess.STDOUT,
        )
        processes.append(("broker", broker_process))
        _wait(f"{broker}/.well-known/oauth-authorization-server", broker_process, "the broker")
        client_id = _demo_client_id(broker)
        for module, identifier in HOLDERS:
            process = subprocess.Popen(  # noqa: S603 (our own interpreter and modules)
                [
                    python,
                    "-m",
                    f"examples.{module}",
                    "serve",
                    "--host",
                    host,
                    "--broker",
                    broker,
                    "--state-dir",
                    str(examples_state / identifier),
                ],
                cwd=ROOT,
                env=env,
                stdout=log_file(identifier),
                stderr=subprocess.STDOUT,
            )
            processes.append((identifier, process))
        app_process = subprocess.Popen(  # noqa: S603 (our own interpreter and modules)
            [
                python,
                "-m",
                "examples.diabetes_app",
                "--host",
                host,
                "--broker",
                broker,
                "--client-id",
                client_id,
                "--state-dir",
                str(examples_state / "diabetes-app"),
            ],
            cwd=ROOT,
            env=env,
            stdout=log_file("diabetes-app"),
            stderr=subprocess.STDOUT,
        )
        processes.append(("diabetes-app", app_process))
        for (name, process), url in zip(processes[1:], (lab, insurer, app), strict=True):
            _wait(f"{url}/health", process, name)
        print(WALKTHROUGH.format(broker=broker, app=app, lab=lab, insurer=insurer, logs=logs), flush=True)
        while all(p.poll() is None for _, p in processes):
            time.sleep(0.5)
        time.sleep(0.5)  # a Ctrl-C that stopped a server reaches us too: let it win the race
        stopped = next(name for name, p in processes if p.poll() is not None)
        print(f"{stopped} stopped: stopping the others", file=sys.stderr)
        _stop(processes)
        return 1
    except KeyboardInterrupt:
        print("\nArrêt…", flush=True)
        return _stop(processes)
    except SystemExit:
        _stop(processes)
        print(f"the servers' logs are in {logs}/", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())

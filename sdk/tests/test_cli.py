"""The ``broker-sdk`` command against the live broker."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sdk_support import Broker, Browser, grant, new_key

from broker_sdk.cli import main

MANIFEST = Path(__file__).parents[1] / "examples" / "manifest.toml"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_app_register_update_verdict(
    live_broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "manifest.json"
    from broker_sdk.app import load_manifest

    body = load_manifest(MANIFEST)
    body["client_name"] = "Carnet CLI Test"
    manifest.write_text(json.dumps(body))
    state = tmp_path / "state.json"
    code, out = run(
        capsys, "--state", str(state), "app", "register", str(manifest), "--issuer", live_broker.issuer
    )
    assert code == 0, out
    assert "client_id:" in out and "status: approved" in out
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    saved = json.loads(state.read_text())
    first = saved["apps"][live_broker.issuer]["registration_access_token"]

    body["charter_manifest"]["business_model"]["model"] = "sale_of_data"
    manifest.write_text(json.dumps(body))
    code, out = run(capsys, "--state", str(state), "app", "update")
    assert code == 0, out
    assert "status: refused" in out and "art." in out
    assert json.loads(state.read_text())["apps"][live_broker.issuer]["registration_access_token"] != first

    code, out = run(capsys, "--state", str(state), "app", "verdict")
    assert code == 2 and "status: refused" in out


def test_token_inspect_explains_each_check(
    live_broker: Broker, browser: Browser, capsys: pytest.CaptureFixture[str]
) -> None:
    token = grant(live_broker, browser)["access_token"]
    holder = live_broker.holders["labo-a"]
    code, out = run(
        capsys,
        "token",
        "inspect",
        token,
        "--issuer",
        live_broker.issuer,
        "--audience",
        holder.base_url,
        "--category",
        "lab_results",
    )
    assert code == 0, out
    for name in ("format", "alg", "typ", "kid", "iss", "signature", "aud", "exp", "status", "categories"):
        assert f"✓ {name}" in out, (name, out)
    code, out = run(
        capsys,
        "token",
        "inspect",
        token,
        "--issuer",
        live_broker.issuer,
        "--audience",
        live_broker.holders["labo-b"].base_url,
        "--category",
        "identity",
    )
    assert code == 1
    assert "✗ aud" in out and "another holder" in out and "✗ categories" in out and "✓ signature" in out
    header, body, _ = token.split(".")
    code, out = run(capsys, "token", "inspect", f"{header}.{body}.AAAA", "--issuer", live_broker.issuer)
    assert code == 1 and "✗ signature" in out


def test_holder_check(live_broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    holder = live_broker.holders["labo-a"]
    key_file = tmp_path / "holder.jwk"
    key_file.write_text(holder.key.export_private())
    code, out = run(
        capsys,
        "holder",
        "check",
        "--issuer",
        live_broker.issuer,
        "--holder-id",
        "labo-a",
        "--key",
        str(key_file),
        "--audience",
        holder.base_url,
    )
    assert "✓ broker metadata" in out and "✓ broker JWKS" in out and "✓ status list" in out
    assert "✓ holder approved" in out and "✓ key registered" in out and "✓ push stream" in out
    assert "✓ audience" in out
    wrong = tmp_path / "other.jwk"
    wrong.write_text(new_key("labo-a-key").export_private())
    code, out = run(
        capsys,
        "holder",
        "check",
        "--issuer",
        live_broker.issuer,
        "--holder-id",
        "labo-a",
        "--key",
        str(wrong),
    )
    assert code == 1 and "✗ key registered" in out


def test_console_script_is_installed() -> None:
    bin_dir = Path(sys.executable).parent
    answer = subprocess.run(
        [str(bin_dir / "broker-sdk"), "--version"], capture_output=True, text=True, check=False
    )
    assert answer.returncode == 0 and "broker-sdk 0.2.0" in answer.stdout

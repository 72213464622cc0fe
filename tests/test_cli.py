"""The dsr command as people use it: a real server process on loopback, real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import new_key
from tests.fixtures.mail import body_of, code_in, free_port, read_mail_dir


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSR_")}
    env.update(
        {
            "DSR_DATA_DIR": str(tmp_path / "var"),
            "DSR_DATABASE_URL": f"sqlite:///{tmp_path / 'dsr.db'}",
            "DSR_DEFAULT_LANGUAGE": "en",
            "DSR_WORKER_POLL_SECONDS": "0.1",
            **extra,
        }
    )
    return env


def _dsr(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    port = free_port()
    env = _env(tmp_path)  # no DSR_PUBLIC_URL: the service's links follow --port
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("dsr serve did not answer within 10 s")
        yield base, env
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
        # uvicorn shuts down gracefully, then re-raises SIGTERM (as supervisors expect)
        assert process.returncode in (0, -15), output
        assert "jobs.worker_stopped" in output
        assert "ana@example.org" not in output  # logs carry ids only


def test_serve_migrates_and_answers_over_real_http(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, env = server
    filed = httpx.post(
        f"{base}/v1/requests", json={"type": "access", "subject": {"email": "ana@example.org"}}
    ).json()
    mail_dir = tmp_path / "var" / "mail"
    for _ in range(50):  # the worker inside the server delivers within a second or so
        if read_mail_dir(mail_dir):
            break
        time.sleep(0.1)
    mail = read_mail_dir(mail_dir)[0]
    code = code_in(mail)
    assert f"{base}/v1/requests/{filed['id']}" in body_of(mail)  # not the default port
    auth = {"Authorization": f"Bearer {filed['status_token']}"}
    verified = httpx.post(
        f"{base}/v1/requests/{filed['id']}/verification", json={"code": code}, headers=auth
    )
    assert verified.status_code == 200, verified.text
    for _ in range(50):
        status = httpx.get(f"{base}/v1/requests/{filed['id']}", headers=auth).json()["status"]
        if status == "completed":
            break
        time.sleep(0.1)
    assert status == "completed"
    token = _dsr("token", "--scope", "requests:read audit:read", env=env, cwd=tmp_path)
    assert token.returncode == 0, token.stderr
    staff = {"Authorization": f"Bearer {token.stdout.strip()}"}
    detail = httpx.get(f"{base}/v1/admin/requests/{filed['id']}", headers=staff)
    assert detail.status_code == 200
    assert detail.json()["subject"]["email"] == "ana@example.org"
    assert (
        httpx.post(f"{base}/v1/admin/requests/{filed['id']}/cancel", headers=staff).status_code
        == 403
    )
    verify = _dsr("audit", "verify", env=env, cwd=tmp_path)
    assert verify.returncode == 0
    assert json.loads(verify.stdout)["ok"] is True
    assert (tmp_path / "var" / "secrets.json").stat().st_mode & 0o077 == 0


def test_migrate_and_openapi(tmp_path: Path) -> None:
    env = _env(tmp_path)
    migrated = _dsr("migrate", env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    again = _dsr("migrate", env=env, cwd=tmp_path)
    assert again.returncode == 0
    document = _dsr("openapi", env=env, cwd=tmp_path)
    assert json.loads(document.stdout)["info"]["title"]


def test_production_refuses_generated_secrets(tmp_path: Path) -> None:
    env = _env(tmp_path, DSR_ENV="production")
    refused = _dsr("migrate", env=env, cwd=tmp_path)
    assert refused.returncode != 0
    assert "DSR_ENCRYPTION_KEY" in refused.stderr
    assert "Traceback" not in refused.stderr
    env.update(DSR_ENCRYPTION_KEY=new_key(), DSR_STAFF_JWT_SECRET=new_key())
    assert _dsr("migrate", env=env, cwd=tmp_path).returncode == 0


def test_demo_walks_a_request_through_two_sample_connectors(tmp_path: Path) -> None:
    ran = _dsr("demo", env=_env(tmp_path), cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-2000:]
    out = ran.stdout
    assert "shop: signed access call" in out
    assert "newsletter: called back, the service answered 200" in out
    assert '"status": "completed"' in out
    assert "connector_job.succeeded" in out
    assert '"ok": true' in out
    assert list(tmp_path.iterdir()) == [], "the demo keeps nothing"


def test_token_scopes_may_be_repeated_or_space_separated(tmp_path: Path) -> None:
    from jose import jwt

    env = _env(tmp_path, DSR_STAFF_JWT_SECRET="s" * 40)
    made = _dsr(
        "token", "--scope", "requests:read", "--scope", "audit:read connectors:write",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    claims = jwt.decode(made.stdout.strip(), "s" * 40, algorithms=["HS256"])
    assert set(claims["scope"].split()) == {"requests:read", "audit:read", "connectors:write"}
    default = _dsr("token", env=env, cwd=tmp_path)
    claims = jwt.decode(default.stdout.strip(), "s" * 40, algorithms=["HS256"])
    assert set(claims["scope"].split()) == {"requests:read", "requests:write", "audit:read"}
    unknown = _dsr("token", "--scope", "requests:reed", env=env, cwd=tmp_path)
    assert unknown.returncode == 1
    assert "unknown scopes: requests:reed" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    empty = _dsr("token", "--scope", "", env=env, cwd=tmp_path)
    assert (empty.returncode, empty.stdout) == (1, "")
    assert "no scope given" in empty.stderr

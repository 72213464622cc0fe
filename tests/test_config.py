"""Settings: zero-configuration development (secrets generated once and kept), a production
start that refuses missing, generated or weak secrets, and strict parsing of the environment."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import ConfigurationError, Settings, decode_key, load_settings, new_key
from tests.fixtures.mail import free_port

ROOT = Path(__file__).resolve().parent.parent
GOOD_SECRET = "a-configured-staff-secret-" + "x" * 40


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment: no DSR_ variable, no .env file, a fresh data dir."""
    for name in list(os.environ):
        if name.startswith("DSR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "var"
    monkeypatch.setenv("DSR_DATA_DIR", str(path))
    return path


def secrets_file(data_dir: Path) -> dict[str, str]:
    return json.loads((data_dir / "secrets.json").read_text())


# --- development: generated once, kept --------------------------------------------------------


@pytest.mark.usefixtures("data_dir")
def test_defaults_need_no_configuration() -> None:
    settings = Settings()
    assert settings.env == "development"
    assert settings.review_types == []
    assert settings.reminder_days == [7, 2]
    assert str(settings.tz) == "Europe/Paris"


def test_development_generates_secrets_once_and_reads_them_back(data_dir: Path) -> None:
    first = load_settings()
    path = data_dir / "secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(decode_key(first.encryption_key)) == 32
    assert len(first.staff_jwt_secret.encode()) >= 32
    assert first.generated_secrets == {"encryption_key", "staff_jwt_secret"}
    assert secrets_file(data_dir) == {
        "encryption_key": first.encryption_key,
        "staff_jwt_secret": first.staff_jwt_secret,
    }

    second = load_settings()
    assert (second.encryption_key, second.staff_jwt_secret) == (
        first.encryption_key,
        first.staff_jwt_secret,
    )
    assert [p.name for p in data_dir.iterdir()] == ["secrets.json"]  # no temp file left


def test_a_configured_secret_is_used_and_only_the_other_is_generated(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_key()
    monkeypatch.setenv("DSR_ENCRYPTION_KEY", key)
    settings = load_settings()
    assert settings.encryption_key == key
    assert settings.generated_secrets == {"staff_jwt_secret"}
    assert settings.staff_jwt_secret == secrets_file(data_dir)["staff_jwt_secret"]


def test_processes_starting_together_agree_on_one_set_of_secrets(data_dir: Path) -> None:
    ready = threading.Barrier(12)

    def start() -> tuple[str, str]:
        ready.wait()
        settings = load_settings()
        return settings.encryption_key, settings.staff_jwt_secret

    with ThreadPoolExecutor(max_workers=12) as pool:
        seen = set(pool.map(lambda _: start(), range(12)))
    stored = secrets_file(data_dir)
    assert seen == {(stored["encryption_key"], stored["staff_jwt_secret"])}
    assert [p.name for p in data_dir.iterdir()] == ["secrets.json"]


def test_an_incomplete_secrets_file_is_completed_keeping_what_it_holds(data_dir: Path) -> None:
    data_dir.mkdir()
    (data_dir / "secrets.json").write_text(json.dumps({"staff_jwt_secret": GOOD_SECRET}))
    settings = load_settings()
    assert settings.staff_jwt_secret == GOOD_SECRET
    assert len(decode_key(settings.encryption_key)) == 32
    assert secrets_file(data_dir)["encryption_key"] == settings.encryption_key
    assert load_settings().encryption_key == settings.encryption_key


# --- production: refuses to start on weak secrets ----------------------------------------------


@pytest.fixture
def production(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DSR_ENV", "production")
    return data_dir


@pytest.mark.usefixtures("production")
def test_production_without_an_encryption_key_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DSR_STAFF_JWT_SECRET", GOOD_SECRET)
    with pytest.raises(ConfigurationError, match="DSR_ENCRYPTION_KEY is not set"):
        load_settings()


def test_production_without_any_secret_names_both_and_generates_nothing(
    production: Path,
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert "DSR_ENCRYPTION_KEY" in str(caught.value)
    assert "DSR_STAFF_JWT_SECRET or DSR_STAFF_JWKS_URL" in str(caught.value)
    assert not (production / "secrets.json").exists()


def test_production_refuses_the_generated_development_secrets(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = load_settings()  # someone ran the service in development on this data dir first
    monkeypatch.setenv("DSR_ENV", "production")
    monkeypatch.setenv("DSR_ENCRYPTION_KEY", dev.encryption_key)
    monkeypatch.setenv("DSR_STAFF_JWT_SECRET", dev.staff_jwt_secret)
    with pytest.raises(ConfigurationError, match="generated development secret") as caught:
        load_settings()
    assert "DSR_ENCRYPTION_KEY" in str(caught.value)
    assert "DSR_STAFF_JWT_SECRET" in str(caught.value)
    assert dev.encryption_key not in str(caught.value)  # the error never repeats a secret


@pytest.mark.usefixtures("production")
@pytest.mark.parametrize(
    ("variables", "complaint"),
    [
        ({"DSR_STAFF_JWT_SECRET": "too-short"}, "at least 32 bytes"),
        ({"DSR_STAFF_JWT_SECRET": "x" * 31}, "at least 32 bytes"),
        ({"DSR_STAFF_JWT_SECRET": GOOD_SECRET, "DSR_ENCRYPTION_KEY": "not-a-key"}, "base64"),
        ({"DSR_STAFF_JWT_SECRET": GOOD_SECRET, "DSR_ENCRYPTION_KEY": "YWJj"}, "32 random bytes"),
    ],
)
def test_production_refuses_weak_secrets(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], complaint: str
) -> None:
    monkeypatch.setenv("DSR_ENCRYPTION_KEY", new_key())
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=complaint):
        load_settings()


def test_production_starts_with_a_good_key_and_secret(
    production: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_key()
    monkeypatch.setenv("DSR_ENCRYPTION_KEY", key)
    monkeypatch.setenv("DSR_STAFF_JWT_SECRET", "x" * 32)
    settings = load_settings()
    assert (settings.encryption_key, settings.staff_jwt_secret) == (key, "x" * 32)
    assert not (production / "secrets.json").exists()


def test_production_starts_with_a_jwks_url_instead_of_a_secret(
    production: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSR_ENCRYPTION_KEY", new_key())
    monkeypatch.setenv("DSR_STAFF_JWKS_URL", "https://login.example.org/.well-known/jwks.json")
    settings = load_settings()
    assert settings.staff_jwt_secret == ""  # nothing generated behind the operator's back
    assert not (production / "secrets.json").exists()


# --- parsing the environment -----------------------------------------------------------------


@pytest.mark.usefixtures("data_dir")
@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("DSR_TIMEZONE", "Mars/Olympus_Mons", "timezone"),
        ("DSR_TIMEZONE", "../../etc/passwd", "timezone"),
        ("DSR_REVIEW_TYPES", "erasure, deletion", "review_types"),
        ("DSR_DOCUMENT_TYPES", "access,everything", "document_types"),
        ("DSR_REMINDER_DAYS", "7,soon", "reminder_days"),
        ("DSR_ENV", "staging", "env"),
        ("DSR_WORKER_POLL_SECONDS", "0", "worker_poll_seconds"),
    ],
)
def test_bad_values_are_refused_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert [error["loc"][0] for error in caught.value.errors()] == [field]


@pytest.mark.usefixtures("data_dir")
def test_lists_are_read_as_comma_separated_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSR_REVIEW_TYPES", "erasure, access")
    monkeypatch.setenv("DSR_DOCUMENT_TYPES", " portability ,, ")
    monkeypatch.setenv("DSR_REMINDER_DAYS", "7,2")
    monkeypatch.setenv("DSR_TIMEZONE", "America/Sao_Paulo")
    settings = Settings()
    assert settings.review_types == ["erasure", "access"]
    assert settings.document_types == ["portability"]
    assert settings.reminder_days == [7, 2]
    assert settings.tz.key == "America/Sao_Paulo"


@pytest.mark.usefixtures("data_dir")
def test_an_empty_list_variable_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSR_REVIEW_TYPES", "")
    assert Settings().review_types == []


# --- the entry point --------------------------------------------------------------------------


def test_serve_refuses_to_start_in_production_without_secrets(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("DSR_")}
    env.update(
        DSR_ENV="production",
        DSR_DATA_DIR=str(tmp_path / "var"),
        DSR_DATABASE_URL=f"sqlite:///{tmp_path / 'dsr.db'}",
        PYTHONPATH=str(ROOT),
    )
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert time.monotonic() - began < 15
    assert done.returncode != 0
    assert "DSR_ENCRYPTION_KEY" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "dsr.db").exists()  # refused before touching the database
    assert not (tmp_path / "var" / "secrets.json").exists()

"""Settings, read from the environment (``DSR_`` prefix) and a ``.env`` file.

Development needs no configuration at all: missing secrets are generated once and kept in
``DSR_DATA_DIR/secrets.json`` so that tokens and encrypted values survive a restart. A
production start (``DSR_ENV=production``) refuses generated, missing or short secrets.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REQUEST_TYPES = ("access", "rectification", "erasure", "restriction", "portability", "objection")
SECRETS_FILE = "secrets.json"
MIN_SECRET_BYTES = 32


class ConfigurationError(RuntimeError):
    """The settings cannot run the service (raised at start, never per request)."""


def _csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DSR_", env_file=".env", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    database_url: str = "sqlite:///./dsr.db"
    # PostgreSQL connections per process for the API (a worker adds its own share, see
    # ``runtime.build_runtime``): keep the sum over all processes under max_connections.
    # Sized for 32 requests in flight: beyond the pool, overflow connections are closed when
    # returned, and 32 load-test clients on a pool of 20 opened 28 new connections a second.
    db_pool_size: int = Field(32, ge=1)
    db_max_overflow: int = Field(8, ge=0)
    public_url: str = "http://127.0.0.1:8000"
    data_dir: Path = Path("./var")

    smtp_url: str = ""
    mail_from: str = "privacy@localhost"
    staff_email: str = ""
    organisation: str = ""

    staff_jwt_secret: str = ""
    staff_jwks_url: str = ""
    staff_jwt_issuer: str = ""
    staff_jwt_audience: str = ""
    intake_jwt_secret: str = ""
    intake_jwks_url: str = ""
    intake_jwt_issuer: str = ""
    intake_jwt_audience: str = ""
    encryption_key: str = ""

    country: str = "FR"
    timezone: str = "Europe/Paris"
    default_jurisdiction: str = "gdpr"
    default_language: str = "fr"

    export_ttl_days: int = Field(30, ge=1)
    # Connector results outlive their expired package this many days, so staff can re-issue
    # it (a subject whose link expired writes in). 0: deleted with the package (privacy first).
    export_results_grace_days: int = Field(0, ge=0, le=365)
    worker: Literal["on", "off"] = "on"
    worker_poll_seconds: float = Field(0.5, gt=0, le=5)
    # Jobs one worker runs at once (connector calls mostly wait on the network).
    worker_concurrency: int = Field(32, ge=1, le=1024)
    # A job whose worker stops heartbeating is taken again by another worker after this.
    worker_lease_seconds: float = Field(60, ge=1)
    retry_base_seconds: float = Field(2, gt=0)
    retry_cap_seconds: float = Field(600, gt=0)

    verification_window_days: int = Field(14, ge=1)
    verification_code_minutes: int = Field(15, ge=1)
    verification_max_attempts: int = Field(5, ge=1)
    verification_resend_limit: int = Field(3, ge=1)
    verification_resend_window_minutes: int = Field(60, ge=1)
    # Request types that need a staff decision after verification (default: none, automatic).
    review_types: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Request types whose identity is proved by an uploaded document instead of an e-mail code.
    document_types: Annotated[list[str], NoDecode] = Field(default_factory=list)
    document_max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    reminder_days: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [7, 2])

    # Connectors. The allow-list (host names, or CIDRs such as 10.0.0.0/8) is where to stop
    # server-side request forgery: empty means any host.
    connector_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    callback_timeout_seconds: float = Field(3600, gt=0)  # after a 202, call again after this
    callback_max_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # a signed result (POST)
    upload_max_bytes: int = Field(5 * 1024**3, ge=1024)  # a streamed data upload (PUT)
    secret_grace_hours: float = Field(24, ge=0)  # a rotated secret still signs callbacks

    @field_validator(
        "review_types", "document_types", "reminder_days", "connector_allowed_hosts", mode="before"
    )
    @classmethod
    def _split_csv(cls, value: object) -> object:
        return _csv(value)

    @field_validator("review_types", "document_types")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(REQUEST_TYPES))
        if unknown:
            raise ValueError(f"unknown request types: {', '.join(unknown)}")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    # --- derived values -------------------------------------------------------------------

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "mail"

    @property
    def documents_dir(self) -> Path:
        return self.data_dir / "documents"

    @property
    def results_dir(self) -> Path:
        """Connector results (records sent for access and portability), encrypted."""
        return self.data_dir / "results"

    @cached_property
    def generated_secrets(self) -> frozenset[str]:
        """Names of the secrets that were generated for development, not configured."""
        return frozenset(self._secret_sources()[1])

    def _secret_sources(self) -> tuple[dict[str, str], list[str]]:
        wanted = {"staff_jwt_secret": self.staff_jwt_secret, "encryption_key": self.encryption_key}
        missing = [name for name, value in wanted.items() if not value]
        return wanted, missing

    def ensure_secrets(self) -> Settings:
        """Fill missing secrets: generated once into the data dir, or refused in production."""
        _, missing = self._secret_sources()
        if self.env == "production":
            self._check_production(missing)
            return self
        if not missing:
            return self
        stored = _load_or_create_dev_secrets(self.data_dir)
        for name in missing:
            setattr(self, name, stored[name])
        self.__dict__["generated_secrets"] = frozenset(missing)
        return self

    def _check_production(self, missing: list[str]) -> None:
        problems = []
        if "encryption_key" in missing:
            problems.append("DSR_ENCRYPTION_KEY is not set")
        if "staff_jwt_secret" in missing and not self.staff_jwks_url:
            problems.append("set DSR_STAFF_JWT_SECRET or DSR_STAFF_JWKS_URL")
        stored = _read_dev_secrets(self.data_dir)
        for name in ("encryption_key", "staff_jwt_secret"):
            value = getattr(self, name)
            if value and stored.get(name) == value:
                problems.append(f"DSR_{name.upper()} is the generated development secret")
        if self.staff_jwt_secret and len(self.staff_jwt_secret.encode()) < MIN_SECRET_BYTES:
            problems.append(f"DSR_STAFF_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        if self.encryption_key:
            try:
                decode_key(self.encryption_key)
            except ValueError as exc:
                problems.append(f"DSR_ENCRYPTION_KEY: {exc}")
        if problems:
            raise ConfigurationError("refusing to start in production: " + "; ".join(problems))


def decode_key(value: str) -> bytes:
    """Decode a base64 (standard or URL-safe) 32-byte key."""
    try:
        raw = base64.urlsafe_b64decode(value.replace("+", "-").replace("/", "_") + "==")
    except (ValueError, TypeError) as exc:
        raise ValueError("must be base64 of 32 random bytes") from exc
    if len(raw) != 32:
        raise ValueError("must be base64 of 32 random bytes")
    return raw


def new_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _read_dev_secrets(data_dir: Path) -> dict[str, str]:
    path = data_dir / SECRETS_FILE
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def _load_or_create_dev_secrets(data_dir: Path) -> dict[str, str]:
    stored = _read_dev_secrets(data_dir)
    wanted = {"staff_jwt_secret": secrets.token_urlsafe(48), "encryption_key": new_key()}
    if all(name in stored for name in wanted):
        return stored
    stored = {**wanted, **stored}
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SECRETS_FILE
    # A temp file of our own (mode 0600): two processes starting together never share one.
    fd, tmp_name = tempfile.mkstemp(dir=data_dir, prefix=".secrets.", suffix=".tmp")
    tmp = Path(tmp_name)
    with os.fdopen(fd, "w") as handle:
        json.dump(stored, handle)
    # Another process may have raced us: the first file written wins, everyone reads it back.
    try:
        os.link(tmp, path)
    except FileExistsError:
        # A file that lacks a secret (an older version wrote it) is completed, keeping its values.
        if not all(name in _read_dev_secrets(data_dir) for name in wanted):
            os.replace(tmp, path)
    tmp.unlink(missing_ok=True)
    return _read_dev_secrets(data_dir)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with secrets ensured (the one way the app gets them)."""
    return Settings(**overrides).ensure_secrets()

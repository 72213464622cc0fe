"""API shapes of the connector registry and of the connector protocol's results."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.connectors.models import ConnectorMode
from app.requests.states import RequestType

IdentityType = Literal["email", "name", "phone", "customer_id"]
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"^\S.*$")
]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
LongText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)]
Category = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[^/\\]+$"),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Processing(Strict):
    """The Art. 15(1) information for the data this system holds."""

    purposes: Annotated[list[Label], Field(max_length=50)] = []
    legal_basis: LongText | None = None
    retention: LongText | None = None
    recipients: Annotated[list[Label], Field(max_length=100)] = []
    source: LongText | None = None
    automated_decisions: LongText | None = None


class ConnectorFields(Strict):
    url: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)] | None = None
    mode: ConnectorMode = ConnectorMode.webhook
    request_types: Annotated[list[RequestType], Field(min_length=1)] = list(RequestType)
    identity_types: Annotated[list[IdentityType], Field(min_length=1)] = ["email"]
    categories: Annotated[list[Category], Field(max_length=200)] = []
    provided_categories: Annotated[list[Category], Field(max_length=200)] | None = Field(
        None,
        description="categories the person provided (GDPR Art. 20); a portability package "
        "holds only these. Unset: all categories.",
    )
    processing: Processing = Processing()
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 8
    max_concurrency: Annotated[int, Field(ge=1, le=1000)] = 16
    callback_timeout_s: Annotated[float, Field(gt=0, le=30 * 86400)] | None = None
    enabled: bool = True


class ConnectorCreate(ConnectorFields):
    name: Name


class ConnectorPatch(Strict):
    """Only the fields given change."""

    name: Name | None = None
    url: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)] | None = None
    mode: ConnectorMode | None = None
    request_types: Annotated[list[RequestType], Field(min_length=1)] | None = None
    identity_types: Annotated[list[IdentityType], Field(min_length=1)] | None = None
    categories: Annotated[list[Category], Field(max_length=200)] | None = None
    provided_categories: Annotated[list[Category], Field(max_length=200)] | None = None
    processing: Processing | None = None
    timeout_s: Annotated[float, Field(gt=0, le=300)] | None = None
    max_attempts: Annotated[int, Field(ge=1, le=100)] | None = None
    max_concurrency: Annotated[int, Field(ge=1, le=1000)] | None = None
    callback_timeout_s: Annotated[float, Field(gt=0, le=30 * 86400)] | None = None
    enabled: bool | None = None


class ConnectorOut(BaseModel):
    id: str
    name: str
    url: str | None
    mode: ConnectorMode
    enabled: bool
    request_types: list[RequestType]
    identity_types: list[str]
    categories: list[str]
    provided_categories: list[str] | None
    processing: Processing
    timeout_s: float
    max_attempts: int
    max_concurrency: int
    callback_timeout_s: float | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    secret_rotated_grace_until: datetime | None = Field(
        None, description="until when the previous signing secret is still accepted"
    )


class ConnectorCreated(ConnectorOut):
    signing_secret: str = Field(
        description="whsec_ + base64 of 32 random bytes; shown once, keep it in the connector"
    )


class ConnectorList(BaseModel):
    items: list[ConnectorOut]


# --- the connector protocol ---------------------------------------------------------------

Outcome = Literal[
    "found", "not_found", "erased", "retained", "rectified", "restricted", "objection_applied"
]

OUTCOMES_BY_TYPE: dict[str, frozenset[str]] = {
    RequestType.access: frozenset({"found", "not_found"}),
    RequestType.portability: frozenset({"found", "not_found"}),
    RequestType.erasure: frozenset({"erased", "not_found", "retained"}),
    RequestType.rectification: frozenset({"rectified", "not_found"}),
    RequestType.restriction: frozenset({"restricted", "not_found"}),
    RequestType.objection: frozenset({"objection_applied", "not_found"}),
}


class RetainedCategory(Strict):
    category: Category
    reason: LongText
    legal_basis: LongText
    until: date | None = None


class ConnectorResult(BaseModel):
    """What a connector answers (200 body or callback), and what staff enter for a manual
    connector. Unknown keys are ignored: connectors may send more than we read."""

    status: Literal["completed", "failed"] = "completed"
    outcome: Outcome | None = None
    data: dict[Category, list[dict[str, object]]] | None = None
    retained: Annotated[list[RetainedCategory], Field(max_length=1000)] = []
    message: Annotated[str, StringConstraints(max_length=2000)] | None = None
    job_id: str | None = None

    @model_validator(mode="after")
    def _outcome_when_completed(self) -> ConnectorResult:
        if self.status == "completed" and self.outcome is None:
            raise ValueError("outcome is required when status is completed")
        if self.outcome == "retained" and not self.retained:
            raise ValueError("retained needs at least one retained category")
        return self


class CallbackAccepted(BaseModel):
    job_id: str
    status: str
    duplicate: bool = False


class UploadAccepted(BaseModel):
    job_id: str
    bytes: int
    format: Literal["json", "ndjson"]
    duplicate: bool = False

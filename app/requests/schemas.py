"""API shapes of requests. Each lists its fields explicitly: no column leaks by accident."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from app.errors import InvalidInput
from app.requests.states import RejectionReason, RequestStatus, RequestType

_LANGUAGE = re.compile(r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")


def _language(value: str) -> str:
    if not _LANGUAGE.match(value):
        raise ValueError("must be a BCP 47 language tag such as 'fr' or 'en-GB'")
    return value


def _jurisdiction(value: str) -> str:
    from app.deadlines import REGIMES

    if value not in REGIMES:
        raise ValueError(f"unknown jurisdiction; one of: {', '.join(sorted(REGIMES))}")
    return value


Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Language = Annotated[str, StringConstraints(max_length=35), AfterValidator(_language)]
Jurisdiction = Annotated[str, StringConstraints(max_length=20), AfterValidator(_jurisdiction)]
Phone = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=40, pattern=r"^\+?[0-9 ().-]{4,40}$")
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubjectIn(Strict):
    email: Annotated[EmailStr, StringConstraints(max_length=254)]
    name: Annotated[Text, StringConstraints(max_length=200)] | None = None
    phone: Phone | None = None
    customer_id: Annotated[Text, StringConstraints(max_length=100)] | None = None


class Rectification(Strict):
    field: Annotated[Text, StringConstraints(max_length=100)]
    value: Annotated[str, StringConstraints(max_length=2000)]


class Objection(Strict):
    purposes: Annotated[
        list[Annotated[Text, StringConstraints(max_length=100)]], Field(max_length=50)
    ] = []


class RequestCreate(Strict):
    type: RequestType
    subject: SubjectIn
    details: Annotated[str, StringConstraints(max_length=5000)] | None = None
    rectifications: Annotated[list[Rectification], Field(max_length=100)] | None = None
    objection: Objection | None = None
    jurisdiction: Jurisdiction | None = None
    language: Language | None = None

    def check_type_fields(self) -> None:
        """Fields that belong to one type only (a 422 naming the field otherwise)."""
        if self.type == RequestType.rectification:
            if not self.rectifications:
                raise InvalidInput.field(
                    ("body", "rectifications"), "required (non-empty) for a rectification request"
                )
        elif self.rectifications is not None:
            raise InvalidInput.field(
                ("body", "rectifications"), "only allowed for a rectification request"
            )
        if self.objection is not None and self.type != RequestType.objection:
            raise InvalidInput.field(("body", "objection"), "only allowed for an objection request")


class StaffRequestCreate(RequestCreate):
    channel: Literal["email", "post", "phone", "in_person"]
    received_at: datetime
    identity_verified: bool = False


class CodeIn(Strict):
    code: Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[0-9]{6}$")]


class RejectIn(Strict):
    reason: RejectionReason
    detail: Annotated[str, StringConstraints(max_length=2000)] | None = None


class ExtendIn(Strict):
    reason: Annotated[Text, StringConstraints(max_length=2000)]


class IdentityDecisionIn(Strict):
    note: Annotated[str, StringConstraints(max_length=2000)] | None = None


# --- answers --------------------------------------------------------------------------------


class VerificationOut(BaseModel):
    method: str
    expires_at: datetime | None = None


class ExportOut(BaseModel):
    ready: bool
    expires_at: datetime | None = None
    size_bytes: int | None = None
    sha256: str | None = None


class RetainedOut(BaseModel):
    category: str
    reason: str
    legal_basis: str
    until: date | None = None


class OutcomeOut(BaseModel):
    """One system's answer, in plain words for the subject."""

    system: str
    outcome: str
    summary: str
    retained: list[RetainedOut] = []
    recipients_notified: list[str] = Field(
        [], description="recipients told of the change (GDPR Art. 19)"
    )


class IntakeOut(BaseModel):
    id: str
    type: RequestType
    status: RequestStatus
    received_at: datetime
    due_date: date
    due_at: datetime
    status_token: str
    verification: VerificationOut


class SubjectView(BaseModel):
    id: str
    type: RequestType
    status: RequestStatus
    received_at: datetime
    due_date: date
    due_at: datetime
    extended: bool
    rejection_reason: RejectionReason | None
    verification: VerificationOut | None
    export: ExportOut | None
    outcomes: list[OutcomeOut]


class SubjectOut(BaseModel):
    email: str
    name: str | None = None
    phone: str | None = None
    customer_id: str | None = None


class DocumentOut(BaseModel):
    content_type: str
    size_bytes: int
    uploaded_at: datetime


class StaffVerificationOut(BaseModel):
    method: str
    verified: bool
    verified_at: datetime | None
    verified_by: str | None
    verified_how: str | None
    expires_at: datetime | None
    document: DocumentOut | None


class DeadlineExplanation(BaseModel):
    regime: str
    regime_name: str
    legal_reference: str
    receipt_day: date
    start_day: date
    nominal_end: date
    paused_days: int
    extended: bool
    steps: list[str]


class EventOut(BaseModel):
    seq: int | None = Field(description="place in the audit chain; null for a moment, until linked")
    at: datetime
    actor: str
    action: str
    details: dict[str, Any]


class JobOut(BaseModel):
    id: str
    connector_id: str
    connector_name: str
    status: str
    attempts: int
    last_error: str | None
    outcome: str | None
    retained: list[RetainedOut]
    data_files: int = 0
    callback_deadline: datetime | None = None
    updated_at: datetime
    finished_at: datetime | None = None


class StaffView(BaseModel):
    id: str
    type: RequestType
    status: RequestStatus
    channel: str
    jurisdiction: str
    language: str
    subject: SubjectOut
    details: str | None
    rectifications: list[Rectification] | None
    objection: Objection | None
    verification: StaffVerificationOut
    received_at: datetime
    original_due_date: date
    due_date: date
    due_at: datetime
    extended: bool
    extension_reason: str | None
    days_left: int
    overdue: bool
    acknowledgement_due_date: date | None
    deadline_explanation: DeadlineExplanation
    rejection_reason: RejectionReason | None
    rejection_detail: str | None
    closed_at: datetime | None
    duplicates: list[str]
    export: ExportOut | None
    outcomes: list[OutcomeOut]
    jobs: list[JobOut]
    events: list[EventOut]


class StaffListItem(BaseModel):
    id: str
    type: RequestType
    status: RequestStatus
    channel: str
    jurisdiction: str
    email: str
    received_at: datetime
    due_date: date
    due_at: datetime
    extended: bool
    days_left: int
    overdue: bool
    closed_at: datetime | None


class StaffList(BaseModel):
    items: list[StaffListItem]
    next_cursor: str | None


class DeadlinePreview(BaseModel):
    jurisdiction: str
    received_at: datetime
    due_date: date
    due_at: datetime
    extended_due_date: date | None
    extended_due_at: datetime | None
    acknowledgement_due_date: date | None
    steps: list[str]


class Stats(BaseModel):
    by_status: dict[str, int]
    by_type: dict[str, int]
    open: int
    overdue: int
    due_within_7_days: int
    median_days_to_complete: float | None
    jobs_by_status: dict[str, int] = Field(description="Connector jobs by status.")
    oldest_waiting_job_at: datetime | None = Field(
        description="When the oldest connector job that has not finished was created."
    )
    engine_jobs_by_status: dict[str, int] = Field(
        description="Background jobs (connector calls, e-mails, exports, sweeps) by status."
    )
    oldest_queued_engine_job_at: datetime | None = Field(
        description="Since when the longest-waiting due background job has been ready to run "
        "(jobs queued for later do not count until their time comes): a growing age means "
        "the workers are behind or down."
    )

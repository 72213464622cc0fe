"""API shapes of re-runs: the optional reason, and the history of superseded runs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, StringConstraints

from app.requests.schemas import JobOut, Strict, Text


class RerunIn(Strict):
    reason: Annotated[Text, StringConstraints(max_length=2000)] | None = None


class RunOut(BaseModel):
    run: int
    completed_at: datetime | None
    superseded_at: datetime
    superseded_by: str
    reason: str | None
    jobs: list[JobOut]


class RunsOut(BaseModel):
    current_run: int
    runs: list[RunOut]

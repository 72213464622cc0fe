"""The request state machine: one enum, one table of allowed moves, one function that owns
them. Anything else is a typed 409, never a silent no-op."""

from __future__ import annotations

from enum import StrEnum

from app.errors import InvalidTransition


class RequestType(StrEnum):
    access = "access"  # Art. 15: a copy of the data and the supplementary information
    rectification = "rectification"  # Art. 16: correct inaccurate data
    erasure = "erasure"  # Art. 17: delete
    restriction = "restriction"  # Art. 18: limit processing
    portability = "portability"  # Art. 20: the data provided, machine-readable
    objection = "objection"  # Art. 21: stop a processing (absolute for direct marketing)


class RequestStatus(StrEnum):
    pending_verification = "pending_verification"  # identity not yet verified
    pending_review = "pending_review"  # verified or document uploaded; staff decide
    in_progress = "in_progress"  # approved; connector jobs running
    action_required = "action_required"  # a connector failed for good / manual task waits
    completed = "completed"  # every connector answered (staff may re-run it)
    rejected = "rejected"  # refused, with a reason
    cancelled = "cancelled"  # withdrawn by the subject or staff
    expired = "expired"  # verification never completed in time


class RejectionReason(StrEnum):
    identity_not_verified = "identity_not_verified"
    manifestly_unfounded = "manifestly_unfounded"
    excessive = "excessive"
    other = "other"


S = RequestStatus
OPEN = frozenset({S.pending_verification, S.pending_review, S.in_progress, S.action_required})
# Closed statuses. One move leaves one of them: staff re-running a completed request
# (``completed -> in_progress``), which sends it to its connectors again.
TERMINAL = frozenset({S.completed, S.rejected, S.cancelled, S.expired})

ALLOWED: dict[RequestStatus, frozenset[RequestStatus]] = {
    S.pending_verification: frozenset(
        {S.pending_review, S.in_progress, S.rejected, S.cancelled, S.expired}
    ),
    S.pending_review: frozenset({S.in_progress, S.rejected, S.cancelled}),
    S.in_progress: frozenset({S.completed, S.action_required, S.rejected, S.cancelled}),
    S.action_required: frozenset({S.in_progress, S.completed, S.rejected, S.cancelled}),
    S.completed: frozenset({S.in_progress}),
    S.rejected: frozenset(),
    S.cancelled: frozenset(),
    S.expired: frozenset(),
}


def check_transition(current: str, target: RequestStatus, *, action: str) -> RequestStatus:
    """Return ``target`` if ``current -> target`` is allowed, else raise a 409 saying why."""
    source = RequestStatus(current)
    if target not in ALLOWED[source]:
        raise InvalidTransition(
            f"cannot {action} a request that is {source.value}",
            extra={"current_status": source.value},
        )
    return target


def require_open(current: str, *, action: str) -> None:
    if RequestStatus(current) not in OPEN:
        raise InvalidTransition(
            f"cannot {action} a request that is {current}", extra={"current_status": current}
        )

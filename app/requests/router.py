"""Public routes: what web forms and data subjects call."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, UploadFile
from sqlalchemy.exc import IntegrityError

from app.deps import Now, RuntimeDep, SessionDep, StatusToken
from app.errors import Conflict
from app.identity import service as identity
from app.requests import service, views
from app.requests.schemas import CodeIn, IntakeOut, RequestCreate, SubjectView, VerificationOut
from app.security.staff import intake_verifier

router = APIRouter(prefix="/v1/requests", tags=["requests"])

PROBLEM: dict[str, Any] = {"model": None, "content": {"application/problem+json": {}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    status: PROBLEM for status in (401, 404, 409, 413, 415, 422, 429, 503)
}

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]


@router.post("", status_code=202, response_model=IntakeOut, responses=ERRORS)
async def file_request(
    body: RequestCreate,
    request: Request,
    rt: RuntimeDep,
    session: SessionDep,
    now: Now,
    idempotency_key: IdempotencyKey = None,
) -> dict:
    """File a rights request. An e-mail code is sent to the subject unless a trusted intake
    system vouches for them (``Authorization: Bearer <assertion>``). The answer is the same
    whether or not the e-mail is known to any system."""
    vouched_by = None
    assertion = _bearer(request.headers.get("authorization"))
    if assertion is not None:
        vouched_by = await identity.verify_assertion(
            intake_verifier(request.app.state),
            assertion,
            email=str(body.subject.email),
            customer_id=body.subject.customer_id,
        )
    try:
        intake = await service.create_request(
            session,
            rt=rt,
            body=body,
            now=now,
            idempotency_key=idempotency_key,
            vouched_by=vouched_by,
        )
        await session.flush()
    except IntegrityError:
        if idempotency_key is None:
            raise  # not a race on a key: a fault, answered as one (500)
        # The same key raced us to the first answer: answer what it answered.
        await session.rollback()
        replay = await service.replay_idempotent(
            session, rt=rt, key=idempotency_key, body=body, now=now
        )
        if not replay:
            raise Conflict("a request with this Idempotency-Key is being filed") from None
        intake = replay
    return intake.answer


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else ""


@router.get("/{request_id}", response_model=SubjectView, responses=ERRORS)
async def get_request(request_id: str, token: StatusToken, rt: RuntimeDep) -> dict:
    """The request's status, deadline and answer, as the subject sees it."""
    async with rt.read_sessions() as session:
        req = await service.get_for_subject(session, request_id=request_id, token=token)
        return await views.subject_view(session, rt, req)


@router.post("/{request_id}/verification", response_model=SubjectView, responses=ERRORS)
async def verify(
    request_id: str, body: CodeIn, token: StatusToken, rt: RuntimeDep, session: SessionDep, now: Now
) -> dict:
    """Prove control of the e-mail address with the 6-digit code sent to it. Wrong code:
    422 with ``attempts_left``; after the last attempt the code is burnt (409)."""
    req = await service.get_for_subject(session, request_id=request_id, token=token)
    await service.verify_code(session, rt=rt, req=req, code=body.code, now=now)
    return await views.subject_view(session, rt, req)


@router.post("/{request_id}/verification/resend", response_model=VerificationOut, responses=ERRORS)
async def resend(
    request_id: str, token: StatusToken, rt: RuntimeDep, session: SessionDep, now: Now
) -> dict:
    """Send a new code (it replaces the previous one). Rate limited: 429 with Retry-After."""
    req = await service.get_for_subject(session, request_id=request_id, token=token)
    return await service.resend_code(session, rt=rt, req=req, now=now)


@router.post(
    "/{request_id}/identity-document", status_code=202, response_model=SubjectView, responses=ERRORS
)
async def upload_identity_document(
    request_id: str,
    file: UploadFile,
    token: StatusToken,
    rt: RuntimeDep,
    session: SessionDep,
    now: Now,
) -> dict:
    """Upload an identity document (PDF, JPEG or PNG, checked by content) when the policy
    asks for one. Stored encrypted; deleted as soon as staff decide."""
    req = await service.get_for_subject(session, request_id=request_id, token=token)
    await service.upload_document(session, rt=rt, req=req, upload=file, now=now)
    return await views.subject_view(session, rt, req)


@router.post("/{request_id}/cancel", response_model=SubjectView, responses=ERRORS)
async def cancel(
    request_id: str, token: StatusToken, rt: RuntimeDep, session: SessionDep, now: Now
) -> dict:
    """Withdraw the request (while it is not completed or rejected)."""
    req = await service.get_for_subject(session, request_id=request_id, token=token)
    await service.cancel(session, rt=rt, req=req, actor=service.SUBJECT, now=now)
    return await views.subject_view(session, rt, req)

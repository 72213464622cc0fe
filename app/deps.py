"""Annotated dependencies shared by routers: the runtime, the unit of work, the time, the
subject's status token. All are ``async def``: FastAPI runs plain ``def`` dependencies in a
thread pool, a hand-off that costs more than the work they do."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db import commit, rollback
from app.errors import Unauthorized
from app.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_session(rt: RuntimeDep) -> AsyncIterator[AsyncSession]:
    """The request's unit of work: committed when the route returns, rolled back when it
    raises, except for errors that record their own side effect (``keeps_changes``: a wrong
    verification code still costs an attempt)."""
    async with rt.sessions() as session:
        try:
            yield session
        except BaseException as exc:
            if getattr(exc, "keeps_changes", False):
                await commit(session)
            else:
                await rollback(session)
            raise
        else:
            await commit(session)


# scope="function": the unit of work commits before the answer is sent, so a 2xx is never
# sent for a transaction that then fails.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


# Routes that only read open ``rt.read_sessions()`` in their body (nothing to commit) rather
# than take a session dependency: FastAPI's machinery for a dependency that yields (an exit
# stack, a shielded context manager) cost about 8% of the staff detail view's CPU.


async def get_now(rt: RuntimeDep) -> datetime:
    return rt.clock.now()


Now = Annotated[datetime, Depends(get_now)]

_status_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="statusToken",
    description="The `status_token` returned when the request was filed.",
)


async def get_status_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_status_bearer)],
) -> str:
    # A missing token is a 401; a wrong one is the same 404 as an unknown id.
    if credentials is None or not credentials.credentials:
        raise Unauthorized("the request's status token is required")
    return credentials.credentials


StatusToken = Annotated[str, Depends(get_status_token)]

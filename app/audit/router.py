"""Audit routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from app.audit import service
from app.deps import RuntimeDep
from app.security.staff import StaffPrincipal, require_scopes

router = APIRouter(prefix="/v1/admin/audit", tags=["audit"])

Auditor = Annotated[StaffPrincipal, Depends(require_scopes("audit:read"))]


@router.get("/verify")
async def verify(staff: Auditor, rt: RuntimeDep) -> dict:
    """Link what was recorded up to now, then recompute the whole hash chain:
    ``{"ok": true, "events": n}``, or the first broken event (``broken_at``) and why."""
    await service.link_all(rt.session)
    async with rt.read_sessions() as session:
        report = await service.verify_chain(session)
    return report.as_dict()

"""Downloading a package (with the request's status token, resumable with ``Range``) and the
public key that checks its signature."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.deps import Now, RuntimeDep, SessionDep, StatusToken
from app.errors import AppError
from app.exports import service
from app.requests import service as requests

router = APIRouter(tags=["exports"])

PROBLEM: dict[str, Any] = {"model": None, "content": {"application/problem+json": {}}}
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(AppError):
    status = 416
    title = "Range not satisfiable"
    slug = "range-not-satisfiable"


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """One byte range ``[start, end)`` from a ``Range`` header; None for the whole file.
    Several ranges, or units other than bytes, are answered with the whole file."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        start, end = max(0, size - int(last)), size
    else:
        start = int(first)
        end = min(size, int(last) + 1) if last else size
    if start >= size or start >= end:
        raise RangeNotSatisfiable(
            f"the package has {size} bytes", headers={"Content-Range": f"bytes */{size}"}
        )
    return start, end


@router.get(
    "/v1/requests/{request_id}/export",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "the package, streamed"},
        206: {"content": {"application/zip": {}}, "description": "a byte range of it"},
        **{status: PROBLEM for status in (401, 404, 410, 416)},
    },
)
async def download_export(
    request_id: str,
    request: Request,
    token: StatusToken,
    rt: RuntimeDep,
    session: SessionDep,
    now: Now,
) -> StreamingResponse:
    """The answer package (ZIP), with the request's status token, once ``export.ready``.
    ``export.sha256`` is the SHA-256 of these exact bytes. 410 once it has expired."""
    req = await requests.get_for_subject(session, request_id=request_id, token=token)
    package = await service.downloadable(session, rt, req)
    size = package.size_bytes
    wanted = _range(request.headers.get("range"), size)
    start, end = wanted or (0, size)
    await service.record_download(
        session, package=package, now=now, byte_range=f"{start}-{end - 1}" if wanted else None
    )
    headers = {
        "Content-Disposition": f'attachment; filename="dsr-{req.id}.zip"',
        "Content-Length": str(end - start),
        "Accept-Ranges": "bytes",
        "ETag": f'"{package.sha256}"',
        "Cache-Control": "no-store",
    }
    if wanted:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return StreamingResponse(
        service.read_package(rt, package, start=start, end=end),
        status_code=206 if wanted else 200,
        media_type="application/zip",
        headers=headers,
    )


@router.get("/v1/export-keys")
async def export_keys(rt: RuntimeDep) -> dict:
    """The public key (JWKS) that checks packages' ``manifest.jws``."""
    return service.signer(rt).jwks()

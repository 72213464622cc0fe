"""Answer packages: assembled when an access or portability request's last system has
answered, then the request completes; downloaded with the status token; deleted after
``DSR_EXPORT_TTL_DAYS``, and the connector results they came from
``DSR_EXPORT_RESULTS_GRACE_DAYS`` later (0: with the package).

While the results are held, staff can have a completed request's package rebuilt: the same
assembly job makes a fresh one (new key, checksum and retention) from them, and the subject
is told it is ready; the request stays completed.

Assembly runs in a worker thread (it is CPU and file work) outside any transaction; only
recording the package and completing the request take a unit of work, under the request's
lock, so a request cancelled meanwhile gets no package.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Table, bindparam
from sqlalchemy import select as sa_select
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import service as audit
from app.config import decode_key
from app.connectors import results
from app.connectors import service as connectors
from app.db import after_commit, flush_pending
from app.deadlines import get_regime
from app.errors import Conflict, Gone, InvalidTransition, NotFound
from app.exports.assembly import SourceFile, SystemInput, build_package
from app.exports.models import ExportPackage, PackageStatus
from app.exports.report import render_report
from app.exports.signing import PackageSigner
from app.jobs import service as jobs
from app.jobs.models import Job, JobStatus
from app.jobs.registry import FINISHED, handler, periodic
from app.jobs.worker import JobContext, payload_of
from app.kit.clock import rfc3339, utc
from app.kit.ids import new_id
from app.kit.streams import iter_decrypted
from app.notifications import service as mail
from app.requests import service as requests
from app.requests.models import DsrRequest
from app.requests.states import RequestStatus, RequestType
from app.runtime import Runtime

log = logging.getLogger("dsr.exports")

ASSEMBLE_KIND = "exports.assemble"
EXPIRE_KIND = "exports.expire"
ACTIVE = (RequestStatus.in_progress, RequestStatus.action_required)
PACKAGE_TYPES = frozenset({RequestType.access, RequestType.portability})
REISSUE_TEMPLATE = "export_reissued"


def signer(rt: Runtime) -> PackageSigner:
    found = rt.extras.get("export_signer")
    if found is None:
        found = rt.extras["export_signer"] = PackageSigner(decode_key(rt.settings.encryption_key))
    return found


def exports_dir(rt: Runtime) -> Path:
    path = rt.settings.data_dir / "exports"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _context(package_id: str) -> str:
    return f"export:{package_id}"


async def queue_assembly(session: AsyncSession, *, request_id: str, now: datetime) -> None:
    """Queue the build of the request's package, unless one is queued or running: a second
    build beside a running one (the sweep settling a request that is being built) would
    only compete with it for the CPU and the disk, and be thrown away."""
    if await assembly_pending(session, request_id):
        return
    await jobs.enqueue(
        session,
        ASSEMBLE_KIND,
        {"request_id": request_id},
        now=now,
        request_id=request_id,
        queueing_lock=f"assemble:{request_id}",
    )


async def assembly_pending(session: AsyncSession, request_id: str) -> bool:
    """Whether an assembly of this request's package is queued or running."""
    found = await session.exec(
        select(Job.id)
        .where(
            col(Job.request_id) == request_id,
            col(Job.kind) == ASSEMBLE_KIND,
            col(Job.status).in_([JobStatus.queued, JobStatus.running]),
        )
        .limit(1)
    )
    return found.first() is not None


async def package_for(
    session: AsyncSession, request_id: str, *, lock: bool = False
) -> ExportPackage | None:
    query = select(ExportPackage).where(col(ExportPackage.request_id) == request_id)
    if lock:
        query = query.with_for_update()
    return (await session.exec(query)).first()


_PACKAGE_TABLE: Table = ExportPackage.__table__  # type: ignore[attr-defined]
_PACKAGE_TO_SHOW = sa_select(_PACKAGE_TABLE).where(
    _PACKAGE_TABLE.c.request_id == bindparam("request_id")
)


async def package_to_show(session: AsyncSession, request_id: str) -> ExportPackage | None:
    """``package_for`` for views, which only read: a statement built once, the row turned
    into a model without the session (nothing tracks it). Pending changes are flushed first,
    as an ORM query would."""
    await flush_pending(session)
    conn = await session.connection()
    row = (await conn.execute(_PACKAGE_TO_SHOW, {"request_id": request_id})).first()
    return None if row is None else ExportPackage.model_construct(**row._mapping)


def view(package: ExportPackage | None) -> dict[str, Any] | None:
    """The contract's ``export`` field."""
    if package is None:
        return None
    if package.status == PackageStatus.rebuilding:
        return {"ready": False, "expired": False, "expires_at": None}
    if package.status != PackageStatus.ready:
        return {"ready": False, "expired": True, "expires_at": package.expires_at}
    return {
        "ready": True,
        "expires_at": package.expires_at,
        "size_bytes": package.size_bytes,
        "sha256": package.sha256,
    }


# --- assembly -------------------------------------------------------------------------------


def _sources(rt: Runtime, job_id: str, files: list[dict[str, Any]]) -> list[SourceFile]:
    return [
        SourceFile(
            format=entry["format"],
            size=entry["bytes"],
            chunks=results.reader(rt, job_id, entry["file"]),
        )
        for entry in files
    ]


def _portable(request_type: str, provided: list[str] | None) -> frozenset[str] | None:
    """Art. 20 covers the data the person provided: where a connector names those
    categories, a portability package holds only them."""
    if request_type != RequestType.portability or provided is None:
        return None
    return frozenset(provided)


def _rebuilding(req: DsrRequest, package: ExportPackage | None) -> bool:
    """A completed request whose package staff asked to rebuild, results still held."""
    return (
        req.status == RequestStatus.completed
        and package is not None
        and package.status == PackageStatus.rebuilding
        and package.results_deleted_at is None
    )


async def _wanted(session: AsyncSession, req: DsrRequest | None) -> tuple[bool, bool]:
    """(whether to assemble, whether it is a rebuild) for the request as it is now."""
    if req is None:
        return False, False
    if req.status in ACTIVE:
        return True, False
    rebuild = _rebuilding(req, await package_for(session, req.id))
    return rebuild, rebuild


@handler(ASSEMBLE_KIND)
async def assemble(ctx: JobContext, job: Job) -> object:
    request_id = payload_of(job)["request_id"]
    async with ctx.read_sessions() as session:
        req = await session.get(DsrRequest, request_id)
        wanted, rebuild = await _wanted(session, req)
        pairs = await connectors.jobs_for_request(session, request_id) if wanted else []
    if req is None or not wanted:
        if req is not None and req.status == RequestStatus.completed:
            await _abandon_rebuild(ctx, request_id)
        return None
    subject = requests.subject_of(ctx, req)
    systems = [
        SystemInput(
            name=connector.name,
            outcome=cj.outcome,
            processing=registry_entry["processing"],
            sources=_sources(ctx, cj.id, connectors.data_files_of(cj)),
            only_categories=_portable(req.type, registry_entry["provided_categories"]),
        )
        for cj, connector in pairs
        if cj.status == "succeeded"
        for registry_entry in (connectors.decoded(connector),)
    ]
    now = ctx.clock.now()
    package_id = new_id("pkg")
    file_name = f"{package_id}.zip.enc"
    # A rebuilt package answers with the data of the original answer, on its date.
    answered = utc(req.closed_at) if rebuild and req.closed_at else now
    request_info = {
        "id": req.id,
        "type": req.type,
        "jurisdiction": req.jurisdiction,
        "received_at": rfc3339(utc(req.received_at)),
        "answered_at": rfc3339(answered),
        **({"reissued_at": rfc3339(now)} if rebuild else {}),
    }
    regime = get_regime(req.jurisdiction)
    language = req.language

    def report(described: list[dict[str, Any]]) -> str:
        html, _ = render_report(
            language=language,
            default_language=ctx.settings.default_language,
            context={
                "request": {
                    **request_info,
                    "email": subject["email"],
                    "received": utc(req.received_at).astimezone(ctx.settings.tz).date(),
                    "answered": answered.astimezone(ctx.settings.tz).date(),
                },
                "systems": described,
                "organisation": ctx.settings.organisation,
                "authority_name": regime.authority_name,
                "authority_url": regime.authority_url,
            },
        )
        return html

    path = exports_dir(ctx) / file_name
    built = await asyncio.to_thread(
        build_package,
        path,
        wrapping_key=ctx.sealer.file_key,
        context=_context(package_id),
        signer=signer(ctx),
        request=request_info,
        systems=systems,
        report=report if req.type == RequestType.access else None,
    )
    try:
        async with ctx.session() as session:
            locked = await requests.lock(session, request_id)
            # The package row too: the grace sweep deletes results under that lock, and a
            # rebuild must not build from results it is deleting (PostgreSQL; SQLite has one
            # writer at a time).
            await package_for(session, request_id, lock=True)
            still, again = await _wanted(session, locked)
            if locked is None or not still or again != rebuild:
                path.unlink(missing_ok=True)
                await jobs.finish(session, job, now=now)
                return FINISHED
            previous = await package_for(session, request_id)
            if previous is not None:
                after_commit(
                    session, f"exports.replaced.{previous.id}", partial(_delete_file, ctx, previous)
                )
                await session.delete(previous)
                await session.flush()
            session.add(
                ExportPackage(
                    id=package_id,
                    request_id=request_id,
                    file_name=file_name,
                    size_bytes=built.size,
                    sha256=built.sha256,
                    language=language or ctx.settings.default_language,
                    created_at=now,
                    expires_at=now + timedelta(days=ctx.settings.export_ttl_days),
                )
            )
            await audit.record(
                session,
                actor="system",
                action="export.ready",
                now=now,
                request_id=request_id,
                details={
                    "package_id": package_id,
                    "bytes": built.size,
                    "sha256": built.sha256,
                    **({"replaces": previous.id} if previous is not None else {}),
                },
            )
            if rebuild:
                await _tell_reissued(session, ctx, locked, now=now)
            else:
                pairs = await connectors.jobs_for_request(session, request_id)
                await requests.complete(
                    session,
                    rt=ctx,
                    req=locked,
                    now=now,
                    outcomes=connectors.outcomes_of(pairs, request_type=locked.type),
                )
            await jobs.finish(session, job, now=now)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return FINISHED


async def _abandon_rebuild(rt: Runtime, request_id: str) -> None:
    """A rebuild whose results were deleted before it ran (their grace period ended): the
    package is expired like the one it was to replace, and staff see why."""
    now = rt.clock.now()
    async with rt.session() as session:
        package = await package_for(session, request_id)
        if package is None or package.status != PackageStatus.rebuilding:
            return
        _delete_file(rt, package)
        package.status, package.deleted_at = PackageStatus.expired, package.deleted_at or now
        session.add(package)
        await audit.record(
            session,
            actor="system",
            action="export.rebuild_abandoned",
            now=now,
            request_id=request_id,
            details={"package_id": package.id, "why": "the connector results were deleted"},
        )


async def _tell_reissued(
    session: AsyncSession, rt: Runtime, req: DsrRequest, *, now: datetime
) -> None:
    subject = requests.subject_of(rt, req)
    await mail.queue_mail(
        session,
        settings=rt.settings,
        sealer=rt.sealer,
        now=now,
        to=subject["email"],
        template=REISSUE_TEMPLATE,
        language=req.language,
        request_id=req.id,
        context={
            "request_id": req.id,
            "request_type": req.type,
            "status_url": requests.status_url(rt, req),
            "received_date": utc(req.received_at).astimezone(rt.settings.tz).date(),
            "due_date": req.due_date,
            "organisation": rt.settings.organisation,
            "expires_date": (now + timedelta(days=rt.settings.export_ttl_days))
            .astimezone(rt.settings.tz)
            .date(),
        },
    )


# --- staff re-issue ---------------------------------------------------------------------------


async def rebuild(
    session: AsyncSession, *, rt: Runtime, req: DsrRequest, actor: str, now: datetime
) -> DsrRequest:
    """Queue a fresh package for the (locked) completed request from the results still
    held; 409 when its type has no package, it is not completed, or the results are gone."""
    if req.type not in PACKAGE_TYPES:
        raise Conflict(f"a request of type {req.type} has no package to rebuild")
    if req.status != RequestStatus.completed:
        raise InvalidTransition(
            f"cannot rebuild the package of a request that is {req.status}",
            extra={"current_status": req.status},
        )
    package = await package_for(session, req.id)
    if package is None or package.results_deleted_at is not None:
        raise Conflict(
            "the connector results this package was built from were deleted; re-run the "
            f"request (POST /v1/admin/requests/{req.id}/rerun) to ask the systems again",
            extra={
                "results_deleted_at": package
                and package.results_deleted_at
                and rfc3339(utc(package.results_deleted_at))
            },
        )
    previous_status = package.status
    package.status = PackageStatus.rebuilding
    session.add(package)
    await audit.record(
        session,
        actor=actor,
        action="export.rebuild_requested",
        now=now,
        request_id=req.id,
        details={"package_id": package.id, "was": previous_status},
    )
    await queue_assembly(session, request_id=req.id, now=now)
    return req


# --- download -------------------------------------------------------------------------------


async def downloadable(session: AsyncSession, rt: Runtime, req: DsrRequest) -> ExportPackage:
    package = await package_for(session, req.id)
    if package is None:
        raise NotFound("this request has no package (yet): see export.ready in its status")
    if package.status == PackageStatus.rebuilding:
        raise NotFound("the package is being prepared again: see export.ready in its status")
    if package.status != PackageStatus.ready:
        again = (
            "; until the data it came from is deleted too, we can also issue it again if you ask us"
            if package.results_deleted_at is None
            else ""
        )
        raise Gone(
            "the package was deleted when its retention period ended; file a new access "
            f"request (POST /v1/requests) to receive your data again{again}",
            extra={"expired_at": rfc3339(utc(package.deleted_at or package.expires_at))},
        )
    if not (exports_dir(rt) / package.file_name).exists():
        # Its file went with a re-run whose unit of work then failed: not ready after all.
        raise NotFound("this request has no package (yet): see export.ready in its status")
    return package


def read_package(
    rt: Runtime, package: ExportPackage, *, start: int = 0, end: int | None = None
) -> Iterator[bytes]:
    return iter_decrypted(
        exports_dir(rt) / package.file_name,
        wrapping_key=rt.sealer.file_key,
        context=_context(package.id),
        start=start,
        end=end,
    )


async def record_download(
    session: AsyncSession, *, package: ExportPackage, now: datetime, byte_range: str | None
) -> None:
    package.downloads += 1
    session.add(package)
    await audit.record(
        session,
        actor="subject",
        action="export.downloaded",
        now=now,
        request_id=package.request_id,
        details={"package_id": package.id, "range": byte_range},
    )


# --- expiry ---------------------------------------------------------------------------------


def _delete_file(rt: Runtime, package: ExportPackage) -> None:
    with contextlib.suppress(FileNotFoundError):
        (exports_dir(rt) / package.file_name).unlink()


async def discard(session: AsyncSession, rt: Runtime, package: ExportPackage) -> None:
    """Delete a package, and its file once that is committed (a re-run replaces the answer
    it held; a failed commit leaves it whole)."""
    after_commit(session, f"exports.discard.{package.id}", lambda: _delete_file(rt, package))
    await session.delete(package)


def _drop_results(rt: Runtime, pairs: list[Any]) -> None:
    for cj, _ in pairs:
        results.delete(rt, [entry["file"] for entry in connectors.data_files_of(cj)])
        cj.data_files = None


@periodic(EXPIRE_KIND, every_seconds=3600)
async def expire_packages(ctx: JobContext, job: Job) -> None:
    """Delete packages past their retention, and the connector results they were built
    from (the personal data the service held for the answer) with them, or
    ``DSR_EXPORT_RESULTS_GRACE_DAYS`` later so that staff can re-issue the package."""
    now = ctx.clock.now()
    grace = ctx.settings.export_results_grace_days
    async with ctx.session() as session:
        rows = await session.exec(
            select(ExportPackage)
            .where(
                # A package whose rebuild failed for good stays "rebuilding": its old file
                # must go at its end date all the same.
                col(ExportPackage.status).in_([PackageStatus.ready, PackageStatus.rebuilding]),
                col(ExportPackage.expires_at) <= now,
            )
            .limit(200)
            .with_for_update(skip_locked=True)
        )
        for package in rows.all():
            if package.status == PackageStatus.rebuilding and await assembly_pending(
                session, package.request_id
            ):
                continue  # its rebuild replaces it
            _delete_file(ctx, package)
            if grace == 0:
                pairs = await connectors.jobs_for_request(session, package.request_id)
                _drop_results(ctx, pairs)
                session.add_all(cj for cj, _ in pairs)
                package.results_deleted_at = now
            package.status, package.deleted_at = PackageStatus.expired, now
            session.add(package)
            await audit.record(
                session,
                actor="system",
                action="export.expired",
                now=now,
                request_id=package.request_id,
                details={"package_id": package.id, "results_deleted": grace == 0},
            )
        await _drop_results_after_grace(ctx, session, now=now, grace_days=grace)
        await _drop_results_of_closed_requests(ctx, session, now=now)


async def _drop_results_after_grace(
    rt: Runtime, session: AsyncSession, *, now: datetime, grace_days: int
) -> None:
    """Results held past their expired package's grace period are deleted: the package
    can no longer be rebuilt, only the request re-run. A request being re-run keeps its
    new run's results (its old ones went with the re-run)."""
    rows = await session.exec(
        select(ExportPackage)
        .join(DsrRequest, col(DsrRequest.id) == col(ExportPackage.request_id))
        .where(
            col(ExportPackage.status).in_([PackageStatus.expired, PackageStatus.rebuilding]),
            col(ExportPackage.results_deleted_at).is_(None),
            col(ExportPackage.expires_at) <= now - timedelta(days=grace_days),
            col(DsrRequest.status) == RequestStatus.completed,
        )
        .limit(200)
        .with_for_update(skip_locked=True, of=ExportPackage)
    )
    for package in rows.all():
        pairs = await connectors.jobs_for_request(session, package.request_id)
        _drop_results(rt, pairs)
        session.add_all(cj for cj, _ in pairs)
        package.results_deleted_at = now
        session.add(package)
        await audit.record(
            session,
            actor="system",
            action="connector_results.deleted",
            now=now,
            request_id=package.request_id,
            details={"package_id": package.id, "why": "grace period after expiry ended"},
        )


async def _drop_results_of_closed_requests(
    rt: Runtime, session: AsyncSession, *, now: datetime
) -> None:
    """Records that systems sent for a request then cancelled or rejected never make a
    package: they are deleted at the next sweep instead of waiting for one."""
    for request_id in await connectors.requests_holding_data(
        session, statuses=[RequestStatus.cancelled, RequestStatus.rejected]
    ):
        pairs = await connectors.jobs_for_request(session, request_id)
        _drop_results(rt, pairs)
        session.add_all(cj for cj, _ in pairs)
        await audit.record(
            session,
            actor="system",
            action="connector_results.deleted",
            now=now,
            request_id=request_id,
            details={"why": "request closed without an answer package"},
        )

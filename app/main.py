"""The application: create_app() wires settings, the runtime, routers, error handlers and
(unless ``DSR_WORKER=off``) a job worker inside the serving process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__
from app.audit.router import router as audit_router
from app.config import Settings, load_settings
from app.connectors.router import callbacks_router, registry_router
from app.errors import AppError, InvalidInput, PayloadTooLarge
from app.exports.router import router as exports_router
from app.jobs.worker import Worker
from app.kit.clock import Clock
from app.kit.heap import freeze_startup_objects
from app.requests.router import router as requests_router
from app.runtime import build_runtime
from app.staff.router import router as staff_router
from app.tasks import register_tasks

log = logging.getLogger("dsr")

PROBLEM_JSON = "application/problem+json"
JSON_BODY_LIMIT = 1024 * 1024


def problem(status: int, title: str, detail: str, **extra: object) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def _loc(raw: tuple[Any, ...] | list[Any]) -> list[Any]:
    # pydantic adds the validator's name for tagged/annotated types; keep the field path
    return [part for part in raw if not (isinstance(part, str) and part.startswith("function-"))]


def _validation_problem(raw: Sequence[Any]) -> InvalidInput:
    """FastAPI's validation errors as the contract's problem: ``errors[].loc`` names each
    field. A body that is not JSON at all, or none, is said so (pydantic reports the offset of the
    parse error as if it were a field: ``["body", 1]``, "JSON decode error")."""
    if any(e.get("type") == "json_invalid" for e in raw):
        reason = next((e.get("ctx") or {} for e in raw if e.get("type") == "json_invalid"), {})
        msg = "the body is not valid JSON" + (f" ({reason['error']})" if "error" in reason else "")
        return InvalidInput.field(("body",), msg)
    if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",) for e in raw):
        return InvalidInput.field(("body",), "a JSON body is required")
    errors = [{"loc": _loc(e.get("loc", ())), "msg": e.get("msg", "invalid")} for e in raw]
    fields = ", ".join(".".join(str(p) for p in e["loc"][1:]) or e["loc"][0] for e in errors)
    return InvalidInput(f"invalid fields: {fields}", errors=errors)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(
            exc.to_problem(), status_code=exc.status, headers=exc.headers, media_type=PROBLEM_JSON
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        invalid = _validation_problem(exc.errors())
        return JSONResponse(invalid.to_problem(), status_code=422, media_type=PROBLEM_JSON)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "Error")
        response = problem(exc.status_code, title, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("http.unhandled_error")
        return problem(500, "Internal error", "an unexpected error occurred; it was logged")


CALLBACK_PREFIX = "/v1/connector-callbacks/"


class BodyLimit:
    """Refuse oversized bodies (413) before they are read: JSON bodies are small; uploads
    have their own, larger limit."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        json_limit: int,
        upload_limit: int,
        callback_limit: int,
        data_limit: int,
    ) -> None:
        self.app, self.json_limit, self.upload_limit = app, json_limit, upload_limit
        self.callback_limit, self.data_limit = callback_limit, data_limit

    def limit_for(self, scope: Scope, content_type: bytes) -> int:
        path: str = scope.get("path", "")
        if path.startswith(CALLBACK_PREFIX):
            # Connectors' results may carry data; their uploads are streamed to disk.
            return self.data_limit if path.endswith("/data") else self.callback_limit
        return self.upload_limit if content_type.startswith(b"multipart/") else self.json_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        limit = self.limit_for(scope, headers.get(b"content-type", b""))
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            response = JSONResponse(
                PayloadTooLarge(f"the body is larger than {limit} bytes").to_problem(),
                status_code=413,
                media_type=PROBLEM_JSON,
            )
            await response(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"the body is larger than {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


def create_app(
    settings: Settings | None = None, *, clock: Clock | None = None, run_worker: bool | None = None
) -> FastAPI:
    settings = settings or load_settings()
    register_tasks()
    with_worker = settings.worker == "on" if run_worker is None else run_worker

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = build_runtime(
            settings,
            clock=clock,
            role="dsr serve",
            worker_concurrency=settings.worker_concurrency if with_worker else 0,
        )
        app.state.runtime = runtime
        if settings.env != "test":
            # Not in the suite: it builds an app per test, and freezing would keep every
            # earlier test's cyclic garbage for the rest of the run.
            freeze_startup_objects()
        app.state.settings = settings
        app.state.http = runtime.http
        stop = asyncio.Event()
        worker_task = None
        if with_worker:
            worker = Worker(
                runtime,
                concurrency=settings.worker_concurrency,
                lease_seconds=settings.worker_lease_seconds,
            )
            worker_task = asyncio.create_task(worker.run(stop))
        try:
            yield
        finally:
            stop.set()
            if worker_task is not None:
                await worker_task
            await runtime.aclose()

    app = FastAPI(
        title="Data-subject-rights service",
        version=__version__,
        summary="GDPR requests from intake to answer: verified, fanned out, on time, proven.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(
        BodyLimit,
        json_limit=JSON_BODY_LIMIT,
        upload_limit=settings.document_max_bytes + 64 * 1024,
        callback_limit=settings.callback_max_bytes,
        data_limit=settings.upload_max_bytes,
    )
    app.include_router(requests_router)
    app.include_router(exports_router)
    app.include_router(callbacks_router)
    app.include_router(registry_router)
    app.include_router(staff_router)
    app.include_router(audit_router)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict:
        """Liveness: the process answers."""
        return {"ok": True, "version": __version__}

    return app

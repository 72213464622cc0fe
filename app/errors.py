"""Errors that are answers: every expected failure is an ``AppError`` rendered as RFC 9457
problem+json by one handler in ``app.main``.

Hierarchy (domains add their own subclasses in their ``errors.py``)::

    AppError                      status, title, detail, optional errors[] and headers
    ├── InvalidInput      422     a field is wrong (``errors[].loc`` names it)
    ├── Unauthorized      401     no or bad credentials (adds WWW-Authenticate)
    ├── Forbidden         403     the credentials lack a scope
    ├── NotFound          404     does not exist, or is not yours
    ├── Conflict          409     the current state forbids the action
    │   └── InvalidTransition     a request status change the state machine refuses
    ├── Gone              410     existed, deleted on purpose (expired packages)
    ├── PayloadTooLarge   413
    ├── UnsupportedMedia  415
    ├── RateLimited       429     with Retry-After
    └── Unavailable       503     a dependency is down, with Retry-After
"""

from __future__ import annotations

from typing import Any, ClassVar


class AppError(Exception):
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    slug: ClassVar[str] = "internal"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra or {}

    def to_problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://dsr.dev/problems/{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


class InvalidInput(AppError):
    status = 422
    title = "Invalid input"
    slug = "invalid-input"

    @classmethod
    def field(cls, loc: tuple[str | int, ...], msg: str, **extra: Any) -> InvalidInput:
        return cls(msg, errors=[{"loc": list(loc), "msg": msg}], extra=extra)


class Unauthorized(AppError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"

    def __init__(self, detail: str = "missing or invalid credentials", **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(detail, **kw)


class Forbidden(AppError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class NotFound(AppError):
    status = 404
    title = "Not found"
    slug = "not-found"


class Conflict(AppError):
    status = 409
    title = "Conflict"
    slug = "conflict"


class InvalidTransition(Conflict):
    slug = "invalid-transition"


class Gone(AppError):
    status = 410
    title = "Gone"
    slug = "gone"


class PayloadTooLarge(AppError):
    status = 413
    title = "Payload too large"
    slug = "payload-too-large"


class UnsupportedMedia(AppError):
    status = 415
    title = "Unsupported media type"
    slug = "unsupported-media-type"


class RateLimited(AppError):
    status = 429
    title = "Too many requests"
    slug = "rate-limited"

    def __init__(self, detail: str, *, retry_after: int, **kw: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))}, **kw)


class Unavailable(AppError):
    status = 503
    title = "Service unavailable"
    slug = "unavailable"

    def __init__(self, detail: str, *, retry_after: int = 5, **kw: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)}, **kw)

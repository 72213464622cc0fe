"""Database engine and sessions.

One async engine per process: ``sqlite+aiosqlite`` for the embedded default, ``asyncpg`` for
PostgreSQL. ``session_scope`` is the unit of work: it commits when the block ends and rolls
back on any error, so a state change and the work it causes (jobs, e-mails, audit events)
land together or not at all. Services never commit.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, DateTime, MetaData, Text, event, literal_column
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION
metadata: MetaData = SQLModel.metadata


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC instant on every database. SQLite keeps no offset, so values are stored
    in UTC and read back as UTC; a naive value is refused before it can be misread."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: give an aware instant")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


READ_ONLY = "dsr_read_only"


_WORD = re.compile(r"[a-z_]+")


def constant_list(values: Iterable[str]) -> list[ColumnElement[str]]:
    """Fixed words (statuses) as SQL literals, for ``column.in_(...)`` in a statement built
    once: a list of bound values is an "expanding" parameter, which SQLAlchemy renders into
    the SQL again on every execution."""
    words = [str(value) for value in values]
    if not all(_WORD.fullmatch(word) for word in words):
        raise ValueError("only lowercase words are written into SQL")
    return [literal_column(f"'{word}'") for word in words]


class json_rows(FunctionElement[str]):
    """An aggregate: the rows as one JSON array of objects, as text (NULL for no rows on
    PostgreSQL, ``[]`` on SQLite). ``json_rows(name, column, name, column...)``, names given
    as ``constant_list`` words. Lets a statement carry a few rows of another shape (a
    request's audit trail beside the request) instead of costing a second statement."""

    name = "json_rows"
    inherit_cache = True
    type = Text()


@compiles(json_rows, "postgresql")
def _json_rows_postgresql(element: json_rows, compiler: Any, **kw: Any) -> str:
    return f"CAST(json_agg(json_build_object({compiler.process(element.clauses, **kw)})) AS TEXT)"


@compiles(json_rows, "sqlite")
def _json_rows_sqlite(element: json_rows, compiler: Any, **kw: Any) -> str:
    return f"json_group_array(json_object({compiler.process(element.clauses, **kw)}))"


async def flush_pending(session: AsyncSession) -> None:
    """Flush the unit of work's pending changes, if it has any, before a Core statement on
    its connection (which, unlike an ORM query, does not autoflush) reads what they touch."""
    if session.new or session.dirty or session.deleted:
        await session.flush()


def async_url(url: str) -> str:
    """Map the configured URL onto the async driver of its database."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    target = async_url(url)
    if target.startswith("sqlite"):
        engine = create_async_engine(target, connect_args={"timeout": 30}, **kwargs)
        _tune_sqlite(engine)
        return engine
    # Enough pooled connections for a busy process: overflow connections are closed when
    # returned, and opening one costs more than most requests. No pre-ping (a round trip per
    # request); stale connections are recycled instead.
    kwargs.setdefault("pool_size", 32)
    kwargs.setdefault("max_overflow", 8)
    kwargs.setdefault("pool_recycle", 1800)
    return create_async_engine(target, **kwargs)


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, emit BEGIN, so writers can take the lock up front.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A unit of work may write: BEGIN IMMEDIATE takes the write lock at the start, which
        # avoids SQLite's deadlock-on-upgrade between two readers turned writers. Read-only
        # sessions take none, so reads do not queue behind each other and behind writes.
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


def read_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for answers that only read. On PostgreSQL they run in autocommit: each
    statement already sees its own committed snapshot under READ COMMITTED, so BEGIN and
    COMMIT would only add two round trips. On SQLite they begin without the write lock."""
    options = {READ_ONLY: True} if is_sqlite(engine) else {"isolation_level": "AUTOCOMMIT"}
    return async_sessionmaker(
        engine.execution_options(**options),
        class_=AsyncSession,
        expire_on_commit=False,
    )


BEFORE_COMMIT = "dsr.before_commit"
Hook = Callable[[AsyncSession], Awaitable[None]]


def before_commit(session: AsyncSession, key: str, hook: Hook) -> None:
    """Run ``hook`` once, just before this unit of work commits (the audit chain appends its
    events there, so its lock is held for the shortest time)."""
    session.info.setdefault(BEFORE_COMMIT, {}).setdefault(key, hook)


AFTER_COMMIT = "dsr.after_commit"


AfterHook = Callable[[], Awaitable[None] | None]


def after_commit(session: AsyncSession, key: str, hook: AfterHook) -> None:
    """Run ``hook`` once after this unit of work has committed (waking local job workers; a
    look that must see the commit); an async hook is awaited. A hook must not raise: the
    work is committed, and its caller would take an error for a failure of the work."""
    session.info.setdefault(AFTER_COMMIT, {}).setdefault(key, hook)


async def commit(session: AsyncSession) -> None:
    hooks: dict[str, Hook] = session.info.pop(BEFORE_COMMIT, {})
    for hook in hooks.values():
        await hook(session)
    await session.commit()
    done: dict[str, AfterHook] = session.info.pop(AFTER_COMMIT, {})
    for then in done.values():
        pending = then()
        if pending is not None:
            await pending


async def rollback(session: AsyncSession) -> None:
    session.info.pop(BEFORE_COMMIT, None)
    session.info.pop(AFTER_COMMIT, None)
    await session.rollback()


@asynccontextmanager
async def session_scope(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit at the end, roll back on error."""
    async with factory() as session:
        try:
            yield session
            await commit(session)
        except BaseException:
            await rollback(session)
            raise

"""Writing a unit of work's new rows in one round trip.

Intake writes five or six rows (the request, its audit event, its verification code, the
outbox message and its delivery job, the idempotency record). Through the ORM's unit of work
that was a flush of as many SQLModel objects: validation on every attribute, the flush's
bookkeeping, and a round trip per row, which together were most of an intake's CPU. Here the
rows are plain dicts of column values and go out at once:

- on PostgreSQL in one statement, each row in a data-modifying CTE (``WITH r0 AS (INSERT
  ...), r1 AS (INSERT ...) SELECT ...``), which is atomic like any statement and runs in the
  caller's transaction; the final ``SELECT`` can send the job workers' ``NOTIFY`` (delivered
  only if the transaction commits), which saves the separate ``NOTIFY`` round trip;
- elsewhere (SQLite), one Core ``INSERT`` per row.

The statement text for a given shape (tables and the columns given) is built once and kept.
Errors (e.g. an ``IntegrityError`` on a key that raced us) come out of ``insert_rows`` itself,
not out of a later flush.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import Any

from sqlalchemy import Column, Table, bindparam, insert, text
from sqlalchemy.sql.elements import TextClause
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db import BEFORE_COMMIT

Row = tuple[Table, dict[str, Any]]

JOBS_CHANNEL = "dsr_jobs"  # app.jobs.wakeup.CHANNEL, spelt here as a literal of the SQL

_Shape = tuple[tuple[str, tuple[str, ...]], ...]
_statements: dict[tuple[_Shape, bool], tuple[TextClause, list[list[tuple[str, Column]]]]] = {}


def _default(column: Column) -> Any:
    default = column.default
    if default is None or not getattr(default, "is_scalar", False):
        return None
    value = default.arg  # type: ignore[attr-defined]
    return value.value if isinstance(value, Enum) else value


def _written(column: Column, given: dict[str, Any]) -> bool:
    """Every column is written (text SQL applies no Python-side defaults), except a key left
    to the database (an autoincremented id)."""
    return column.name in given or not (column.primary_key and column.autoincrement is True)


def _statement(
    rows: Sequence[Row], notify: bool
) -> tuple[TextClause, list[list[tuple[str, Column]]]]:
    shape: _Shape = tuple((table.name, tuple(sorted(values))) for table, values in rows)
    cached = _statements.get((shape, notify))
    if cached is not None:
        return cached
    parts, binds, names = [], [], []
    for i, (table, values) in enumerate(rows):
        columns = [c for c in table.columns if _written(c, values)]
        names.append([(f"p{i}_{c.name}", c) for c in columns])
        binds += [bindparam(f"p{i}_{c.name}", type_=c.type) for c in columns]
        parts.append(
            f"r{i} AS (INSERT INTO {table.name} ({', '.join(c.name for c in columns)}) "
            f"VALUES ({', '.join(f':p{i}_{c.name}' for c in columns)}))"
        )
    tail = f"SELECT pg_notify('{JOBS_CHANNEL}', '')" if notify else "SELECT 1"
    statement = text(f"WITH {', '.join(parts)} {tail}").bindparams(*binds)
    _statements[(shape, notify)] = (statement, names)
    return statement, names


BATCH = "dsr.rows.batch"


@contextmanager
def batched(session: AsyncSession) -> Iterator[None]:
    """Keep the rows of many ``insert_rows`` calls and write them, one multi-row insert per
    table, with ``write_batch`` (bulk loading, e.g. the benchmark's seeding: one round trip
    per intake would make it several times slower)."""
    session.info[BATCH] = []
    try:
        yield
    finally:
        session.info.pop(BATCH, None)


async def write_batch(session: AsyncSession) -> None:
    """Write what ``batched`` kept so far, in the session's transaction."""
    kept: list[Row] = session.info.get(BATCH, [])
    by_table: dict[str, tuple[Table, list[dict[str, Any]]]] = {}
    for table, values in kept:
        by_table.setdefault(table.name, (table, []))[1].append(values)
    conn = await session.connection()
    for table, values_list in by_table.values():
        await conn.execute(insert(table), values_list)
    kept.clear()


async def insert_rows(
    session: AsyncSession, rows: Sequence[Row], *, notify_jobs: bool, whole_unit: bool = False
) -> None:
    """Insert ``rows`` in the session's transaction; ``notify_jobs``: one of them is a job,
    wake the workers of other processes when the transaction commits (PostgreSQL).

    ``whole_unit``: the caller writes nothing else in this unit of work. If the session has
    not begun either, PostgreSQL runs the one statement in autocommit: a statement is its
    own transaction, atomic and committed when it returns, so ``BEGIN`` and ``COMMIT``, two
    of the unit's three round trips, are not sent. The session's commit then has nothing to
    do (a 2xx still follows the commit). Anything written after would not be part of it:
    hence the caller's promise, and the check that nothing was written before."""
    kept = session.info.get(BATCH)
    if kept is not None:
        kept.extend(rows)
        return
    if whole_unit and _untouched(session) and session.get_bind().dialect.name == "postgresql":
        conn = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    else:
        conn = await session.connection()
    if conn.dialect.name != "postgresql":
        for table, values in rows:
            await conn.execute(insert(table), values)
        return
    statement, names = _statement(rows, notify_jobs)
    params: dict[str, Any] = {}
    for (_, values), columns in zip(rows, names, strict=True):
        for name, column in columns:
            params[name] = values[column.name] if column.name in values else _default(column)
    await conn.execute(statement, params)


def _untouched(session: AsyncSession) -> bool:
    """Nothing begun, pending or waiting for the commit in this session."""
    return not (
        session.in_transaction()
        or session.new
        or session.dirty
        or session.deleted
        or session.info.get(BEFORE_COMMIT)
    )

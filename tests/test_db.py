"""Helpers of app/db.py that are not a unit of work's."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import column, literal_column, select, table
from sqlalchemy.dialects import postgresql, sqlite

from app.db import constant_list, json_rows
from tests.conftest import Service


@pytest.mark.parametrize("dialect", [postgresql.dialect(), sqlite.dialect()])
def test_constant_list_is_written_into_the_sql(dialect: object) -> None:
    t = table("t", column("status"))
    statement = select(t.c.status).where(t.c.status.in_(constant_list(["open", "in_review"])))
    compiled = statement.compile(dialect=dialect)  # type: ignore[arg-type]
    assert "IN ('open', 'in_review')" in str(compiled)
    assert not compiled.params  # nothing bound, nothing re-rendered per execution


@pytest.mark.parametrize("word", ["x'); DROP TABLE t; --", "Open", "", "a b", "é"])
def test_constant_list_refuses_anything_but_lowercase_words(word: str) -> None:
    with pytest.raises(ValueError, match="lowercase words"):
        constant_list(["open", word])


async def test_json_rows_gathers_rows_of_another_shape_on_both_databases(service: Service) -> None:
    """The aggregate the staff detail view reads a request's trail with: one JSON array of
    objects (or nothing, for no rows: NULL on PostgreSQL, ``[]`` on SQLite), as text."""
    values = select(literal_column("1").label("n"), literal_column("'é'").label("s"))
    values = values.union_all(select(literal_column("2"), literal_column("'b'"))).subquery()
    names = constant_list(["n", "s"])
    gathered = select(json_rows(names[0], values.c.n, names[1], values.c.s))
    async with service.runtime.read_sessions() as session:
        conn = await session.connection()
        text_value = (await conn.execute(gathered.select_from(values))).scalar_one()
        none = (await conn.execute(gathered.select_from(values).where(values.c.n > 2))).scalar()
    assert isinstance(text_value, str)
    assert sorted(json.loads(text_value), key=lambda row: row["n"]) == [
        {"n": 1, "s": "é"},
        {"n": 2, "s": "b"},
    ]
    # json_agg of no rows is NULL; SQLite's json_group_array is an empty array
    assert none == (None if service.runtime.engine.dialect.name == "postgresql" else "[]")

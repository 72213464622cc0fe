"""Helpers of app/db.py that are not a unit of work's."""

from __future__ import annotations

import pytest
from sqlalchemy import column, select, table
from sqlalchemy.dialects import postgresql, sqlite

from app.db import constant_list


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

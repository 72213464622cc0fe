"""Models and migrations agree, and the schema goes down to nothing and up again."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app.db import create_engine, metadata
from app.migrate import downgrade, upgrade
from app.models import import_all_models


def _drift(url: str) -> list[object]:
    import_all_models()

    async def run() -> list[object]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(
                        MigrationContext.configure(sync, opts={"compare_type": True}), metadata
                    )
                )
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _tables(url: str) -> set[str]:
    async def run() -> set[str]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda sync: sync.dialect.get_table_names(sync)))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_models_and_migrations_agree(database_url: str) -> None:
    assert _drift(database_url) == []


def test_downgrade_to_base_and_upgrade_again(database_url: str) -> None:
    downgrade(database_url, "base")
    assert _tables(database_url) <= {"alembic_version"}
    upgrade(database_url)
    assert {"dsr_request", "audit_event", "job", "outbox_message"} <= _tables(database_url)
    assert _drift(database_url) == []

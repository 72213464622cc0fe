"""A process's shared parts: its database pool is sized for what it runs and names itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from app.config import Settings, new_key
from app.runtime import WORKER_OWN_CONNECTIONS, build_runtime
from tests.fixtures.database import PostgresDatabase


@pytest.fixture
def pg_settings(postgres_database: PostgresDatabase, tmp_path: Path) -> Settings:
    return Settings(
        env="test",
        database_url=postgres_database.url,
        data_dir=tmp_path,
        encryption_key=new_key(),
        db_pool_size=2,
        db_max_overflow=5,
    )


async def _backends_at_once(runtime, count: int) -> set[int]:  # type: ignore[no-untyped-def]
    """Hold ``count`` connections at the same moment; the backend pid of each."""
    held = asyncio.Event()
    arrived: list[int] = []

    async def one() -> None:
        async with runtime.engine.connect() as conn:
            arrived.append((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            if len(arrived) == count:
                held.set()
            await held.wait()

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 10)
    return set(arrived)


async def test_a_busy_worker_keeps_its_connections(pg_settings: Settings) -> None:
    """Every job of a full worker may hold a connection at once: the pool keeps them all, so
    the next burst reuses the same backends instead of opening new ones."""
    concurrency = 4
    runtime = build_runtime(pg_settings, role="dsr worker", worker_concurrency=concurrency)
    try:
        busiest = pg_settings.db_pool_size + concurrency + WORKER_OWN_CONNECTIONS
        first = await _backends_at_once(runtime, busiest)
        again = await _backends_at_once(runtime, busiest)
        assert len(first) == busiest
        assert again == first
    finally:
        await runtime.aclose()


async def test_an_api_process_without_a_worker_pools_only_its_own(pg_settings: Settings) -> None:
    runtime = build_runtime(pg_settings, role="dsr serve")
    try:
        first = await _backends_at_once(runtime, pg_settings.db_pool_size + 3)
        again = await _backends_at_once(runtime, pg_settings.db_pool_size + 3)
        # Beyond the pool, connections are overflow: closed when returned.
        assert len(first & again) <= pg_settings.db_pool_size
    finally:
        await runtime.aclose()


async def test_the_process_names_itself_to_postgresql(pg_settings: Settings) -> None:
    runtime = build_runtime(pg_settings, role="dsr worker", worker_concurrency=1)
    try:
        async with runtime.engine.connect() as conn:
            name = (await conn.execute(text("SHOW application_name"))).scalar_one()
        assert name == "dsr worker"
    finally:
        await runtime.aclose()


@pytest.mark.parametrize(("env", "frozen"), [("development", True), ("test", False)])
async def test_a_service_process_freezes_what_it_started_with(
    env: str, frozen: bool, tmp_path: Path
) -> None:
    """Start-up's long-lived objects are moved out of the collector's sight (no full
    collection walks them again); not in the test suite, which builds an app per test."""
    import gc

    from app.main import create_app

    gc.unfreeze()
    settings = Settings(
        env=env,
        database_url=f"sqlite:///{tmp_path}/dsr.db",
        data_dir=tmp_path,
        encryption_key=new_key(),
        staff_jwt_secret=new_key(),
    )
    app = create_app(settings, run_worker=False)
    try:
        from app.migrate import upgrade

        await asyncio.to_thread(upgrade, settings.database_url)
        async with app.router.lifespan_context(app):
            assert (gc.get_freeze_count() > 10_000) is frozen
    finally:
        gc.unfreeze()

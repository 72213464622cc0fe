"""The group-commit helper: what is submitted in one moment runs as one batch, each
submitter gets its own result, and a failing batch is re-run item by item."""

from __future__ import annotations

import asyncio

import pytest

from app.jobs.batching import Coalescer, coalescer


async def test_submissions_of_one_moment_run_as_one_batch() -> None:
    seen: list[list[int]] = []

    async def many(items: list[int]) -> list[int]:
        seen.append(items)
        return [i * 10 for i in items]

    async def one(item: int) -> int:
        raise AssertionError("the batch did not fail")

    batcher = Coalescer("t", many, one)
    assert await asyncio.gather(*(batcher.submit(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert seen == [[0, 1, 2, 3, 4]]
    assert await batcher.submit(7) == 70
    assert batcher.batches == 2


async def test_batches_are_capped_and_run_one_after_another() -> None:
    running, sizes = 0, []

    async def many(items: list[int]) -> list[None]:
        nonlocal running
        running += 1
        assert running == 1, "two batches of one coalescer ran at once"
        sizes.append(len(items))
        await asyncio.sleep(0.01)
        running -= 1
        return [None] * len(items)

    async def one(item: int) -> None:
        raise AssertionError("the batch did not fail")

    batcher = Coalescer("t", many, one, max_batch=4)
    await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert sizes == [4, 4, 2]


async def test_a_failing_batch_is_run_again_item_by_item() -> None:
    alone: list[int] = []

    async def many(items: list[int]) -> list[int]:
        raise RuntimeError("deadlock detected")

    async def one(item: int) -> int:
        alone.append(item)
        if item == 2:
            raise ValueError("this one is bad")
        return -item

    batcher = Coalescer("t", many, one)
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
    assert outcomes[:2] == [0, -1]
    assert outcomes[3] == -3
    assert isinstance(outcomes[2], ValueError), "only the bad item fails, with its own error"
    assert sorted(alone) == [0, 1, 2, 3]


async def test_a_batch_giving_too_few_results_falls_back_too() -> None:
    async def many(items: list[int]) -> list[int]:
        return [1]

    async def one(item: int) -> int:
        return item + 100

    batcher = Coalescer("t", many, one)
    assert await asyncio.gather(batcher.submit(1), batcher.submit(2)) == [101, 102]


async def test_a_cancelled_submitter_does_not_stop_the_batch() -> None:
    done: list[int] = []
    gate = asyncio.Event()

    async def many(items: list[int]) -> list[None]:
        await gate.wait()
        done.extend(items)
        return [None] * len(items)

    async def one(item: int) -> None:
        raise AssertionError("the batch did not fail")

    batcher = Coalescer("t", many, one)
    first = asyncio.ensure_future(batcher.submit(1))
    second = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0.01)
    first.cancel()
    gate.set()
    await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert done == [1, 2], "the cancelled one's work was still done, in the same transaction"


async def test_one_coalescer_per_name_and_event_loop() -> None:
    async def many(items: list[int]) -> list[int]:
        return items

    async def one(item: int) -> int:
        return item

    extras: dict[str, object] = {}
    a = coalescer(extras, "x", many, one)
    assert coalescer(extras, "x", many, one) is a
    assert coalescer(extras, "y", many, one) is not a

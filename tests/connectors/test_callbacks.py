"""Signed callbacks from connectors (``POST /v1/connector-callbacks/{job_id}``): a valid
result is applied once, a bad signature or a stale timestamp changes nothing, a finished job
refuses more, and an invalid result is a 422 naming the field at fault."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import col, func, select
from starlette.responses import JSONResponse, Response

from app.connectors import calls, dispatch
from app.connectors.signing import new_secret
from app.jobs import service as jobs
from app.jobs.models import Job, JobStatus
from tests.conftest import Service
from tests.connectors.conftest import detail, drive, register
from tests.fixtures.connectors import (
    Behaviour,
    Call,
    ConnectorFarm,
    answers,
    flaky,
    result,
    sign,
    silent,
)

FAST_RETRIES = {"retry_base_seconds": 0.01, "retry_cap_seconds": 0.05}
RETAINED = {
    "category": "invoices",
    "reason": "tax law",
    "legal_basis": "French Commercial Code L.123-22",
    "until": "2035-05-01",
}


async def waiting_job(
    service: Service,
    farm: ConnectorFarm,
    *,
    name: str = "crm",
    request: dict[str, Any] | None = None,
    registered: bool = False,
) -> tuple[str, str]:
    """A request whose job at ``name`` answered 202 and now waits for its callback:
    (request id, job id)."""
    if not registered:
        await register(service, farm, name, silent())
    filed = await service.file_verified(request)
    await drive(service, farm)
    jobs = (await detail(service, filed["id"]))["jobs"]
    assert [j["status"] for j in jobs] == ["waiting_callback"], jobs
    return filed["id"], jobs[0]["id"]


def encode(body: dict[str, Any] | bytes) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


async def post_callback(
    service: Service,
    job_id: str,
    body: dict[str, Any] | bytes,
    *,
    secret: str,
    msg_id: str = "msg_1",
    at: float | None = None,
) -> httpx.Response:
    """A callback signed the way a connector signs it."""
    raw = encode(body)
    headers = sign(secret, raw, msg_id=msg_id, at=at) | {"content-type": "application/json"}
    return await service.client.post(
        f"/v1/connector-callbacks/{job_id}", content=raw, headers=headers
    )


def actions(view: dict[str, Any]) -> list[str]:
    return [e["action"] for e in view["events"]]


async def test_a_signed_result_completes_the_request_once(
    service: Service, farm: ConnectorFarm
) -> None:
    request_id, job_id = await waiting_job(service, farm)
    secret = farm.secrets["crm"]
    body = result(job_id=job_id)

    answer = await post_callback(service, job_id, body, secret=secret, msg_id="msg_first")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"job_id": job_id, "status": "succeeded", "duplicate": False}
    await service.run_jobs()  # the package assembly completes it
    view = await detail(service, request_id)
    assert view["status"] == "completed"
    assert (view["jobs"][0]["status"], view["jobs"][0]["outcome"]) == ("succeeded", "found")
    assert view["jobs"][0]["data_files"] == 1
    assert actions(view).count("connector_job.succeeded") == 1

    again = await post_callback(service, job_id, body, secret=secret, msg_id="msg_first")
    assert again.status_code == 200, again.text
    assert again.json() == {"job_id": job_id, "status": "succeeded", "duplicate": True}
    after = await detail(service, request_id)
    assert actions(after).count("connector_job.succeeded") == 1
    assert after["jobs"][0]["data_files"] == 1, "a repeated callback stores nothing"
    assert after["events"] == view["events"]


async def test_a_finished_job_refuses_new_and_forged_callbacks(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    request_id, job_id = await waiting_job(service, farm)
    secret = farm.secrets["crm"]
    first = await post_callback(service, job_id, result("not_found"), secret=secret)
    assert first.status_code == 200, first.text
    before = await detail(service, request_id)

    late = await post_callback(service, job_id, result(), secret=secret, msg_id="msg_other")
    problem(late, 409)
    # A known webhook-id does not excuse a bad signature: no "duplicate" answer for it.
    forged = await post_callback(service, job_id, result("not_found"), secret=new_secret())
    problem(forged, 401)
    after = await detail(service, request_id)
    assert after["jobs"][0]["outcome"] == "not_found"
    assert after["events"] == before["events"]


def _forged(secret: str, raw: bytes) -> tuple[dict[str, str], bytes]:
    return sign(new_secret(), raw, msg_id="msg_1"), raw


def _tampered(secret: str, raw: bytes) -> tuple[dict[str, str], bytes]:
    return sign(secret, raw, msg_id="msg_1"), raw.replace(b"not_found", b"found")


def _missing(secret: str, raw: bytes) -> tuple[dict[str, str], bytes]:
    return {}, raw


def _no_signature(secret: str, raw: bytes) -> tuple[dict[str, str], bytes]:
    headers = sign(secret, raw, msg_id="msg_1")
    del headers["webhook-signature"]
    return headers, raw


def _malformed(secret: str, raw: bytes) -> tuple[dict[str, str], bytes]:
    return sign(secret, raw, msg_id="msg_1") | {"webhook-signature": "not-a-signature"}, raw


def _bad_base64(secret: str, raw: bytes) -> tuple[dict[str, str], bytes]:
    return sign(secret, raw, msg_id="msg_1") | {"webhook-signature": "v1,%%%"}, raw


def _bad_timestamp(secret: str, raw: bytes) -> tuple[dict[str, str], bytes]:
    return sign(secret, raw, msg_id="msg_1") | {"webhook-timestamp": "yesterday"}, raw


def _six_minutes_old(secret: str, raw: bytes) -> tuple[dict[str, str], bytes]:
    return sign(secret, raw, msg_id="msg_1", at=time.time() - 360), raw


def _six_minutes_ahead(secret: str, raw: bytes) -> tuple[dict[str, str], bytes]:
    return sign(secret, raw, msg_id="msg_1", at=time.time() + 360), raw


def _fractional_timestamp(secret: str, raw: bytes) -> tuple[dict[str, str], bytes]:
    headers = sign(secret, raw, msg_id="msg_1")
    return headers | {"webhook-timestamp": headers["webhook-timestamp"] + ".5"}, raw


def _id_too_long(secret: str, raw: bytes) -> tuple[dict[str, str], bytes]:
    # Signed right, but cut to the receipts' 200 characters it could pass for another id.
    return sign(secret, raw, msg_id="msg_" + "x" * 197), raw


REFUSED_SIGNATURES = [
    _forged,
    _tampered,
    _missing,
    _no_signature,
    _malformed,
    _bad_base64,
    _bad_timestamp,
    _six_minutes_old,
    _six_minutes_ahead,
    _fractional_timestamp,
    _id_too_long,
]


async def test_refused_signatures_are_401_and_change_nothing(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    request_id, job_id = await waiting_job(service, farm)
    secret = farm.secrets["crm"]
    raw = json.dumps(result("not_found")).encode()
    before = await detail(service, request_id)

    for refusal in REFUSED_SIGNATURES:
        headers, sent = refusal(secret, raw)
        answer = await service.client.post(
            f"/v1/connector-callbacks/{job_id}",
            content=sent,
            headers=headers | {"content-type": "application/json"},
        )
        assert answer.status_code == 401, (refusal.__name__, answer.text)
        problem(answer, 401)
        assert secret not in answer.text

    after = await detail(service, request_id)
    assert after["jobs"][0]["status"] == "waiting_callback"
    assert after["status"] == before["status"] == "in_progress"
    assert after["events"] == before["events"]

    # None of the refusals used up the webhook-id: the genuine callback is applied.
    genuine = await post_callback(service, job_id, raw, secret=secret, msg_id="msg_1")
    assert genuine.status_code == 200, genuine.text
    assert genuine.json()["duplicate"] is False
    await service.run_jobs()  # the package assembly completes it
    assert (await detail(service, request_id))["status"] == "completed"


async def test_a_webhook_id_is_remembered_through_a_senders_retries(
    service: Service, farm: ConnectorFarm
) -> None:
    _, job_id = await waiting_job(
        service, farm, request={"type": "erasure", "subject": {"email": "ana@example.org"}}
    )
    secret = farm.secrets["crm"]
    first = await post_callback(service, job_id, result("erased"), secret=secret, msg_id="msg_r")
    assert first.status_code == 200, first.text
    service.clock.advance(seconds=28 * 3600)  # the reference schedule's last retry, and more
    await service.run_periodic()  # the sweep forgets old receipts
    again = await post_callback(service, job_id, result("erased"), secret=secret, msg_id="msg_r")
    assert again.status_code == 200, again.text
    assert again.json() == {**first.json(), "duplicate": True}


async def test_a_webhook_id_replayed_to_another_job_is_409(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    first_request, first_job = await waiting_job(service, farm)
    second_request, second_job = await waiting_job(
        service,
        farm,
        registered=True,
        request={"type": "access", "subject": {"email": "bo@example.org"}},
    )
    secret = farm.secrets["crm"]
    applied = await post_callback(service, first_job, result(), secret=secret, msg_id="msg_once")
    assert applied.status_code == 200, applied.text
    before = await detail(service, second_request)

    replayed = await post_callback(service, second_job, result(), secret=secret, msg_id="msg_once")
    problem(replayed, 409)
    after = await detail(service, second_request)
    assert after["jobs"][0]["status"] == "waiting_callback"
    assert after["events"] == before["events"]
    await service.run_jobs()  # the package assembly completes it
    assert (await detail(service, first_request))["status"] == "completed"


def calls_back_before_answering(
    body: dict[str, Any], *, staff: dict[str, str], seen: list[str]
) -> Behaviour:
    """Sends the signed result while the service's call is still open, then answers 202:
    the callback reaches a job that is still ``running`` (recorded in ``seen``)."""

    async def behave(farm: ConnectorFarm, call: Call) -> Response:
        assert farm.deliver is not None
        view = await farm.deliver.get(
            f"/v1/admin/requests/{call.body['request_id']}", headers=staff
        )
        seen.extend(j["status"] for j in view.json()["jobs"])
        raw = json.dumps(body).encode()
        headers = sign(farm.secrets[call.system], raw, msg_id=f"cb_{call.idempotency_key}")
        answer = await farm.deliver.post(
            call.body["callback_url"],
            content=raw,
            headers=headers | {"content-type": "application/json"},
        )
        farm.callback_answers.append(answer)
        return JSONResponse({"accepted": True}, status_code=202)

    return behave


async def test_a_callback_while_the_call_is_running_is_accepted(
    service: Service, farm: ConnectorFarm
) -> None:
    seen: list[str] = []
    behaviour = calls_back_before_answering(
        result("not_found"), staff=service.staff("requests:read"), seen=seen
    )
    await register(service, farm, "crm", behaviour)
    filed = await service.file_verified()
    await drive(service, farm)

    assert seen == ["running"]
    [answer] = farm.callback_answers
    assert answer.status_code == 200, answer.text
    assert answer.json()["duplicate"] is False
    await service.run_jobs()  # the package assembly completes it
    view = await detail(service, filed["id"])
    assert view["status"] == "completed"
    job = view["jobs"][0]
    assert (job["status"], job["outcome"]) == ("succeeded", "not_found")
    assert actions(view).count("connector_job.succeeded") == 1
    assert "connector_job.waiting_callback" not in actions(view), "the late 202 changed nothing"
    assert len(farm.calls_to("crm")) == 1


async def test_a_callback_for_a_queued_job_is_accepted(
    service: Service, farm: ConnectorFarm
) -> None:
    await register(service, farm, "crm", flaky(failures=1, then=silent()))
    filed = await service.file_verified()
    await service.run_jobs()  # the first call fails; the retry waits on the frozen clock
    job = (await detail(service, filed["id"]))["jobs"][0]
    assert job["status"] == "queued"

    answer = await post_callback(service, job["id"], result(), secret=farm.secrets["crm"])
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"job_id": job["id"], "status": "succeeded", "duplicate": False}
    await drive(service, farm)
    await service.run_jobs()  # the package assembly completes it
    view = await detail(service, filed["id"])
    assert view["status"] == "completed"
    assert view["jobs"][0]["status"] == "succeeded"
    assert len(farm.calls_to("crm")) == 1, "a job settled by callback is not called again"


INVALID_RESULTS: list[tuple[str, dict[str, Any] | bytes, str]] = [
    ("missing outcome", {"status": "completed"}, "outcome"),
    ("outcome for another type", {"status": "completed", "outcome": "found"}, "outcome"),
    ("retained without items", {"status": "completed", "outcome": "retained"}, "retained"),
    ("retained item without reason", result("retained", retained=[{"category": "x"}]), "reason"),
    ("unknown outcome", {"outcome": "deleted"}, "outcome"),
    ("not JSON", b"outcome=erased", "body"),
    ("not an object", b"[1, 2]", "body"),
    ("another job", result("erased", job_id="cjob_someone_else"), "job_id"),
]


def answers_when(gate: asyncio.Event) -> Behaviour:
    """200 with a result, once ``gate`` is set."""

    async def behave(farm: ConnectorFarm, call: Call) -> Response:
        await gate.wait()
        return JSONResponse(result())

    return behave


async def test_a_callback_and_a_call_ending_the_last_two_jobs_together_complete_the_request(
    service: Service, farm: ConnectorFarm, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """The callback settles under the request's lock before it commits; the worker finishes
    the other call without that lock and looks for jobs left after its commit. Here the
    worker's look comes between the callback's settle and its commit, so each saw the
    other's job unfinished: the callback looks again once it has committed."""
    if "sqlite" in database_url:
        pytest.skip("SQLite has one writer: the call's finish cannot commit inside a callback")
    gate, worker_looked = asyncio.Event(), asyncio.Event()
    await register(service, farm, "crm", silent())
    await register(service, farm, "shop", answers_when(gate))
    filed = await service.file_verified()
    worker = asyncio.create_task(service.run_jobs())
    for _ in range(500):
        jobs = (await detail(service, filed["id"]))["jobs"]
        if sorted(j["status"] for j in jobs) == ["running", "waiting_callback"]:
            break
        await asyncio.sleep(0.01)
    [crm_job] = [j for j in jobs if j["connector_name"] == "crm"]
    assert crm_job["status"] == "waiting_callback", jobs

    real_settle, real_look = dispatch.settle, calls.settle_if_done
    seen_by_callback: list[str | None] = []

    async def settle_then_let_the_call_end(*args: Any, **kwargs: Any) -> Any:
        target = await real_settle(*args, **kwargs)
        seen_by_callback.append(target)
        gate.set()  # the shop answers; the worker finishes its job and looks, all before
        await asyncio.wait_for(worker_looked.wait(), 10)  # this unit of work commits
        return target

    async def look(*args: Any, **kwargs: Any) -> None:
        await real_look(*args, **kwargs)
        worker_looked.set()

    monkeypatch.setattr(dispatch, "settle", settle_then_let_the_call_end)
    monkeypatch.setattr(calls, "settle_if_done", look)
    answer = await post_callback(service, crm_job["id"], result(), secret=farm.secrets["crm"])
    assert answer.status_code == 200, answer.text
    assert seen_by_callback == ["in_progress"], "the callback saw the shop's job running"
    await worker
    monkeypatch.undo()
    await service.run_jobs()  # the settle, then the package assembly

    view = await detail(service, filed["id"])
    assert [j["status"] for j in view["jobs"]] == ["succeeded", "succeeded"]
    assert view["status"] == "completed", "not left for the sweep to find a minute later"
    assert actions(view).count("request.completed") == 1


async def test_invalid_results_are_422_naming_the_field(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    request_id, job_id = await waiting_job(
        service, farm, request={"type": "erasure", "subject": {"email": "ana@example.org"}}
    )
    secret = farm.secrets["crm"]
    before = await detail(service, request_id)

    for case, body, field in INVALID_RESULTS:
        answer = await post_callback(service, job_id, body, secret=secret, msg_id=f"msg_{case}")
        refused = problem(answer, 422)
        assert refused["errors"], case
        named = json.dumps(refused["errors"][0]["loc"]) + refused["errors"][0]["msg"]
        assert field in named, (case, refused)

    after = await detail(service, request_id)
    assert after["jobs"][0]["status"] == "waiting_callback"
    assert after["events"] == before["events"]

    # A refused result did not use up its webhook-id: fixed and sent again, it applies.
    fixed = result("retained", retained=[RETAINED])
    answer = await post_callback(
        service, job_id, fixed, secret=secret, msg_id="msg_retained without items"
    )
    assert answer.status_code == 200, answer.text
    await service.run_jobs()  # the package assembly completes it
    view = await detail(service, request_id)
    assert view["status"] == "completed"
    assert view["jobs"][0]["retained"][0]["until"] == "2035-05-01"


async def test_a_callback_for_an_unknown_job_is_404(service: Service, problem) -> None:
    raw = json.dumps(result()).encode()
    for job_id in ("cjob_nope", "x" * 300):
        answer = await service.client.post(
            f"/v1/connector-callbacks/{job_id}",
            content=raw,
            headers=sign(new_secret(), raw, msg_id="msg_1") | {"content-type": "application/json"},
        )
        problem(answer, 404)


async def chunks_of(raw: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(raw), size):
        yield raw[start : start + size]


@pytest.mark.parametrize("settings_overrides", [{**FAST_RETRIES, "callback_max_bytes": 4096}])
async def test_a_callback_larger_than_the_limit_is_413(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    request_id, job_id = await waiting_job(service, farm)
    secret = farm.secrets["crm"]
    records = [{"n": n, "note": "x" * 100} for n in range(60)]
    raw = json.dumps(result(data={"orders": records})).encode()
    assert len(raw) > 4096
    headers = sign(secret, raw, msg_id="msg_big") | {"content-type": "application/json"}
    url = f"/v1/connector-callbacks/{job_id}"

    problem(await service.client.post(url, content=raw, headers=headers), 413)
    # Without a Content-Length the limit still holds while the body streams in.
    problem(await service.client.post(url, content=chunks_of(raw, 1000), headers=headers), 413)

    view = await detail(service, request_id)
    assert view["jobs"][0]["status"] == "waiting_callback"
    assert view["jobs"][0]["data_files"] == 0
    results_dir = service.settings.results_dir
    assert not results_dir.exists() or not any(results_dir.iterdir())

    small = await post_callback(service, job_id, result(), secret=secret)
    assert small.status_code == 200, small.text


async def test_a_failure_callback_fails_the_job_and_needs_staff(
    service: Service, farm: ConnectorFarm
) -> None:
    request_id, job_id = await waiting_job(service, farm)
    body = {"status": "failed", "message": "customer database is being migrated"}
    answer = await post_callback(service, job_id, body, secret=farm.secrets["crm"])
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"job_id": job_id, "status": "failed", "duplicate": False}

    view = await detail(service, request_id)
    assert view["status"] == "action_required"
    job = view["jobs"][0]
    assert job["status"] == "failed"
    assert "customer database is being migrated" in job["last_error"]
    assert "connector_job.failed" in actions(view)
    assert "connector_job.succeeded" not in actions(view)
    assert await queued_calls(service) == 0, "the call for a late callback is withdrawn"


async def queued_calls(service: Service) -> int:
    async with service.runtime.read_sessions() as session:
        return (
            await session.exec(
                select(func.count()).where(
                    col(Job.kind) == dispatch.CALL_KIND, col(Job.status) == JobStatus.queued
                )
            )
        ).one()


async def test_a_callback_withdraws_the_call_queued_for_its_lateness(
    service: Service, farm: ConnectorFarm
) -> None:
    _, job_id = await waiting_job(service, farm)
    assert await queued_calls(service) == 1, "a call waits for the callback timeout"
    answer = await post_callback(service, job_id, result(), secret=farm.secrets["crm"])
    assert answer.status_code == 200, answer.text
    assert await queued_calls(service) == 0


async def test_a_staff_retry_after_a_failure_callback_calls_at_once(
    service: Service, farm: ConnectorFarm
) -> None:
    request_id, job_id = await waiting_job(service, farm)  # its callback timeout: an hour
    body = {"status": "failed", "message": "customer database is being migrated"}
    answer = await post_callback(service, job_id, body, secret=farm.secrets["crm"])
    assert answer.status_code == 200, answer.text
    farm.behaviours["crm"] = answers()

    retried = await service.client.post(
        f"/v1/admin/requests/{request_id}/jobs/{job_id}/retry",
        headers=service.staff("requests:write"),
    )
    assert retried.status_code == 202, retried.text
    await service.run_jobs()  # the clock has not moved: no timeout has passed
    await service.run_jobs()  # the package assembly

    assert len(farm.calls_to("crm")) == 2, "the retry called the connector"
    view = await detail(service, request_id)
    assert view["status"] == "completed"
    assert view["jobs"][0]["status"] == "succeeded"


async def test_a_staff_retry_takes_back_a_call_still_queued_for_later(
    service: Service, farm: ConnectorFarm
) -> None:
    """A failed job whose late-callback call is still queued (left by an older version):
    the retry's call is not kept out of the queue by it."""
    request_id, job_id = await waiting_job(service, farm)
    body = {"status": "failed", "message": "customer database is being migrated"}
    assert (await post_callback(service, job_id, body, secret=farm.secrets["crm"])).is_success
    async with service.runtime.session() as session:
        await jobs.enqueue(
            session,
            dispatch.CALL_KIND,
            {"connector_job_id": job_id},
            now=service.clock.now(),
            run_after=service.clock.now() + timedelta(hours=1),
            queueing_lock=f"call:{job_id}",
        )
    farm.behaviours["crm"] = answers()

    retried = await service.client.post(
        f"/v1/admin/requests/{request_id}/jobs/{job_id}/retry",
        headers=service.staff("requests:write"),
    )
    assert retried.status_code == 202, retried.text
    await service.run_jobs()
    assert len(farm.calls_to("crm")) == 2, "the retry called the connector at once"
    assert await queued_calls(service) == 0


@pytest.mark.parametrize(
    ("settings_overrides", "old_secret_status"),
    [
        pytest.param({**FAST_RETRIES, "secret_grace_hours": 24}, 200, id="grace"),
        pytest.param({**FAST_RETRIES, "secret_grace_hours": 0}, 401, id="no-grace"),
    ],
)
async def test_a_rotated_secret_signs_callbacks_only_during_its_grace(
    service: Service, farm: ConnectorFarm, problem, old_secret_status: int
) -> None:
    connector = await register(service, farm, "crm", silent())
    first_request, first_job = await waiting_job(service, farm, registered=True)
    second_request, second_job = await waiting_job(
        service,
        farm,
        registered=True,
        request={"type": "access", "subject": {"email": "bo@example.org"}},
    )
    old_secret = farm.secrets["crm"]
    rotated = await service.client.post(
        f"/v1/admin/connectors/{connector['id']}/rotate-secret",
        headers=service.staff("connectors:write"),
    )
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["signing_secret"]
    assert new.startswith("whsec_")
    assert new != old_secret

    with_old = await post_callback(service, first_job, result(), secret=old_secret)
    assert with_old.status_code == old_secret_status, with_old.text
    if old_secret_status == 200:
        await service.run_jobs()  # the package assembly completes it
        assert (await detail(service, first_request))["status"] == "completed"
        service.clock.advance(hours=25)
        expired = await post_callback(
            service, second_job, result(), secret=old_secret, msg_id="msg_2"
        )
        problem(expired, 401)
    else:
        problem(with_old, 401)
        assert (await detail(service, first_request))["jobs"][0]["status"] == "waiting_callback"

    with_new = await post_callback(service, second_job, result(), secret=new, msg_id="msg_3")
    assert with_new.status_code == 200, with_new.text
    await service.run_jobs()  # the package assembly completes it
    assert (await detail(service, second_request))["status"] == "completed"

"""Fan-out end to end: real connector servers on loopback, signed calls, outcomes, the
request's status following its jobs, and staff steering failed and manual jobs."""

from __future__ import annotations

import logging

import pytest
from starlette.responses import JSONResponse, Response

from tests.conftest import Service, bearer
from tests.connectors.conftest import detail, drive, register
from tests.fixtures.connectors import (
    Call,
    ConnectorFarm,
    answers,
    calls_back,
    flaky,
    refuses,
    result,
)


async def test_access_request_reaches_the_three_right_connectors(
    service: Service, farm: ConnectorFarm
) -> None:
    await register(service, farm, "shop", answers())
    # The callback comes well after the 202, so the 202 is recorded first (calls of one
    # moment start and finish together, and SQLite's writers take turns meanwhile).
    await register(service, farm, "crm", calls_back(result("not_found"), delay=0.3))
    await register(service, farm, "billing", flaky(failures=2))
    await register(service, farm, "newsletter", answers(), request_types=["erasure"])

    filed = await service.file_verified()
    await drive(service, farm)

    view = await detail(service, filed["id"])
    assert view["status"] == "completed", view["jobs"]
    assert sorted(c.system for c in farm.calls) == ["billing", "billing", "billing", "crm", "shop"]
    assert all(c.signature_valid for c in farm.calls)
    keys = {c.system: {x.idempotency_key for x in farm.calls_to(c.system)} for c in farm.calls}
    assert all(len(k) == 1 for k in keys.values()), "one idempotency key per job, kept on retry"
    jobs = {j["connector_name"]: j for j in view["jobs"]}
    assert set(jobs) == {"shop", "crm", "billing"}
    assert {name: j["id"] for name, j in jobs.items()} == {
        name: key.pop() for name, key in keys.items()
    }
    assert (jobs["billing"]["attempts"], jobs["billing"]["status"]) == (3, "succeeded")
    assert jobs["crm"]["outcome"] == "not_found"
    assert jobs["shop"]["data_files"] == 1
    body = farm.calls_to("shop")[0].body
    assert body["subject"] == {"email": "ana@example.org"}
    assert body["callback_url"] == f"http://dsr.test/v1/connector-callbacks/{body['job_id']}"
    assert (body["type"], body["request_id"]) == ("access", filed["id"])

    actions = [e["action"] for e in view["events"]]
    assert actions.count("connector_job.succeeded") == 3
    assert "connector_job.retry_scheduled" in actions
    assert "connector_job.waiting_callback" in actions
    assert actions[-1] == "request.completed"

    subject = await service.client.get(
        f"/v1/requests/{filed['id']}", headers=bearer(filed["status_token"])
    )
    outcomes = {o["system"]: o for o in subject.json()["outcomes"]}
    assert outcomes["crm"]["summary"] == "no data about you"
    assert "url" not in str(outcomes)
    assert "attempts" not in str(outcomes)


async def test_a_permanent_refusal_needs_staff_and_a_retry_completes(
    service: Service, farm: ConnectorFarm
) -> None:
    await register(service, farm, "shop", answers())
    await register(service, farm, "legacy", refuses(400, "unknown field customer_id"))
    filed = await service.file_verified()
    await drive(service, farm)

    view = await detail(service, filed["id"])
    assert view["status"] == "action_required"
    legacy = next(j for j in view["jobs"] if j["connector_name"] == "legacy")
    assert legacy["status"] == "failed"
    assert legacy["last_error"] == "HTTP 400: unknown field customer_id"
    assert len(farm.calls_to("legacy")) == 1, "a 4xx is not retried"

    farm.behaviours["legacy"] = answers(result("not_found"))
    retried = await service.client.post(
        f"/v1/admin/requests/{filed['id']}/jobs/{legacy['id']}/retry",
        headers=service.staff("requests:write"),
    )
    assert retried.status_code == 202, retried.text
    assert retried.json()["status"] == "in_progress"
    await drive(service, farm)
    view = await detail(service, filed["id"])
    assert view["status"] == "completed"
    assert {c.idempotency_key for c in farm.calls_to("legacy")} == {legacy["id"]}


async def test_a_connectors_own_words_reach_staff_but_not_the_audit_trail(
    service: Service, farm: ConnectorFarm, caplog: pytest.LogCaptureFixture
) -> None:
    """A connector's error body may name the person; the audit trail cannot be erased, so it
    keeps the service's account of each failure and the job's last_error the words. The log
    names each failed job by ids, with the service's account."""
    caplog.set_level(logging.INFO, logger="dsr.connectors")

    async def busy_then_refuses(f: ConnectorFarm, call: Call) -> Response:
        if len(f.calls_to("legacy")) == 1:
            return JSONResponse({"detail": "ana@example.org: row locked"}, status_code=503)
        return JSONResponse({"detail": "no customer ana@example.org"}, status_code=422)

    await register(service, farm, "legacy", busy_then_refuses)
    await register(
        service, farm, "crm", answers({"status": "failed", "message": "crm lost ana@example.org"})
    )
    filed = await service.file_verified()
    await drive(service, farm)

    view = await detail(service, filed["id"])
    jobs = {j["connector_name"]: j for j in view["jobs"]}
    assert jobs["legacy"]["last_error"] == "HTTP 422: no customer ana@example.org"
    assert jobs["crm"]["last_error"] == (
        "the connector reported a failure: crm lost ana@example.org"
    )
    details = {
        (e["action"], e["details"].get("connector_id"), e["details"].get("error"))
        for e in view["events"]
        if e["action"] in ("connector_job.failed", "connector_job.retry_scheduled")
    }
    ids = {j["connector_name"]: j["connector_id"] for j in view["jobs"]}
    assert details == {
        ("connector_job.retry_scheduled", ids["legacy"], "HTTP 503"),
        ("connector_job.failed", ids["legacy"], "HTTP 422"),
        ("connector_job.failed", ids["crm"], "the connector reported a failure"),
    }
    assert "ana@example.org" not in str(view["events"])
    failures = [r for r in caplog.records if r.getMessage() == "connectors.job_failed"]
    assert sorted((r.connector_id, r.error) for r in failures) == sorted(  # type: ignore[attr-defined]
        [(ids["legacy"], "HTTP 422"), (ids["crm"], "the connector reported a failure")]
    )
    assert {r.request_id for r in failures} == {filed["id"]}  # type: ignore[attr-defined]
    assert "ana@example.org" not in caplog.text + str([r.__dict__ for r in caplog.records])


async def test_retry_of_a_job_that_did_not_fail_is_409(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    await register(service, farm, "shop", answers())
    filed = await service.file_verified()
    await drive(service, farm)
    job = (await detail(service, filed["id"]))["jobs"][0]
    answer = await service.client.post(
        f"/v1/admin/requests/{filed['id']}/jobs/{job['id']}/retry",
        headers=service.staff("requests:write"),
    )
    problem(answer, 409)
    other = await service.client.post(
        f"/v1/admin/requests/{filed['id']}/jobs/cjob_nope/retry",
        headers=service.staff("requests:write"),
    )
    problem(other, 404)


@pytest.mark.parametrize(
    "settings_overrides",
    [{"retry_base_seconds": 0.01, "retry_cap_seconds": 0.05, "staff_email": "dpo@example.org"}],
)
async def test_manual_connector_is_a_staff_task(service: Service, farm: ConnectorFarm) -> None:
    answer = await service.client.post(
        "/v1/admin/connectors",
        json={"name": "paper archive", "mode": "manual", "request_types": ["erasure"]},
        headers=service.staff("connectors:write"),
    )
    assert answer.status_code == 201, answer.text
    filed = await service.file_verified(
        {"type": "erasure", "subject": {"email": "ana@example.org"}}
    )
    await drive(service, farm)
    view = await detail(service, filed["id"])
    assert view["status"] == "action_required"
    job = view["jobs"][0]
    assert job["status"] == "waiting_for_staff"
    task_mail = service.mails("dpo@example.org")
    assert task_mail
    assert "paper archive" in task_mail[0]["Subject"]
    assert "ana@example.org" not in task_mail[0].get_body().get_content()

    done = await service.client.post(
        f"/v1/admin/requests/{filed['id']}/jobs/{job['id']}/complete",
        json={
            "outcome": "retained",
            "retained": [
                {
                    "category": "invoices",
                    "reason": "tax law",
                    "legal_basis": "French Commercial Code L.123-22",
                    "until": "2035-05-01",
                }
            ],
        },
        headers=service.staff("requests:write", sub="bob"),
    )
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed"
    assert done.json()["jobs"][0]["retained"][0]["until"] == "2035-05-01"
    events = [e for e in done.json()["events"] if e["action"] == "connector_job.succeeded"]
    assert events[0]["actor"] == "staff:bob"


@pytest.mark.parametrize(
    "settings_overrides",
    [{"retry_base_seconds": 0.01, "retry_cap_seconds": 0.05, "staff_email": "dpo@example.org"}],
)
async def test_a_retried_manual_task_is_a_staff_task_again(
    service: Service, farm: ConnectorFarm
) -> None:
    answer = await service.client.post(
        "/v1/admin/connectors",
        json={"name": "paper archive", "mode": "manual", "request_types": ["erasure"]},
        headers=service.staff("connectors:write"),
    )
    assert answer.status_code == 201, answer.text
    filed = await service.file_verified(
        {"type": "erasure", "subject": {"email": "ana@example.org"}}
    )
    await drive(service, farm)
    job_id = (await detail(service, filed["id"]))["jobs"][0]["id"]
    url = f"/v1/admin/requests/{filed['id']}/jobs/{job_id}"
    staff = service.staff("requests:write")
    failed = await service.client.post(
        f"{url}/complete", json={"status": "failed", "message": "archive closed"}, headers=staff
    )
    assert failed.json()["jobs"][0]["status"] == "failed", failed.text

    retried = await service.client.post(f"{url}/retry", headers=staff)
    assert retried.status_code == 202, retried.text
    assert retried.json()["jobs"][0]["status"] == "waiting_for_staff"
    await service.run_jobs()
    assert len(service.mails("dpo@example.org")) == 2, "the task is e-mailed again"


async def test_wrong_outcome_for_the_type_fails_the_job_with_the_reason(
    service: Service, farm: ConnectorFarm
) -> None:
    await register(service, farm, "shop", answers(result("erased")))
    filed = await service.file_verified()
    await drive(service, farm)
    job = (await detail(service, filed["id"]))["jobs"][0]
    assert job["status"] == "failed"
    assert "does not answer a request of type access" in job["last_error"]


async def test_connectors_that_do_not_know_the_identity_are_not_called(
    service: Service, farm: ConnectorFarm
) -> None:
    await register(service, farm, "loyalty", answers(), identity_types=["customer_id"])
    await register(service, farm, "shop", answers(), identity_types=["email", "customer_id"])
    filed = await service.file_verified()
    await drive(service, farm)
    assert [c.system for c in farm.calls] == ["shop"]
    with_id = await service.file_verified(
        {"type": "access", "subject": {"email": "bo@example.org", "customer_id": "C-9"}}
    )
    await drive(service, farm)
    assert sorted(c.system for c in farm.calls[1:]) == ["loyalty", "shop"]
    assert farm.calls_to("loyalty")[0].body["subject"] == {"customer_id": "C-9"}
    assert (await detail(service, with_id["id"]))["status"] == "completed"
    assert (await detail(service, filed["id"]))["status"] == "completed"


async def test_request_no_connector_handles_completes_at_once(
    service: Service, farm: ConnectorFarm
) -> None:
    await register(service, farm, "shop", answers(), request_types=["erasure"])
    filed = await service.file_verified()
    await drive(service, farm)
    view = await detail(service, filed["id"])
    assert (view["status"], view["jobs"], farm.calls) == ("completed", [], [])


async def test_completing_a_manual_task_of_an_access_request_resumes_it_then_answers(
    service: Service, farm: ConnectorFarm
) -> None:
    created = await service.client.post(
        "/v1/admin/connectors",
        json={"name": "archive", "mode": "manual", "request_types": ["access"]},
        headers=service.staff("connectors:write"),
    )
    assert created.status_code == 201, created.text
    filed = await service.file_verified()
    await drive(service, farm)
    job = (await detail(service, filed["id"]))["jobs"][0]
    done = await service.client.post(
        f"/v1/admin/requests/{filed['id']}/jobs/{job['id']}/complete",
        json={"outcome": "found", "data": {"letters": [{"n": 1}]}},
        headers=service.staff("requests:write"),
    )
    assert done.json()["status"] == "in_progress"  # the package is being assembled
    await drive(service, farm)
    view = await detail(service, filed["id"])
    assert view["status"] == "completed"
    assert view["export"]["ready"] is True


async def test_the_fan_out_queues_one_call_per_connector_once(
    service: Service, farm: ConnectorFarm
) -> None:
    """The fan-out writes its connector jobs and their calls as rows: each connector job
    points at a queued call holding its queueing lock and the connector's attempts, each
    has its audit event, and running the fan-out again adds nothing."""
    from sqlalchemy import text

    from app.connectors import dispatch
    from app.requests import service as requests

    await register(service, farm, "shop", answers(), max_attempts=5)
    await register(service, farm, "crm", answers())
    filed = await service.file_verified()
    rt = service.runtime
    for _ in range(2):  # the second time, a re-run of the fan-out: nothing more
        async with rt.session() as session:
            req = await requests.lock(session, filed["id"])
            await dispatch._create_jobs(session, rt, req, now=service.clock.now())

    async with rt.read_sessions() as session:
        rows = (
            await session.exec(  # type: ignore[call-overload]
                text(
                    "SELECT cj.id, cj.status, cj.attempts, c.name, j.kind, j.status AS js,"
                    " j.queueing_lock, j.max_attempts, j.payload, j.request_id"
                    " FROM connector_job cj JOIN connector c ON c.id = cj.connector_id"
                    " JOIN job j ON j.id = cj.engine_job_id ORDER BY c.name"
                )
            )
        ).all()
    assert [(r.name, r.status, r.attempts, r.js, r.max_attempts) for r in rows] == [
        ("crm", "queued", 0, "queued", 8),
        ("shop", "queued", 0, "queued", 5),
    ]
    for r in rows:
        assert r.kind == dispatch.CALL_KIND
        assert r.queueing_lock == f"call:{r.id}"
        assert r.request_id == filed["id"]
        assert r.id in r.payload
    view = await detail(service, filed["id"])
    queued = [e for e in view["events"] if e["action"] == "connector_job.queued"]
    assert sorted(e["details"]["job_id"] for e in queued) == sorted(r.id for r in rows)

    await drive(service, farm)
    assert (await detail(service, filed["id"]))["status"] == "completed"
    assert sorted(c.system for c in farm.calls) == ["crm", "shop"]

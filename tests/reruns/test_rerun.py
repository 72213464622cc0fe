"""Staff re-run a completed request: the systems that handle it now are asked again, the
request completes again with new jobs (the old ones kept as history) and a new package."""

from __future__ import annotations

import json
import zipfile
from io import BytesIO
from typing import Any

from tests.conftest import Service, bearer
from tests.connectors.conftest import detail, drive, register
from tests.fixtures.connectors import ConnectorFarm, answers, result, silent


async def _rerun(
    service: Service, request_id: str, body: dict[str, Any] | None = None, *scopes: str
) -> Any:
    return await service.client.post(
        f"/v1/admin/requests/{request_id}/rerun",
        json=body,
        headers=service.staff(*(scopes or ("requests:read", "requests:write"))),
    )


async def _download(service: Service, filed: dict[str, Any]) -> Any:
    return await service.client.get(
        f"/v1/requests/{filed['id']}/export", headers=bearer(filed["status_token"])
    )


async def test_a_rerun_asks_the_systems_again_and_completes_with_a_new_package(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    await register(service, farm, "shop", answers(result(data={"orders": [{"id": "old"}]})))
    filed = await service.file_verified()
    await drive(service, farm)
    before = await detail(service, filed["id"])
    assert before["status"] == "completed"
    old_jobs = [job["id"] for job in before["jobs"]]

    # The shop's data was wrong, and a system was added since.
    farm.behaviours["shop"] = answers(result(data={"orders": [{"id": "new"}]}))
    await register(service, farm, "crm", answers(result(data={"notes": [{"n": 1}]})))
    service.clock.advance(days=1)
    answer = await _rerun(service, filed["id"], {"reason": "the shop sent stale data"})
    assert answer.status_code == 200, answer.text
    view = answer.json()
    assert view["status"] == "in_progress"
    assert view["closed_at"] is None
    assert view["due_date"] == before["due_date"]
    assert view["export"] is None, "the previous answer is withdrawn"
    assert not list((service.settings.data_dir / "exports").glob("*.enc"))
    assert view["jobs"] == []
    rerun_event = [e for e in view["events"] if e["action"] == "request.rerun"]
    assert rerun_event[0]["details"]["reason_given"] is True
    assert "stale data" not in json.dumps(rerun_event), "free text stays out of the chain"
    assert rerun_event[0]["actor"] == "staff:alice"
    assert not list(service.settings.results_dir.glob("*.bin")), "the old records went"
    problem(await _download(service, filed), 404)

    await drive(service, farm)
    after = await detail(service, filed["id"])
    assert after["status"] == "completed"
    assert after["due_date"] == before["due_date"]
    assert sorted(job["connector_name"] for job in after["jobs"]) == ["crm", "shop"]
    assert not set(old_jobs) & {job["id"] for job in after["jobs"]}
    assert all(job["status"] == "succeeded" for job in after["jobs"])
    assert after["export"]["sha256"] != before["export"]["sha256"]
    package = zipfile.ZipFile(BytesIO((await _download(service, filed)).content))
    assert json.loads(package.read("data/shop.json")) == {"orders": [{"id": "new"}]}
    assert json.loads(package.read("data/crm.json")) == {"notes": [{"n": 1}]}
    assert len(list((service.settings.data_dir / "exports").glob("*.enc"))) == 1
    completions = [m for m in service.mails("ana@example.org") if "completed" in m["Subject"]]
    assert len(completions) == 2

    runs = await service.client.get(
        f"/v1/admin/requests/{filed['id']}/runs", headers=service.staff("requests:read")
    )
    assert runs.status_code == 200, runs.text
    history = runs.json()
    assert history["current_run"] == 2
    assert [run["run"] for run in history["runs"]] == [1]
    assert history["runs"][0]["reason"] == "the shop sent stale data"
    assert history["runs"][0]["completed_at"] == before["closed_at"]
    assert [job["id"] for job in history["runs"][0]["jobs"]] == old_jobs
    assert history["runs"][0]["jobs"][0]["outcome"] == "found"


async def test_an_erasure_request_can_be_rerun_without_a_reason(
    service: Service, farm: ConnectorFarm
) -> None:
    await register(service, farm, "crm", answers(result("erased")))
    filed = await service.file_verified(
        {"type": "erasure", "subject": {"email": "ana@example.org"}}
    )
    await drive(service, farm)
    answer = await _rerun(service, filed["id"])
    assert answer.status_code == 200, answer.text
    await drive(service, farm)
    view = await detail(service, filed["id"])
    assert view["status"] == "completed"
    assert view["export"] is None
    assert len(farm.calls_to("crm")) == 2
    runs = await service.client.get(
        f"/v1/admin/requests/{filed['id']}/runs", headers=service.staff("requests:read")
    )
    assert runs.json()["current_run"] == 2
    assert runs.json()["runs"][0]["reason"] is None


async def test_only_a_completed_request_is_rerun(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    await register(service, farm, "slow", silent())
    waiting = await service.file_verified()
    await service.run_jobs()
    refused = problem(await _rerun(service, waiting["id"]), 409)
    assert refused["current_status"] == "in_progress"
    assert (await detail(service, waiting["id"]))["status"] == "in_progress"

    unverified = await service.file({"type": "access", "subject": {"email": "bo@example.org"}})
    problem(await _rerun(service, unverified["id"]), 409)
    problem(await _rerun(service, "req_unknown"), 404)
    problem(await _rerun(service, waiting["id"], None, "requests:read"), 403)
    problem(await service.client.post(f"/v1/admin/requests/{waiting['id']}/rerun"), 401)
    no_runs = await service.client.get(f"/v1/admin/requests/{waiting['id']}/runs")
    problem(no_runs, 401)

    unknown_field = problem(await _rerun(service, waiting["id"], {"why": "x"}), 422)
    assert "why" in json.dumps(unknown_field)
    too_long = problem(await _rerun(service, waiting["id"], {"reason": "x" * 2001}), 422)
    assert "reason" in json.dumps(too_long)


async def test_a_callback_for_a_job_a_rerun_superseded_is_a_signed_409(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    """The contract refuses callbacks for finished jobs with 409 and changes nothing; a job
    of a superseded run is finished too (not unknown: 404 would have its connector retry).
    A repeated webhook-id is still answered as the first time."""
    from tests.connectors.test_callbacks import post_callback
    from tests.fixtures.connectors import sign

    await register(service, farm, "shop", silent())  # answers 202: the result comes by callback
    filed = await service.file_verified()
    await drive(service, farm)
    [old] = (await detail(service, filed["id"]))["jobs"]
    secret = farm.secrets["shop"]
    first = await post_callback(service, old["id"], result("not_found"), secret=secret, msg_id="m1")
    assert first.status_code == 200, first.text
    await drive(service, farm)
    assert (await detail(service, filed["id"]))["status"] == "completed"
    assert (await _rerun(service, filed["id"])).status_code == 200
    await drive(service, farm)
    after = await detail(service, filed["id"])
    assert [j["id"] for j in after["jobs"]] != [old["id"]]

    late = await post_callback(service, old["id"], result("found"), secret=secret, msg_id="m2")
    refused = problem(late, 409)
    assert "superseded" in refused["detail"]
    again = await post_callback(service, old["id"], result("not_found"), secret=secret, msg_id="m1")
    assert again.status_code == 200, again.text
    assert again.json() == {**first.json(), "duplicate": True}
    raw = b'{"orders": []}\n'
    upload = await service.client.put(
        f"/v1/connector-callbacks/{old['id']}/data",
        content=raw,
        headers=sign(secret, raw, msg_id="m3") | {"content-type": "application/x-ndjson"},
    )
    problem(upload, 409)
    # Unsigned, or signed with another secret: 401 as for any job; never a job: 404.
    other = "whsec_" + "A" * 43 + "="
    problem(await post_callback(service, old["id"], result(), secret=other), 401)
    problem(await post_callback(service, "cjob_" + "0" * 26, result(), secret=secret), 404)
    problem(await post_callback(service, "cjob_%", result(), secret=secret), 404)

    assert await detail(service, filed["id"]) == after, "nothing changed"

"""Staff re-issue an answer package while its connector results are held (within
``DSR_EXPORT_RESULTS_GRACE_DAYS`` of its expiry), and only then."""

from __future__ import annotations

import hashlib
import json
import zipfile
from io import BytesIO
from typing import Any

import pytest

from app.exports import service as exports
from tests.conftest import Service, bearer
from tests.connectors.conftest import detail, drive, register
from tests.fixtures.connectors import ConnectorFarm, answers, result, silent

FAST = {"retry_base_seconds": 0.01, "retry_cap_seconds": 0.05}
SHOP = {"orders": [{"id": "A-1", "total": 42.5}]}


async def _answered(service: Service, farm: ConnectorFarm) -> dict[str, Any]:
    await register(service, farm, "shop", answers(result(data=SHOP)))
    filed = await service.file_verified()
    await drive(service, farm)
    return filed


async def _status(service: Service, filed: dict[str, Any]) -> dict[str, Any]:
    answer = await service.client.get(
        f"/v1/requests/{filed['id']}", headers=bearer(filed["status_token"])
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


async def _download(service: Service, filed: dict[str, Any]) -> Any:
    return await service.client.get(
        f"/v1/requests/{filed['id']}/export", headers=bearer(filed["status_token"])
    )


async def _rebuild(service: Service, request_id: str, *scopes: str) -> Any:
    return await service.client.post(
        f"/v1/admin/requests/{request_id}/export/rebuild",
        headers=service.staff(*(scopes or ("requests:read", "requests:write"))),
    )


def _results(service: Service) -> list[Any]:
    return list(service.settings.results_dir.glob("*.bin"))


@pytest.mark.parametrize("settings_overrides", [{**FAST, "export_results_grace_days": 7}])
async def test_within_the_grace_period_staff_reissue_an_expired_package(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    filed = await _answered(service, farm)
    first = (await _status(service, filed))["export"]
    service.clock.advance(days=service.settings.export_ttl_days, seconds=1)
    await service.run_periodic()
    gone = problem(await _download(service, filed), 410)
    assert "issue it again" in gone["detail"]
    assert _results(service), "results held during the grace period"

    answer = await _rebuild(service, filed["id"])
    assert answer.status_code == 200, answer.text
    view = answer.json()
    assert view["status"] == "completed"
    assert view["export"]["ready"] is False
    assert "export.rebuild_requested" in [e["action"] for e in view["events"]]
    problem(await _download(service, filed), 404)  # being built: not ready, not gone
    rerun = await service.client.post(
        f"/v1/admin/requests/{filed['id']}/rerun", headers=service.staff("requests:write")
    )
    assert "being rebuilt" in problem(rerun, 409)["detail"]

    await service.run_jobs()
    status = await _status(service, filed)
    again = status["export"]
    assert status["status"] == "completed"
    assert again["ready"] is True
    assert again["sha256"] != first["sha256"]
    assert again["expires_at"] > first["expires_at"]
    downloaded = await _download(service, filed)  # the same status token opens it
    assert downloaded.status_code == 200, downloaded.text
    assert hashlib.sha256(downloaded.content).hexdigest() == again["sha256"]
    package = zipfile.ZipFile(BytesIO(downloaded.content))
    assert json.loads(package.read("data/shop.json")) == SHOP
    assert "reissued_at" in json.loads(package.read("manifest.json"))["request"]
    assert len(list((service.settings.data_dir / "exports").glob("*.enc"))) == 1
    assert len(farm.calls_to("shop")) == 1, "a re-issue asks no system again"
    events = [e["action"] for e in (await detail(service, filed["id"]))["events"]]
    assert events.count("request.completed") == 1
    assert events.count("export.ready") == 2
    mails = [m for m in service.mails("ana@example.org") if "again" in m["Subject"]]
    assert len(mails) == 1
    assert f"http://dsr.test/v1/requests/{filed['id']}" in mails[0].get_body().get_content()

    # The new package expires in its turn; the grace period after it ends, and the
    # results go: only a re-run can answer again.
    service.clock.advance(days=service.settings.export_ttl_days + 7, seconds=1)
    await service.run_periodic()
    assert not _results(service)
    refused = problem(await _rebuild(service, filed["id"]), 409)
    assert "/rerun" in refused["detail"]
    assert refused["results_deleted_at"]


async def test_without_a_grace_period_the_results_go_with_the_package(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    filed = await _answered(service, farm)
    first = (await _status(service, filed))["export"]
    # Before it expires, a package can be re-issued too (a subject lost it).
    service.clock.advance(days=3)
    assert (await _rebuild(service, filed["id"])).status_code == 200
    await service.run_jobs()
    again = (await _status(service, filed))["export"]
    assert again["ready"] is True
    assert again["sha256"] != first["sha256"]
    assert again["expires_at"] > first["expires_at"]
    assert (await _download(service, filed)).status_code == 200
    service.clock.advance(days=service.settings.export_ttl_days, seconds=1)
    await service.run_periodic()
    assert not _results(service)
    assert "issue it again" not in problem(await _download(service, filed), 410)["detail"]
    refused = problem(await _rebuild(service, filed["id"]), 409)
    assert "re-run" in refused["detail"]
    assert (await _status(service, filed))["export"]["ready"] is False


async def test_a_rebuild_needs_a_completed_request_with_a_package(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    await register(service, farm, "slow", silent())
    waiting = await service.file_verified()
    await service.run_jobs()
    wrong = problem(await _rebuild(service, waiting["id"]), 409)
    assert wrong["current_status"] == "in_progress"

    farm.behaviours["slow"] = answers(result("erased"))
    erasure = await service.file_verified(
        {"type": "erasure", "subject": {"email": "bo@example.org"}}
    )
    await drive(service, farm)
    assert (await detail(service, erasure["id"]))["status"] == "completed"
    assert "no package" in problem(await _rebuild(service, erasure["id"]), 409)["detail"]

    problem(await _rebuild(service, "req_unknown"), 404)
    problem(await _rebuild(service, waiting["id"], "requests:read"), 403)
    unauthenticated = await service.client.post(
        f"/v1/admin/requests/{waiting['id']}/export/rebuild"
    )
    problem(unauthenticated, 401)


@pytest.mark.parametrize("settings_overrides", [{**FAST, "export_results_grace_days": 7}])
async def test_a_rebuild_whose_results_went_meanwhile_is_abandoned(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    filed = await _answered(service, farm)
    service.clock.advance(days=service.settings.export_ttl_days, seconds=1)
    await service.run_periodic()
    assert (await _rebuild(service, filed["id"])).status_code == 200
    # The grace period's sweep won the race with the queued assembly.
    async with service.runtime.session() as session:
        package = await exports.package_for(session, filed["id"])
        assert package is not None
        package.results_deleted_at = service.clock.now()
        session.add(package)
    await service.run_jobs()
    view = await detail(service, filed["id"])
    assert view["export"]["ready"] is False
    assert "export.rebuild_abandoned" in [e["action"] for e in view["events"]]
    assert view["events"][-1]["action"] != "export.ready"
    problem(await _download(service, filed), 410)
    assert "/rerun" in problem(await _rebuild(service, filed["id"]), 409)["detail"]


@pytest.mark.parametrize("settings_overrides", [{**FAST, "export_results_grace_days": 7}])
async def test_a_rebuild_that_failed_for_good_still_expires_at_its_end_date(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    """The old package's file must not outlive its retention because its rebuild failed."""
    from sqlalchemy import update

    from app.jobs.models import Job, JobStatus

    filed = await _answered(service, farm)
    assert (await _rebuild(service, filed["id"])).status_code == 200
    async with service.runtime.session() as session:  # the assembly failed for good
        await session.exec(
            update(Job)
            .where(Job.kind == exports.ASSEMBLE_KIND, Job.request_id == filed["id"])
            .values(status=JobStatus.failed)
        )
    packages = service.settings.data_dir / "exports"
    assert len(list(packages.glob("*.enc"))) == 1
    service.clock.advance(days=service.settings.export_ttl_days, seconds=1)
    await service.run_periodic()

    assert not list(packages.glob("*.enc")), "the file went at its end date"
    problem(await _download(service, filed), 410)

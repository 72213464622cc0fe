from __future__ import annotations

from tests.conftest import Service, bearer


async def test_file_verify_complete(service: Service) -> None:
    filed = await service.file()
    assert filed["status"] == "pending_verification"
    code = await service.last_code()
    answer = await service.client.post(
        f"/v1/requests/{filed['id']}/verification",
        json={"code": code},
        headers=bearer(filed["status_token"]),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "in_progress"
    await service.run_jobs()
    view = await service.client.get(
        f"/v1/requests/{filed['id']}", headers=bearer(filed["status_token"])
    )
    assert view.json()["status"] == "completed"

"""Identity documents: checked by content, size-limited, stored encrypted, deleted on decision."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.conftest import Service, bearer

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64 + b"IDENTITY-CARD-PIXELS"
PDF = b"%PDF-1.7\n" + b"passport scan " * 10
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64

pytestmark = pytest.mark.parametrize(
    "settings_overrides", [{"document_types": ["erasure"], "document_max_bytes": 4096}]
)


async def _file_erasure(service: Service) -> dict:
    filed = await service.file({"type": "erasure", "subject": {"email": "ana@example.org"}})
    assert filed["verification"]["method"] == "document"
    assert filed["status"] == "pending_verification"
    return filed


async def _upload(
    service: Service, filed: dict, content: bytes, name: str = "id.png", declared: str = "image/png"
):  # type: ignore[no-untyped-def]
    return await service.client.post(
        f"/v1/requests/{filed['id']}/identity-document",
        files={"file": (name, content, declared)},
        headers=bearer(filed["status_token"]),
    )


def _stored_files(service: Service) -> list[bytes]:
    folder = service.settings.documents_dir
    return [p.read_bytes() for p in folder.glob("*")] if folder.exists() else []


async def test_no_code_is_sent_when_a_document_is_asked(service: Service) -> None:
    await _file_erasure(service)
    await service.run_jobs()
    assert service.mails("ana@example.org") == []


@pytest.mark.parametrize("content", [PNG, PDF, JPEG])
async def test_upload_then_staff_approve_deletes_it(service: Service, content: bytes) -> None:
    filed = await _file_erasure(service)
    answer = await _upload(service, filed, content, declared="application/octet-stream")
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "pending_review"
    stored = _stored_files(service)
    assert len(stored) == 1
    assert content not in stored[0]  # encrypted at rest
    detail = await service.client.get(f"/v1/admin/requests/{filed['id']}", headers=service.staff())
    document = detail.json()["verification"]["document"]
    assert document["size_bytes"] == len(content)
    approved = await service.client.post(
        f"/v1/admin/requests/{filed['id']}/identity/approve", headers=service.staff()
    )
    assert approved.status_code == 200, approved.text
    view = approved.json()
    assert view["status"] == "in_progress"
    assert view["verification"]["verified"] is True
    assert view["verification"]["verified_how"] == "document"
    assert view["verification"]["verified_by"] == "staff:alice"
    assert view["verification"]["document"] is None
    assert _stored_files(service) == []
    async with service.runtime.session() as session:
        rows = (await session.exec(text("SELECT count(*) FROM identity_document"))).one()
    assert rows[0] == 0
    actions = [e["action"] for e in view["events"]]
    assert "identity.document_deleted" in actions


async def test_staff_identity_reject_rejects_and_deletes(service: Service) -> None:
    filed = await _file_erasure(service)
    assert (await _upload(service, filed, PDF)).status_code == 202
    rejected = await service.client.post(
        f"/v1/admin/requests/{filed['id']}/identity/reject",
        headers=service.staff(),
        json={"note": "blurred"},
    )
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["status"] == "rejected"
    assert rejected.json()["rejection_reason"] == "identity_not_verified"
    assert _stored_files(service) == []


@pytest.mark.parametrize(
    ("content", "name", "declared"),
    [
        (b"GIF89a" + b"\x00" * 20, "id.gif", "image/gif"),
        (b"<html>not an id</html>", "id.png", "image/png"),  # lies about its type
        (b"MZ\x90\x00 executable", "id.pdf", "application/pdf"),
    ],
)
async def test_other_content_is_415(service: Service, problem, content, name, declared) -> None:
    filed = await _file_erasure(service)
    found = problem(await _upload(service, filed, content, name, declared), 415)
    assert ["body", "file"] in [e["loc"] for e in found["errors"]]
    assert _stored_files(service) == []


async def test_too_large_is_413_and_empty_is_422(service: Service, problem) -> None:
    filed = await _file_erasure(service)
    problem(await _upload(service, filed, PNG + b"\x00" * 5000), 413)
    problem(await _upload(service, filed, b""), 422)
    missing = await service.client.post(
        f"/v1/requests/{filed['id']}/identity-document", headers=bearer(filed["status_token"])
    )
    found = problem(missing, 422)
    assert ["body", "file"] in [e["loc"] for e in found["errors"]]


async def test_a_code_request_takes_no_document(service: Service, problem) -> None:
    filed = await service.file()  # access: e-mail code
    problem(await _upload(service, filed, PNG), 409)


async def test_upload_with_a_wrong_token_is_404(service: Service, problem) -> None:
    filed = await _file_erasure(service)
    problem(await _upload(service, {**filed, "status_token": "nope"}, PNG), 404)

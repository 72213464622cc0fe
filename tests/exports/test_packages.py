"""Answer packages end to end: built from real connector answers (sync, callback with a
streamed upload), signed, encrypted at rest, downloaded whole or by range, expired."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from starlette.responses import Response

from app.exports.verify import verify_package
from tests.conftest import Service, bearer
from tests.connectors.conftest import detail, drive, register
from tests.fixtures.connectors import (
    Behaviour,
    Call,
    ConnectorFarm,
    answers,
    calls_back,
    result,
    silent,
)

SHOP_DATA = {
    "identity": [{"email": "ana@example.org", "name": "Ána Ruíz <script>alert(1)</script>"}],
    "orders": [
        {"id": "A-1", "total": 42.5, "address": {"city": "Paris"}, "items": [{"sku": "T-1"}]},
        {"id": "A-2", "note": '=HYPERLINK("http://evil")', "items": []},
    ],
}
PROCESSING = {
    "purposes": ["order handling"],
    "legal_basis": "contract",
    "retention": "3 years after the last order",
    "recipients": ["carrier"],
    "source": "collected from the subject",
}


def ndjson(count: int) -> bytes:
    lines = (
        json.dumps({"category": "tickets", "record": {"n": n, "text": f"ticket {n} é"}})
        for n in range(count)
    )
    return ("\n".join(lines) + "\n").encode()


async def _answered_access(
    service: Service, farm: ConnectorFarm, *, language: str = "en", upload_lines: int = 2000
) -> dict[str, Any]:
    await register(service, farm, "shop", answers(result(data=SHOP_DATA)), processing=PROCESSING)
    await register(
        service,
        farm,
        "support desk",
        calls_back(result("found", data={}), upload=ndjson(upload_lines)),
        processing={"purposes": ["customer care"], "legal_basis": "legitimate interest"},
    )
    await register(service, farm, "billing", answers(result("not_found")))
    filed = await service.file_verified(
        {"type": "access", "subject": {"email": "ana@example.org"}, "language": language}
    )
    await drive(service, farm)
    return filed


async def _download(service: Service, filed: dict[str, Any], **headers: str) -> Any:
    return await service.client.get(
        f"/v1/requests/{filed['id']}/export", headers={**bearer(filed["status_token"]), **headers}
    )


async def _status(service: Service, filed: dict[str, Any]) -> dict[str, Any]:
    answer = await service.client.get(
        f"/v1/requests/{filed['id']}", headers=bearer(filed["status_token"])
    )
    return answer.json()


async def _jwks(service: Service) -> dict[str, Any]:
    return (await service.client.get("/v1/export-keys")).json()


async def test_an_access_package_is_whole_signed_and_matches_its_checksum(
    service: Service, farm: ConnectorFarm, tmp_path: Path
) -> None:
    filed = await _answered_access(service, farm)
    status = await _status(service, filed)
    assert status["status"] == "completed"
    export = status["export"]
    assert export["ready"] is True

    answer = await _download(service, filed)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/zip"
    assert answer.headers["content-disposition"] == f'attachment; filename="dsr-{filed["id"]}.zip"'
    assert int(answer.headers["content-length"]) == export["size_bytes"] == len(answer.content)
    assert hashlib.sha256(answer.content).hexdigest() == export["sha256"]

    package = tmp_path / "package.zip"
    package.write_bytes(answer.content)
    jwks = await _jwks(service)
    verdict = verify_package(package, key=jwks["keys"][0])
    assert verdict.ok, verdict.problems
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("manifest.json"))
        shop = json.loads(archive.read("data/shop.json"))
        desk = json.loads(archive.read("data/support-desk.json"))
        orders_csv = archive.read("data/shop/orders.csv").decode("utf-8-sig")
        html = archive.read("report.html").decode()
    assert names == {
        "data/shop.json",
        "data/shop/identity.csv",
        "data/shop/orders.csv",
        "data/support-desk.json",
        "data/support-desk/tickets.csv",
        "report.html",
        "manifest.json",
        "manifest.jws",
    }
    assert shop == SHOP_DATA
    assert len(desk["tickets"]) == 2000
    assert desk["tickets"][7] == {"n": 7, "text": "ticket 7 é"}
    assert "\\u" not in archive_text(package, "data/shop.json"), "UTF-8, not \\u-escaped"
    assert manifest["request"]["id"] == filed["id"]
    assert {s["name"]: s["outcome"] for s in manifest["systems"]} == {
        "billing": "not_found",
        "shop": "found",
        "support desk": "found",
    }
    assert {f["path"] for f in manifest["files"]} == names - {"manifest.json", "manifest.jws"}

    header, *rows = list(csv.reader(io.StringIO(orders_csv)))
    assert header == ["id", "total", "address.city", "items.0.sku", "note", "items"]
    assert rows[0] == ["A-1", "42.5", "Paris", "T-1", "", ""]
    assert rows[1] == ["A-2", "", "", "", '\'=HYPERLINK("http://evil")', "[]"]
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    for words in ("order handling", "contract", "carrier", "3 years after the last order"):
        assert words in html
    assert "<script" not in html.replace("&lt;script", "")
    assert "http" not in html.split("<body>")[0], "no external assets"


def archive_text(package: Path, name: str) -> str:
    with zipfile.ZipFile(package) as archive:
        return archive.read(name).decode()


@pytest.mark.parametrize(
    "tamper",
    ["data/shop.json", "manifest.json", "report.html"],
)
async def test_changing_one_byte_breaks_the_verification(
    service: Service, farm: ConnectorFarm, tmp_path: Path, tamper: str
) -> None:
    filed = await _answered_access(service, farm, upload_lines=10)
    original = (await _download(service, filed)).content
    changed = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(original)) as source, zipfile.ZipFile(changed, "w") as copy:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == tamper:
                data = data.replace(b"a", b"b", 1)
            copy.writestr(item, data)
    package = tmp_path / "changed.zip"
    package.write_bytes(changed.getvalue())
    verdict = verify_package(package, key=(await _jwks(service))["keys"][0])
    assert not verdict.ok
    expected = (
        "manifest.jws: the signature does not verify" if tamper == "manifest.json" else tamper
    )
    assert verdict.problems[0].startswith(expected)


async def test_french_request_gets_a_french_report(service: Service, farm: ConnectorFarm) -> None:
    filed = await _answered_access(service, farm, language="fr", upload_lines=1)
    package = zipfile.ZipFile(io.BytesIO((await _download(service, filed)).content))
    html = package.read("report.html").decode()
    assert '<html lang="fr">' in html
    assert "Finalités" in html
    assert "Base légale" in html
    assert "autorité de contrôle" in html


async def test_ranges_resume_a_download(service: Service, farm: ConnectorFarm, problem) -> None:
    filed = await _answered_access(service, farm, upload_lines=50)
    whole = (await _download(service, filed)).content
    part = await _download(service, filed, range="bytes=100-199")
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole)}"
    assert part.content == whole[100:200]
    tail = await _download(service, filed, range="bytes=-10")
    assert tail.content == whole[-10:]
    rest = await _download(service, filed, range=f"bytes={len(whole) - 5}-")
    assert rest.content == whole[-5:]
    refused = await _download(service, filed, range=f"bytes={len(whole)}-")
    problem(refused, 416)
    assert refused.headers["content-range"] == f"bytes */{len(whole)}"
    view = await detail(service, filed["id"])
    downloads = [e for e in view["events"] if e["action"] == "export.downloaded"]
    assert len(downloads) == 4
    assert downloads[1]["details"]["range"] == "100-199"


async def test_only_the_status_token_opens_the_package(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    filed = await _answered_access(service, farm, upload_lines=1)
    other = await service.file({"type": "access", "subject": {"email": "bo@example.org"}})
    problem(await _download(service, {**filed, "status_token": other["status_token"]}), 404)
    problem(await service.client.get(f"/v1/requests/{filed['id']}/export"), 401)
    problem(await _download(service, other), 404)  # not answered: no package yet


async def test_after_its_retention_the_package_is_gone(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    filed = await _answered_access(service, farm, upload_lines=1)
    assert list(service.settings.results_dir.glob("*.bin"))
    service.clock.advance(days=service.settings.export_ttl_days, seconds=1)
    await service.run_periodic()
    gone = problem(await _download(service, filed), 410)
    assert "POST /v1/requests" in gone["detail"]
    assert (await _status(service, filed))["export"]["ready"] is False
    assert not list(service.settings.results_dir.glob("*.bin")), "connector results deleted"
    assert not list((service.settings.data_dir / "exports").glob("*.enc"))


async def test_a_package_is_never_on_disk_in_the_clear(
    service: Service, farm: ConnectorFarm
) -> None:
    await _answered_access(service, farm, upload_lines=10)
    for path in service.settings.data_dir.rglob("*"):
        if path.is_file() and path.suffix in (".enc", ".bin"):
            raw = path.read_bytes()
            assert b"ana@example.org" not in raw
            assert b"ticket" not in raw
            assert b"PK\x03\x04" not in raw


async def test_a_request_no_system_handles_gets_a_package_that_says_so(
    service: Service, farm: ConnectorFarm
) -> None:
    filed = await service.file_verified({"type": "portability", "subject": {"email": "a@b.org"}})
    await drive(service, farm)
    status = await _status(service, filed)
    assert status["status"] == "completed"
    package = zipfile.ZipFile(io.BytesIO((await _download(service, filed)).content))
    manifest = json.loads(package.read("manifest.json"))
    assert manifest["systems"] == []
    assert set(package.namelist()) == {"manifest.json", "manifest.jws"}


async def test_dsr_export_verify_checks_a_downloaded_package(
    service: Service, farm: ConnectorFarm, tmp_path: Path
) -> None:
    filed = await _answered_access(service, farm, upload_lines=10)
    package = tmp_path / "answer.zip"
    package.write_bytes((await _download(service, filed)).content)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(await _jwks(service)))
    checked = subprocess.run(
        [sys.executable, "-m", "app.cli", "export", "verify", str(package), "--key", str(keys)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["ok"] is True
    package.write_bytes(package.read_bytes().replace(b"manifest", b"manifesT", 1))
    failed = subprocess.run(
        [sys.executable, "-m", "app.cli", "export", "verify", str(package), "--key", str(keys)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 1


async def test_a_portability_package_holds_only_what_the_person_provided(
    service: Service, farm: ConnectorFarm
) -> None:
    await register(
        service,
        farm,
        "shop",
        answers(result(data=SHOP_DATA)),
        provided_categories=["identity"],
    )
    await register(service, farm, "crm", answers(result(data={"notes": [{"n": 1}]})))
    filed = await service.file_verified(
        {"type": "portability", "subject": {"email": "ana@example.org"}}
    )
    await drive(service, farm)
    package = zipfile.ZipFile(io.BytesIO((await _download(service, filed)).content))
    assert json.loads(package.read("data/shop.json")) == {"identity": SHOP_DATA["identity"]}
    assert json.loads(package.read("data/crm.json")) == {"notes": [{"n": 1}]}
    assert "report.html" not in package.namelist()
    assert "data/shop/orders.csv" not in package.namelist()


async def test_data_of_a_request_cancelled_before_its_package_is_deleted(
    service: Service, farm: ConnectorFarm
) -> None:
    await register(service, farm, "shop", answers(result(data=SHOP_DATA)))
    await register(service, farm, "slow", silent())
    filed = await service.file_verified()
    await service.run_jobs()  # shop answered and its data is stored; slow has not called back
    assert list(service.settings.results_dir.glob("*.bin"))
    cancelled = await service.client.post(
        f"/v1/requests/{filed['id']}/cancel", headers=bearer(filed["status_token"])
    )
    assert cancelled.status_code == 200, cancelled.text
    await farm.settled()
    await service.run_periodic()
    assert not list(service.settings.results_dir.glob("*.bin"))
    events = [e["action"] for e in (await detail(service, filed["id"]))["events"]]
    assert "connector_results.deleted" in events


def answers_escaped(body: dict[str, Any]) -> Behaviour:
    """200 with ``body`` as ``json.dumps`` writes it: ``\\u``-escaped, so a lone surrogate
    in it is sent as its escape (which ``JSONResponse``, writing UTF-8, cannot send)."""

    async def behave(farm: ConnectorFarm, call: Call) -> Response:
        return Response(json.dumps(body).encode(), media_type="application/json")

    return behave


async def test_a_lone_surrogate_from_any_connector_still_gives_the_whole_package(
    service: Service, farm: ConnectorFarm, tmp_path: Path
) -> None:
    """A lone surrogate escape (``"\\ud800"``) is valid JSON, but no UTF-8 text holds the
    character it stands for. Sent in a synchronous answer, a callback, a JSON or an NDJSON
    upload, it fails neither the connector nor the package: the JSON files keep the escape
    (read back, the same value), the CSV cell and the report show U+FFFD."""
    await register(
        service,
        farm,
        "shop",
        answers_escaped(result(data={"orders": [{"id": "A-1", "note": "x \udfff y"}]})),
    )
    upload = ndjson(3) + b'{"category": "tickets", "record": {"n": 3, "text": "\\ud800"}}\n'
    await register(
        service,
        farm,
        "support desk",
        calls_back(result(data={"notes": [{"t": "\udc00"}]}), upload=upload),
    )
    await register(
        service,
        farm,
        "crm",
        calls_back(
            result(data={}),
            upload=b'{"contacts": [{"name": "Ana", "alias": "\\ud83d"}]}',
            upload_type="application/json",
        ),
    )
    filed = await service.file_verified({"type": "access", "subject": {"email": "ana@example.org"}})
    await drive(service, farm)
    assert all(a.status_code < 300 for a in farm.callback_answers), farm.callback_answers
    status = await _status(service, filed)
    assert status["status"] == "completed"
    assert status["export"]["ready"] is True
    package = tmp_path / "answer.zip"
    package.write_bytes((await _download(service, filed)).content)
    jwks = await _jwks(service)
    verdict = verify_package(package, key=jwks["keys"][0])
    assert verdict.ok, verdict.problems
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(jwks))
    checked = subprocess.run(
        [sys.executable, "-m", "app.cli", "export", "verify", str(package), "--key", str(keys)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    shop = archive_text(package, "data/shop.json")  # strict UTF-8
    assert "\\udfff" in shop
    assert json.loads(shop) == {"orders": [{"id": "A-1", "note": "x \udfff y"}]}
    desk = json.loads(archive_text(package, "data/support-desk.json"))
    assert desk["notes"] == [{"t": "\udc00"}]
    assert desk["tickets"][3] == {"n": 3, "text": "\ud800"}
    assert desk["tickets"][2] == {"n": 2, "text": "ticket 2 é"}
    crm = json.loads(archive_text(package, "data/crm.json"))
    assert crm == {"contacts": [{"name": "Ana", "alias": "\ud83d"}]}

    def rows(name: str) -> list[list[str]]:
        text = archive_text(package, name).removeprefix("\ufeff")
        return list(csv.reader(io.StringIO(text, newline="")))

    assert rows("data/shop/orders.csv") == [["id", "note"], ["A-1", "x \ufffd y"]]
    assert rows("data/support-desk/tickets.csv")[-2:] == [["2", "ticket 2 é"], ["3", "\ufffd"]]
    assert rows("data/support-desk/notes.csv") == [["t"], ["\ufffd"]]
    assert rows("data/crm/contacts.csv") == [["name", "alias"], ["Ana", "\ufffd"]]
    assert "x \ufffd y" in archive_text(package, "report.html")

"""Streamed data uploads from connectors (``PUT /v1/connector-callbacks/{job_id}/data``):
signed over the whole body, written encrypted as they arrive, discarded without a trace when
refused, counted with the job's result, stored once per webhook-id."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.connectors import results
from app.connectors.models import ConnectorJob
from app.connectors.signing import new_secret
from tests.conftest import Service
from tests.connectors.conftest import detail, drive, register
from tests.fixtures.connectors import ConnectorFarm, result, sign, silent

FAST_RETRIES = {"retry_base_seconds": 0.01, "retry_cap_seconds": 0.05}
MARKER = "zebra-quartz-4711"
NDJSON = {"content-type": "application/x-ndjson"}


def ndjson(size: int, *, marker: str = MARKER) -> bytes:
    """At least ``size`` bytes of NDJSON order records, each carrying ``marker``."""
    lines, total, n = [], 0, 0
    while total < size:
        line = json.dumps({"n": n, "item": "lamp", "note": f"{marker} order {n}"}).encode()
        lines.append(line + b"\n")
        total += len(line) + 1
        n += 1
    return b"".join(lines)


async def waiting_jobs(
    service: Service, farm: ConnectorFarm, *names: str
) -> tuple[str, dict[str, str]]:
    """A request whose jobs at ``names`` answered 202: (request id, {name: job id})."""
    for name in names or ("crm",):
        await register(service, farm, name, silent())
    filed = await service.file_verified()
    await drive(service, farm)
    jobs = (await detail(service, filed["id"]))["jobs"]
    assert {j["status"] for j in jobs} == {"waiting_callback"}, jobs
    return filed["id"], {j["connector_name"]: j["id"] for j in jobs}


async def put_data(
    service: Service,
    job_id: str,
    body: bytes,
    *,
    secret: str,
    msg_id: str = "up_1",
    content_type: str = "application/x-ndjson",
) -> httpx.Response:
    headers = sign(secret, body, msg_id=msg_id) | {"content-type": content_type}
    return await service.client.put(
        f"/v1/connector-callbacks/{job_id}/data", content=body, headers=headers
    )


async def post_result(
    service: Service, job_id: str, body: dict[str, Any], *, secret: str, msg_id: str = "cb_1"
) -> httpx.Response:
    raw = json.dumps(body).encode()
    headers = sign(secret, raw, msg_id=msg_id) | {"content-type": "application/json"}
    return await service.client.post(
        f"/v1/connector-callbacks/{job_id}", content=raw, headers=headers
    )


def sign_stream(
    secret: str, chunks: Iterable[bytes], *, msg_id: str, stamp: str | None = None
) -> dict[str, str]:
    """Standard Webhooks headers for a body too large to hold: the HMAC, chunk by chunk
    (over ``stamp`` as given, when a test gives one)."""
    stamp = stamp or str(int(time.time()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode(), hashlib.sha256)
    for chunk in chunks:
        mac.update(chunk)
    signature = "v1," + base64.b64encode(mac.digest()).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": signature}


async def streamed(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def data_files(service: Service, job_id: str) -> list[dict[str, Any]]:
    """The job's ``data_files`` entries, as stored in its row."""
    async with service.runtime.read_sessions() as session:
        cj = await session.get(ConnectorJob, job_id)
    assert cj is not None
    return json.loads(cj.data_files) if cj.data_files else []


def on_disk(service: Service) -> list[Path]:
    """Every file under the results directory, temporary ``.part`` files included."""
    folder = service.settings.results_dir
    return sorted(folder.iterdir()) if folder.exists() else []


def decrypted(service: Service, job_id: str, name: str) -> bytes:
    return b"".join(results.read_chunks(service.runtime, job_id, name))


async def test_uploaded_data_is_encrypted_and_counted_with_the_result(
    service: Service, farm: ConnectorFarm
) -> None:
    request_id, jobs = await waiting_jobs(service, farm, "crm", "shop")
    crm, shop = jobs["crm"], jobs["shop"]
    upload = ndjson(3 * 1024 * 1024)
    for name, job_id in jobs.items():
        answer = await put_data(service, job_id, upload, secret=farm.secrets[name])
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "job_id": job_id,
            "bytes": len(upload),
            "format": "ndjson",
            "duplicate": False,
        }
    # crm sends inline data with its result as well; shop sends none.
    inline = {"contact": [{"email": "ana@example.org", "note": f"{MARKER} inline"}]}
    with_data = await post_result(
        service, crm, result("found", data=inline), secret=farm.secrets["crm"]
    )
    assert with_data.status_code == 200, with_data.text
    without = await post_result(
        service, shop, {"status": "completed", "outcome": "found"}, secret=farm.secrets["shop"]
    )
    assert without.status_code == 200, without.text

    await service.run_jobs()  # the package assembly completes it

    view = await detail(service, request_id)
    assert view["status"] == "completed"
    counts = {j["connector_name"]: j["data_files"] for j in view["jobs"]}
    assert counts == {"crm": 2, "shop": 1}
    assert "connector_job.data_uploaded" in [e["action"] for e in view["events"]]

    crm_files = {f["source"]: f for f in await data_files(service, crm)}
    assert set(crm_files) == {"upload", "result"}
    assert (crm_files["upload"]["format"], crm_files["upload"]["bytes"]) == ("ndjson", len(upload))
    assert decrypted(service, crm, crm_files["upload"]["file"]) == upload
    assert json.loads(decrypted(service, crm, crm_files["result"]["file"])) == inline
    [shop_file] = await data_files(service, shop)
    assert decrypted(service, shop, shop_file["file"]) == upload

    stored = on_disk(service)
    assert sorted(p.name for p in stored) == sorted(
        [f["file"] for f in crm_files.values()] + [shop_file["file"]]
    )
    for path in stored:
        content = path.read_bytes()
        assert MARKER.encode() not in content, f"{path.name} holds the data in the clear"
        assert b"ana@example.org" not in content


async def test_a_replayed_upload_is_stored_once_and_a_finished_job_takes_no_more(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    request_id, jobs = await waiting_jobs(service, farm)
    job_id, secret = jobs["crm"], farm.secrets["crm"]
    upload = ndjson(64 * 1024)
    first = await put_data(service, job_id, upload, secret=secret, msg_id="up_once")
    assert first.status_code == 200, first.text
    again = await put_data(service, job_id, upload, secret=secret, msg_id="up_once")
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is True
    assert len(await data_files(service, job_id)) == 1
    assert len(on_disk(service)) == 1
    events = (await detail(service, request_id))["events"]
    assert [e["action"] for e in events].count("connector_job.data_uploaded") == 1

    done = await post_result(service, job_id, result("not_found"), secret=secret)
    assert done.status_code == 200, done.text
    late = await put_data(service, job_id, upload, secret=secret, msg_id="up_late")
    problem(late, 409)
    assert len(await data_files(service, job_id)) == 1
    assert len(on_disk(service)) == 1, "the refused upload left a file behind"

    # "A repeated webhook-id is answered as the first time."
    assert again.json() == {**first.json(), "duplicate": True}


async def test_a_webhook_id_names_one_message_an_upload_or_a_result(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    request_id, jobs = await waiting_jobs(service, farm)
    job_id, secret = jobs["crm"], farm.secrets["crm"]
    upload = ndjson(1024)
    assert (await put_data(service, job_id, upload, secret=secret, msg_id="msg_7")).is_success

    reused = await post_result(service, job_id, result(), secret=secret, msg_id="msg_7")
    assert "used for an upload" in problem(reused, 409)["detail"]
    assert (await detail(service, request_id))["jobs"][0]["status"] == "waiting_callback"

    done = await post_result(service, job_id, result(), secret=secret, msg_id="msg_8")
    assert done.status_code == 200, done.text
    # The result's id on an upload: another message too (and the job is finished anyway).
    again = await put_data(service, job_id, upload, secret=secret, msg_id="msg_8")
    assert "used for a result" in problem(again, 409)["detail"]
    files = await data_files(service, job_id)
    assert [f["source"] for f in files] == ["upload", "result"]


async def test_a_large_upload_streams_through_bounded_memory(
    service: Service, farm: ConnectorFarm
) -> None:
    _, jobs = await waiting_jobs(service, farm)
    job_id, secret = jobs["crm"], farm.secrets["crm"]
    block = ndjson(1024 * 1024)
    count = 40
    expected = hashlib.sha256()
    for _ in range(count):
        expected.update(block)
    headers = sign_stream(secret, [block] * count, msg_id="up_big") | NDJSON

    tracemalloc.start()
    try:
        answer = await service.client.put(
            f"/v1/connector-callbacks/{job_id}/data",
            content=streamed([block] * count),
            headers=headers,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.status_code == 200, answer.text
    assert answer.json()["bytes"] == len(block) * count
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB for a 40 MiB upload"

    [entry] = await data_files(service, job_id)
    got = hashlib.sha256()
    for chunk in results.read_chunks(service.runtime, job_id, entry["file"]):
        got.update(chunk)
    assert got.hexdigest() == expected.hexdigest()
    done = await post_result(service, job_id, result("not_found"), secret=secret)
    assert done.status_code == 200, done.text


async def test_refused_uploads_leave_nothing_behind(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    request_id, jobs = await waiting_jobs(service, farm)
    job_id, secret = jobs["crm"], farm.secrets["crm"]
    upload = ndjson(256 * 1024)
    url = f"/v1/connector-callbacks/{job_id}/data"
    before = await detail(service, request_id)

    forged = await put_data(service, job_id, upload, secret=new_secret(), msg_id="up_a")
    problem(forged, 401)
    other_bytes = sign(secret, upload[:-10] + b"0123456789", msg_id="up_b") | NDJSON
    problem(await service.client.put(url, content=upload, headers=other_bytes), 401)
    streamed_other = sign(secret, upload + b"\n", msg_id="up_c") | NDJSON
    problem(await service.client.put(url, content=streamed([upload]), headers=streamed_other), 401)
    problem(await service.client.put(url, content=upload, headers=NDJSON), 401)
    stale = sign(secret, upload, msg_id="up_d", at=time.time() - 360) | NDJSON
    problem(await service.client.put(url, content=upload, headers=stale), 401)
    ahead = sign(secret, upload, msg_id="up_d", at=time.time() + 360) | NDJSON
    problem(await service.client.put(url, content=upload, headers=ahead), 401)
    for stamp in ("nan", "inf", f"{time.time():.1f}", f" {int(time.time())}"):
        # Signed over the stamp as written; Standard Webhooks stamps are integer seconds.
        odd = sign_stream(secret, [upload], msg_id="up_f", stamp=stamp) | NDJSON
        problem(await service.client.put(url, content=upload, headers=odd), 401)
    unknown = sign(secret, upload, msg_id="up_e") | NDJSON
    problem(await service.client.put(f"{url[:-5]}nope/data", content=upload, headers=unknown), 404)

    plain = await put_data(service, job_id, upload, secret=secret, content_type="text/plain")
    refused = problem(plain, 415)
    assert "application/x-ndjson" in refused["detail"]

    assert on_disk(service) == []
    assert await data_files(service, job_id) == []
    after = await detail(service, request_id)
    assert after["jobs"][0]["status"] == "waiting_callback"
    assert after["events"] == before["events"]

    # None of the refusals used up its webhook-id.
    accepted = await put_data(service, job_id, upload, secret=secret, msg_id="up_b")
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["duplicate"] is False

    # A known webhook-id does not excuse a bad signature: 401, not a "duplicate" answer.
    forged_replay = await put_data(service, job_id, upload, secret=new_secret(), msg_id="up_b")
    problem(forged_replay, 401)


@pytest.mark.parametrize("settings_overrides", [{**FAST_RETRIES, "upload_max_bytes": 2048}])
async def test_an_upload_larger_than_the_limit_is_413(
    service: Service, farm: ConnectorFarm, problem
) -> None:
    request_id, jobs = await waiting_jobs(service, farm)
    job_id, secret = jobs["crm"], farm.secrets["crm"]
    upload = ndjson(8 * 1024)
    url = f"/v1/connector-callbacks/{job_id}/data"
    headers = sign(secret, upload, msg_id="up_big") | NDJSON

    problem(await service.client.put(url, content=upload, headers=headers), 413)
    chunks = [upload[i : i + 1000] for i in range(0, len(upload), 1000)]
    problem(await service.client.put(url, content=streamed(chunks), headers=headers), 413)
    assert on_disk(service) == []
    assert await data_files(service, job_id) == []

    small = await put_data(service, job_id, ndjson(1024), secret=secret, msg_id="up_ok")
    assert small.status_code == 200, small.text
    assert (await detail(service, request_id))["jobs"][0]["data_files"] == 1

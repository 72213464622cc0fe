"""The ``dsr`` command: serve, worker, migrate, token, openapi, audit verify, export verify,
demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from app.config import ConfigurationError, Settings, load_settings
from app.logs import setup_logging

OPENAPI_PATH = Path("openapi/openapi.json")


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as exc:
        sys.exit(f"dsr: {exc}")


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run a long-lived process's event loop: uvloop where it is installed (it comes with
    ``uvicorn[standard]``, which ``dsr serve`` runs on), else asyncio's own. A worker spends a
    tenth of its CPU in the event loop's Python code; uvloop's is in C."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - not on this platform
        asyncio.run(main)
    else:
        uvloop.run(main)


def cmd_migrate(_: argparse.Namespace) -> None:
    from app.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    print("database is at the latest schema")


def _public_url_from_listener(host: str, port: int) -> Settings:
    """Without ``DSR_PUBLIC_URL`` the service's own links (e-mails, connector callback URLs)
    follow ``--host``/``--port``: a service on another port than the default must not hand
    connectors a callback URL nobody answers. Set through the environment so that server
    processes spawned by ``--workers`` see it too; a wildcard bind is reached on loopback."""
    reachable = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in reachable:
        reachable = f"[{reachable}]"
    os.environ["DSR_PUBLIC_URL"] = f"http://{reachable}:{port}"
    return _settings()


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from app.migrate import upgrade
    from app.serving import UVICORN_OPTIONS, serve

    settings = _settings()
    if "public_url" not in settings.model_fields_set and args.port:
        settings = _public_url_from_listener(args.host, args.port)
    setup_logging()
    upgrade(settings.database_url)
    if args.workers > 1:
        serve(args.host, args.port, args.workers)
        return
    from app.main import create_app

    uvicorn.run(create_app(settings), host=args.host, port=args.port, **UVICORN_OPTIONS)


def cmd_worker(args: argparse.Namespace) -> None:
    from app.jobs.worker import Worker
    from app.kit.heap import freeze_startup_objects
    from app.runtime import build_runtime
    from app.tasks import register_tasks

    settings = _settings()
    setup_logging()
    register_tasks()

    concurrency = args.concurrency or settings.worker_concurrency

    async def main() -> None:
        runtime = build_runtime(settings, role="dsr worker", worker_concurrency=concurrency)
        freeze_startup_objects()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await Worker(
                runtime,
                concurrency=concurrency,
                lease_seconds=settings.worker_lease_seconds,
            ).run(stop)
        finally:
            await runtime.aclose()

    run_loop(main())


DEFAULT_SCOPES = "requests:read requests:write audit:read"


def cmd_token(args: argparse.Namespace) -> None:
    from app.security.staff import SCOPES, mint_staff_token

    # --scope may be repeated, each one a scope or several separated by spaces.
    scopes = [scope for value in args.scope or [DEFAULT_SCOPES] for scope in value.split()]
    known = ", ".join(sorted(SCOPES))
    unknown = sorted(set(scopes) - SCOPES)
    if unknown or not scopes:
        what = f"unknown scopes: {', '.join(unknown)}" if unknown else "no scope given"
        raise SystemExit(f"dsr token: {what} (known: {known})")
    settings = _settings()
    token = mint_staff_token(
        secret=settings.staff_jwt_secret,
        subject=args.sub,
        scopes=scopes,
        ttl_seconds=args.ttl,
        issuer=settings.staff_jwt_issuer or None,
        audience=settings.staff_jwt_audience or None,
    )
    print(token)


def openapi_document() -> dict:
    from app.config import Settings
    from app.main import create_app

    app = create_app(Settings(encryption_key="x" * 43, staff_jwt_secret="x" * 43), run_worker=False)
    return app.openapi()


def render_openapi() -> str:
    return json.dumps(openapi_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def cmd_openapi(args: argparse.Namespace) -> None:
    text = render_openapi()
    if args.write:
        OPENAPI_PATH.parent.mkdir(parents=True, exist_ok=True)
        OPENAPI_PATH.write_text(text)
        print(f"wrote {OPENAPI_PATH}")
    else:
        sys.stdout.write(text)


def cmd_audit_verify(_: argparse.Namespace) -> None:
    from app.audit.service import link_all, verify_chain
    from app.runtime import build_runtime

    settings = _settings()

    async def main() -> dict:
        runtime = build_runtime(settings)
        try:
            await link_all(runtime.session)
            async with runtime.session() as session:
                return (await verify_chain(session)).as_dict()
        finally:
            await runtime.aclose()

    report = asyncio.run(main())
    print(json.dumps(report))
    if not report["ok"]:
        sys.exit(1)


def cmd_export_verify(args: argparse.Namespace) -> None:
    """Check a package's signature and checksums, with the local service's key or with a
    public key given as a PEM or JWKS file (``GET /v1/export-keys``)."""
    from app.config import decode_key
    from app.exports.signing import PackageSigner
    from app.exports.verify import verify_package

    key: str | dict
    if args.key:
        text = Path(args.key).read_text()
        key = json.loads(text)["keys"][0] if text.lstrip().startswith("{") else text
    else:
        key = PackageSigner(decode_key(_settings().encryption_key)).public_pem
    verdict = verify_package(Path(args.file), key=key)
    print(
        json.dumps(
            {
                "ok": verdict.ok,
                "files": verdict.files,
                "key_id": verdict.key_id,
                "problems": verdict.problems,
            }
        )
    )
    if not verdict.ok:
        sys.exit(1)


def cmd_demo(_: argparse.Namespace) -> None:
    from app.demo import run_demo

    run_demo()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="migrate, then serve the API (with a worker)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="server processes")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run a job worker alone")
    worker.add_argument(
        "--concurrency", type=int, default=0, help="jobs at once (default DSR_WORKER_CONCURRENCY)"
    )
    worker.set_defaults(func=cmd_worker)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)

    token = sub.add_parser("token", help="mint a staff token with the local secret")
    token.add_argument(
        "--scope",
        action="append",
        help=f'scopes, space-separated or one per --scope (default "{DEFAULT_SCOPES}")',
    )
    token.add_argument("--sub", default="cli", help="the staff member it names (default cli)")
    token.add_argument("--ttl", type=int, default=3600, help="seconds it is valid (default 3600)")
    token.set_defaults(func=cmd_token)

    openapi = sub.add_parser("openapi", help="print the OpenAPI document")
    openapi.add_argument("--write", action="store_true", help=f"write {OPENAPI_PATH}")
    openapi.set_defaults(func=cmd_openapi)

    sub.add_parser("demo", help="a walkthrough on loopback, in a temporary directory").set_defaults(
        func=cmd_demo
    )

    export = sub.add_parser("export", help="answer package tools")
    export_sub = export.add_subparsers(dest="export_command", required=True)
    export_verify = export_sub.add_parser(
        "verify", help="check a package's signature and every file's checksum"
    )
    export_verify.add_argument("file", help="the downloaded ZIP")
    export_verify.add_argument(
        "--key", help="public key (PEM, or the JWKS from /v1/export-keys); default: local"
    )
    export_verify.set_defaults(func=cmd_export_verify)

    audit = sub.add_parser("audit", help="audit chain tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    audit_sub.add_parser("verify", help="verify the whole chain").set_defaults(
        func=cmd_audit_verify
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()

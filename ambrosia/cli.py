"""The ``ambrosia`` command: register, list, run and inspect immortals."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from ambrosia.catalog import Catalog, InstanceRecord, run_with_catalog
from ambrosia.errors import AmbrosiaError


def _register(args: argparse.Namespace) -> int:
    record = InstanceRecord(name=args.name, address=args.address, log_url=args.log, app=args.app)

    async def operation(catalog: Catalog) -> InstanceRecord:
        return await catalog.register(record, replace=args.replace)

    stored = run_with_catalog(args.catalog, operation)
    print(f"registered {stored.name} at {stored.address}, log {stored.log_url}")
    return 0


def _list(args: argparse.Namespace) -> int:
    async def operation(catalog: Catalog) -> list[InstanceRecord]:
        return await catalog.list()

    records = run_with_catalog(args.catalog, operation)
    print(f"{'NAME':<20} {'ADDRESS':<22} {'LOG':<40} APP")
    for record in records:
        print(f"{record.name:<20} {record.address:<22} {record.log_url:<40} {record.app or '-'}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from ambrosia.coordinator.runtime import Config
    from ambrosia.host import load_app, serve

    app = load_app(args.app) if args.app else None
    config = Config(
        checkpoint_log_bytes=args.checkpoint_log_bytes, checkpoints_kept=args.checkpoints_kept
    )
    return asyncio.run(
        serve(args.name, app, catalog_url=args.catalog, log_url=args.log, config=config)
    )


def _log(args: argparse.Namespace) -> int:
    from ambrosia.inspect import describe_log

    async def operation(catalog: Catalog) -> str:
        record = await catalog.get(args.name)
        return await describe_log(args.log or record.log_url, args.name, pages=args.pages)

    print(run_with_catalog(args.catalog, operation), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ambrosia", description=__doc__)
    parser.add_argument("--catalog", help="catalog URL (default: $AMBROSIA_CATALOG or ./.ambrosia)")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    register = commands.add_parser("register", help="register an immortal instance")
    register.add_argument("name")
    register.add_argument("--address", required=True, help="HOST:PORT its coordinator listens on")
    register.add_argument("--log", required=True, help="log URL, e.g. file:///var/lib/ambrosia")
    register.add_argument("--app", help="module:Class of the immortal")
    register.add_argument(
        "--replace", action="store_true", help="overwrite a registration with different settings"
    )
    register.set_defaults(handler=_register)

    listing = commands.add_parser("list", help="list registered instances")
    listing.set_defaults(handler=_list)

    run = commands.add_parser("run", help="run (or recover) an immortal instance")
    run.add_argument("name")
    run.add_argument("--app", help="module:Class (default: the registered one)")
    run.add_argument("--log", help="override the registered log URL")
    run.add_argument(
        "--checkpoint-log-bytes",
        type=int,
        default=256 * 1024 * 1024,
        help="checkpoint when the current chunk passes this size",
    )
    run.add_argument("--checkpoints-kept", type=int, default=2)
    run.set_defaults(handler=_run)

    log = commands.add_parser("log", help="show an instance's chunks, pages and checkpoints")
    log.add_argument("name")
    log.add_argument("--log", help="override the registered log URL")
    log.add_argument("--pages", action="store_true", help="list every page")
    log.set_defaults(handler=_log)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.handler(args)
    except AmbrosiaError as error:
        print(f"ambrosia: error: {error}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())

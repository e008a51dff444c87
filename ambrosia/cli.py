"""The ``ambrosia`` command: register, list, run and inspect immortals.

Settings come from the command line, then the deployment file (``--config PATH``,
``$AMBROSIA_CONFIG`` or ``./ambrosia.toml``; see ``ambrosia.deployment``), then the
catalog registration, then built-in defaults.

``register`` checks what it can without the storage: the log URL's form (a known
scheme, an absolute ``file:///`` path, a valid bucket or container name) and, unless
``--skip-import-check`` (the code lives on other machines), that ``--app`` imports and
names an immortal class.

Exit codes: 0 done; 1 the immortal stopped on a fatal error (a lost lease, a failed
write); 2 ``ambrosia: error: ...``, refused to start: a setting is wrong (malformed URL
or file, missing container, bucket or credentials, unreachable service, unknown
instance, busy address) or the log cannot be used; 3 another process runs the instance
and kept its lease for longer than ``--lease-wait-s`` (``--role primary`` gave up
waiting; start it again to keep waiting). See docs/storage.md and
docs/high-availability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

from ambrosia.catalog import Catalog, InstanceRecord, run_with_catalog
from ambrosia.deployment import (
    DeploymentFile,
    command_line_coordinator_fields,
    command_line_store_options,
    command_line_transport,
    load_deployment,
    parse_option_assignment,
)
from ambrosia.errors import AmbrosiaError, ConfigError, InstanceNotFoundError, LeaseHeldError

EXIT_FATAL = 1
EXIT_CONFIG = 2
EXIT_LEASE_HELD = 3

_EPILOG = """\
first steps:
  ambrosia register NAME --address HOST:PORT --log URL --app module:Class
  ambrosia run NAME --plaintext        (or --tls-cert/--tls-key/--tls-ca)
  ambrosia log NAME --pages

exit codes: 0 done; 1 the immortal stopped on a fatal error; 2 a wrong setting, nothing
started; 3 another process holds the instance's lease (see --lease-wait-s)"""


def _deployment(args: argparse.Namespace) -> DeploymentFile:
    return load_deployment(args.config)


def _check_registration(record: InstanceRecord, *, import_app: bool) -> None:
    """What can be checked here is checked now, not at the first ``ambrosia run``."""
    from ambrosia.backends import check_store_url
    from ambrosia.host import load_app

    check_store_url(record.log_url)
    if record.app is not None and import_app:
        load_app(record.app)


def _register(args: argparse.Namespace) -> int:
    deployment = _deployment(args)
    instance = deployment.instance(args.name)
    log_url = deployment.log_for(args.name, args.log)
    if log_url is None:
        raise ConfigError(
            f"no log URL for {args.name}: pass --log URL or set `log` in the deployment file"
        )
    address = args.address or instance.address
    if address is None:
        raise ConfigError(
            f"no address for {args.name}: pass --address HOST:PORT or set "
            f"instances.{args.name}.address in the deployment file"
        )
    record = InstanceRecord(
        name=args.name,
        address=address,
        log_url=log_url,
        app=args.app or instance.app,
        receive_port=args.receive_port or 0,
        send_port=args.send_port or 0,
        current_version=args.version,
        upgrade_version=args.version,
    )
    _check_registration(record, import_app=not args.skip_import_check)

    async def operation(catalog: Catalog) -> InstanceRecord:
        return await catalog.register(record, replace=args.replace)

    stored = run_with_catalog(deployment.catalog_for(args.catalog), operation)
    print(f"registered {stored.name} at {stored.address}, log {stored.log_url}")
    return 0


def _list(args: argparse.Namespace) -> int:
    async def operation(catalog: Catalog) -> list[InstanceRecord]:
        return await catalog.list()

    records = run_with_catalog(_deployment(args).catalog_for(args.catalog), operation)
    print(f"{'NAME':<20} {'ADDRESS':<22} {'LOG':<40} {'VERSION':<9} APP")
    for record in records:
        line = (
            f"{record.name:<20} {record.address:<22} {record.log_url:<40} "
            f"{_version_text(record):<9} {record.app or '-'}"
        )
        if record.receive_port or record.send_port:
            line += f"  binding ports {record.receive_port or '-'}/{record.send_port or '-'}"
        print(line)
    return 0


def _version_text(record: InstanceRecord) -> str:
    """The current version, and ``->V`` while an upgrade to V is asked (in progress, or
    interrupted: ``ambrosia status`` says which the log shows)."""
    if record.upgrade_version > record.current_version:
        return f"{record.current_version}->{record.upgrade_version}"
    return str(record.current_version)


def _assignments(texts: Sequence[str], flag: str) -> dict[str, Any]:
    return dict(parse_option_assignment(text, flag) for text in texts)


def _run(args: argparse.Namespace) -> int:
    from ambrosia import eventloop
    from ambrosia.host import BindingEndpoints, load_app, serve

    deployment = _deployment(args)
    separate = None
    if args.command == "coordinator":
        if args.app:
            raise ConfigError(
                "ambrosia coordinator runs no application: --app belongs to its binding"
            )
        if args.role == "standby":
            raise ConfigError(
                "ambrosia coordinator starts as primary: hot standbys run in-process "
                "(ambrosia run NAME --role standby)"
            )
        separate = BindingEndpoints(
            receive_port=args.receive_port or 0,
            send_port=args.send_port or 0,
            receive_fd=args.receive_fd,
            send_fd=args.send_fd,
        )
    elif args.separate:
        return _run_separate(args, deployment)
    upgrade = None
    if args.command == "upgrade":
        if not args.app:
            raise ConfigError("ambrosia upgrade NAME needs --app new_module:Class")
        from ambrosia.host import load_app
        from ambrosia.upgrade import VERSION_ATTRIBUTE, UpgradePlan, code_version

        version = code_version(load_app(args.app), args.version)
        if version is None:
            raise ConfigError(
                f"ambrosia upgrade NAME needs --version V, or an app class that declares "
                f"{VERSION_ATTRIBUTE} ({args.app} declares none)"
            )
        args.version = version
        if args.test:
            return _upgrade_test(args)
        upgrade = UpgradePlan(args.app, version)
    elif args.test:
        raise ConfigError("--test belongs to ambrosia upgrade")
    fields = _assignments(args.coordinator_options, "--coordinator-option")
    for name in ("checkpoint_log_bytes", "checkpoints_kept", "lease_wait_s"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    if args.lease_renew_interval_s is not None:
        fields["lease_renew_interval_s"] = args.lease_renew_interval_s
    if args.checkpointer:
        fields["checkpointer"] = True
    coordinator = command_line_coordinator_fields(fields)
    store_options = command_line_store_options(_assignments(args.store_options, "--store-option"))
    transport = command_line_transport(
        cert=args.tls_cert,
        key=args.tls_key,
        ca=args.tls_ca,
        plaintext=bool(args.plaintext),
        plaintext_beyond_loopback=bool(args.plaintext_beyond_loopback),
    )
    app = load_app(args.app) if args.app and upgrade is None else None
    return eventloop.run(
        serve(
            args.name,
            app,
            catalog_url=args.catalog,
            log_url=args.log,
            store_options=store_options,
            deployment=deployment,
            coordinator=coordinator,
            transport=transport,
            create_storage=args.create_storage,
            role=args.role,
            standby_poll_s=args.standby_poll_s,
            separate=separate,
            version=args.version,
            upgrade=upgrade,
            version_check_s=args.version_check_s,
        )
    )


def _upgrade_test(args: argparse.Namespace) -> int:
    """``ambrosia upgrade NAME --app new:Class --version V --test``: migrate and replay."""
    from ambrosia.host import load_app
    from ambrosia.timetravel import _where
    from ambrosia.upgrade import upgrade_test

    log_url, new_class, peers = _where(args)
    old_spec = _deployment(args).instance(args.name).app

    async def registered(catalog: Catalog) -> str | None:
        return (await catalog.get(args.name)).app

    old_spec = old_spec or run_with_catalog(_deployment(args).catalog_for(args.catalog), registered)
    if old_spec is None:
        raise ConfigError(f"{args.name} has no registered app to upgrade from")
    report = asyncio.run(
        upgrade_test(log_url, args.name, load_app(old_spec), new_class, peer_logs=peers)
    )
    print(f"upgrade test of {args.name} to version {args.version} ({args.app}):")
    print(report.describe())
    status: int = report.exit_status
    return status


def _run_separate(args: argparse.Namespace, deployment: DeploymentFile) -> int:
    """``ambrosia run NAME --separate``: this process the binding, the coordinator a child."""
    from ambrosia.host import load_app
    from ambrosia.separate import run_separate

    spec = args.app or deployment.instance(args.name).app
    if spec is None:

        async def registered(catalog: Catalog) -> str | None:
            return (await catalog.get(args.name)).app

        spec = run_with_catalog(deployment.catalog_for(args.catalog), registered)
    if spec is None:
        raise ConfigError(f"{args.name} has no registered app; pass --app module:Class")
    return run_separate(
        args.name,
        load_app(spec),
        args.argv,
        receive_port=args.receive_port or 0,
        send_port=args.send_port or 0,
    )


def _log(args: argparse.Namespace) -> int:
    from ambrosia.inspect import describe_log

    deployment = _deployment(args)

    async def operation(catalog: Catalog) -> str:
        log_url = deployment.log_for(args.name, args.log)
        if log_url is None:
            log_url = (await catalog.get(args.name)).log_url
        return await describe_log(log_url, args.name, pages=args.pages)

    print(run_with_catalog(deployment.catalog_for(args.catalog), operation), end="")
    return 0


def _status(args: argparse.Namespace) -> int:
    from ambrosia.status import read_status, render_status

    deployment = _deployment(args)

    async def operation(catalog: Catalog) -> str:
        log_url = deployment.log_for(args.name, args.log)
        record = None
        try:
            record = await catalog.get(args.name)
        except InstanceNotFoundError:
            if log_url is None:
                raise
        log_url = log_url or (record.log_url if record is not None else None)
        assert log_url is not None
        status = await read_status(log_url, args.name, record=record)
        return render_status(status, as_json=args.json)

    print(run_with_catalog(deployment.catalog_for(args.catalog), operation), end="")
    return 0


def _certs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ambrosia.certs import (
        CA_CERTIFICATE_FILE,
        INSTANCE_VALID_DAYS,
        create_ca,
        issue_instance_certificate,
        load_ca,
    )

    directory = Path(args.directory)
    days = INSTANCE_VALID_DAYS if args.days is None else args.days
    if days < 1:
        raise ConfigError(f"--days {days}: must be at least 1")
    if (directory / CA_CERTIFICATE_FILE).exists():
        ca = load_ca(directory)
    else:
        ca = create_ca(directory)
        print(f"created CA {directory / CA_CERTIFICATE_FILE} (keep ca.key private)")
    for name in args.names:
        settings = issue_instance_certificate(
            ca, directory, name, valid_days=days, replace=args.replace
        )
        print(
            f"{name}: --tls-cert {settings.certificate_path} --tls-key {settings.key_path} "
            f"--tls-ca {settings.ca_path}"
        )
    return 0


def _config_from_terraform(args: argparse.Namespace) -> int:
    from ambrosia.terraform import run_from_terraform

    return run_from_terraform(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ambrosia",
        description="Register, list, run and inspect immortals.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--catalog",
        help="catalog URL (default: $AMBROSIA_CATALOG, the deployment file, ./.ambrosia)",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="deployment file (default: $AMBROSIA_CONFIG, else ./ambrosia.toml if present)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug messages too (default: info)"
    )
    # The same two options after the subcommand too; SUPPRESS keeps the top-level value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--catalog", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)

    register = commands.add_parser(
        "register", parents=[common], help="register an immortal instance"
    )
    register.add_argument("name")
    register.add_argument(
        "--address", help="HOST:PORT its coordinator listens on (default: deployment file)"
    )
    register.add_argument(
        "--log", help="log URL, e.g. file:///var/lib/ambrosia (default: deployment file)"
    )
    register.add_argument(
        "--app", help="module:Class of the immortal (imported now, to check it exists)"
    )
    register.add_argument(
        "--receive-port",
        type=int,
        help="for `ambrosia coordinator NAME`: the loopback port its binding process sends "
        "to (default: any free port, logged)",
    )
    register.add_argument(
        "--send-port",
        type=int,
        help="for `ambrosia coordinator NAME`: the loopback port its binding process reads "
        "log records from (default: any free port, logged)",
    )
    register.add_argument(
        "--version",
        type=int,
        default=0,
        help="the version of its code (the catalog's current_version; default 0); "
        "`ambrosia upgrade` moves it on",
    )
    register.add_argument(
        "--skip-import-check",
        action="store_true",
        help="do not import --app here (the code is not on this machine)",
    )
    register.add_argument(
        "--replace", action="store_true", help="overwrite a registration with different settings"
    )
    register.set_defaults(handler=_register)

    listing = commands.add_parser("list", parents=[common], help="list registered instances")
    listing.set_defaults(handler=_list)

    run = commands.add_parser(
        "run",
        aliases=["coordinator", "upgrade"],
        parents=[common],
        help="run (or recover) an immortal instance; `coordinator`: its coordinator alone, "
        "for a binding process (docs/bindings.md); `upgrade NAME --app new:Class --version "
        "V`: take over from the running primary with new code (docs/operations.md)",
    )
    run.add_argument("name")
    separate = run.add_argument_group(
        "separate binding",
        "the coordinator as a process of its own, speaking the binding protocol on two "
        "loopback ports (docs/bindings.md)",
    )
    separate.add_argument(
        "--separate",
        action="store_true",
        help="run: the application as a binding process, its coordinator as a child process",
    )
    separate.add_argument(
        "--receive-port", type=int, help="port the binding sends to (default: any free port)"
    )
    separate.add_argument(
        "--send-port", type=int, help="port the binding reads log records from (default: any)"
    )
    separate.add_argument("--receive-fd", type=int, help=argparse.SUPPRESS)
    separate.add_argument("--send-fd", type=int, help=argparse.SUPPRESS)
    run.add_argument("--app", help="module:Class (default: deployment file, then registration)")
    run.add_argument("--log", help="log URL (default: deployment file, then registration)")
    run.add_argument(
        "--create-storage",
        "--create",
        action="store_true",
        help="create the log's container or bucket if it is missing",
    )
    run.add_argument(
        "--store-option",
        dest="store_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="log store option, e.g. lease_duration_s=15 (repeatable)",
    )
    run.add_argument(
        "--coordinator-option",
        dest="coordinator_options",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a field of ambrosia.coordinator.runtime.Config (repeatable)",
    )
    run.add_argument(
        "--checkpoint-log-bytes",
        type=int,
        help="checkpoint when the current chunk passes this size (default 256 MiB)",
    )
    run.add_argument("--checkpoints-kept", type=int, help="checkpoints kept (default 2)")
    run.add_argument(
        "--standby-poll-s",
        type=float,
        help="how often a standby reads the log's end (default 0.02 on file, 0.25 on cloud "
        "stores, where every read is a billed request)",
    )
    run.add_argument(
        "--role",
        choices=("auto", "primary", "standby"),
        default="auto",
        help="auto (default): primary if the lease is free, else a hot standby that replays "
        "the log and takes over when the primary dies; standby: always start as a standby; "
        "primary: wait for the lease (--lease-wait-s) and recover cold",
    )
    run.add_argument(
        "--checkpointer",
        action="store_true",
        help="as a standby, take the checkpoints from the replayed state so the primary "
        "does not pause for them (the primary adopts them; see docs/high-availability.md)",
    )
    run.add_argument(
        "--lease-wait-s",
        type=float,
        help="with --role primary: how long to wait for another process's lease (default 30)",
    )
    run.add_argument(
        "--lease-renew-interval-s",
        type=float,
        help="lease renewal period (default 10, or a third of the store's lease_duration_s)",
    )
    transport = run.add_argument_group(
        "transport",
        "links between coordinators use mutual TLS (a private CA; see `ambrosia certs`); "
        "plain TCP only when chosen with --plaintext",
    )
    transport.add_argument("--tls-cert", metavar="PATH", help="this instance's certificate (PEM)")
    transport.add_argument("--tls-key", metavar="PATH", help="its private key (PEM)")
    transport.add_argument(
        "--tls-ca", metavar="PATH", help="the deployment's CA certificate (PEM), the only trust"
    )
    transport.add_argument(
        "--plaintext",
        action="store_true",
        default=None,
        help="plain TCP, unauthenticated: only if this instance and its peers are on loopback",
    )
    transport.add_argument(
        "--plaintext-beyond-loopback",
        action="store_true",
        default=None,
        help="with --plaintext: allow non-loopback addresses too (anyone who can reach the "
        "port can then act as any instance)",
    )
    versions = run.add_argument_group(
        "versions and live upgrade", "see docs/operations.md, Upgrading"
    )
    versions.add_argument(
        "--version",
        type=int,
        help="run: the version of this code; refused unless it is the catalog's current "
        "version. upgrade: the new version (above the current one). Default: the app "
        "class's __ambrosia_version__ if it declares one",
    )
    versions.add_argument(
        "--test",
        action="store_true",
        help="upgrade: the upgrade test only: migrate the latest checkpoint and replay the "
        "log after it with the new code, report the first divergence (exit 1; 4 when a peer's "
        "messages could not be compared), take nothing over",
    )
    versions.add_argument(
        "--version-check-s",
        type=float,
        default=1.0,
        help="how often a running process reads its catalog record for an upgrade's "
        "hand-over request (default 1)",
    )
    run.set_defaults(handler=_run)

    certs = commands.add_parser(
        "certs",
        help="make a private CA and per-instance TLS certificates",
        description="Create DIRECTORY/ca.crt and ca.key (the deployment's private CA) unless "
        "they exist, then issue DIRECTORY/NAME.crt and NAME.key for each NAME: a "
        "certificate naming instance NAME (URI ambrosia:instance:NAME), for both ends of "
        "a link. Keys are written with mode 0600. Give each instance its own pair and "
        "ca.crt; keep ca.key off the machines that run instances.",
    )
    certs.add_argument("directory", help="where the CA and the certificates are kept")
    certs.add_argument("names", nargs="*", metavar="NAME", help="instances to issue for")
    certs.add_argument("--days", type=int, help="validity of instance certificates (default 397)")
    certs.add_argument(
        "--replace", action="store_true", help="reissue a NAME that already has a certificate"
    )
    certs.set_defaults(handler=_certs)

    log = commands.add_parser(
        "log", parents=[common], help="show an instance's chunks, pages and checkpoints"
    )
    log.add_argument("name")
    log.add_argument("--log", help="log URL (default: deployment file, then registration)")
    log.add_argument("--pages", action="store_true", help="list every page")
    log.set_defaults(handler=_log)

    config = commands.add_parser("config", help="write the deployment file")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    from_terraform = config_commands.add_parser(
        "from-terraform",
        help="ambrosia.toml from the outputs of infra/terraform (terraform output -json)",
    )
    from_terraform.add_argument(
        "directory", help="the Terraform root, or a file holding `terraform output -json`"
    )
    from_terraform.add_argument(
        "-o", "--output", default="ambrosia.toml", help="where to write it; - for stdout"
    )
    from_terraform.add_argument("--force", action="store_true", help="replace an existing file")
    from_terraform.add_argument(
        "--env-file",
        metavar="PATH",
        help="also write the coordinators' environment (KEY=VALUE lines, for kustomize)",
    )
    from_terraform.set_defaults(handler=_config_from_terraform)

    from ambrosia.timetravel import add_commands as add_timetravel_commands

    add_timetravel_commands(commands, common)
    status = commands.add_parser(
        "status",
        parents=[common],
        help="show an instance's primary, its standbys and their lag, the log's end",
    )
    status.add_argument("name")
    status.add_argument("--log", help="log URL (default: deployment file, then registration)")
    status.add_argument("--json", action="store_true", help="print a JSON object")
    status.set_defaults(handler=_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.handler(args)
    except LeaseHeldError as error:
        print(f"ambrosia: error: {args.name} is running elsewhere: {error}", file=sys.stderr)
        return EXIT_LEASE_HELD
    except AmbrosiaError as error:
        print(f"ambrosia: error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    return code


if __name__ == "__main__":
    sys.exit(main())

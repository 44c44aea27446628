"""The `havs` command: argument parsing and exit codes; the work happens elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from havs import __version__
from havs.configfile import load_view
from havs.core.summary import config_summary
from havs.errors import ConfigError, HavsError

DEFAULT_CONFIG = "/etc/havs/havs.yaml"
DEFAULT_SOCKET = "/run/havs/control.sock"
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _cmd_check(args: argparse.Namespace) -> int:
    view = load_view(args.config, args.node, host_checks=not args.offline)
    print(config_summary(view, args.config))
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from havs.startup import EarlySignals

    early = EarlySignals.install()  # before the heavy imports: a SIGHUP now must not kill the daemon
    from havs.daemon import Daemon  # the daemon pulls in asyncio, uvloop, aiohttp's parser: only when needed
    from havs.edge.probe import install_uvloop
    from havs.log import resolve_format, setup_logging
    from havs.startup import raise_open_files_limit

    log = setup_logging(args.log_format, node=args.node, level=args.log_level)
    raise_open_files_limit()
    # uvloop (a dependency): a health check costs ~40 % less CPU than on asyncio's own loop (bench_load);
    # without it (a build that lacks it) the daemon runs the same on asyncio's
    install_uvloop()

    async def main() -> int:
        return await Daemon(args.config, args.node, log, resolve_format(args.log_format, sys.stdout), early).run()

    try:
        return asyncio.run(main())
    except ConfigError as e:  # the file named on the command line is bad: every problem, no traceback
        for problem in e.problems:
            log.error("config.invalid", problem=str(problem))
        return 1


def _control(args: argparse.Namespace, message: dict[str, object], *, timeout: float = 5.0,
             check: bool = True) -> dict[str, Any]:
    from havs.edge.control import request

    try:
        reply = request(args.socket, message, timeout=timeout)
    except FileNotFoundError:
        raise HavsError(f"no daemon listening on {args.socket} (is havs running?)") from None
    except PermissionError:
        raise HavsError(f"{args.socket}: permission denied (the control socket is root-only)") from None
    except (OSError, ValueError) as e:
        raise HavsError(f"{args.socket}: {e}") from None
    if check and not reply.get("ok"):
        raise HavsError(str(reply.get("error", "the daemon refused")))
    return reply


def _cmd_status(args: argparse.Namespace) -> int:
    from havs.core.status import render_status

    snap = _control(args, {"command": "status"})["status"]
    print(json.dumps(snap, indent=2, default=str) if args.json else render_status(snap))
    return EXIT_OK


def _cmd_maintenance(args: argparse.Namespace) -> int:
    reply = _control(args, {"command": args.command, "server": args.server, "service": args.service})
    for line in reply.get("servers", []):
        print(f"{args.command}: {line}")
    return EXIT_OK


def _cmd_reload(args: argparse.Namespace) -> int:
    """Waits for the daemon's outcome: non-zero, with the file's problems, when it kept the running config."""
    from havs.control_shell import RELOAD_WAIT

    reply = _control(args, {"command": "reload", "force": True} if args.force else {"command": "reload"},
                     timeout=RELOAD_WAIT + 10, check=False)
    if "outcome" not in reply:  # a daemon from before reloads answered with their outcome
        if not reply.get("ok"):
            raise HavsError(str(reply.get("error", "the daemon refused")))
        print("reload requested" + (" (forced)" if args.force else "")
              + "; the daemon logs config.reloaded, config.reload_failed or config.reload_refused")
        return EXIT_OK
    for line in reply.get("problems") or ():
        print(line, file=sys.stderr)
    if not reply.get("ok"):
        raise HavsError(str(reply.get("error", "the reload failed")))
    for line in reply.get("warnings") or ():
        print(f"forced past: {line}")
    print(f"reloaded ({reply['outcome']})")
    return EXIT_OK


def _cmd_apply(args: argparse.Namespace) -> int:
    """One reconcile pass without the daemon: every real server taken as healthy (`ipvsadm -R`, declared)."""
    from havs.core.desired import build_desired
    from havs.core.ipvs_diff import describe
    from havs.edge.ipvs import IpvsSocket
    from havs.reconcile import Reconciler

    view = load_view(args.config, args.node)
    desired = build_desired(view.config)

    async def run() -> int:
        async with IpvsSocket() as ipvs:
            result = await Reconciler(ipvs).run_pass(desired, purge_unmanaged=view.config.settings.purge_unmanaged,
                                                     dry_run=args.dry_run)
        if result.error is not None:
            raise HavsError(f"IPVS {result.stage} failed: {result.error}")
        if args.dry_run:
            for op in result.ops:
                print(f"would {_op_verb(op)} {describe(op)}")
            return EXIT_OK
        for op, error in result.results:
            if error is None:
                print(f"{_op_verb(op)} {describe(op)}")
            else:
                print(f"FAILED {_op_verb(op)} {describe(op)}: {error}", file=sys.stderr)
        return EXIT_ERROR if result.failed_ops else EXIT_OK

    return asyncio.run(run())


def _op_verb(op: object) -> str:
    name = type(op).__name__  # AddService → "add service"
    return "".join(" " + c.lower() if c.isupper() else c for c in name).strip()


def _cmd_ipvs(args: argparse.Namespace) -> int:
    from havs.core.ipvs_format import format_connections, format_list, format_save, to_json
    from havs.edge.ipvs import IpvsSocket

    async def run() -> int:
        async with IpvsSocket() as ipvs:
            if args.ipvs_command == "zero":
                await ipvs.zero()
                return EXIT_OK
            if args.ipvs_command == "save":
                sys.stdout.write(format_save(await ipvs.dump()))
                return EXIT_OK
            if args.connections:
                sys.stdout.write(format_connections(ipvs.connections()))
                return EXIT_OK
            table, info = await ipvs.dump(), await ipvs.info()
            if args.json:
                print(json.dumps(to_json(table, info=info), indent=2))
            else:
                mode = "stats" if args.stats else "rate" if args.rate else "plain"
                sys.stdout.write(format_list(table, mode, info=info))
            return EXIT_OK

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="havs",
        description="High-availability controller for Linux IPVS: health checks, IPVS reconciler, VRRP.",
    )
    parser.add_argument("--version", action="version", version=f"havs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
        p.add_argument("--node", help="which director of the config this is (default: by hostname)")

    p = sub.add_parser("check", help="validate the config and summarise it for this node (like keepalived -t)")
    with_config(p)
    p.add_argument("--offline", action="store_true",
                   help="skip what only the director can say (its interfaces exist, notify commands are executable)")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("run", help="run the daemon")
    with_config(p)
    p.add_argument("--log-format", choices=["auto", "json", "console"], default="auto",
                   help="json when not on a tty or under systemd (default auto)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    p.set_defaults(func=_cmd_run)

    def with_socket(p: argparse.ArgumentParser) -> None:
        p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"the daemon's control socket ({DEFAULT_SOCKET})")

    p = sub.add_parser("status", help="what the running daemon sees: VRRP, services, real servers")
    with_socket(p)
    p.add_argument("--json", action="store_true", help="machine-readable snapshot")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("reload", help="re-read the config (same as SIGHUP); a bad file keeps the running one")
    with_socket(p)
    p.add_argument("--force", action="store_true",
                   help="apply a valid config even if it would release the VIP or take out many real servers")
    p.set_defaults(func=_cmd_reload)

    for name, text in (("drain", "maintenance: weight 0, existing connections finish (kept across restarts)"),
                       ("enable", "end maintenance for a real server")):
        p = sub.add_parser(name, help=text)
        p.add_argument("server", help="real server address or address:port")
        p.add_argument("--service", help="only in this service, e.g. 'TCP 192.168.0.108:80'")
        with_socket(p)
        p.set_defaults(func=_cmd_maintenance)

    p = sub.add_parser("apply", help="one reconcile pass now, all real servers taken as healthy (like ipvsadm -R)")
    with_config(p)
    p.add_argument("--dry-run", action="store_true", help="print the operations, change nothing")
    p.set_defaults(func=_cmd_apply)

    p = sub.add_parser("ipvs", help="the kernel's IPVS table, as ipvsadm shows it")
    ipvs = p.add_subparsers(dest="ipvs_command", metavar="list|save|zero", required=True)
    q = ipvs.add_parser("list", help="like ipvsadm -Ln")
    shown = q.add_mutually_exclusive_group()
    shown.add_argument("--stats", action="store_true", help="like ipvsadm -Ln --stats")
    shown.add_argument("--rate", action="store_true", help="like ipvsadm -Ln --rate")
    shown.add_argument("--connections", "-c", action="store_true", help="like ipvsadm -Lnc")
    shown.add_argument("--json", action="store_true", help="the table as JSON")
    ipvs.add_parser("save", help="like ipvsadm -Sn (restorable with ipvsadm -R)")
    ipvs.add_parser("zero", help="like ipvsadm -Z")
    p.set_defaults(func=_cmd_ipvs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        n = len(e.problems)
        print(f"havs: {n} problem{'s' if n != 1 else ''} in the config", file=sys.stderr)
        return EXIT_ERROR
    except HavsError as e:
        print(f"havs: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130

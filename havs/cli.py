"""The `havs` command: argument parsing and exit codes; the work happens elsewhere."""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence

from havs import __version__
from havs.core.config import load_config, select_node
from havs.core.model import NodeView
from havs.core.summary import config_summary
from havs.errors import ConfigError, HavsError

DEFAULT_CONFIG = "/etc/havs/havs.yaml"
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def load_view(path: str, node: str | None) -> NodeView:
    config = load_config(path)
    return select_node(config, node, socket.gethostname(), path)


def _cmd_check(args: argparse.Namespace) -> int:
    view = load_view(args.config, args.node)
    print(config_summary(view, args.config))
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from havs.daemon import run_daemon  # the daemon pulls in asyncio, aiohttp, pyroute2: only when needed

    return run_daemon(args.config, args.node, log_format=args.log_format, log_level=args.log_level)


def _cmd_status(args: argparse.Namespace) -> int:
    from havs.status_client import show_status

    return show_status(args.socket, as_json=args.json)


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
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("run", help="run the daemon")
    with_config(p)
    p.add_argument("--log-format", choices=["auto", "json", "console"], default="auto",
                   help="json when not on a tty or under systemd (default auto)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("status", help="what the running daemon sees: VRRP, services, real servers")
    p.add_argument("--socket", default="/run/havs/control.sock", help="the daemon's control socket")
    p.add_argument("--json", action="store_true", help="machine-readable snapshot")
    p.set_defaults(func=_cmd_status)
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

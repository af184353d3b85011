"""The ``postbote`` command line. It only parses arguments, loads the Config and
calls into app.py or the store; every error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from postbote import __version__
from postbote.config import Config, load_config
from postbote.errors import ConfigError, NotFound, PostboteError
from postbote.store.sqlite import SqliteStore, normalize_address

Handler = Callable[[argparse.Namespace, Config], int]

_USER_ACTIONS = ("add", "list", "remove", "passwd")
_GRANT_ACTIONS = ("allow-sender", "disallow-sender")  # these take ADDRESS and PATTERN


def _store(config: Config) -> SqliteStore:
    from postbote.app import open_store

    return open_store(config)


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    from postbote.app import serve

    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(config)
    return 0


def cmd_check_config(args: argparse.Namespace, config: Config) -> int:
    from postbote.tls import server_context

    if config.tls.cert is not None and config.tls.key is not None:
        server_context(config.tls.cert, config.tls.key)
    print(f"{config.source}: OK")
    return 0


def cmd_domain(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    try:
        if args.action == "add":
            for name in args.names:
                store.add_domain(name)
        elif args.action == "remove":
            for name in args.names:
                store.remove_domain(name)
        else:
            for name in store.list_domains():
                print(name)
    finally:
        store.close()
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise PostboteError("no terminal to ask for the password: use --password-stdin")
        try:
            password = getpass.getpass("Password: ")
            if getpass.getpass("Repeat: ") != password:
                raise PostboteError("passwords do not match")
        except EOFError:
            raise PostboteError("no password given") from None
    if not password:
        raise PostboteError("empty password")
    return password


def cmd_user(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    try:
        if args.action == "add":
            store.add_user(args.address, _read_password(args))
        elif args.action == "passwd":
            store.set_password(args.address, _read_password(args))
        elif args.action == "remove":
            store.remove_user(args.address)
        elif args.action == "allow-sender":
            store.allow_sender(args.address, args.pattern)
        elif args.action == "disallow-sender":
            store.disallow_sender(args.address, args.pattern)
        elif args.action == "senders":
            _print_sender_grants(store, args.address)
        else:
            for address in store.list_users(args.address):
                print(address)
    finally:
        store.close()
    return 0


def _print_sender_grants(store: SqliteStore, address: str) -> None:
    """One grant a line; an unknown user is an error, not an empty list."""
    user = normalize_address(address)
    if user not in store.list_users(user.rpartition("@")[2]):
        raise NotFound(f"no such user: {user}")
    for pattern in store.sender_grants(user):
        print(pattern)


def cmd_alias(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    try:
        if args.action == "add":
            if not args.targets:
                raise PostboteError("alias add needs at least one TARGET")
            store.add_alias(args.alias, args.targets)
        elif args.action == "remove":
            store.remove_alias(args.alias, args.targets)
        else:
            for alias, targets in store.list_aliases():
                print(f"{alias} -> {', '.join(targets)}")
    finally:
        store.close()
    return 0


def cmd_queue(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    try:
        entries = store.list_queue()
    finally:
        store.close()
    if args.json:
        print(json.dumps([dataclasses.asdict(e) for e in entries], indent=2))
        return 0
    if not entries:
        print("queue is empty")
        return 0
    print(f"{'ID':<28} {'STATE':<9} {'TRIES':>5} {'SIZE':>8}  SENDER -> RECIPIENT")
    for e in entries:
        sender = e.sender or "<>"
        row = f"{e.message_id:<28} {e.state:<9} {e.attempts:>5} {e.size:>8}"
        print(f"{row}  {sender} -> {e.recipient}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (like every other error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"postbote: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="postbote", description="postbote mail server")
    p.add_argument("--version", action="version", version=f"postbote {__version__}")
    common = _Parser(add_help=False)
    common.add_argument(
        "-c", "--config", type=Path, help="config file (default: ./postbote.toml if present)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("serve", parents=[common], help="run the mail server")
    s.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    s.set_defaults(handler=cmd_serve)

    s = sub.add_parser("check-config", parents=[common], help="validate the configuration")
    s.set_defaults(handler=cmd_check_config)

    s = sub.add_parser("domain", parents=[common], help="manage local domains")
    s.add_argument("action", choices=["add", "list", "remove"])
    s.add_argument("names", nargs="*", metavar="DOMAIN")
    s.set_defaults(handler=cmd_domain)

    s = sub.add_parser(
        "user",
        parents=[common],
        help="manage users (mailboxes) and what else they may send as",
        description="PATTERN (allow-sender, disallow-sender): an address, or @domain for "
        "every address in a domain.",
    )
    s.add_argument("action", choices=[*_USER_ACTIONS, *_GRANT_ACTIONS, "senders"])
    s.add_argument("address", nargs="?", metavar="ADDRESS")
    s.add_argument("pattern", nargs="?", metavar="PATTERN")
    s.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    s.set_defaults(handler=cmd_user)

    s = sub.add_parser("alias", parents=[common], help="manage aliases")
    s.add_argument("action", choices=["add", "list", "remove"])
    s.add_argument("alias", nargs="?", metavar="ALIAS")
    s.add_argument("targets", nargs="*", metavar="TARGET")
    s.set_defaults(handler=cmd_alias)

    s = sub.add_parser("queue", parents=[common], help="inspect the outbound queue")
    s.add_argument("action", choices=["list"])
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(handler=cmd_queue)
    return p


_NEEDS_ARG = {
    ("domain", "add"),
    ("domain", "remove"),
    ("user", "add"),
    ("user", "remove"),
    ("user", "passwd"),
    ("user", "senders"),
    ("user", "allow-sender"),
    ("user", "disallow-sender"),
    ("alias", "add"),
    ("alias", "remove"),
}


def _check_pattern(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``user`` takes a PATTERN only with allow-sender/disallow-sender, and needs it there."""
    if args.command != "user":
        return
    if args.action in _GRANT_ACTIONS and not args.pattern:
        parser.error(f"user {args.action} needs ADDRESS and PATTERN")
    if args.action not in _GRANT_ACTIONS and args.pattern is not None:
        parser.error(f"unrecognized arguments: {args.pattern}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    action = getattr(args, "action", None)
    if (args.command, action) in _NEEDS_ARG:
        value = (
            getattr(args, "names", None)
            or getattr(args, "address", None)
            or getattr(args, "alias", None)
        )
        if not value:
            parser.error(f"{args.command} {action} needs an argument")
    _check_pattern(parser, args)
    try:
        config = load_config(args.config)
        handler: Handler = args.handler
        return handler(args, config)
    except ConfigError as exc:
        print(f"postbote: config error: {exc}", file=sys.stderr)
        return 2
    except PostboteError as exc:
        print(f"postbote: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"postbote: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

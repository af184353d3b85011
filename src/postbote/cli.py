"""The ``postbote`` command line. It only parses arguments, loads the Config and
calls into app.py or the store; every error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import getpass
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from postbote import __version__, cli_mailauth
from postbote.config import Config, load_config
from postbote.envelope import Envelope
from postbote.errors import ConfigError, NotFound, PostboteError
from postbote.store.interfaces import QUEUE_STATES, QueuedMessage, QueueEntry
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


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (like every other error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"postbote: error: {message} (see {self.prog} --help)\n")


# --- queue ------------------------------------------------------------------------------------

_QUEUE_HELP = """\
recipient states: queued (not tried yet), inflight (being delivered), deferred
(waits for its next attempt), delivered, failed, held (parked by the operator).

--json (list, show): times are UNIX seconds (float), or null.
  list: an array of objects, one per recipient, with the keys message_id,
    recipient, sender, state, attempts, next_attempt, last_reply, size, created,
    last_attempt, remote_mta, report (the DSN still to be sent, or null).
  show: an object with message_id, size, created, envelope (as stored: sender,
    recipients [{address, notify, orcpt}], received_at, ...), entries (the list
    objects of this message) and headers (the header section as text, or null
    if the message file cannot be read).
"""
_QUEUE_ACTIONS = {  # action -> (help, takes an ID, has --json)
    "list": ("every recipient of every queued message, oldest first", False, True),
    "show": (
        "ID: one message's envelope, each recipient's state, attempts, last reply and"
        " next attempt, and the message's header section",
        True,
        True,
    ),
    "flush": ("try every deferred recipient again now", False, False),
    "retry": ("ID: try the message's deferred recipients again now", True, False),
    "hold": ("ID: park the message's waiting recipients until released", True, False),
    "release": ("ID: end the hold; the recipients are tried again now", True, False),
    "delete": ("ID: remove the message from the queue; no bounce is sent", True, False),
}
_SCHEDULED = ("queued", "deferred")
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def _add_queue_parser(sub: argparse._SubParsersAction[_Parser], common: _Parser) -> None:
    q = sub.add_parser(
        "queue",
        parents=[common],
        help="inspect and manage the outbound queue",
        epilog=_QUEUE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = q.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=_Parser)
    late = _Parser(add_help=False)  # -c also after the action; SUPPRESS keeps one given before
    late.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS, help="config file")
    for name, (text, takes_id, takes_json) in _QUEUE_ACTIONS.items():
        what = text.removeprefix("ID: ")
        description = f"{what[:1].upper()}{what[1:]}."
        a = actions.add_parser(name, parents=[late], help=text, description=description)
        if takes_id:
            a.add_argument("message_id", metavar="ID", help="the queue id (see queue list)")
        if takes_json:
            a.add_argument("--json", action="store_true", help="JSON (see postbote queue -h)")
    q.set_defaults(handler=cmd_queue)


def cmd_queue(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    try:
        now = time.time()
        if args.action == "list":
            _queue_list(store.list_queue(), now, as_json=args.json)
        elif args.action == "show":
            _queue_show(store, args.message_id, now, as_json=args.json)
        elif args.action == "flush":
            print(f"{_recipients(store.flush(now))} due now")
        elif args.action == "retry":
            print(f"{args.message_id}: {_recipients(store.retry(args.message_id, now))} due now")
        elif args.action == "hold":
            print(f"{args.message_id}: {_recipients(store.hold(args.message_id))} held")
        elif args.action == "release":
            n = store.release(args.message_id, now)
            print(f"{args.message_id}: {_recipients(n)} released, due now")
        else:
            store.delete(args.message_id)
            print(f"{args.message_id}: deleted")
    finally:
        store.close()
    return 0


def _queue_list(entries: Sequence[QueueEntry], now: float, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps([dataclasses.asdict(e) for e in entries], indent=2))
        return
    if not entries:
        print("queue is empty")
        return
    rows = [
        (
            e.message_id,
            e.state,
            str(e.attempts),
            _next_attempt(e, now),
            _size(e.size),
            _safe(e.sender or "<>"),
            _safe(e.recipient),
        )
        for e in entries
    ]
    header = ("ID", "STATE", "TRIES", "NEXT ATTEMPT", "SIZE", "SENDER", "RECIPIENT")
    for line in _table(header, rows, right={2, 4}):
        print(line)
    states = collections.Counter(e.state for e in entries)
    counts = ", ".join(f"{states[s]} {s}" for s in QUEUE_STATES if states[s])
    messages = len({e.message_id for e in entries})
    print(
        f"\n{messages} message{'s' if messages != 1 else ''}, {_recipients(len(entries))}: {counts}"
    )


def _queue_show(store: SqliteStore, message_id: str, now: float, *, as_json: bool) -> None:
    msg = store.show(message_id)
    try:
        head: str | None = _header_section(store.queued_body(message_id))
        unreadable = ""
    except PostboteError as exc:
        head, unreadable = None, str(exc)
    if as_json:
        data = {
            "message_id": msg.message_id,
            "size": msg.size,
            "created": msg.created,
            "envelope": json.loads(msg.envelope.to_json()),
            "entries": [dataclasses.asdict(e) for e in msg.entries],
            "headers": head,
        }
        print(json.dumps(data, indent=2))
        return
    for line in _envelope_lines(msg):
        print(line)
    for e in msg.entries:
        print()
        for line in _entry_lines(e, msg.envelope, now):
            print(line)
    print("\nHeader section:")
    if head is None:
        print(f"  unavailable: {_safe(unreadable)}")
    for line in (head or "").splitlines():
        print(f"  {_safe(line)}")


def _envelope_lines(msg: QueuedMessage) -> list[str]:
    env = msg.envelope
    origin = ""
    if env.helo or env.client_ip:
        origin = f" from {_safe(env.helo) or '?'} [{_safe(env.client_ip) or '?'}]"
    if env.tls:
        origin += " with TLS"
    if env.auth:
        origin += f", authenticated as {_safe(env.auth)}"
    options = [o for o in (env.body_type, "SMTPUTF8" if env.smtputf8 else None) if o]
    if env.ret:
        options.append(f"RET={env.ret}")  # RFC 3461 §4.3
    if env.envid:
        options.append(f"ENVID={_safe(env.envid)}")  # RFC 3461 §4.4
    lines = [
        f"Message   {msg.message_id}",
        f"Sender    {_safe(env.sender) or '<>'}",
        f"Received  {_local_time(msg.created)}{origin}",
        f"Size      {msg.size} bytes" + (f" ({_size(msg.size)})" if msg.size >= 1024 else ""),
    ]
    if options:
        lines.append(f"Options   {' '.join(options)}")
    return lines


def _entry_lines(e: QueueEntry, env: Envelope, now: float) -> list[str]:
    tries = f"{e.attempts} attempt{'s' if e.attempts != 1 else ''}"
    fields = [("state", f"{e.state}, {tries}")]
    dsn = next((r for r in env.recipients if r.address == e.recipient), None)
    if dsn is not None and dsn.notify:
        fields.append(("notify", ",".join(dsn.notify)))  # RFC 3461 §4.1
    if e.last_attempt is not None:
        mta = f" ({_safe(e.remote_mta)})" if e.remote_mta else ""
        fields.append(("last attempt", f"{_local_time(e.last_attempt)}{mta}"))
    if e.last_reply:
        fields.append(("last reply", _safe(" ".join(e.last_reply.split()))))
    if e.state in _SCHEDULED:
        fields.append(("next attempt", f"{_local_time(e.next_attempt)} ({_next_attempt(e, now)})"))
    if e.report:
        fields.append(("report", f"{e.report} (DSN to be sent)"))
    return [f"Recipient {_safe(e.recipient)}"] + [f"  {k:<13} {v}" for k, v in fields]


def _header_section(body: bytes) -> str:
    """The message's header section: everything before the first empty line (RFC 5322 §2.1)."""
    end = _HEADER_END.search(body)
    head = body if end is None else body[: end.start()]
    return head.decode("utf-8", errors="replace")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Columns as wide as their widest cell; ``right`` ones right-aligned; the last as is."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    out = []
    for row in (header, *rows):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row[:-1])
        ]
        out.append("  ".join([*cells, row[-1]]))
    return out


def _next_attempt(e: QueueEntry, now: float) -> str:
    """ "now", "in 5 min", ... for a recipient waiting its turn; "-" for the others."""
    if e.state not in _SCHEDULED:
        return "-"
    seconds = round(e.next_attempt - now)
    if seconds <= 0:
        return "now"
    if seconds < 60:
        return f"in {seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"in {minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"in {hours} h {minutes} min" if minutes else f"in {hours} h"
    days, hours = divmod(hours, 24)
    return f"in {days} d {hours} h" if hours else f"in {days} d"


def _local_time(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).astimezone().isoformat(" ", "seconds")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def _recipients(n: int) -> str:
    return f"{n} recipient{'s' if n != 1 else ''}"


def _safe(text: str) -> str:
    """Text from the network, safe for a terminal: control characters as escapes."""
    return _UNSAFE.sub(lambda m: ascii(m.group())[1:-1], text)


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

    _add_queue_parser(sub, common)
    cli_mailauth.add_parsers(sub, common)
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
    ("dkim", "keygen"),
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
            or getattr(args, "domain", None)
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

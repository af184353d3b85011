"""Configuration: one TOML file, read once into frozen dataclasses.

This module owns the file format. `load_config` finds and reads the file and `parse_config`
validates it by walking the dataclasses below: each field's type says how a TOML value is
converted and `metadata["check"]` adds a rule, so a new section is one dataclass plus one
field on `Config`. Every problem is one `ConfigError` line naming the file and the key.
The reference for users is docs/configuration.md.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import socket
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from postbote.errors import ConfigError

DEFAULT_PATH = Path("postbote.toml")
EMBEDDED_SOURCE = "<embedded default>"

# What applies when there is no configuration file at all: unprivileged ports on loopback.
EMBEDDED_DEFAULT_TOML = """\
data_dir = "postbote-data"

[listen]
smtp = ["127.0.0.1:2525"]
submission = ["127.0.0.1:2587"]
submissions = ["127.0.0.1:2465"]
pop3 = ["127.0.0.1:2110"]
pop3s = ["127.0.0.1:2995"]
"""


def _error(source: str, text: str) -> ConfigError:
    return ConfigError(" ".join(f"{source}: {text}".splitlines()))


def _show(value: Any) -> str:
    """A TOML value as the user wrote it, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "an array"
    return "a table" if isinstance(value, dict) else "a date/time"


Check = Callable[[Any], str | None]  # a rule on one converted value: None or what is wrong


def _rule(check: Check) -> dict[str, Check]:
    """Field metadata that makes the schema walker apply `check`."""
    return {"check": check}


def _greater_than(limit: float) -> dict[str, Check]:
    return _rule(lambda v: None if v > limit else f"must be greater than {limit}, got {_show(v)}")


def _at_least(limit: float, why: str = "") -> dict[str, Check]:
    return _rule(lambda v: None if v >= limit else f"must be at least {limit}{why}, got {_show(v)}")


def _one_of(*choices: str) -> dict[str, Check]:
    expected = ", ".join(map(_show, choices))
    return _rule(lambda v: None if v in choices else f"must be one of {expected}, got {_show(v)}")


# RFC 1035 §2.3.4 (63 octets a label, 253 a name); RFC 1123 §2.1 (letters, digits, hyphens).
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _hostname_problem(value: str) -> str | None:
    labels = value.split(".")
    if len(value) <= 253 and all(map(_LABEL.fullmatch, labels)) and not labels[-1].isdigit():
        return None
    return f'{_show(value)} is not a domain name (like "mail.example.com")'


def _banner_problem(value: str) -> str | None:
    # RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets; keep the greeting well inside.
    if len(value) <= 200 and all(" " <= ch <= "~" for ch in value):
        return None
    return "must be at most 200 printable ASCII characters"


def _port_problem(value: int) -> str | None:
    return None if 0 < value <= 65535 else f"must be a port number 1..65535, got {value}"


def _retry_problem(values: tuple[float, ...]) -> str | None:
    if not values:
        return "needs at least one interval"
    if any(v <= 0 for v in values):
        return "intervals must be greater than 0"
    return None


def _readable_problem(value: Path | None) -> str | None:
    if value is not None:
        try:
            with open(value, "rb"):
                pass
        except OSError as err:
            return f"cannot read {value}: {err.strerror}"
    return None


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One address to listen on. `host` is a normalized IP address literal."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        """Parse "host:port" or "[v6]:port"; raise ValueError saying what is wrong."""
        match = re.fullmatch(r"(?:\[([^\]]*)\]|([^:\[\]]*)):([0-9]{1,5})", text)
        if match is None:
            if text.count(":") > 1 and not text.startswith("["):
                raise ValueError('expected "[address]:port" for an IPv6 address')
            raise ValueError('expected "host:port"')
        v6, host, port = match.groups()
        if int(port) > 65535:
            raise ValueError("port must be 0..65535")
        try:
            if v6 is not None:
                return cls(str(ipaddress.IPv6Address(v6)), int(port))
            ipv4 = "127.0.0.1" if host == "localhost" else str(ipaddress.IPv4Address(host))
            return cls(ipv4, int(port))
        except ValueError:
            raise ValueError('host must be an IP address or "localhost"') from None


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """Addresses per listener kind; an empty tuple means that kind is not started."""

    smtp: tuple[ListenAddress, ...] = ()  # MX, port 25 in production
    submission: tuple[ListenAddress, ...] = ()  # RFC 6409: 587, STARTTLS
    submissions: tuple[ListenAddress, ...] = ()  # RFC 8314 §3.3: 465, implicit TLS
    pop3: tuple[ListenAddress, ...] = ()  # RFC 1939: 110, with STLS (RFC 2595)
    pop3s: tuple[ListenAddress, ...] = ()  # RFC 8314 §3.3: 995, implicit TLS


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Certificate chain and key (PEM). None: a self-signed pair in data_dir/tls/ (tls.py)."""

    cert: Path | None = field(default=None, metadata=_rule(_readable_problem))
    key: Path | None = field(default=None, metadata=_rule(_readable_problem))


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Bounds on what one client or all of them may use."""

    max_message_size: int = field(default=26214400, metadata=_greater_than(0))  # RFC 1870 SIZE
    max_recipients: int = field(default=1000, metadata=_at_least(100, " (RFC 5321 §4.5.3.1.8)"))
    max_connections: int = field(default=1000, metadata=_greater_than(0))
    max_connections_per_ip: int = field(default=50, metadata=_greater_than(0))
    # All message bodies held in memory at once (arriving, or waiting for the spool).
    max_message_memory: int = field(default=256 * 1024 * 1024, metadata=_greater_than(0))
    max_errors: int = field(default=10, metadata=_greater_than(0))
    command_timeout: float = field(default=300.0, metadata=_greater_than(0))  # RFC 5321 §4.5.3.2.7
    data_timeout: float = field(default=180.0, metadata=_greater_than(0))  # RFC 5321 §4.5.3.2.5
    shutdown_grace: float = field(default=30.0, metadata=_at_least(0))


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """Protocol choices of the SMTP listeners."""

    bare_newlines: str = field(default="reject", metadata=_one_of("reject", "normalize"))
    # RFC 5321 §4.3.1: the greeting is "220 <hostname> <banner>".
    banner: str = field(default="postbote", metadata=_rule(_banner_problem))


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    """Disk use of the durable spool under data_dir."""

    min_free_space: int = field(default=100 * 1024 * 1024, metadata=_at_least(0))  # else 452 4.3.1
    segment_size: int = field(default=64 * 1024 * 1024, metadata=_greater_than(0))


_AUTH_MODES = _one_of("required", "optional", "off")


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """SMTP AUTH (RFC 4954) per listener kind, and the brute-force limits."""

    smtp: str = field(default="off", metadata=_AUTH_MODES)  # MX: no logins
    submission: str = field(default="required", metadata=_AUTH_MODES)  # RFC 6409 §4.1
    submissions: str = field(default="required", metadata=_AUTH_MODES)
    max_failures_per_ip: int = field(default=10, metadata=_greater_than(0))
    max_failures_per_account: int = field(default=10, metadata=_greater_than(0))
    failure_window: float = field(default=900.0, metadata=_greater_than(0))
    lockout: float = field(default=900.0, metadata=_at_least(0))
    delay_after: int = field(default=3, metadata=_at_least(0))


@dataclass(frozen=True, slots=True)
class SubmissionConfig:
    """What submission does to users' messages (RFC 6409 §8)."""

    privacy: bool = True  # omit the client's IP address from Received: for logged-in users


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """ "host", "host:port", "[v6]:port" or a bare IPv6 address -> (host, port)."""
    match = re.fullmatch(r"\[([^\]]+)\](?::([0-9]{1,5}))?|([^:\[\]]+)(?::([0-9]{1,5}))?", text)
    if match is None:
        try:
            return str(ipaddress.IPv6Address(text)), default_port
        except ValueError:
            raise ValueError('expected "host" or "host:port"') from None
    v6, v6_port, host, port = match.groups()
    port_text = v6_port if v6 is not None else port
    number = int(port_text) if port_text else default_port
    if not 0 < number <= 65535:
        raise ValueError("port must be 1..65535")
    return (v6 if v6 is not None else host), number


def _hostports_problem(default_port: int) -> Check:
    def check(values: tuple[str, ...] | str) -> str | None:
        for text in (values,) if isinstance(values, str) else values:
            if isinstance(values, str) and not text:
                return None  # an empty smarthost: none
            try:
                parse_hostport(text, default_port)
            except ValueError as err:
                return f"{_show(text)}: {err}"
        return None

    return check


def _domains_problem(values: tuple[str, ...]) -> str | None:
    for value in values:
        problem = _hostname_problem(value)
        if problem:
            return problem
    return None


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """The resolver every part uses (outbound MX lookups; SPF/DKIM/DMARC later)."""

    # "ip" or "ip:port"; empty: the system's /etc/resolv.conf. Tests point it at a local server.
    nameservers: tuple[str, ...] = field(default=(), metadata=_rule(_hostports_problem(53)))
    timeout: float = field(default=5.0, metadata=_greater_than(0))


@dataclass(frozen=True, slots=True)
class SmarthostConfig:
    """Relay outgoing mail through one server (for hosts whose port 25 is blocked)."""

    host: str = field(default="", metadata=_rule(_hostports_problem(587)))  # "" = by MX
    tls: str = field(default="starttls", metadata=_one_of("starttls", "implicit"))
    username: str = ""
    password: str = ""
    domains: tuple[str, ...] = field(default=(), metadata=_rule(_domains_problem))  # () = all


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """The outbound queue: how and how patiently mail goes to other servers."""

    port: int = field(default=25, metadata=_rule(_port_problem))  # RFC 5321 §4.5.4.2; tests: others
    concurrency: int = field(default=100, metadata=_greater_than(0))
    per_domain_concurrency: int = field(default=10, metadata=_greater_than(0))
    connect_timeout: float = field(default=30.0, metadata=_greater_than(0))
    # RFC 5321 §4.5.3.2: 5 min for the greeting and commands, 10 min after end of data.
    command_timeout: float = field(default=300.0, metadata=_greater_than(0))
    data_timeout: float = field(default=600.0, metadata=_greater_than(0))
    # Seconds to wait after the 1st, 2nd, ... failed attempt; the last value repeats.
    retry: tuple[float, ...] = field(
        default=(300.0, 600.0, 1200.0, 2400.0, 4800.0, 7200.0), metadata=_rule(_retry_problem)
    )
    max_lifetime: float = field(default=5 * 86400.0, metadata=_greater_than(0))  # then bounce
    delay_warning: float = field(default=4 * 3600.0, metadata=_at_least(0))  # 0: never
    tls: str = field(default="opportunistic", metadata=_one_of("opportunistic", "none"))
    # Domains whose servers must offer STARTTLS with a certificate valid for the MX name.
    require_tls: tuple[str, ...] = field(default=(), metadata=_rule(_domains_problem))
    ca_file: Path | None = field(default=None, metadata=_rule(_readable_problem))
    smarthost: SmarthostConfig = field(default_factory=SmarthostConfig)


def _networks_problem(values: tuple[str, ...]) -> str | None:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f'{_show(value)} is not a network (like "192.0.2.0/24" or "::1")'
    return None


@dataclass(frozen=True, slots=True)
class ChecksConfig:
    """SPF, DKIM and DMARC on mail from the internet (the smtp listener, no login)."""

    spf: str = field(default="tag", metadata=_one_of("reject", "tag", "off"))
    dkim: str = field(default="tag", metadata=_one_of("reject", "tag", "off"))
    dmarc: str = field(default="policy", metadata=_one_of("policy", "tag", "off"))
    authserv_id: str = field(  # RFC 8601 §2.5; "" = hostname
        default="", metadata=_rule(lambda v: _hostname_problem(v) if v else None)
    )
    # Programs on this machine are not "the internet": no checks for them.
    trusted_networks: tuple[str, ...] = field(
        default=("127.0.0.0/8", "::1/128"), metadata=_rule(_networks_problem)
    )
    timeout: float = field(default=30.0, metadata=_greater_than(0))


@dataclass(frozen=True, slots=True)
class Pop3Config:
    """Mailbox access over POP3 (RFC 1939)."""

    # Passwords only over TLS (STLS or POP3S); true also allows them in plaintext from
    # clients on this machine (127.0.0.0/8, ::1), e.g. a local fetchmail.
    plaintext_on_loopback: bool = False
    autologout: float = field(default=600.0, metadata=_at_least(600, " (RFC 1939 §3)"))
    login_delay: int = field(default=0, metadata=_at_least(0))  # RFC 2449 §6.5; 0: none


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; built only by `load_config`, `parse_config` or by tests."""

    hostname: str = field(metadata=_rule(_hostname_problem))
    data_dir: Path  # absolute
    listen: ListenConfig
    tls: TlsConfig
    limits: LimitsConfig
    smtp: SmtpConfig
    spool: SpoolConfig
    source: str = field(metadata={"internal": True})  # the file path or EMBEDDED_SOURCE
    auth: AuthConfig = field(default_factory=AuthConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    pop3: Pop3Config = field(default_factory=Pop3Config)
    checks: ChecksConfig = field(default_factory=ChecksConfig)


def _listen_problem(listen: ListenConfig) -> tuple[str, str] | None:
    seen: dict[ListenAddress, str] = {}
    for kind in fields(listen):
        for i, address in enumerate(getattr(listen, kind.name)):
            key = f"{kind.name}[{i}]"
            if address in seen and address.port != 0:
                return key, f'"{address}" is also listed as {seen[address]}'
            seen[address] = f"listen.{key}"
    return None


def _tls_problem(tls: TlsConfig) -> tuple[str, str] | None:
    if (tls.cert is None) != (tls.key is None):
        return ("key" if tls.key is None else "cert"), "missing: give tls.cert and tls.key together"
    return None


def _limits_problem(limits: LimitsConfig) -> tuple[str, str] | None:
    if limits.max_message_memory < limits.max_message_size:
        return "max_message_memory", (
            f"must be at least max_message_size ({limits.max_message_size}), "
            f"got {limits.max_message_memory}"
        )
    return None


# Rules across the fields of one section: (key within the section, what is wrong) or None.
_SECTION_CHECKS: dict[type[Any], Callable[[Any], tuple[str, str] | None]] = {
    ListenConfig: _listen_problem,
    TlsConfig: _tls_problem,
    LimitsConfig: _limits_problem,
}


@dataclass(frozen=True, slots=True)
class _Context:
    source: str
    base_dir: Path  # absolute; relative paths in the file are relative to it

    def error(self, key: str, text: str) -> ConfigError:
        return _error(self.source, f"{key}: {text}" if key else text)

    def expected(self, key: str, what: str, value: Any) -> ConfigError:
        return self.error(key, f"expected {what}, got {_show(value)}")


_SCALARS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _to_scalar(type_: type[Any], value: Any, key: str, ctx: _Context) -> Any:
    if type_ is float and type(value) is int:  # an integer is fine where a number is expected
        value = float(value)
    if type(value) is not type_ or (type_ is float and not math.isfinite(value)):
        raise ctx.expected(key, _SCALARS[type_], value)  # note: type(True) is bool, not int
    return value


def _to_path(value: Any, key: str, ctx: _Context) -> Path:
    text = _to_scalar(str, value, key, ctx)
    if not text or "\0" in text:
        raise ctx.expected(key, "a path", value)
    return Path(os.path.abspath(ctx.base_dir / Path(text).expanduser()))


def _to_listen(value: Any, key: str, ctx: _Context) -> ListenAddress:
    text = _to_scalar(str, value, key, ctx)
    try:
        return ListenAddress.parse(text)
    except ValueError as err:
        raise ctx.error(key, f"{_show(text)}: {err}") from None


_CONVERTERS: dict[Any, Callable[[Any, str, _Context], Any]] = {
    Path: _to_path,
    ListenAddress: _to_listen,
}


def _convert(type_: Any, value: Any, key: str, ctx: _Context) -> Any:
    """Turn one TOML value into `type_`, the annotation of the field at `key`."""
    if get_origin(type_) in (Union, types.UnionType):  # `X | None`: None only when absent
        (type_,) = [arg for arg in get_args(type_) if arg is not type(None)]
    if type_ in _SCALARS:
        return _to_scalar(type_, value, key, ctx)
    if type_ in _CONVERTERS:
        return _CONVERTERS[type_](value, key, ctx)
    if isinstance(type_, type) and is_dataclass(type_):
        if not isinstance(value, dict):
            raise ctx.expected(key, "a table", value)
        return _build(type_, value, f"{key}.", ctx, {})
    if get_origin(type_) is tuple:  # tuple[X, ...] is a TOML array; one item may stand alone
        item = get_args(type_)[0]
        if not isinstance(value, list):
            return (_convert(item, value, key, ctx),)
        return tuple(_convert(item, v, f"{key}[{i}]", ctx) for i, v in enumerate(value))
    raise TypeError(f"no converter for {type_!r} at {key}")  # a bug in a dataclass here


def _build(
    cls: type[Any], table: Mapping[str, Any], prefix: str, ctx: _Context, preset: dict[str, Any]
) -> Any:
    """Build dataclass `cls` from a TOML table; `preset` supplies values the table lacks."""
    known = {f.name: f for f in fields(cls) if not f.metadata.get("internal")}
    for name in table:
        if name not in known:
            raise ctx.error("", f'unknown key "{prefix}{name}"')
    hints = get_type_hints(cls)
    values = dict(preset)
    for name, spec in known.items():
        key = prefix + name
        if name in table:
            values[name] = _convert(hints[name], table[name], key, ctx)
            check = spec.metadata.get("check")
            problem = check(values[name]) if check else None
            if problem:
                raise ctx.error(key, problem)
        elif is_dataclass(hints[name]):
            values[name] = _convert(hints[name], {}, key, ctx)
    built = cls(**values)
    cross_check = _SECTION_CHECKS.get(cls)
    found = cross_check(built) if cross_check else None
    if found:
        raise ctx.error(prefix + found[0], found[1])
    return built


def default_hostname() -> str:
    """This machine's fully qualified name, or "localhost" when it has no usable one."""
    name = socket.getfqdn().rstrip(".")
    if _hostname_problem(name) or name.split(".")[-1].lower().startswith("localdomain"):
        return "localhost"
    return name


_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def parse_config(text: str, source: str, base_dir: Path) -> Config:
    """Validate TOML `text`; `source` names it in errors, relative paths start at `base_dir`."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        at = _POSITION.search(message)
        if at:
            message = f"line {at[1]}: {message[: at.start()]} (column {at[2]})"
        raise _error(source, message) from None
    ctx = _Context(source, Path(os.path.abspath(base_dir)))
    preset: dict[str, Any] = {"data_dir": ctx.base_dir / "postbote-data", "source": source}
    if "hostname" not in table:
        preset["hostname"] = default_hostname()
    return _build(Config, table, "", ctx, preset)  # type: ignore[no-any-return]


def embedded_default() -> Config:
    """The configuration used when there is no file: loopback ports, ./postbote-data."""
    return parse_config(EMBEDDED_DEFAULT_TOML, EMBEDDED_SOURCE, Path.cwd())


def load_config(path: Path | None = None) -> Config:
    """Read `path`; None means ./postbote.toml if it exists, else `embedded_default()`."""
    if path is None:
        if not DEFAULT_PATH.exists():
            return embedded_default()
        path = DEFAULT_PATH
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _error(source, "no such file") from None
    except OSError as err:
        raise _error(source, f"cannot read: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise _error(source, f"not UTF-8 text (byte {err.start})") from None
    return parse_config(text, source, path.absolute().parent)

"""Tests for postbote.config: defaults, the file format and every kind of error."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postbote.config import (
    DEFAULT_PATH,
    Config,
    LimitsConfig,
    ListenAddress,
    ListenConfig,
    SmtpConfig,
    SpoolConfig,
    TlsConfig,
    default_hostname,
    embedded_default,
    load_config,
    parse_config,
)
from postbote.errors import ConfigError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def parse(text: str, base_dir: Path = Path("/srv/postbote")) -> Config:
    return parse_config(text, "t.toml", base_dir)


def error_of(text: str, base_dir: Path = Path("/srv/postbote")) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text, base_dir)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    return message


@pytest.fixture
def machine_name(monkeypatch: pytest.MonkeyPatch) -> str:
    """Make the machine's name known and avoid any name lookup."""
    monkeypatch.setattr(socket, "getfqdn", lambda *args: "mx.example.org")
    return "mx.example.org"


# -- the embedded default ---------------------------------------------------------------------


def test_embedded_default_values(machine_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = embedded_default()
    assert config.hostname == machine_name
    assert config.data_dir == tmp_path / "postbote-data"
    assert config.data_dir.is_absolute()
    assert config.listen == ListenConfig(
        smtp=(ListenAddress("127.0.0.1", 2525),),
        submission=(ListenAddress("127.0.0.1", 2587),),
        submissions=(ListenAddress("127.0.0.1", 2465),),
        pop3=(ListenAddress("127.0.0.1", 2110),),
        pop3s=(ListenAddress("127.0.0.1", 2995),),
    )
    assert config.tls == TlsConfig(cert=None, key=None)
    assert config.limits == LimitsConfig()
    assert config.limits.max_message_size == 26214400
    assert config.limits.max_recipients == 1000
    assert config.limits.command_timeout == 300.0
    assert config.limits.data_timeout == 180.0
    assert config.limits.shutdown_grace == 30.0
    assert config.smtp == SmtpConfig(bare_newlines="reject", banner="postbote")
    assert config.spool == SpoolConfig(min_free_space=100 * 2**20, segment_size=64 * 2**20)
    assert config.source == "<embedded default>"


def test_no_file_means_embedded_default(machine_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config() == embedded_default()
    assert not (tmp_path / "postbote-data").exists()  # loading creates nothing


def test_postbote_toml_in_cwd_is_used(machine_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / DEFAULT_PATH).write_text('[listen]\nsmtp = ["127.0.0.1:0"]\n')
    config = load_config()
    assert config.source == "postbote.toml"
    assert config.listen == ListenConfig(smtp=(ListenAddress("127.0.0.1", 0),))


def test_explicit_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"^{re.escape(str(missing))}: no such file$"):
        load_config(missing)


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'banner = "Gr\xfc\xdfe"\n')
    with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8 text \(byte 12\)$"):
        load_config(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.toml"
    path.write_text("")
    path.chmod(0)
    with pytest.raises(ConfigError, match=r"secret\.toml: cannot read: Permission denied$"):
        load_config(path)


def test_default_hostname_from_machine(machine_name):
    assert default_hostname() == machine_name


@pytest.mark.parametrize("junk", ["localhost.localdomain", "localhost6.localdomain6", "a_b", ""])
def test_default_hostname_falls_back_to_localhost(junk, monkeypatch):
    monkeypatch.setattr(socket, "getfqdn", lambda *args: junk)
    assert default_hostname() == "localhost"


# -- a full file ------------------------------------------------------------------------------

FULL = """\
hostname = "mail.example.com"
data_dir = "/var/lib/postbote"

[listen]
smtp = ["0.0.0.0:25", "[::]:25"]
submission = ["[2001:db8::1]:587"]
submissions = "localhost:465"

[tls]
cert = "certs/fullchain.pem"
key = "certs/privkey.pem"

[limits]
max_message_size = 52428800
max_recipients = 100
max_connections = 2000
max_connections_per_ip = 20
max_errors = 5
command_timeout = 60
data_timeout = 120.5
shutdown_grace = 0

[smtp]
bare_newlines = "normalize"
banner = "ESMTP ready"

[spool]
min_free_space = 0
segment_size = 1048576
"""


def test_full_file_round_trip(tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "fullchain.pem").write_text("not checked here")
    (tmp_path / "certs" / "privkey.pem").write_text("not checked here")
    path = tmp_path / "postbote.toml"
    path.write_text(FULL)
    assert load_config(path) == Config(
        hostname="mail.example.com",
        data_dir=Path("/var/lib/postbote"),
        listen=ListenConfig(
            smtp=(ListenAddress("0.0.0.0", 25), ListenAddress("::", 25)),
            submission=(ListenAddress("2001:db8::1", 587),),
            submissions=(ListenAddress("127.0.0.1", 465),),
        ),
        tls=TlsConfig(cert=tmp_path / "certs/fullchain.pem", key=tmp_path / "certs/privkey.pem"),
        limits=LimitsConfig(
            max_message_size=52428800,
            max_recipients=100,
            max_connections=2000,
            max_connections_per_ip=20,
            max_errors=5,
            command_timeout=60.0,
            data_timeout=120.5,
            shutdown_grace=0.0,
        ),
        smtp=SmtpConfig(bare_newlines="normalize", banner="ESMTP ready"),
        spool=SpoolConfig(min_free_space=0, segment_size=1048576),
        source=str(path),
    )


def test_integer_where_a_number_is_expected_becomes_float():
    timeout = parse("[limits]\ncommand_timeout = 60\n").limits.command_timeout
    assert timeout == 60.0
    assert type(timeout) is float


def test_config_is_frozen():
    config = parse("")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hostname = "other.example"  # type: ignore[misc]


def test_documented_example_is_valid(tmp_path):
    """The complete example in docs/configuration.md loads (with stand-in certificate files)."""
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), re.S)
    example = next(b for b in blocks if "[limits]" in b and "[spool]" in b)
    for name in ("cert", "key"):
        stand_in = tmp_path / f"{name}.pem"
        stand_in.write_text("stand-in")
        example = re.sub(rf'(?m)^{name} = ".*"$', f'{name} = "{stand_in}"', example)
    config = parse(example)
    assert config.tls.cert == tmp_path / "cert.pem"
    assert config.listen.smtp and config.listen.submission and config.listen.submissions


# -- paths and listeners ----------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "tls.pem").write_text("x")
    (etc / "postbote.toml").write_text(
        'data_dir = "../var/postbote"\n[tls]\ncert = "tls.pem"\nkey = "./tls.pem"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("../etc/postbote.toml"))
    assert config.data_dir == tmp_path / "var" / "postbote"
    assert config.tls.cert == config.tls.key == etc / "tls.pem"
    assert config.source == "../etc/postbote.toml"


def test_data_dir_defaults_next_to_the_file(tmp_path):
    path = tmp_path / "postbote.toml"
    path.write_text('hostname = "mail.example.com"\n')
    assert load_config(path).data_dir == tmp_path / "postbote-data"


def test_absent_listener_kinds_are_not_started():
    config = parse('[listen]\nsubmissions = ["127.0.0.1:465"]\n')
    assert config.listen.smtp == ()
    assert config.listen.submission == ()
    assert config.listen.submissions == (ListenAddress("127.0.0.1", 465),)


def test_no_listen_section_means_nothing_listens():
    assert parse('hostname = "mail.example.com"\n').listen == ListenConfig()


@pytest.mark.parametrize(
    ("text", "host", "port", "shown"),
    [
        ("127.0.0.1:2525", "127.0.0.1", 2525, "127.0.0.1:2525"),
        ("localhost:25", "127.0.0.1", 25, "127.0.0.1:25"),
        ("0.0.0.0:0", "0.0.0.0", 0, "0.0.0.0:0"),
        ("[::1]:2525", "::1", 2525, "[::1]:2525"),
        ("[::]:25", "::", 25, "[::]:25"),
        ("[0:0:0:0:0:0:0:1]:65535", "::1", 65535, "[::1]:65535"),
    ],
)
def test_listen_address_forms(text, host, port, shown):
    address = ListenAddress.parse(text)
    assert (address.host, address.port) == (host, port)
    assert str(address) == shown


@given(st.ip_addresses(), st.integers(0, 65535))
def test_listen_address_str_parses_back(ip, port):
    address = ListenAddress(str(ip), port)
    assert ListenAddress.parse(str(address)) == address
    assert ipaddress.ip_address(address.host) == ip


# -- errors: each names the file and the key, on one line -------------------------------------

ERRORS = [
    ("foo = 1", 't.toml: unknown key "foo"'),
    ("[nope]\na = 1", 't.toml: unknown key "nope"'),
    ("[limits]\nfoo = 1", 't.toml: unknown key "limits.foo"'),
    ("[listen]\nimap = []", 't.toml: unknown key "listen.imap"'),
    ("limits = 5", "t.toml: limits: expected a table, got 5"),
    (
        '[limits]\nmax_message_size = "abc"',
        't.toml: limits.max_message_size: expected an integer, got "abc"',
    ),
    ("[limits]\nmax_errors = true", "t.toml: limits.max_errors: expected an integer, got true"),
    ("[limits]\nmax_errors = 1.5", "t.toml: limits.max_errors: expected an integer, got 1.5"),
    ("[limits]\ndata_timeout = false", "t.toml: limits.data_timeout: expected a number, got false"),
    ("[limits]\ndata_timeout = inf", "t.toml: limits.data_timeout: expected a number, got inf"),
    (
        "[limits]\nmax_message_size = 0",
        "t.toml: limits.max_message_size: must be greater than 0, got 0",
    ),
    (
        "[limits]\ncommand_timeout = -1.5",
        "t.toml: limits.command_timeout: must be greater than 0, got -1.5",
    ),
    (
        "[limits]\nmax_recipients = 99",
        "t.toml: limits.max_recipients: must be at least 100 (RFC 5321 §4.5.3.1.8), got 99",
    ),
    ("[spool]\nmin_free_space = -1", "t.toml: spool.min_free_space: must be at least 0, got -1"),
    (
        "[limits]\nmax_message_size = 2000\nmax_message_memory = 1000",
        "t.toml: limits.max_message_memory: must be at least max_message_size (2000), got 1000",
    ),
    (
        '[smtp]\nbare_newlines = "strip"',
        't.toml: smtp.bare_newlines: must be one of "reject", "normalize", got "strip"',
    ),
    (
        '[smtp]\nbanner = "hi\\r\\n250 injected"',
        "t.toml: smtp.banner: must be at most 200 printable ASCII characters",
    ),
    ("hostname = 7", "t.toml: hostname: expected a string, got 7"),
    (
        'hostname = "mail_server"',
        't.toml: hostname: "mail_server" is not a domain name (like "mail.example.com")',
    ),
    (
        'hostname = "-mail.example.com"',
        't.toml: hostname: "-mail.example.com" is not a domain name (like "mail.example.com")',
    ),
    (
        'hostname = "192.0.2.1"',
        't.toml: hostname: "192.0.2.1" is not a domain name (like "mail.example.com")',
    ),
    ('data_dir = ""', 't.toml: data_dir: expected a path, got ""'),
    ("data_dir = []", "t.toml: data_dir: expected a string, got an array"),
    (
        '[listen]\nsmtp = ["127.0.0.1:25", "nonsense"]',
        't.toml: listen.smtp[1]: "nonsense": expected "host:port"',
    ),
    ('[listen]\nsmtp = ["127.0.0.1"]', 't.toml: listen.smtp[0]: "127.0.0.1": expected "host:port"'),
    (
        '[listen]\nsmtp = ["127.0.0.1:"]',
        't.toml: listen.smtp[0]: "127.0.0.1:": expected "host:port"',
    ),
    (
        '[listen]\nsmtp = "127.0.0.1:65536"',
        't.toml: listen.smtp: "127.0.0.1:65536": port must be 0..65535',
    ),
    (
        '[listen]\nsubmission = ["mail.example.com:587"]',
        "t.toml: listen.submission[0]: "
        '"mail.example.com:587": host must be an IP address or "localhost"',
    ),
    (
        '[listen]\nsubmission = [":587"]',
        't.toml: listen.submission[0]: ":587": host must be an IP address or "localhost"',
    ),
    (
        '[listen]\nsmtp = ["[127.0.0.1]:25"]',
        't.toml: listen.smtp[0]: "[127.0.0.1]:25": host must be an IP address or "localhost"',
    ),
    (
        '[listen]\nsmtp = ["::1:25"]',
        't.toml: listen.smtp[0]: "::1:25": expected "[address]:port" for an IPv6 address',
    ),
    ("[listen]\nsmtp = [25]", "t.toml: listen.smtp[0]: expected a string, got 25"),
    (
        '[listen]\nsmtp = ["127.0.0.1:25"]\nsubmission = ["localhost:25"]',
        't.toml: listen.submission[0]: "127.0.0.1:25" is also listed as listen.smtp[0]',
    ),
    (
        '[tls]\ncert = "/nonexistent/x.pem"\nkey = "/nonexistent/y.pem"',
        "t.toml: tls.cert: cannot read /nonexistent/x.pem: No such file or directory",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_error_messages(text, expected):
    assert error_of(text) == expected


def test_same_port_zero_twice_is_fine():
    config = parse('[listen]\nsmtp = ["127.0.0.1:0"]\nsubmission = ["127.0.0.1:0"]\n')
    assert config.listen.smtp == config.listen.submission


@pytest.mark.parametrize(("given_key", "missing_key"), [("cert", "key"), ("key", "cert")])
def test_cert_and_key_go_together(tmp_path, given_key, missing_key):
    (tmp_path / "x.pem").write_text("x")
    message = error_of(f'[tls]\n{given_key} = "x.pem"\n', tmp_path)
    assert message == f"t.toml: tls.{missing_key}: missing: give tls.cert and tls.key together"


def test_cert_that_is_a_directory(tmp_path):
    (tmp_path / "key.pem").write_text("x")
    message = error_of('[tls]\ncert = "."\nkey = "key.pem"\n', tmp_path)
    assert message == f"t.toml: tls.cert: cannot read {tmp_path}: Is a directory"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('hostname = "mail.example.com"\n[limits\n', 2),
        ('hostname = "a"\n\nbanner = \n', 3),
        ("[limits]\nmax_errors = 1\nmax_errors = 2\n", 3),
    ],
)
def test_toml_syntax_error_names_the_line(text, line):
    message = error_of(text)
    assert re.fullmatch(rf"t\.toml: line {line}: \S.* \(column \d+\)", message), message


def test_toml_error_at_end_of_document():
    assert error_of('smtp = ["a"').startswith("t.toml: ")

"""The ``postbote`` command line, run as a real process (``python -m postbote``).

Every command is checked through its output, its exit code and the SQLite file it
changes; every error must be one line on stderr, a non-zero exit and no traceback.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import postbote
from postbote import passwords

DOMAIN = "example.test"
ALICE = f"alice@{DOMAIN}"
PASSWORD = "s3cret-Pässword"


@dataclass
class Cli:
    config: Path

    def run(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """``postbote COMMAND -c CONFIG ARGS...``; stdin is given (empty: at EOF)."""
        argv = [sys.executable, "-m", "postbote", args[0], "-c", str(self.config), *args[1:]]
        return subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.config.parent,
        )

    def ok(self, *args: str, stdin: str = "") -> str:
        result = self.run(*args, stdin=stdin)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        return result.stdout

    def query(self, sql: str, *args: str) -> list[tuple[object, ...]]:
        """Read the store's SQLite file directly."""
        conn = sqlite3.connect(self.config.parent / "data" / "postbote.db")
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def password_hash(self, address: str) -> str:
        rows = self.query("SELECT password_hash FROM users WHERE address = ?", address)
        assert len(rows) == 1, f"no user {address}"
        return str(rows[0][0])


def make_cli(root: Path) -> Cli:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "postbote.toml"
    config.write_text(
        f'hostname = "mx.{DOMAIN}"\ndata_dir = "data"\n[listen]\nsmtp = ["127.0.0.1:0"]\n'
    )
    return Cli(config)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return make_cli(tmp_path)


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """example.test with alice; used only by commands that must fail (and change nothing)."""
    c = make_cli(tmp_path_factory.mktemp("populated"))
    c.ok("domain", "add", DOMAIN)
    c.ok("user", "add", ALICE, "--password-stdin", stdin=PASSWORD + "\n")
    return c


# --- commands that work -----------------------------------------------------------------------


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "postbote", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout == f"postbote {postbote.__version__}\n"


def test_domain_add_list_remove(cli: Cli) -> None:
    assert cli.ok("domain", "list") == ""
    cli.ok("domain", "add", DOMAIN, "Other.Test")
    assert cli.ok("domain", "list").splitlines() == [DOMAIN, "other.test"]
    cli.ok("domain", "remove", "other.test")
    assert cli.ok("domain", "list").splitlines() == [DOMAIN]


def test_domain_remove_refused_while_users_exist(cli: Cli) -> None:
    cli.ok("domain", "add", DOMAIN)
    cli.ok("user", "add", ALICE, "--password-stdin", stdin=PASSWORD + "\n")
    line = one_line_error(cli.run("domain", "remove", DOMAIN))
    assert DOMAIN in line and "user" in line
    assert cli.ok("domain", "list").splitlines() == [DOMAIN]
    cli.ok("user", "remove", ALICE)
    cli.ok("domain", "remove", DOMAIN)
    assert cli.ok("domain", "list") == ""


def test_user_add_with_password_stdin(cli: Cli) -> None:
    cli.ok("domain", "add", DOMAIN)
    result = cli.run("user", "add", "Alice@Example.Test", "--password-stdin", stdin=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr  # never echoed
    assert cli.ok("user", "list").splitlines() == [ALICE]
    assert cli.ok("user", "list", DOMAIN).splitlines() == [ALICE]
    stored = cli.password_hash(ALICE)
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    assert passwords.verify_password(stored, PASSWORD)


def test_user_passwd(cli: Cli) -> None:
    cli.ok("domain", "add", DOMAIN)
    cli.ok("user", "add", ALICE, "--password-stdin", stdin=PASSWORD + "\n")
    old = cli.password_hash(ALICE)
    result = cli.run("user", "passwd", ALICE, "--password-stdin", stdin="new password\n")
    assert result.returncode == 0, result.stderr
    assert "new password" not in result.stdout + result.stderr
    new = cli.password_hash(ALICE)
    assert new != old and new.startswith("$argon2id$")
    assert passwords.verify_password(new, "new password")
    assert not passwords.verify_password(new, PASSWORD)


def test_user_remove(cli: Cli) -> None:
    cli.ok("domain", "add", DOMAIN)
    cli.ok("user", "add", ALICE, "--password-stdin", stdin=PASSWORD + "\n")
    cli.ok("user", "remove", ALICE)
    assert cli.ok("user", "list") == ""
    assert ALICE in one_line_error(cli.run("user", "remove", ALICE))


def test_alias_add_list_remove(cli: Cli) -> None:
    cli.ok("domain", "add", DOMAIN)
    cli.ok("alias", "add", f"team@{DOMAIN}", ALICE, f"bob@{DOMAIN}", "Ext@Remote.Test")
    cli.ok("alias", "add", f"jörg@{DOMAIN}", ALICE)
    assert cli.ok("alias", "list").splitlines() == [
        f"jörg@{DOMAIN} -> {ALICE}",
        f"team@{DOMAIN} -> Ext@remote.test, {ALICE}, bob@{DOMAIN}",
    ]
    cli.ok("alias", "remove", f"team@{DOMAIN}", f"bob@{DOMAIN}")
    assert f"team@{DOMAIN} -> Ext@remote.test, {ALICE}" in cli.ok("alias", "list").splitlines()
    cli.ok("alias", "remove", f"team@{DOMAIN}")
    cli.ok("alias", "remove", f"jörg@{DOMAIN}")
    assert cli.ok("alias", "list") == ""


def test_user_sender_grants(cli: Cli) -> None:
    cli.ok("domain", "add", DOMAIN)
    cli.ok("user", "add", ALICE, "--password-stdin", stdin=PASSWORD + "\n")
    assert cli.ok("user", "senders", ALICE) == ""
    assert cli.ok("user", "allow-sender", "Alice@Example.Test", "Boss@Remote.TEST") == ""
    cli.ok("user", "allow-sender", ALICE, "*@Other.Test.")
    cli.ok("user", "allow-sender", ALICE, "@bücher.test")
    assert cli.ok("user", "senders", "ALICE@example.test").splitlines() == [
        "@other.test",
        "@xn--bcher-kva.test",
        "boss@remote.test",
    ]
    assert cli.query("SELECT address, pattern FROM sender_grants ORDER BY 2") == [
        (ALICE, "@other.test"),
        (ALICE, "@xn--bcher-kva.test"),
        (ALICE, "boss@remote.test"),
    ]
    assert "already" in one_line_error(cli.run("user", "allow-sender", ALICE, "@other.test"))
    cli.ok("user", "disallow-sender", ALICE, "@other.test")
    assert cli.ok("user", "senders", ALICE).splitlines() == [
        "@xn--bcher-kva.test",
        "boss@remote.test",
    ]
    cli.ok("user", "remove", ALICE)  # the grants go with the user
    assert cli.query("SELECT * FROM sender_grants") == []


def test_queue_list_empty(cli: Cli) -> None:
    assert cli.ok("queue", "list") == "queue is empty\n"
    assert json.loads(cli.ok("queue", "list", "--json")) == []


def test_check_config_ok(cli: Cli) -> None:
    assert cli.ok("check-config") == f"{cli.config}: OK\n"


# --- commands that fail -----------------------------------------------------------------------

BAD_CONFIGS = {
    "unknown-key": ('data_dir = "data"\nbogus = 1\n', '"bogus"'),
    "wrong-type": ('[limits]\nmax_errors = "ten"\n', "limits.max_errors"),
    "bad-value": ("[limits]\nmax_errors = 0\n", "limits.max_errors"),
    "bad-listen": ('[listen]\nsmtp = ["mail.example:25"]\n', "listen.smtp"),
    "toml-syntax": ("[limits\n", "line 1"),
    "missing-tls-key": ('[tls]\ncert = "postbote.toml"\n', "tls.key"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_check_config_failing(cli: Cli, case: str) -> None:
    text, key = BAD_CONFIGS[case]
    cli.config.write_text(text)
    line = one_line_error(cli.run("check-config"))
    assert key in line and str(cli.config) in line, line


def test_check_config_missing_file(tmp_path: Path) -> None:
    line = one_line_error(Cli(tmp_path / "absent.toml").run("check-config"))
    assert "absent.toml" in line


SECRET = "Hunter2-not-echoed"
FAILING = {
    "domain-exists": (("domain", "add", DOMAIN), ""),
    "domain-invalid": (("domain", "add", "bad domain"), ""),
    "domain-remove-unknown": (("domain", "remove", "nope.test"), ""),
    "user-not-local": (("user", "add", "bob@nope.test", "--password-stdin"), SECRET + "\n"),
    "user-exists": (("user", "add", ALICE, "--password-stdin"), SECRET + "\n"),
    "user-empty-password": (("user", "add", f"bob@{DOMAIN}", "--password-stdin"), "\n"),
    "user-invalid": (("user", "add", "no-at-sign", "--password-stdin"), SECRET + "\n"),
    "user-remove-unknown": (("user", "remove", f"bob@{DOMAIN}"), ""),
    "passwd-unknown": (("user", "passwd", f"bob@{DOMAIN}", "--password-stdin"), SECRET + "\n"),
    "user-list-unknown-domain": (("user", "list", "nope.test"), ""),
    "alias-no-target": (("alias", "add", f"team@{DOMAIN}"), ""),
    "alias-is-user": (("alias", "add", ALICE, f"bob@{DOMAIN}"), ""),
    "alias-not-local": (("alias", "add", "team@nope.test", ALICE), ""),
    "alias-remove-unknown": (("alias", "remove", f"team@{DOMAIN}"), ""),
    "allow-sender-unknown-user": (("user", "allow-sender", f"bob@{DOMAIN}", "@other.test"), ""),
    "allow-sender-bad-pattern": (("user", "allow-sender", ALICE, "other.test"), ""),
    "allow-sender-bad-domain": (("user", "allow-sender", ALICE, "*@a..b"), ""),
    "disallow-sender-absent": (("user", "disallow-sender", ALICE, "@other.test"), ""),
    "senders-unknown-user": (("user", "senders", f"bob@{DOMAIN}"), ""),
    "senders-unknown-domain": (("user", "senders", "bob@nope.test"), ""),
    "senders-invalid": (("user", "senders", "no-at-sign"), ""),
}


@pytest.mark.parametrize("case", sorted(FAILING))
def test_error_is_one_line(populated: Cli, case: str) -> None:
    args, stdin = FAILING[case]
    line = one_line_error(populated.run(*args, stdin=stdin))
    assert line.startswith("postbote: "), line
    assert SECRET not in line
    # Nothing changed.
    assert populated.query("SELECT name FROM domains") == [(DOMAIN,)]
    assert populated.query("SELECT address FROM users") == [(ALICE,)]
    assert populated.query("SELECT alias FROM aliases") == []
    assert populated.query("SELECT * FROM sender_grants") == []


def test_password_prompt_without_tty_is_one_line_error(populated: Cli) -> None:
    one_line_error(populated.run("user", "passwd", ALICE))


@pytest.mark.parametrize(
    "args", [("domain", "add"), ("user", "frobnicate", ALICE)], ids=["missing-arg", "bad-action"]
)
def test_usage_error_is_one_line(populated: Cli, args: tuple[str, ...]) -> None:
    result = populated.run(*args)
    assert result.returncode == 2
    one_line_error(result)


USAGE_ERRORS = {
    "allow-no-pattern": (("user", "allow-sender", ALICE), "PATTERN"),
    "disallow-no-pattern": (("user", "disallow-sender", ALICE), "PATTERN"),
    "allow-nothing": (("user", "allow-sender"), "needs an argument"),
    "senders-nothing": (("user", "senders"), "needs an argument"),
    "remove-extra": (("user", "remove", ALICE, "extra"), "unrecognized arguments: extra"),
    "senders-extra": (("user", "senders", ALICE, "@x.test"), "unrecognized arguments: @x.test"),
}


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_sender_grant_usage_error_is_one_line(populated: Cli, case: str) -> None:
    args, expected = USAGE_ERRORS[case]
    result = populated.run(*args)
    assert result.returncode == 2
    assert expected in one_line_error(result)
    assert populated.query("SELECT address FROM users") == [(ALICE,)]
    assert populated.query("SELECT * FROM sender_grants") == []

"""The Postfix anchors of anchors.md: `smtp-sink` (the protocol ceiling) and a real
Postfix instance configured in a private temporary directory.

The Postfix instance has its own config_directory, queue_directory and data_directory
under a temporary directory, listens with smtpd on 127.0.0.1 only, has DNS off, logs to a
file (there is no /dev/log), and delivers example.test with virtual(8) into a Maildir
under the same temporary directory (as `nobody`, so no system user is needed). It needs
root (Postfix's master runs as root) and the Debian package `postfix`.

Run alone to check that the anchors start: `python bench/anchor_postfix.py`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from common import (
    DOMAIN,
    HOST,
    RECIPIENT,
    BenchError,
    count_files,
    free_port,
    is_listening,
    stop_process,
    temp_dir,
    wait_for,
)

SBIN = Path("/usr/sbin")
SMTP_SOURCE = SBIN / "smtp-source"
SMTP_SINK = SBIN / "smtp-sink"
POSTFIX = SBIN / "postfix"

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {base}/queue
data_directory = {base}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.example.test
mydomain = example.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtp_dns_support_level = disabled
maillog_file = {base}/log/postfix.log
maillog_file_prefixes = {base}/log
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {base}/vmail
virtual_mailbox_maps = inline:{{ {recipient}={domain}/{local}/ }}
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
alias_maps =
alias_database =
biff = no
"""

# No chroot anywhere; otherwise the stock services. postlogd writes maillog_file.
MASTER_CF = """\
{host}:{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
virtual unix - n n - - virtual
lmtp unix - - n - - lmtp
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


def have_postfix_tools() -> bool:
    return SMTP_SOURCE.exists() and SMTP_SINK.exists()


def postfix_version() -> str:
    try:
        out = subprocess.run(
            [str(SBIN / "postconf"), "-d", "-h", "mail_version"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return "?"
    return out.stdout.decode().strip() or "?"


class SmtpSink:
    """`smtp-sink`: accepts every message and discards it (the protocol ceiling)."""

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SmtpSink:
        self.port = free_port()
        argv = [str(SMTP_SINK)]
        if os.geteuid() == 0:  # smtp-sink refuses to keep root privileges
            argv += ["-u", "postfix" if _has_user("postfix") else "nobody"]
        argv += ["-m", "1000", f"{HOST}:{self.port}", "1000"]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if not wait_for(self._listening, 10.0):
            self.__exit__(None, None, None)
            raise BenchError("smtp-sink did not start")
        return self

    def _listening(self) -> bool:
        return self.proc is None or self.proc.poll() is not None or is_listening(self.port)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5.0)
            if self.proc.stderr is not None:
                self.proc.stderr.close()


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class PostfixInstance:
    """A private Postfix (`postfix -c DIR start` ... `postfix -c DIR stop`)."""

    def __init__(self) -> None:
        self.port = 0
        self.base = Path()
        self.maildir_new = Path()
        self._tmp: contextlib.ExitStack | None = None
        self._started = False

    def __enter__(self) -> PostfixInstance:
        if os.geteuid() != 0:
            raise BenchError("Postfix anchor needs root (its master process runs as root)")
        if not POSTFIX.exists() or not _has_user("postfix"):
            raise BenchError("Postfix is not installed (Debian package postfix)")
        self._tmp = contextlib.ExitStack()
        try:
            self.base = self._tmp.enter_context(temp_dir("bench-postfix-"))
            self._configure()
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _configure(self) -> None:
        nobody = pwd.getpwnam("nobody")
        local = RECIPIENT.split("@")[0]
        self.port = free_port()
        etc = self.base / "etc"
        for sub in ("etc", "queue", "data", "log", "vmail"):
            (self.base / sub).mkdir(mode=0o755)
        os.chown(self.base / "vmail", nobody.pw_uid, nobody.pw_gid)
        post = pwd.getpwnam("postfix")
        os.chown(self.base / "data", post.pw_uid, post.pw_gid)
        (etc / "main.cf").write_text(
            MAIN_CF.format(
                base=self.base,
                domain=DOMAIN,
                recipient=RECIPIENT,
                local=local,
                uid=nobody.pw_uid,
                gid=nobody.pw_gid,
            )
        )
        (etc / "master.cf").write_text(MASTER_CF.format(host=HOST, port=self.port))
        self.maildir_new = self.base / "vmail" / DOMAIN / local / "new"

    def _postfix(self, action: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(POSTFIX), "-c", str(self.base / "etc"), action],
            capture_output=True,
            timeout=120,
            check=False,
        )

    def _start(self) -> None:
        self._started = True  # before: an interrupted start may still leave a master
        run = self._postfix("start")
        if run.returncode != 0:
            raise BenchError(f"postfix start failed: {_text(run)} {self._log()}")
        if not wait_for(lambda: is_listening(self.port), 20.0, 0.05):
            raise BenchError(f"postfix smtpd not listening on {self.port}: {self._log()}")

    def _log(self) -> str:
        path = self.base / "log" / "postfix.log"
        with contextlib.suppress(OSError):
            return " | ".join(path.read_text(errors="replace").splitlines()[-5:])
        return "(no log)"

    def _processes(self) -> list[int]:
        """Our Postfix processes: the master of master.pid, and every process whose
        working directory is in our private directory (Postfix daemons run in
        queue_directory), so an interrupted start leaves nothing behind."""
        found: set[int] = set()
        with contextlib.suppress(OSError, ValueError, IndexError):
            found.add(int((self.base / "queue" / "pid" / "master.pid").read_text().split()[0]))
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if Path(os.readlink(entry / "cwd")).is_relative_to(self.base):
                        found.add(int(entry.name))
        return [pid for pid in found if _alive(pid)]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._started:
            self._started = False
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._postfix("stop")
            if not wait_for(lambda: not self._processes(), 20.0, 0.1):
                for pid in self._processes():
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                wait_for(lambda: not self._processes(), 5.0, 0.1)
        if self._tmp is not None:
            self._tmp.close()
            self._tmp = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.lower()
    return ""


def _text(run: subprocess.CompletedProcess[bytes]) -> str:
    return " ".join((run.stdout + run.stderr).decode(errors="replace").split())


def main() -> int:
    if not have_postfix_tools():
        print("smtp-source/smtp-sink not found: install the Debian package postfix")
        return 1
    print(f"Postfix {postfix_version()}")
    with SmtpSink() as sink:
        print(f"smtp-sink listening on {HOST}:{sink.port}")
    try:
        with PostfixInstance() as pf:
            print(f"Postfix smtpd listening on {HOST}:{pf.port}, Maildir {pf.maildir_new}")
            src = subprocess.run(
                [
                    str(SMTP_SOURCE),
                    "-s",
                    "2",
                    "-m",
                    "10",
                    "-l",
                    "1024",
                    "-f",
                    "bench@example.test",
                    "-t",
                    RECIPIENT,
                    "-M",
                    "bench.example.test",
                    f"inet:{HOST}:{pf.port}",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
            print(f"smtp-source exit {src.returncode} {_text(src)}")
            start = time.monotonic()
            done = wait_for(lambda: count_files(pf.maildir_new) >= 10, 30.0)
            print(
                f"delivered={count_files(pf.maildir_new)} ok={done} "
                f"after {time.monotonic() - start:.2f}s"
            )
    except BenchError as exc:
        print(f"Postfix anchor unavailable: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

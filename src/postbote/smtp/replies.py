"""SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 2034, RFC 3463).

Every reply except the greeting and the answer to HELO/EHLO carries an enhanced
code (RFC 2034 §3). Constants are named after their number and meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply. ``lines`` holds one or more text lines without CRLF."""

    code: int
    enhanced: str | None
    lines: tuple[str, ...]
    # The wire form, made once: most replies are module constants sent over and over.
    _wire: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        if not self.lines:
            raise ValueError("a reply needs at least one line")
        for line in self.lines:
            if "\r" in line or "\n" in line:
                raise ValueError("reply text must not contain CR or LF")

    @classmethod
    def make(cls, code: int, enhanced: str | None, *lines: str) -> Reply:
        return cls(code, enhanced, tuple(lines) if lines else ("",))

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def with_text(self, *lines: str) -> Reply:
        return Reply(self.code, self.enhanced, tuple(lines))

    def to_bytes(self) -> bytes:
        """Serialise as RFC 5321 §4.2.1: ``code-text`` lines then ``code text``."""
        if self._wire is not None:
            return self._wire
        wire = self._serialise()
        object.__setattr__(self, "_wire", wire)  # frozen: a cache, not a change of value
        return wire

    def _serialise(self) -> bytes:
        out: list[str] = []
        last = len(self.lines) - 1
        prefix = f"{self.enhanced} " if self.enhanced else ""
        for i, line in enumerate(self.lines):
            sep = " " if i == last else "-"
            text = f"{prefix}{line}" if line or prefix else ""
            out.append(f"{self.code}{sep}{text}".rstrip(" ") + "\r\n")
        return "".join(out).encode("utf-8")

    def __str__(self) -> str:
        return self.to_bytes().decode("utf-8", "replace").rstrip("\r\n")


# Positive
C211_SYSTEM_STATUS = Reply.make(211, "2.0.0", "OK")
C214_HELP = Reply.make(
    214, "2.0.0", "See RFC 5321; commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY"
)
C221_CLOSING = Reply.make(221, "2.0.0", "Bye")
C235_AUTH_OK = Reply.make(235, "2.7.0", "Authentication successful")
C250_OK = Reply.make(250, "2.0.0", "OK")
C250_SENDER_OK = Reply.make(250, "2.1.0", "Sender OK")
C250_RCPT_OK = Reply.make(250, "2.1.5", "Recipient OK")
C250_RESET = Reply.make(250, "2.0.0", "Reset OK")
C252_CANNOT_VRFY = Reply.make(
    252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"
)
C220_READY_TLS = Reply.make(220, "2.0.0", "Ready to start TLS")
C354_START_INPUT = Reply.make(354, None, "End data with <CR><LF>.<CR><LF>")

# Transient
C421_SHUTTING_DOWN = Reply.make(421, "4.3.2", "Service shutting down, closing connection")
C421_TIMEOUT = Reply.make(421, "4.4.2", "Timeout, closing connection")
C421_TOO_MANY_ERRORS = Reply.make(421, "4.7.0", "Too many errors, closing connection")
C421_TOO_MANY_CONNECTIONS = Reply.make(421, "4.7.0", "Too many connections, try again later")
C451_LOCAL_ERROR = Reply.make(451, "4.3.0", "Local error in processing, try again later")
C452_INSUFFICIENT_STORAGE = Reply.make(452, "4.3.1", "Insufficient system storage")
C452_TOO_MANY_RECIPIENTS = Reply.make(452, "4.5.3", "Too many recipients")
C454_TLS_UNAVAILABLE = Reply.make(454, "4.7.0", "TLS not available")

# Permanent
C500_SYNTAX_ERROR = Reply.make(500, "5.5.2", "Syntax error, command unrecognized")
C500_UNKNOWN_COMMAND = Reply.make(500, "5.5.1", "Command unrecognized")
C500_LINE_TOO_LONG = Reply.make(500, "5.5.2", "Line too long")
C500_BARE_NEWLINE = Reply.make(500, "5.5.2", "Bare CR or LF in command not allowed")
C501_SYNTAX_PARAMS = Reply.make(501, "5.5.4", "Syntax error in parameters or arguments")
C501_BAD_ADDRESS = Reply.make(501, "5.1.3", "Bad address syntax")
C501_BAD_SENDER_ADDRESS = Reply.make(501, "5.1.7", "Bad sender address syntax")
C502_NOT_IMPLEMENTED = Reply.make(502, "5.5.1", "Command not implemented")
C503_BAD_SEQUENCE = Reply.make(503, "5.5.1", "Bad sequence of commands")
C504_PARAM_NOT_IMPLEMENTED = Reply.make(504, "5.5.4", "Command parameter not implemented")
C530_AUTH_REQUIRED = Reply.make(530, "5.7.0", "Authentication required")
C550_MAILBOX_UNAVAILABLE = Reply.make(550, "5.1.1", "No such user here")
C550_BARE_NEWLINE = Reply.make(550, "5.6.11", "Bare CR or LF in message not allowed")
C552_MESSAGE_TOO_BIG = Reply.make(552, "5.3.4", "Message size exceeds fixed maximum message size")
C552_LINE_TOO_LONG = Reply.make(552, "5.3.4", "Message text line too long")
C553_NOT_ALLOWED_UTF8 = Reply.make(
    553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter"
)
C554_RELAY_DENIED = Reply.make(554, "5.7.1", "Relay access denied")
C554_NO_VALID_RECIPIENTS = Reply.make(554, "5.5.1", "No valid recipients")

"""POP3 responses: status lines, multi-line responses and message transparency.

Owns the exact bytes the POP3 core sends: the fixed ``+OK``/``-ERR`` lines with their
RFC 2449 §8 / RFC 3206 response codes, the multi-line framing (RFC 1939 §3: dot-stuffed
lines ending with ``.CRLF``) and the transformations of a stored message for RETR and
TOP (CRLF normalisation, the header/body split). Pure functions of their inputs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from postbote.errors import LocalProtocolError

# RFC 2449 §4: a response line is at most 512 octets including CRLF. We keep texts given
# by the glue well below that, leaving room for "-ERR [CODE] ".
MAX_TEXT = 400
# RFC 2449 §3: resp-code = "[" resp-level *("/" resp-level) "]", resp-level = 1*schar;
# we accept upper-case codes such as AUTH, IN-USE, SYS/TEMP, LOGIN-DELAY.
_RESP_CODE = re.compile(r"\A[A-Z0-9-]+(?:/[A-Z0-9-]+)*\Z")
_NEWLINES = re.compile(rb"\r\n|\r|\n")


def ok(text: str = "") -> bytes:
    """``+OK text`` (RFC 1939 §3)."""
    return (f"+OK {text}" if text else "+OK").encode() + b"\r\n"


def err(text: str, code: str | None = None) -> bytes:
    """``-ERR [code] text`` (RFC 1939 §3; code per RFC 2449 §8, RFC 3206)."""
    prefix = f"-ERR [{code}] " if code else "-ERR "
    return (prefix + text).encode() + b"\r\n"


def check_text(text: str) -> None:
    """Refuse a response text from the glue that would break the framing."""
    if len(text) > MAX_TEXT or any(c in text for c in "\r\n\0"):
        raise LocalProtocolError(f"bad POP3 response text: {text[:40]!r}")


def check_code(code: str | None) -> None:
    if code is not None and not _RESP_CODE.match(code):
        raise LocalProtocolError(f"bad POP3 response code: {code!r}")


def multiline(first: str, lines: Iterable[str]) -> bytes:
    """``+OK first`` then each line, dot-stuffed, then ``.`` (RFC 1939 §3)."""
    out = [ok(first)]
    for line in lines:
        data = line.encode()
        out.append(b"." + data + b"\r\n" if data.startswith(b".") else data + b"\r\n")
    out.append(b".\r\n")
    return b"".join(out)


def normalize_crlf(data: bytes) -> bytes:
    """Every line ending (CRLF, bare CR, bare LF) becomes CRLF, and a last line without
    one gets it: the form RFC 1939 §3 sends and LIST sizes count (RFC 1939 §5)."""
    n_lf = data.count(b"\n")
    if not (n_lf == data.count(b"\r") == data.count(b"\r\n")):
        data = _NEWLINES.sub(b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def dot_stuff(data: bytes) -> bytes:
    """RFC 1939 §3: a line starting with "." gets one more (``data`` is CRLF-normalised)."""
    data = data.replace(b"\r\n.", b"\r\n..")
    return b"." + data if data.startswith(b".") else data


def top_of(data: bytes, lines: int) -> bytes:
    """RFC 1939 §7 TOP: the header section, the blank line after it, and the first
    ``lines`` lines of the body of the CRLF-normalised ``data``. A message without a
    blank line is all header and is returned whole."""
    if data.startswith(b"\r\n"):
        pos = 2  # empty header section: the first line is the separator
    else:
        blank = data.find(b"\r\n\r\n")
        if blank < 0:
            return data
        pos = blank + 4
    for _ in range(lines):
        end = data.find(b"\r\n", pos)
        if end < 0:
            break
        pos = end + 2
    return data[:pos]


def message_response(first: bytes, data: bytes, top: int | None) -> bytes:
    """The whole RETR (``top`` None) or TOP response for the stored ``data``: the status
    line ``first``, the message CRLF-normalised and dot-stuffed, and ``.CRLF``."""
    text = normalize_crlf(data)
    if top is not None:
        text = top_of(text, top)
    return b"".join((first, dot_stuff(text), b".\r\n"))


# -- fixed responses --------------------------------------------------------------------

R_UNKNOWN_COMMAND = err("unknown command")
R_BAD_STATE = err("command not valid in this state")
R_LINE_TOO_LONG = err("line too long")  # RFC 2449 §4
R_BARE_CR = err("bare CR in command line")
R_BAD_UTF8 = err("invalid UTF-8 in command")
R_SYNTAX = err("syntax error")
R_NO_ARGUMENTS = err("syntax error: no arguments allowed")
R_BAD_NUMBER = err("invalid message number")
R_BAD_LINES = err("invalid number of lines")
R_NO_SUCH_MESSAGE = err("no such message")  # RFC 1939 §5: deleted ones included
R_NEED_TLS = err("plaintext authentication requires TLS", "AUTH")  # RFC 2595 §2.3, RFC 3206
R_USER_FIRST = err("send USER first")
R_NO_USER = err("user name required")
R_NO_PASSWORD = err("password required")
R_APOP = err("APOP not supported")
R_NO_MECHANISM = err("unsupported authentication mechanism")
R_BAD_BASE64 = err("invalid base64 data")  # RFC 5034 §4
R_AUTH_CANCELLED = err("authentication cancelled")  # RFC 5034 §4
R_TLS_ACTIVE = err("TLS already active")  # RFC 2595 §4
R_STLS_UNAVAILABLE = err("STLS not available")
R_TOO_MANY_ERRORS = err("too many errors, closing connection", "SYS/PERM")  # RFC 3206 §4
R_SHUTDOWN = err("server shutting down, closing connection", "SYS/TEMP")  # RFC 3206 §4
R_AUTOLOGOUT = err("autologout: idle for too long")  # RFC 1939 §3
R_UPDATE_FAILED = err("some deleted messages not removed", "SYS/TEMP")  # RFC 1939 §6

R_OK = ok()
R_SEND_PASS = ok("send PASS")
R_BEGIN_TLS = ok("begin TLS negotiation")  # RFC 2595 §4
R_TOP_FOLLOWS = ok("top of message follows")

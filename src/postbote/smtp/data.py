"""Message content readers for the SMTP core: DATA text and BDAT chunks.

DATA (RFC 5321 §4.1.1.4, §4.5.2): the text ends with CRLF "." CRLF and nothing else.
A "." line terminates only if the line before it ended in CRLF and it ends in CRLF
itself, judged on the raw bytes — so no bare-LF or bare-CR near miss (``<LF>.<LF>``,
``<LF>.<CR><LF>``, ``<CR><LF>.<LF>``, ``<CR>.<CR>`` ...) ever ends a message early
(SMTP smuggling, CVE-2023-51764). Bare CR or LF in the content are refused
(550 5.6.11) or, if configured, normalised to CRLF *inside* the message.

BDAT (RFC 3030): counted octets, no transparency; the same newline policy applies to
the assembled message so that every stored message has CRLF line endings.

Memory: the body never grows past ``max_size`` (the reader keeps consuming but
discards), and at most one text line of input is held back.
"""

from __future__ import annotations

import enum

# RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including CRLF.
MAX_TEXT_LINE = 1000


class DataError(enum.Enum):
    TOO_BIG = "too big"
    BARE_NEWLINE = "bare newline"
    LINE_TOO_LONG = "line too long"
    NO_MEMORY = "no memory"  # dropped by the server (MessageReader.drop), not the input


# Which error is reported when several apply: the permanent ones first, so that a client
# does not retry a message that would be refused anyway.
_PRIORITY = (
    DataError.TOO_BIG,
    DataError.BARE_NEWLINE,
    DataError.LINE_TOO_LONG,
    DataError.NO_MEMORY,
)
_DISCARDING = frozenset({DataError.TOO_BIG, DataError.NO_MEMORY})  # the body is gone


def normalize_newlines(data: bytes) -> bytes:
    """Turn every bare CR and bare LF into CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def has_bare_newline(data: bytes | bytearray) -> bool:
    """True if ``data`` holds a CR not followed by LF or an LF not preceded by CR."""
    crlf = data.count(b"\r\n")
    return data.count(b"\n") != crlf or data.count(b"\r") != crlf


class MessageReader:
    """Accumulates one message's content, for DATA (``feed_text``) or BDAT
    (``feed_chunk`` then ``finish_chunks``)."""

    __slots__ = (
        "_after_crlf",
        "_at_line_start",
        "_errors",
        "_line_len",
        "body",
        "max_size",
        "normalize",
        "size",
    )

    def __init__(self, max_size: int, normalize: bool) -> None:
        self.max_size = max_size
        self.normalize = normalize
        self.body = bytearray()
        self._errors: set[DataError] = set()
        self._at_line_start = True  # the previous run ended with LF
        self._after_crlf = True  # the previous run ended with CRLF (raw bytes)
        self._line_len = 0  # length of the current partial text line
        self.size = 0  # bytes of the message so far, kept or not

    @property
    def error(self) -> DataError | None:
        """The error to report. Chosen by a fixed priority, so it does not depend on
        how the input was chunked."""
        if not self._errors:
            return None
        for err in _PRIORITY:
            if err in self._errors:
                return err
        return None

    def drop(self) -> None:
        """Free the body and keep reading to the end; the message is then refused as
        NO_MEMORY (unless the input itself gives a permanent error)."""
        self._errors.add(DataError.NO_MEMORY)
        self.body = bytearray()

    def take_body(self) -> bytes:
        body = bytes(self.body)
        self.body = bytearray()
        return body

    # -- DATA --------------------------------------------------------------------

    def feed_text(self, buf: bytearray) -> bool | None:
        """Consume what can be consumed from ``buf`` (in place). Returns True when the
        terminator was consumed, False when progress was made, None when more input is
        needed."""
        if self._after_crlf and self._line_len == 0:
            if buf[:3] == b".\r\n":
                del buf[:3]
                return True
            if len(buf) < 3 and b".\r\n".startswith(bytes(buf)):
                return None
        idx = buf.find(b"\r\n.\r\n")
        if idx >= 0:
            self._text_run(bytes(buf[: idx + 2]))
            del buf[: idx + 5]
            return True
        cut = buf.rfind(b"\n") + 1
        if cut == 0:
            # No complete line: hold back at most one text line (bounded memory).
            if len(buf) > MAX_TEXT_LINE + 2:
                keep = 1 if buf.endswith(b"\r") else 0
                self._text_run(bytes(buf[: len(buf) - keep]), partial=True)
                del buf[: len(buf) - keep]
            return None
        self._text_run(bytes(buf[:cut]))
        del buf[:cut]
        return False

    def _text_run(self, run: bytes, partial: bool = False) -> None:
        """Check and unstuff a run of text that starts where the previous run ended
        and (unless ``partial``) ends just after an LF."""
        if not run:
            return
        # Decided on the RAW bytes: a normalised bare LF never completes a terminator.
        ends_crlf = not partial and run.endswith(b"\r\n")
        if has_bare_newline(run):
            if self.normalize:
                run = normalize_newlines(run)
            else:
                self._errors.add(DataError.BARE_NEWLINE)
        # Transparency (RFC 5321 §4.5.2): drop the first "." of every line.
        if self._at_line_start and run[:1] == b".":
            run = run[1:]
        if b"\n." in run:
            run = run.replace(b"\n.", b"\n")
        # Measured after unstuffing: the stuffed dot does not count (§4.5.3.1.6).
        self._check_line_length(run, partial)
        self._at_line_start = not partial
        self._after_crlf = ends_crlf
        self._append(run)

    def _check_line_length(self, run: bytes, partial: bool) -> None:
        # RFC 5321 §4.5.3.1.6; only split when a long line is possible at all.
        if self._line_len + len(run) <= MAX_TEXT_LINE:
            self._line_len = self._line_len + len(run) if partial else 0
            return
        first, *rest = run.split(b"\n")
        if rest:
            tail = rest.pop()  # b"" when the run ends with LF
            longest = max([self._line_len + len(first) + 1, *(len(x) + 1 for x in rest)])
            self._line_len = len(tail)
        else:
            longest = self._line_len = self._line_len + len(first)
        if longest > MAX_TEXT_LINE:
            self._errors.add(DataError.LINE_TOO_LONG)

    def _append(self, run: bytes) -> None:
        self.size += len(run)  # counted on after a drop(): TOO_BIG stays decidable
        if self.size > self.max_size:
            self._errors.add(DataError.TOO_BIG)
            self.body = bytearray()  # free it; keep reading to stay in sync
        elif not self._errors or _DISCARDING.isdisjoint(self._errors):
            self.body += run

    # -- BDAT --------------------------------------------------------------------

    def feed_chunk(self, data: bytes | bytearray) -> None:
        self._append(bytes(data))

    def finish_chunks(self) -> None:
        """Apply the newline policy to the assembled BDAT message."""
        if _DISCARDING.isdisjoint(self._errors) and has_bare_newline(self.body):
            if self.normalize:
                self.body = bytearray(normalize_newlines(bytes(self.body)))
            else:
                self._errors.add(DataError.BARE_NEWLINE)

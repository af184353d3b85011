"""The spool's sync helper process: ``fdatasync`` on request (see spool_sync.py).

Imports only a few standard modules, so the process stays small. Wire format over a
SOCK_SEQPACKET socket (fd number in argv[1]), one message each way: a request is
``REQUEST`` with one file descriptor attached (SCM_RIGHTS); the reply is the errno of
``fdatasync`` on it (0: synced), 4 bytes, u32 little-endian. Replies come in request
order. The helper exits when the other end closes.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct
import sys

ERRNO = struct.Struct("<I")
REQUEST = b"S"


def serve(sock: socket.socket) -> None:
    """The helper: answer sync requests until the other end closes."""
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 16, 1)
        except OSError:
            return  # the spool's process is gone
        if not msg:
            return
        code = errno.EINVAL
        for fd in fds:
            if msg == REQUEST:
                try:
                    os.fdatasync(fd)
                    code = 0
                except OSError as exc:
                    code = exc.errno or errno.EIO
            os.close(fd)
        try:
            sock.send(ERRNO.pack(code))
        except OSError:
            return  # the spool's process is gone


def main() -> None:
    # Like the delivery worker: the spool's process decides when to stop (EOF here).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(socket.socket(fileno=int(sys.argv[1])))


if __name__ == "__main__":
    main()

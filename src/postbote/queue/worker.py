"""The delivery worker process: ``python -m postbote.queue.worker``.

Local delivery (file creation, renames, syncs, directory lookups) runs in its own
process so that it uses the machine's second core instead of competing with the SMTP
event loop for the interpreter lock. It reads message frames on stdin, delivers them in
batches (lingering briefly when few wait, so that one sync covers many messages), and
answers on stdout which messages are done or failed (queue/frames.py). It exits when
stdin closes, after finishing what it has read.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
from pathlib import Path

from postbote.process import start_background_child
from postbote.queue import frames
from postbote.queue.local import Deliverer
from postbote.spool import SpooledMessage
from postbote.store.sqlite import SqliteStore

MAX_BATCH = 256
LINGER_BELOW = 64  # fewer messages waiting than this: wait a little for more
LINGER_SECONDS = 0.005


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_batch(fd: int, buf: bytearray) -> tuple[list[bytes], bool]:
    """Block for at least one frame, then take what else arrives within the linger time.
    Returns (frames, eof)."""
    got: list[bytes] = frames.split_frames(buf)
    eof = False
    while not eof:
        if got:
            if len(got) >= MAX_BATCH:
                break
            timeout = LINGER_SECONDS if len(got) < LINGER_BELOW else 0.0
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                break
        data = os.read(fd, 1 << 20)
        if not data:
            eof = True
        buf += data
        got += frames.split_frames(buf)
    return got, eof


def serve(deliverer: Deliverer, fd_in: int, fd_out: int) -> None:
    buf = bytearray()
    _write(fd_out, frames.frame(b"R"))
    eof = False
    while not eof:
        payloads, eof = _read_batch(fd_in, buf)
        if not payloads:
            continue
        batch: list[tuple[SpooledMessage, bool]] = [frames.decode_message(p) for p in payloads]
        queued_before = deliverer.queued
        done, failed = deliverer.deliver(batch)
        out = frames.frame(b"Q") if deliverer.queued != queued_before else b""
        if done:
            out += frames.encode_ids(b"D", done)
        if failed:
            out += frames.encode_ids(b"F", failed)
        _write(fd_out, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="postbote-delivery")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--hostname", required=True)
    p.add_argument("--parent", type=int, default=0, help="exit if this process dies")
    args = p.parse_args(argv)
    start_background_child(args.parent)
    data_dir: Path = args.data_dir
    store = SqliteStore(data_dir / "postbote.db", data_dir / "queue")
    try:
        deliverer = Deliverer(
            directory=store, queue=store, data_dir=data_dir, hostname=args.hostname
        )
        serve(deliverer, sys.stdin.fileno(), sys.stdout.fileno())
    except BrokenPipeError:
        return 1  # the server went away; what was not reported done is redelivered
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

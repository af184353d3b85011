"""An in-process authoritative DNS server for tests (design.md, "DNS in tests").

``TestDnsServer`` answers UDP and TCP on the same ephemeral port of 127.0.0.1 (or ::1)
from records added at run time, and can be told to fail names (SERVFAIL, REFUSED or no
answer at all). It is built on dnspython's message classes; one thread serves UDP and
accepts TCP, one thread per TCP connection. Every public method is thread-safe.

Register the ``dns_server`` fixture by importing it into a conftest.py.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from collections.abc import Iterator
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.TXT
import dns.rrset
import pytest

IN = dns.rdataclass.IN
MAX_CNAME_CHAIN = 8
NEGATIVE_TTL = 60
FAIL_MODES = ("servfail", "refused", "timeout")
SOA_TEXT = f"ns.test. hostmaster.test. 1 3600 600 86400 {NEGATIVE_TTL}"


def _name(name: str) -> dns.name.Name:
    return dns.name.from_text(name)


def _rdtype(rdtype: str) -> dns.rdatatype.RdataType:
    return dns.rdatatype.from_text(rdtype.upper())


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


class TestDnsServer:
    """Authoritative for every name: what was ``add``-ed exists, the rest is NXDOMAIN.

    Driven by queries from the network (answered on the server's threads) and by the
    test's calls to ``add``/``remove``/``fail``/``unfail``. Answers carry AA; negative
    answers carry an SOA for "." so resolvers can cache them (RFC 2308 §3). A UDP answer
    larger than the query allows (512, or its EDNS payload size) is sent empty with TC
    set (RFC 1035 §4.2.1, RFC 6891 §6.2.5), so that the client retries over TCP.
    """

    __test__ = False  # not a test class, despite the name

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._records: dict[dns.name.Name, dict[int, list[tuple[int, dns.rdata.Rdata]]]] = {}
        self._failures: dict[tuple[dns.name.Name, int | None], str] = {}
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._conns: dict[socket.socket, threading.Thread] = {}

    # -- zone data -------------------------------------------------------------------

    def add(self, name: str, rdtype: str, value: str | bytes, ttl: int = 60) -> None:
        """Add one record. ``value`` is zone-file rdata ("10 mx1.example.test.", relative
        names are taken as absolute), except for TXT/SPF: there it is the raw text, split
        into 255-octet strings (RFC 7208 §3.3)."""
        rtype = _rdtype(rdtype)
        if rtype in (dns.rdatatype.TXT, dns.rdatatype.SPF):
            raw = value.encode() if isinstance(value, str) else value
            strings = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
            rdata: dns.rdata.Rdata = dns.rdtypes.ANY.TXT.TXT(IN, rtype, strings)
        else:
            text = value.decode() if isinstance(value, bytes) else value
            rdata = dns.rdata.from_text(IN, rtype, text, origin=dns.name.root, relativize=False)
        self.add_rdata(name, rdata, ttl)

    def add_rdata(self, name: str, rdata: dns.rdata.Rdata, ttl: int = 60) -> None:
        """Add a record built by the caller (e.g. a TXT with chosen string boundaries)."""
        with self._lock:
            by_type = self._records.setdefault(_name(name), {})
            by_type.setdefault(rdata.rdtype, []).append((ttl, rdata))

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Remove the records of one type of ``name``, or all of them."""
        key = _name(name)
        with self._lock:
            by_type = self._records.get(key, {})
            if rdtype is None:
                by_type.clear()
            else:
                by_type.pop(_rdtype(rdtype), None)
            if not by_type:
                self._records.pop(key, None)

    def fail(self, name: str, rdtype: str | None = None, mode: str = "servfail") -> None:
        """Answer queries for ``name`` (of ``rdtype``, or any type) with SERVFAIL, REFUSED,
        or, for "timeout", not at all."""
        if mode not in FAIL_MODES:
            raise ValueError(f"mode must be one of {FAIL_MODES}")
        key = (_name(name), None if rdtype is None else int(_rdtype(rdtype)))
        with self._lock:
            self._failures[key] = mode

    def unfail(self, name: str, rdtype: str | None = None) -> None:
        """Undo ``fail`` for the same arguments."""
        key = (_name(name), None if rdtype is None else int(_rdtype(rdtype)))
        with self._lock:
            self._failures.pop(key, None)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(50):  # the ephemeral TCP port may be taken for UDP: try another
            tcp = socket.socket(family, socket.SOCK_STREAM)
            udp = socket.socket(family, socket.SOCK_DGRAM)
            try:
                tcp.bind((self.host, 0))
                udp.bind((self.host, tcp.getsockname()[1]))
            except OSError:
                tcp.close()
                udp.close()
                continue
            break
        else:
            raise OSError("no port free for both UDP and TCP")
        tcp.listen(16)
        self._tcp, self._udp = tcp, udp
        self._wake = socket.socketpair()
        self.port = tcp.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        assert self._wake is not None
        self._stopping.set()
        self._wake[1].send(b"x")
        self._thread.join()
        self._thread = None
        with self._lock:
            conns = list(self._conns.items())
        for conn, _ in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for _, thread in conns:
            thread.join()
        for sock in (self._tcp, self._udp, *self._wake):
            if sock is not None:
                sock.close()

    def __enter__(self) -> TestDnsServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- serving ---------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._udp is not None and self._tcp is not None and self._wake is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._udp, selectors.EVENT_READ)
            sel.register(self._tcp, selectors.EVENT_READ)
            sel.register(self._wake[0], selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._udp:
                        self._serve_udp(self._udp)
                    elif key.fileobj is self._tcp:
                        self._accept(self._tcp)

    def _serve_udp(self, udp: socket.socket) -> None:
        try:
            data, peer = udp.recvfrom(65535)
        except OSError:
            return
        query = self._parse(data)
        if query is None:
            return
        response = self._respond(query)
        if response is None:
            return
        # RFC 6891 §6.2.5: the requestor's payload size, never below 512 (RFC 1035 §4.2.1).
        limit = max(512, query.payload) if query.edns >= 0 else 512
        try:
            wire = response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            wire = truncated.to_wire()
        with contextlib.suppress(OSError):
            udp.sendto(wire, peer)

    def _accept(self, tcp: socket.socket) -> None:
        try:
            conn, _ = tcp.accept()
        except OSError:
            return
        thread = threading.Thread(target=self._serve_tcp, args=(conn,), daemon=True)
        with self._lock:
            self._conns[conn] = thread
        thread.start()

    def _serve_tcp(self, conn: socket.socket) -> None:
        """RFC 7766 §8: each message is preceded by its two-octet length."""
        try:
            while not self._stopping.is_set():
                header = _recv_exactly(conn, 2)
                if header is None:
                    break
                data = _recv_exactly(conn, struct.unpack("!H", header)[0])
                if data is None:
                    break
                query = self._parse(data)
                response = None if query is None else self._respond(query)
                if response is not None:
                    wire = response.to_wire(max_size=65535)
                    conn.sendall(struct.pack("!H", len(wire)) + wire)
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self._conns.pop(conn, None)

    def _parse(self, data: bytes) -> dns.message.Message | None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        if query.flags & dns.flags.QR or len(query.question) != 1:
            return None
        return query

    def _respond(self, query: dns.message.Message) -> dns.message.Message | None:
        """The answer to ``query``, or None to stay silent ("timeout")."""
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        with self._lock:
            self.queries.append((_text(qname), dns.rdatatype.to_text(qtype)))
            mode = self._failures.get((qname, int(qtype))) or self._failures.get((qname, None))
            response = dns.message.make_response(query)
            if mode == "timeout":
                return None
            if mode is not None:
                rcode = dns.rcode.SERVFAIL if mode == "servfail" else dns.rcode.REFUSED
                response.set_rcode(rcode)
                return response
            response.flags |= dns.flags.AA
            if question.rdclass != IN:
                response.set_rcode(dns.rcode.REFUSED)
                return response
            self._answer(response, qname, qtype)
        return response

    def _answer(
        self, response: dns.message.Message, qname: dns.name.Name, qtype: dns.rdatatype.RdataType
    ) -> None:
        """Fill in the answer, following CNAMEs within the data (RFC 1034 §4.3.2)."""
        name = qname
        for _ in range(MAX_CNAME_CHAIN):
            by_type = self._records.get(name, {})
            wanted = list(by_type) if qtype == dns.rdatatype.ANY else [qtype]
            found = [t for t in wanted if t in by_type]
            if found:
                for rdtype in found:
                    response.answer.append(self._rrset(name, by_type[rdtype]))
                return
            cname = by_type.get(dns.rdatatype.CNAME)
            if cname is None:
                break
            response.answer.append(self._rrset(name, cname))
            target = cname[0][1]
            assert isinstance(target, dns.rdtypes.ANY.CNAME.CNAME)
            name = target.target
        # RFC 6604 §3: the RCODE describes the last name of the chain.
        if not self._exists(name):
            response.set_rcode(dns.rcode.NXDOMAIN)
        # RFC 2308 §3: negative answers carry the SOA of the zone, here ".".
        soa = dns.rdata.from_text(IN, dns.rdatatype.SOA, SOA_TEXT)
        response.authority.append(dns.rrset.from_rdata(dns.name.root, NEGATIVE_TTL, soa))

    @staticmethod
    def _rrset(name: dns.name.Name, records: list[tuple[int, dns.rdata.Rdata]]) -> dns.rrset.RRset:
        ttl = min(ttl for ttl, _ in records)
        return dns.rrset.from_rdata_list(name, ttl, [rdata for _, rdata in records])

    def _exists(self, name: dns.name.Name) -> bool:
        """A name exists if it owns records or a name below it does (RFC 8020 §2)."""
        return any(owner.is_subdomain(name) for owner in self._records)


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    buf = b""
    while len(buf) < size:
        chunk = conn.recv(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


@pytest.fixture
def dns_server() -> Iterator[TestDnsServer]:
    """A running ``TestDnsServer`` on 127.0.0.1, stopped after the test."""
    with TestDnsServer() as server:
        yield server

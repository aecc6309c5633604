"""A real, small authoritative DNS server on 127.0.0.1 (UDP) whose records the tests change, for the
DNS source of the control plane. Written with dnspython's message API; its answers are small, so
they are never truncated and no TCP is needed."""

from __future__ import annotations

import socket
import threading
from typing import Optional

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

ZONE = "internal."
# Negative answers carry the zone's SOA, whose TTL and minimum (1 s) say how long "no" holds.
SOA = "ns.internal. admin.internal. 1 60 60 60 1"


class DnsServer:
    """Answers from `records`: (name, type) -> (TTL, [rdata text]). A name with no records of any type
    is NXDOMAIN; a name with others only is NOERROR with no answers. `servfail` answers SERVFAIL."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], tuple[int, list[str]]] = {}
        self.servfail = False
        self.port = 0
        self.asked: dict[tuple[str, str], int] = {}  # questions by (name, type), answered or not
        self._lock = threading.Condition()
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._stopped = threading.Event()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, name: str, rdtype: str, ttl: int, *values: str) -> None:
        with self._lock:
            self.records[(_absolute(name), rdtype)] = (ttl, list(values))

    def delete(self, name: str) -> None:
        """The name no longer exists (NXDOMAIN)."""
        with self._lock:
            for key in [k for k in self.records if k[0] == _absolute(name)]:
                del self.records[key]

    def wait_asked(self, name: str, rdtype: str, times: int, timeout: float = 15) -> None:
        with self._lock:
            key = (_absolute(name), rdtype)
            assert self._lock.wait_for(lambda: self.asked.get(key, 0) >= times, timeout), (
                f"{name} {rdtype} asked {self.asked.get(key, 0)} times, not {times}"
            )

    def start(self) -> DnsServer:
        """Starts (again, on the same port after a stop)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", self.port))
        sock.settimeout(0.05)  # how soon stop() is noticed
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._stopped.clear()
        self._thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Closes the socket: questions get 'port unreachable', as from a resolver that is down."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _serve(self, sock: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                wire, peer = sock.recvfrom(4096)
            except socket.timeout:
                continue
            sock.sendto(self._answer(dns.message.from_wire(wire)).to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        question = query.question[0]
        name, rdtype = question.name.to_text(), dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.asked[(name, rdtype)] = self.asked.get((name, rdtype), 0) + 1
            self._lock.notify_all()
            if self.servfail:
                response.set_rcode(dns.rcode.SERVFAIL)
                return response
            found = self.records.get((name, rdtype))
            exists = any(n == name for n, _ in self.records)
        response.flags |= dns.flags.AA
        if found is not None:
            ttl, values = found
            response.answer.append(dns.rrset.from_text_list(name, ttl, "IN", rdtype, values))
        else:
            if not exists:
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(dns.rrset.from_text(ZONE, 1, "IN", "SOA", SOA))
        return response


def _absolute(name: str) -> str:
    return name if name.endswith(".") else name + "."

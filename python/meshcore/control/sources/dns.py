"""DNS as a source: each service named by a query, re-resolved as its records' TTLs run out.

    web=web.internal:8080          A and AAAA of web.internal; every address an endpoint on port 8080
    api=srv:_http._tcp.api.internal   SRV; each target's A/AAAA addresses at the record's port and weight
    web=web.internal:8080,zone=zone-a,cluster=east   DNS knows no zones: name them per service

- SRV: only the lowest-priority group is served (RFC 2782's failover to the next group is not made
  here). A record's weight is the endpoints' weight (0 stays 0); a lone target "." means the
  service is decidedly not available: it exists, with no endpoints.
- TTLs: a name is asked again when its answer's TTL runs out (the shortest TTL of a CNAME chain, the
  SOA's negative TTL for "no such records"), kept within [1 s, 300 s]; a TTL of 0 is the minimum.
- NXDOMAIN: the service does not exist (reported removed). NOERROR with no records: it exists, with
  no endpoints now. A timeout, SERVFAIL or an unreachable resolver keeps the last known answer
  (logged once per cause) and is retried with backoff: a resolver outage never empties a service.
- `start()` asks every name once before returning, so the first snapshot is complete; a name whose
  first answer fails is served by nobody yet, and retried.

One thread runs an asyncio loop in which all due names are asked at once (dnspython's async
resolver), so a slow name does not hold the others up. dnspython is the optional extra `dns`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

from ...errors import ConfigError
from ..protocol import EndpointWire
from . import Changes, OnChange, Source, endpoint

try:
    import dns.asyncresolver
    import dns.exception
    import dns.name
    import dns.rcode
    import dns.rdatatype
    import dns.resolver
except ImportError:  # the extra is not installed: DnsSource says so when it is asked for
    dns = None  # type: ignore[assignment]

__all__ = ["DnsService", "DnsSource", "parse_dns_flag", "parse_dns_server"]

log = logging.getLogger("meshcore.control")

MIN_TTL = 1.0
MAX_TTL = 300.0
BACKOFF_CAP = 30.0
LIFETIME = 3.0  # one name's whole resolution, retries included
SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
OPTIONS = ("zone", "cluster")


@dataclass(frozen=True)
class DnsService:
    """One `--dns` value: a service and the query that finds its endpoints."""

    name: str
    query: str  # the DNS name asked
    port: Optional[int]  # None: an SRV query, ports come from the records
    zone: Optional[str] = None
    cluster: Optional[str] = None

    @property
    def srv(self) -> bool:
        return self.port is None

    def describe(self) -> str:
        return f"srv:{self.query}" if self.srv else f"{self.query}:{self.port}"


def _require_dnspython() -> None:
    if dns is None:
        raise ConfigError("--dns needs dnspython: pip install 'meshcore[dns]'")


def _dns_name(text: str, flag: str) -> str:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        pass
    else:
        raise ConfigError(f"{flag}: {text!r} is an address, not a name (put fixed addresses in --dir)")
    try:
        name = dns.name.from_text(text)
    except dns.exception.DNSException as e:
        raise ConfigError(f"{flag}: {text!r} is not a DNS name ({e})") from None
    if name == dns.name.root:
        raise ConfigError(f"{flag}: {text!r} is not a DNS name (empty)")
    return name.to_text(omit_final_dot=True)


def parse_dns_flag(value: str) -> DnsService:
    """`NAME=HOST:PORT` or `NAME=srv:QNAME`, then optional `,zone=Z` and `,cluster=C`."""
    _require_dnspython()
    flag = f"--dns {value}"
    name, sep, rest = value.partition("=")
    if not sep:
        raise ConfigError(f"{flag}: expected NAME=HOST:PORT or NAME=srv:QNAME")
    if not SERVICE_NAME.fullmatch(name):
        raise ConfigError(f"{flag}: service name {name!r} must be letters, digits, '.', '_' or '-'")
    query, *options = rest.split(",")
    extra: dict[str, str] = {}
    for option in options:
        key, sep, v = option.partition("=")
        if not sep or key not in OPTIONS or not v:
            raise ConfigError(f"{flag}: option {option!r}: expected zone=ZONE or cluster=CLUSTER")
        if key in extra:
            raise ConfigError(f"{flag}: {key} given twice")
        extra[key] = v
    if query.startswith("srv:"):
        return DnsService(name, _dns_name(query[4:], flag), None, **extra)
    host, sep, port_text = query.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{flag}: {query!r}: expected HOST:PORT (A/AAAA) or srv:QNAME (SRV)")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{flag}: port {port_text!r} must be a number from 1 to 65535")
    return DnsService(name, _dns_name(host, flag), int(port_text), **extra)


def parse_dns_server(value: str) -> tuple[str, int]:
    """`--dns-server` as (IP, port): `127.0.0.1:5353`, `[::1]:53`, or an IP alone for port 53."""
    flag = f"--dns-server {value}"
    host, port = value, "53"
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"{flag}: expected HOST:PORT")
            port = rest[1:]
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{flag}: {host!r} must be an IP address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{flag}: port {port!r} must be a number from 1 to 65535")
    return host, int(port)


@dataclass(frozen=True, order=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # "" for ".": not available


# What a name answered: addresses (A/AAAA lookup) or SRV records; None for "does not exist".
Records = Optional[tuple[Union[str, SrvRecord], ...]]
Key = tuple[str, str]  # ("addr" or "srv", DNS name)


class Transient(Exception):
    """No answer this time (timeout, SERVFAIL, resolver unreachable): keep what was known."""


@dataclass
class Lookup:
    key: Key
    answered: bool = False  # has it ever answered (then `records` is what it said last)
    records: Records = None
    attempted: bool = False
    due: float = 0.0  # loop time of the next question
    failures: int = 0  # transient failures in a row, for the backoff
    cause: Optional[str] = None  # the failure last logged, to log each cause once

    def describe(self) -> str:
        kind, name = self.key
        return f"{name} {'A/AAAA' if kind == 'addr' else 'SRV'}"


class DnsSource(Source):
    name = "dns"

    def __init__(
        self,
        services: Sequence[DnsService],
        nameserver: Optional[tuple[str, int]] = None,
        *,
        min_ttl: float = MIN_TTL,
        max_ttl: float = MAX_TTL,
        backoff_cap: float = BACKOFF_CAP,
        lifetime: float = LIFETIME,
    ):
        _require_dnspython()
        seen: set[str] = set()
        for s in services:
            if s.name in seen:
                raise ConfigError(f"--dns {s.name}=...: service {s.name!r} is named twice")
            seen.add(s.name)
        self.services = list(services)
        self.nameserver = nameserver
        self._min_ttl, self._max_ttl, self._backoff_cap = min_ttl, max_ttl, backoff_cap
        try:
            self._resolver = dns.asyncresolver.Resolver(configure=nameserver is None)
        except dns.exception.DNSException as e:
            raise ConfigError(f"--dns: no system resolver ({e}); name one: --dns-server HOST:PORT") from None
        if nameserver is not None:
            self._resolver.nameservers = [nameserver[0]]
            self._resolver.port = nameserver[1]
        self._resolver.lifetime = lifetime
        self._resolver.timeout = min(lifetime, 2.0)
        self._queries: set[Key] = {_key(s) for s in self.services}
        self._lookups: dict[Key, Lookup] = {}
        self._served: dict[str, tuple[EndpointWire, ...]] = {}
        self._on_change: Optional[OnChange] = None
        self._ready = threading.Event()  # the first answers are reported
        self._running = threading.Event()  # _loop and _task are set
        self._stopping = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._task: Optional[asyncio.Task[Any]] = None
        self._thread: Optional[threading.Thread] = None

    def describe(self) -> str:
        where = f"{self.nameserver[0]}:{self.nameserver[1]}" if self.nameserver else "the system resolver"
        return f"dns ({len(self.services)} names via {where})"

    def start(self, on_change: OnChange) -> None:
        self._on_change = on_change
        self._thread = threading.Thread(target=self._thread_main, name="meshcore-control-dns", daemon=True)
        self._thread.start()
        self._ready.wait()

    def stop(self) -> None:
        self._stopping = True
        if self._thread is None:
            return
        self._running.wait()
        assert self._loop is not None and self._task is not None
        try:
            self._loop.call_soon_threadsafe(self._task.cancel)
        except RuntimeError:  # the loop has already ended
            pass
        self._thread.join()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:  # noqa: BLE001 - said, and start() must not wait forever
            log.exception("dns: the source stopped")
        finally:
            self._running.set()
            self._ready.set()

    async def _main(self) -> None:
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        self._running.set()
        if self._stopping:
            return
        try:
            await self._run()
        except asyncio.CancelledError:  # stop()
            pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._track_needed()
            now = loop.time()
            due = [lookup for lookup in self._lookups.values() if lookup.due <= now]
            if due:
                await asyncio.gather(*(self._refresh(lookup, loop) for lookup in due))
                continue  # an SRV answer may name new targets: ask them before reporting
            self._publish()
            self._ready.set()
            next_due = min((lookup.due for lookup in self._lookups.values()), default=now + 3600)
            await asyncio.sleep(next_due - now)

    def _needed(self) -> Iterable[Key]:
        for s in self.services:
            yield _key(s)
            if s.srv:
                for record in self._group(s):
                    if record.target:
                        yield ("addr", record.target)

    def _track_needed(self) -> None:
        needed = set(self._needed())
        for key in needed - self._lookups.keys():
            self._lookups[key] = Lookup(key)
        for key in self._lookups.keys() - needed:
            del self._lookups[key]

    def _group(self, service: DnsService) -> list[SrvRecord]:
        """The lowest-priority group of the service's SRV records (the one served)."""
        lookup = self._lookups.get(("srv", service.query))
        if lookup is None or not lookup.records:
            return []
        records = [r for r in lookup.records if isinstance(r, SrvRecord)]
        lowest = min(r.priority for r in records)
        return [r for r in records if r.priority == lowest]

    async def _refresh(self, lookup: Lookup, loop: asyncio.AbstractEventLoop) -> None:
        kind, name = lookup.key
        try:
            records, ttl = await (self._ask_srv(name) if kind == "srv" else self._ask_addresses(name))
        except Exception as e:  # noqa: BLE001 - a surprise is one more failure, retried
            if not isinstance(e, Transient):
                log.exception("dns: %s: unexpected failure", lookup.describe())
                e = Transient(f"unexpected {type(e).__name__}: {e}")
            lookup.attempted = True
            lookup.failures += 1
            delay = min(self._backoff_cap, self._min_ttl * 2 ** (lookup.failures - 1))
            lookup.due = loop.time() + random.uniform(delay / 2, delay)
            if lookup.cause != str(e):
                kept = "keeping its last answer" if lookup.answered else "not served until it answers"
                log.warning("dns: %s: %s; %s, retrying with backoff", lookup.describe(), e, kept)
                lookup.cause = str(e)
            return
        if lookup.cause is not None:
            log.info("dns: %s: answered again after %d failures", lookup.describe(), lookup.failures)
        news = lookup.records is not None or not lookup.answered
        if records is None and news and lookup.key not in self._queries:
            log.warning("dns: SRV target %s does not exist (NXDOMAIN)", name)  # a service's own: _publish
        lookup.answered = lookup.attempted = True
        lookup.records, lookup.failures, lookup.cause = records, 0, None
        lookup.due = loop.time() + max(self._min_ttl, min(self._max_ttl, ttl))

    async def _ask(self, name: str, rdtype: str) -> tuple[Optional[list[Any]], float]:
        """(records, TTL); records None for NXDOMAIN, [] for NOERROR with none of that type."""
        try:
            answer = await self._resolver.resolve(name, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as e:
            responses = e.responses()  # type: ignore[no-untyped-call]
            ttl = min((r.resolve_chaining().minimum_ttl for r in responses.values()), default=0)
            return None, ttl
        except dns.resolver.LifetimeTimeout:
            raise Transient("timed out") from None
        except dns.resolver.NoNameservers as e:
            raise Transient(_no_nameservers(e)) from None
        except dns.exception.DNSException as e:
            raise Transient(str(e) or type(e).__name__) from None
        return list(answer.rrset or ()), answer.chaining_result.minimum_ttl

    async def _ask_addresses(self, name: str) -> tuple[Records, float]:
        both = await asyncio.gather(self._ask(name, "A"), self._ask(name, "AAAA"), return_exceptions=True)
        for outcome in both:
            if isinstance(outcome, BaseException):
                raise outcome
        (v4, ttl4), (v6, ttl6) = both  # type: ignore[misc]
        if v4 is None or v6 is None:
            return None, ttl4 if v4 is None else ttl6
        addresses = sorted({r.address for r in v4}) + sorted({r.address for r in v6})
        return tuple(addresses), min(ttl4, ttl6)

    async def _ask_srv(self, name: str) -> tuple[Records, float]:
        records, ttl = await self._ask(name, "SRV")
        if records is None:
            return None, ttl
        found = tuple(
            sorted(
                SrvRecord(r.priority, r.weight, r.port, r.target.to_text(omit_final_dot=True))
                for r in records
            )
        )
        return found, ttl

    def _publish(self) -> None:
        services: dict[str, tuple[EndpointWire, ...]] = {}
        removed: list[str] = []
        for s in self.services:
            lookup = self._lookups[_key(s)]
            if not lookup.answered:
                continue  # never answered: nobody has heard of it from us yet
            if lookup.records is None:
                if s.name in self._served:
                    log.info("dns: %s: %s does not exist (NXDOMAIN); service removed", s.name, s.query)
                    removed.append(s.name)
                    del self._served[s.name]
                continue
            endpoints = self._endpoints(s, lookup)
            if endpoints is not None and self._served.get(s.name) != endpoints:
                services[s.name] = self._served[s.name] = endpoints
        if (services or removed) and self._on_change is not None:
            self._on_change(Changes(services=services, removed=removed))

    def _endpoints(self, s: DnsService, lookup: Lookup) -> Optional[tuple[EndpointWire, ...]]:
        """The service's endpoints now; None while a target has not been asked yet."""
        weights: dict[str, int] = {}
        if s.port is not None:
            for address in lookup.records or ():
                weights[_addr(str(address), s.port)] = 1
        else:
            for record in self._group(s):
                if not record.target:
                    continue
                target = self._lookups[("addr", record.target)]
                if not target.attempted:
                    return None
                for address in target.records or ():
                    key = _addr(str(address), record.port)
                    weights[key] = weights.get(key, 0) + record.weight  # a repeated target adds up
        return tuple(
            endpoint(a, zone=s.zone, cluster=s.cluster, weight=w) for a, w in sorted(weights.items())
        )


def _key(service: DnsService) -> Key:
    return ("srv" if service.srv else "addr", service.query)


def _addr(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _no_nameservers(e: dns.resolver.NoNameservers) -> str:
    """What every nameserver said, without the parts that vary between tries."""
    said = []
    for server, _tcp, _port, error, response in e.kwargs.get("errors", ()):
        if response is not None:
            said.append(f"{server} answered {dns.rcode.to_text(response.rcode())}")
        else:
            said.append(f"{server}: {error or type(error).__name__}")
    return "; ".join(said) or "no nameserver answered"

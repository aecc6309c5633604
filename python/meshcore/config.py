"""Configuration: pydantic models, TOML/YAML/dict loading, and errors that name
the file, the field path and the reason.

Python is the one validator and holds the one set of defaults: it refuses here, naming the
file and the field, everything the Rust core would refuse, and hands the core one complete
document (`to_core()`, schema in `meshcore.snapshot`) with durations in milliseconds
(`timeout = "10s"` -> `timeout_ms`).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import cache, lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from . import snapshot
from .errors import config_error

__all__ = [
    "Config",
    "Identity",
    "Policy",
    "PolicyRule",
    "Listener",
    "Route",
    "Backend",
    "Service",
    "Endpoint",
    "Zonal",
    "Breaker",
    "Retry",
    "ReloadPolicy",
    "load",
    "loads",
    "parse_duration",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
_MAX_DURATION_MS = 10 * 365 * 86_400_000
# What the core's integer fields hold (u32; usize on 64-bit).
_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1


def parse_duration(value: Union[str, int, float]) -> int:
    """'10s', '300ms', '1.5s', '2m', '1h' -> milliseconds. Bare numbers are seconds."""
    return _parse_duration(value)


# A config repeats a few durations (the defaults) in every service and route: parse each once.
# Typed, so that True is not taken for 1.
@lru_cache(maxsize=1024, typed=True)
def _parse_duration(value: Union[str, int, float]) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '10s' or '300ms'")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("duration must not be negative")
        ms = value * 1000
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(
                f"invalid duration {value!r}: use a number with ms, s, m or h, e.g. '10s' or '300ms'"
            )
        ms = float(m.group(1)) * _UNIT_MS[m.group(2)]
    # Not a number, infinite, or past what any timeout means (and what Rust's u64 holds).
    if not ms <= _MAX_DURATION_MS:
        raise ValueError(f"duration {value!r} is too long (at most 10 years)")
    return int(ms)


def _check_admin_addr(value: str) -> str:
    """'ip:port' for the admin API, which Python binds: brackets around IPv6 are optional."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected 'ip:port', got {value!r}")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"expected an IP address before the port, got {host!r}") from None
    return value


def _check_socket_addr(value: str) -> str:
    """'ip:port' exactly as the core parses it (Rust's SocketAddr): an IPv6 address in
    brackets with a numeric scope if any ('[fe80::1%2]:80'), IPv4 without, ASCII digits."""
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"expected 'ip:port', got {value!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    address, percent, scope = host[1:-1].partition("%") if bracketed else (host, "", "")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"expected an IP address before the port, got {host!r}") from None
    if ip.version == 6 and not bracketed:
        raise ValueError(f"put an IPv6 address in brackets, as in '[{address}]:{port}'")
    if ip.version == 4 and bracketed:
        raise ValueError(f"an IPv4 address takes no brackets: '{address}:{port}'")
    if percent and not (scope.isascii() and scope.isdigit() and int(scope) <= _U32_MAX):
        raise ValueError(f"the scope of {address!r} must be an interface number, got {scope!r}")
    return value


def _check_network(net: str) -> None:
    """An address with an optional prefix length ('10.0.0.0/8', '::1'), as the core parses it:
    no netmask ('/255.0.0.0') and no IPv6 scope."""
    address, slash, length = net.partition("/")
    try:
        ip = None if "%" in address else ipaddress.ip_address(address)
    except ValueError:
        ip = None
    fits = ip is not None and (
        not slash or (length.isascii() and length.isdigit() and int(length) <= ip.max_prefixlen)
    )
    if not fits:
        raise ValueError(f"invalid network {net!r}: use CIDR notation such as '10.0.0.0/8'")


def _bind_address(value: str) -> tuple[Union[ipaddress.IPv4Address, ipaddress.IPv6Address], int]:
    host, _, port = value.rpartition(":")
    ip = ipaddress.ip_address(host.strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, int(port)


def binds_conflict(a: str, b: str) -> bool:
    """Whether two `ip:port` binds would claim the same port. Port 0 (any free port) never
    conflicts; 0.0.0.0 takes the port on every IPv4 address, and [::] (dual stack) on every address."""
    (ip_a, port_a), (ip_b, port_b) = _bind_address(a), _bind_address(b)
    if port_a != port_b or port_a == 0:
        return False

    def covers(wildcard: Any, other: Any) -> bool:
        return bool(wildcard.is_unspecified and (wildcard.version == 6 or other.version == 4))

    return ip_a == ip_b or covers(ip_a, ip_b) or covers(ip_b, ip_a)


# RFC 9110 token characters: what the core's header types accept in a name.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,65535}")


def _check_header_names(names: Iterable[str]) -> None:
    for name in names:
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(
                f"invalid header name {name!r}: use letters, digits and !#$%&'*+-.^_`|~ (no spaces or ':')"
            )


def _check_headers(headers: Mapping[str, str]) -> dict[str, str]:
    _check_header_names(headers)
    for name, value in headers.items():
        # The core refuses control characters other than tab, and DEL.
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
            raise ValueError(f"invalid value for header {name!r}: control characters are not allowed")
    return dict(headers)


# Header names and values, checked on load as the data plane will parse them at start.
HeaderMap = Annotated[dict[str, str], AfterValidator(_check_headers)]


class _Model(BaseModel):
    # A field's docstring is its description in the JSON Schema and the docs' reference.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_attribute_docstrings=True)


RETRY_CONDITIONS = (
    "5xx",
    "gateway-error",
    "connect-failure",
    "reset",
    "cancelled",
    "unknown",
    "deadline-exceeded",
    "resource-exhausted",
    "internal",
    "unavailable",
)


def _valid_duration(v: Union[str, float]) -> Union[str, float]:
    parse_duration(v)
    return v


# A duration as written in the config ("10s", "300ms", or seconds); checked on load,
# converted to milliseconds only when handed to Rust.
Duration = Annotated[Union[str, float], AfterValidator(_valid_duration)]


class Endpoint(_Model):
    """One place a service runs."""

    addr: str
    """Where to connect: "IP:PORT" ("[IPv6]:PORT")."""
    zone: Optional[str] = None
    """The endpoint's zone: zonal balancing keeps traffic in this proxy's own zone first."""
    cluster: Optional[str] = None
    """The endpoint's cluster; one other than this proxy's is the costliest tier unless [costs] says
    otherwise.
    """
    identity: Optional[str] = None
    """The upstream proxy's SPIFFE ID: traffic to it is mTLS, verified against this identity."""

    _addr = field_validator("addr")(classmethod(lambda cls, v: _check_socket_addr(v)))

    @field_validator("identity")
    @classmethod
    def _spiffe(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not v.startswith("spiffe://"):
            raise ValueError("must be a SPIFFE ID such as 'spiffe://mesh.local/ns/default/sa/web'")
        return v


class _Value(_Model):
    """A settings table that is a value: frozen, so that every service left at its defaults shares
    one instance (pydantic copies a default only if it can change), as a mesh holds thousands."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, use_attribute_docstrings=True, frozen=True
    )


class Zonal(_Value):
    """The zonal balancer's load band: when to add and drop cost tiers."""

    load_low: float = Field(default=0.8, ge=0, allow_inf_nan=False)
    """Below this load (in-flight requests per active endpoint) the costliest added tier is dropped."""
    load_high: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    """Above this load the next cost tier is added."""
    dwell: Duration = "1s"
    """At most one tier change per this long."""

    @model_validator(mode="after")
    def _band(self) -> Zonal:
        if self.load_low >= self.load_high:
            raise ValueError("load_low must be below load_high")
        return self


class Breaker(_Value):
    """Failure accrual: endpoints that fail in a row are ejected for a while."""

    consecutive_failures: int = Field(default=7, ge=1, le=_U32_MAX)
    """Failures in a row that trip an endpoint (eject it from balancing)."""
    min_penalty: Duration = "1s"
    """How long the first trip lasts; each further trip doubles it."""
    max_penalty: Duration = "60s"
    """The longest a trip lasts."""
    jitter: float = Field(default=0.5, ge=0, le=1)
    """Up to this share (0 to 1) of each penalty is taken off at random, so that endpoints tripped together
    do not return together.
    """
    max_ejection_percent: int = Field(default=50, ge=0, le=100)
    """Never eject more than this share of a service's endpoints (rounded down: a lone endpoint stays), and
    below `panic_threshold_percent` available, use them all again (Envoy's outlier detection semantics).
    """
    panic_threshold_percent: int = Field(default=50, ge=0, le=100)
    """With fewer than this share of endpoints available, the balancer uses them all (`balancer_panic`)."""


class Retry(_Model):
    """Which failures are retried, how often, and the budget that bounds retries."""

    on: list[str] = ["gateway-error", "connect-failure"]
    """The failures that are retried: 5xx, gateway-error (502, 503, 504), connect-failure, reset, and the
    gRPC statuses cancelled, unknown, deadline-exceeded, resource-exhausted, internal, unavailable.
    """
    limit: int = Field(default=1, ge=0, le=10)
    """Retries per request, at most 10."""
    budget: float = Field(default=0.2, ge=0, le=10)
    """Retries may add at most this share of the requests over `ttl` (0.2: one retry per five requests)."""
    min_per_second: int = Field(default=10, ge=0, le=_U32_MAX)
    """Retries allowed per second whatever the budget, so that a quiet route can still retry."""
    ttl: Duration = "10s"
    """The window over which requests and retries are counted for the budget."""

    @field_validator("on")
    @classmethod
    def _conditions(cls, v: list[str]) -> list[str]:
        for cond in v:
            if cond not in RETRY_CONDITIONS:
                raise ValueError(f"unknown retry condition {cond!r} (valid: {', '.join(RETRY_CONDITIONS)})")
        return v


class Service(_Model):
    """A named group of endpoints, with how to balance across them."""

    name: str = Field(min_length=1)
    """The name routes and the control plane know it by (for example `web.shop`)."""
    balancer: Literal["peak-ewma", "round-robin", "zonal"] = "peak-ewma"
    """peak-ewma (latency and load aware), round-robin, or zonal (cost tiers, like HAZL)."""
    protocol: Literal["auto", "http1", "http2"] = "auto"
    """HTTP towards the endpoints: http1, http2, or auto (the client's)."""
    endpoints: list[Endpoint] = Field(default_factory=list)
    """Where it runs. Empty, it takes its endpoints from [discovery]."""
    addresses: list[str] = Field(default_factory=list)
    """Its virtual addresses ("IP:PORT", like a Kubernetes ClusterIP): a transparent listener sends traffic
    for them to this service. "0.0.0.0:PORT" (or "[::]:PORT") is any address on PORT.
    """
    connect_timeout: Duration = "1s"
    """A connection to an endpoint not made within this is a connect failure."""

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        return [_check_socket_addr(a) for a in v]

    idle_timeout: Duration = "90s"
    """Idle pooled upstream connections are closed after this."""
    zonal: Zonal = Zonal()
    """The load band and dwell of the zonal balancer."""
    breaker: Union[Breaker, Literal[False]] = Breaker()
    """Failure accrual; `false` turns it off."""


class Backend(_Model):
    """A service a route sends to, with its weight."""

    service: str
    """The service a share of the route's traffic goes to."""
    weight: int = Field(default=1, ge=0, le=1_000_000)
    """Its share, against the other backends' weights (0 sends it none)."""


class HeaderOps(_Model):
    """Header changes."""

    add: HeaderMap = {}
    """Headers appended (kept beside any of the same name)."""
    set: HeaderMap = {}
    """Headers set (replacing any of the same name)."""
    remove: list[str] = []
    """Header names removed."""

    @field_validator("remove")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        _check_header_names(v)
        return v


class Rewrite(_Model):
    """A path rewrite."""

    path_prefix: str
    """Replaces the route's matched path_prefix before the request is sent on."""

    @field_validator("path_prefix")
    @classmethod
    def _slash(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v


class Redirect(_Model):
    """A redirect answered by the proxy."""

    status: Literal[301, 302, 303, 307, 308] = 302
    """The redirect status: 301, 302, 303, 307 or 308."""
    scheme: Optional[Literal["http", "https"]] = None
    """The scheme in Location; default: the request's."""
    host: Optional[str] = None
    """The host in Location; default: the request's."""
    path: Optional[str] = None
    """The path in Location; default: the request's."""


class DirectResponse(_Model):
    """A response answered by the proxy."""

    status: int = Field(ge=100, le=599)
    """The status the proxy answers with itself."""
    body: str = ""
    """The body of that answer."""
    headers: HeaderMap = {}
    """The headers of that answer."""


class RateLimit(_Model):
    """A token bucket: requests past it get 429."""

    rps: float = Field(gt=0, allow_inf_nan=False)
    """Requests per second the route admits (a token bucket refilled at this rate); past it, 429."""
    burst: int = Field(ge=1, le=_U32_MAX)
    """Requests the bucket holds: how many may arrive at once."""


class Route(_Model):
    """What a listener's matching requests get: backends, or an answer of the proxy's own."""

    listener: str
    """The listener whose requests this route matches."""
    name: Optional[str] = None
    """Names the route in metrics, policy rules, plugins and `meshcore top`; default route-N."""
    host: Optional[str] = None
    """Host to match: exact or `*.suffix`, case-insensitive, port ignored."""
    path_prefix: Optional[str] = None
    """Path prefix to match, by whole segments (`/api` matches `/api/x`, not `/apix`)."""
    headers: HeaderMap = Field(default_factory=dict)
    """Header values that must all match exactly."""
    timeout: Optional[Duration] = None
    """Time for the whole request, retries and the response body included: no response head by then is a
    504, a body still streaming is cut off.
    """
    response_timeout: Optional[Duration] = None
    """Time for each attempt to response headers; past it, 504 (never retried)."""
    retry: Optional[Retry] = None
    """Retry policy; none: no retries."""
    request_headers: Optional[HeaderOps] = None
    """Header changes on the request before it is sent on."""
    response_headers: Optional[HeaderOps] = None
    """Header changes on the response before it goes back."""
    rewrite: Optional[Rewrite] = None
    """Path rewrite before the request is sent on."""
    redirect: Optional[Redirect] = None
    """Answer with a redirect instead of proxying."""
    direct_response: Optional[DirectResponse] = None
    """Answer with this response instead of proxying."""
    rate_limit: Optional[RateLimit] = None
    """Requests per second this route admits."""
    backends: list[Backend] = Field(default_factory=list)
    """The services the route sends to, split by weight."""

    @model_validator(mode="after")
    def _has_a_destination(self) -> Route:
        if not self.backends and self.redirect is None and self.direct_response is None:
            raise ValueError("a route needs backends, a redirect or a direct_response")
        if self.redirect is not None and self.direct_response is not None:
            raise ValueError("redirect and direct_response cannot both be set")
        return self

    @field_validator("path_prefix")
    @classmethod
    def _slash(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v


class AccessLog(_Model):
    """Requests logged one line each (JSON or the Common Log Format) by a background writer
    that never blocks a request: when it falls behind, lines are dropped and counted."""

    format: Literal["json", "common"] = "json"
    """json (one object per line) or common (the Common Log Format)."""
    path: str = Field(default="stdout", min_length=1)
    """"stdout", or a file opened for appending (relative to the config's directory), opened anew when a
    tool such as logrotate moves it away.
    """
    buffer: int = Field(default=16_384, ge=1, le=262_144)
    """Lines waiting for the writer; past it new lines are dropped (access_log_dropped_total)."""


class Tracing(_Model):
    """W3C trace context (and B3) on requests: the proxy's span joins a request's trace, or
    starts one when sampling says so, and is exported over OTLP/HTTP when a collector is set."""

    sampling: float = Field(default=1.0, ge=0.0, le=1.0)
    """The chance that a request arriving without a trace starts one (0 to 1); a request that carries one
    keeps its sampling decision.
    """
    otlp: Optional[str] = None
    """An OTLP/HTTP collector, "host:port" or "http://host:port": spans are sent to its /v1/traces,
    batched, off the request path. None: context is propagated, nothing exported.
    """
    service_name: str = Field(default="meshcore", min_length=1)
    """The spans' `service.name`."""

    @field_validator("otlp")
    @classmethod
    def _collector(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        address = v.removeprefix("http://").rstrip("/")
        host, sep, port = address.rpartition(":")
        valid_port = port.isascii() and port.isdigit() and 0 < int(port) <= 65535
        if "://" in address or "/" in address or not sep or not host or not valid_port:
            raise ValueError(f"{v!r}: expected host:port or http://host:port (OTLP over plain HTTP)")
        return v


class ServerCertificate(_Model):
    """An edge listener's own certificate (`tls = "server"`), from any CA: clients outside the mesh
    verify it as they would any web server's."""

    cert: str
    """PEM file of the certificate chain, the server's certificate first."""
    key: str
    """PEM file of its private key (unencrypted)."""


class Listener(_Model):
    """A socket the proxy serves."""

    name: str = Field(min_length=1)
    """Names the listener in routes, policy rules and metrics."""
    bind: str
    """Address to listen on: "IP:PORT"."""
    protocol: Literal["auto", "http1", "http2", "opaque"] = "auto"
    """auto (detected from the first bytes), http1, http2 or opaque (TCP)."""
    direction: Optional[Literal["inbound", "outbound"]] = None
    """inbound: callers come in (policy applies); outbound: the app calls out. Also the `direction` label of
    its metrics. Default: inbound if the name contains it or the listener is an edge (tls = "server"),
    else outbound.
    """
    service: Optional[str] = None
    """The service opaque traffic goes to (needed with protocol = opaque)."""
    detect_timeout: Duration = "10s"
    """A client that sends nothing for this long is served as opaque TCP (server-speaks-first protocols)."""
    header_read_timeout: Duration = "30s"
    """An HTTP/1.1 client must send each request's headers (and an HTTP/2 client its preface) within this,
    counted from the connection or the previous response (slowloris).
    """
    idle_timeout: Duration = "5m"
    """An HTTP/2 connection with no open stream is closed (GOAWAY) after this."""
    max_connections: int = Field(default=10_000, ge=1, le=_U64_MAX)
    """Open connections this listener holds; past it the longest-idle one is closed to make room, or the
    new one is refused when none is idle.
    """
    tls: Literal["none", "mesh", "permissive", "server"] = "none"
    """mesh: mTLS only (needs [identity]); permissive: mTLS or plaintext; server: TLS with the listener's
    own `certificate`, for clients outside the mesh (an edge); none: plaintext.
    """
    certificate: Optional[ServerCertificate] = None
    """The certificate a `tls = "server"` listener presents."""
    share_port: bool = False
    """Share the port with other processes that ask for it too (the kernel spreads connections between
    them, e.g. for a hand-over); off, a port in use is a BindError.
    """
    trusted_gateways: list[str] = []
    """Peers (SPIFFE IDs) whose requests say who the original caller is: `meshcore gateway`s. From them the
    `meshcore-client-id` header names the caller that policy checks; from any other peer it is replaced
    by the peer's own ID. mTLS listeners only.
    """
    transparent: bool = False
    """A sidecar's listener: takes connections redirected to it by iptables (`meshcore sidecar-init`) and
    serves each by its original destination (services' `addresses`, their endpoints' own addresses, else
    passed through as TCP under [egress]).
    """
    opaque_ports: list[int] = []
    """Original destination ports whose traffic skips protocol detection (server-speaks-first protocols
    such as databases): forwarded as TCP.
    """
    access_log: Optional[AccessLog] = None
    """This listener's access log, in place of the global `access_log`."""

    _bind = field_validator("bind")(classmethod(lambda cls, v: _check_socket_addr(v)))

    @field_validator("trusted_gateways")
    @classmethod
    def _gateway_ids(cls, v: list[str]) -> list[str]:
        for gateway in v:
            if not re.fullmatch(r"spiffe://[a-z0-9._-]+/\S+", gateway):
                raise ValueError(f"{gateway!r} is not a SPIFFE ID (spiffe://TRUST-DOMAIN/PATH)")
        return v

    @field_validator("opaque_ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        for port in v:
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is not between 1 and 65535")
        return v

    @model_validator(mode="after")
    def _opaque_ports_need_transparent(self) -> Listener:
        if self.opaque_ports and not self.transparent:
            raise ValueError("opaque_ports are original destination ports: they need transparent = true")
        return self

    @model_validator(mode="after")
    def _gateways_need_mtls(self) -> Listener:
        if self.trusted_gateways and self.tls not in ("mesh", "permissive"):
            raise ValueError(
                'trusted_gateways needs tls = "mesh" or "permissive": a gateway is known by its certificate'
            )
        return self

    @model_validator(mode="after")
    def _certificate_for_server_tls(self) -> Listener:
        if self.tls == "server" and self.certificate is None:
            raise ValueError('tls = "server" needs a certificate = { cert = "...", key = "..." }')
        if self.certificate is not None and self.tls != "server":
            raise ValueError('a certificate is for tls = "server" (mesh TLS uses [identity])')
        return self


class Identity(_Model):
    """This proxy's workload identity: certificate files, or the identity service."""

    trust_anchors: str
    """PEM file of the CA certificates peers' identities must chain to; watched and swapped when it changes.
    """
    trust_domains: list[str] = []
    """Trust domains whose workloads may call this proxy's mTLS listeners; empty means this proxy's own
    trust domain only.
    """
    cert: Optional[str] = None
    """PEM file of this proxy's certificate chain (with `key`), renewed by rewriting the file. Its
    certificate must name one SPIFFE ID, be in date and chain to `trust_anchors`: peers refuse any
    other."""
    key: Optional[str] = None
    """PEM file of this proxy's private key."""
    issuer: Optional[str] = None
    """The identity service's https:// URL (with `token_file` and `name`): the certificate is issued and
    renewed from it.
    """
    token_file: Optional[str] = None
    """The bootstrap token the identity service takes as proof of `name`."""
    name: Optional[str] = None
    """The workload name asked for, such as ns/default/sa/web (the SPIFFE path)."""

    @field_validator("trust_domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        for domain in v:
            if not re.fullmatch(r"[a-z0-9._-]+", domain):
                raise ValueError(
                    f"invalid trust domain {domain!r}: lowercase letters, digits, '.', '-' and '_' only"
                )
        return v

    @model_validator(mode="after")
    def _one_source(self) -> Identity:
        files = self.cert is not None or self.key is not None
        service = self.issuer is not None or self.token_file is not None or self.name is not None
        if files and service:
            raise ValueError("use either cert/key files or issuer/token_file/name, not both")
        if files and not (self.cert and self.key):
            raise ValueError("cert and key go together")
        if service and not (self.issuer and self.token_file and self.name):
            raise ValueError("the identity service needs issuer, token_file and name")
        if not files and not service:
            raise ValueError("give cert and key files, or issuer, token_file and name")
        if self.issuer is not None and not self.issuer.startswith("https://"):
            raise ValueError("issuer must be an https:// URL")
        return self


class PolicyRule(_Model):
    """Who may call: a rule allows requests from its identities or networks, with its methods."""

    name: Optional[str] = None
    """Names the rule in decisions, metrics and `meshcore policy explain`."""
    listener: Optional[str] = None
    """The inbound listeners the rule applies to: `listener` names one, `listeners` several; neither, every
    inbound listener.
    """
    listeners: list[str] = []
    """Several inbound listeners the rule applies to (see `listener`)."""
    path_prefix: Optional[str] = None
    """A rule with a path_prefix protects it: requests under it are allowed only by the rules of the
    longest such prefix, and refused otherwise, whatever the default.
    """
    routes: list[str] = []
    """A rule with routes (route names, of its listeners) protects them the same way: requests that routing
    sends down them are allowed only by rules naming them. Under a protected prefix too, a request needs
    both the route's rules and the prefix's.
    """
    methods: list[str] = []
    """The request methods the rule allows; empty: any."""
    identities: list[str] = []
    """Caller SPIFFE IDs the rule allows: exact, or with `*` standing for one path segment."""
    networks: list[str] = []
    """Caller networks (CIDRs) the rule allows."""

    # A rule protects the paths it names: one that could never match (no leading "/") would leave
    # them to the default policy without a word.
    @field_validator("path_prefix")
    @classmethod
    def _slash(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not v.startswith("/"):
            raise ValueError("must start with '/' (request paths do, so this rule would never match)")
        return v

    @field_validator("networks")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for net in v:
            _check_network(net)
        return v

    @model_validator(mode="after")
    def _one_way_to_name_listeners(self) -> PolicyRule:
        if self.listener is not None and self.listeners:
            raise ValueError("give listener or listeners, not both")
        if self.path_prefix is not None and self.routes:
            raise ValueError("a rule protects a path_prefix or routes, not both: write two rules")
        return self

    def listener_names(self) -> list[str]:
        return [self.listener] if self.listener is not None else list(self.listeners)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        for method in v:
            if not _METHOD.fullmatch(method):
                raise ValueError(f"{method!r} is not a request method (a token such as GET or POST)")
        return [m.upper() for m in v]


# RFC 9110 section 9.1: a method is a token.
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class Policy(_Model):
    """Authorization of inbound requests."""

    default: Literal["all-unauthenticated", "all-authenticated", "deny", "audit"] = "all-unauthenticated"
    """What a request no rule allows gets: all-unauthenticated (allowed), all-authenticated (mTLS callers
    only), deny, or audit (allowed, logged and counted under the rule "default:audit").
    """
    rules: list[PolicyRule] = []
    """The rules; a request is allowed when any rule for its listener allows it."""


PortRange = Union[int, str]  # 443, or "8000-8100"


def _port_range(value: PortRange) -> tuple[int, int]:
    low, dash, high = str(value).partition("-")
    try:
        first, last = int(low), int(high if dash else low)
    except ValueError:
        raise ValueError(f"port {value!r}: a number or a range 'FIRST-LAST'") from None
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"port {value!r}: between 1 and 65535, the first not above the last")
    return first, last


class EgressRule(_Model):
    """Traffic to some networks (and ports), allowed or denied."""

    action: Literal["allow", "deny"]
    """allow or deny the matching traffic."""
    networks: list[str] = Field(min_length=1)
    """Destination networks (CIDRs) the rule matches."""
    ports: list[PortRange] = []
    """Destination ports (numbers or "FIRST-LAST" ranges); none: every port."""

    @field_validator("networks")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for net in v:
            _check_network(net)
        return v

    @field_validator("ports")
    @classmethod
    def _ranges(cls, v: list[PortRange]) -> list[PortRange]:
        for port in v:
            _port_range(port)
        return v


class Egress(_Model):
    """What a transparent outbound listener does with traffic to addresses outside the mesh,
    passed through as TCP: the first rule whose networks and ports match decides, else `default`."""

    default: Literal["allow", "deny"] = "allow"
    """What traffic no rule matches gets: allow or deny."""
    rules: list[EgressRule] = []
    """The rules, first match decides."""


class PluginConfig(_Model):
    """A Python plugin: a file or a module, and the routes it sees."""

    path: Optional[str] = None
    """A Python file holding the hooks (module functions, or a class named Plugin); reloaded when it changes.
    """
    module: Optional[str] = None
    """An importable `package.module:attribute` instead of a file."""
    name: Optional[str] = None
    """Names the plugin in errors and metrics; default: the file's stem or the module."""
    routes: Optional[list[str]] = None
    """The routes (by name) whose requests it sees; none: every route."""
    on_error: Literal["fail-closed", "fail-open"] = "fail-closed"
    """A hook that raises answers 500 (fail-closed) or is skipped (fail-open)."""
    timeout: Duration = "1s"
    """An async hook not done within this counts as an error."""

    @model_validator(mode="after")
    def _one_source(self) -> PluginConfig:
        if (self.path is None) == (self.module is None):
            raise ValueError("give exactly one of path or module")
        return self


class ReloadPolicy(_Model):
    """Verified change: for `verify` after a reload, golden metrics per route are compared with
    the window before; worse past these limits rolls the change back."""

    verify: Duration
    """How long after a reload the golden metrics are watched."""
    min_success_rate: float = Field(default=0.99, ge=0, le=1)
    """A route whose success rate falls below this rolls the change back."""
    max_p99_ratio: float = Field(default=1.5, ge=1, allow_inf_nan=False)
    """A route whose p99 latency grows past this multiple of before rolls the change back."""
    min_requests: int = Field(default=20, ge=0, le=_U32_MAX)
    """Routes with fewer requests in the window are not judged."""

    @field_validator("verify")
    @classmethod
    def _positive(cls, v: Union[str, float]) -> Union[str, float]:
        if parse_duration(v) <= 0:
            raise ValueError("the verify window must be longer than 0")
        return v


class Discovery(_Model):
    """Where services listed without endpoints take theirs from: a control plane
    (`meshcore control serve`), over mTLS with the proxy's identity, or plain HTTP on loopback.
    Several URLs name replicas sharing state (`control serve --etcd`): the next is followed when
    one goes away."""

    control: Union[str, list[str]]
    """The control plane's URL, or several URLs of replicas."""
    control_identity: Optional[str] = None
    """The control plane's SPIFFE ID, checked at each connect (https only)."""
    report_interval: Duration = "5s"
    """How often the proxy reports its version, config version and golden metrics to it."""

    @property
    def urls(self) -> list[str]:
        return [self.control] if isinstance(self.control, str) else list(self.control)

    @model_validator(mode="after")
    def _identity_needs_https(self) -> Discovery:
        if self.control_identity is not None:
            if not self.control_identity.startswith("spiffe://"):
                raise ValueError(f"control_identity {self.control_identity!r}: expected a spiffe:// ID")
            if not all(url.startswith("https:") for url in self.urls):
                raise ValueError("control_identity is checked over https:// only")
        return self

    @field_validator("report_interval")
    @classmethod
    def _positive_interval(cls, v: Union[str, float]) -> Union[str, float]:
        if parse_duration(v) <= 0:
            raise ValueError("must be more than 0")
        return v

    @field_validator("control")
    @classmethod
    def _control_urls(cls, v: Union[str, list[str]]) -> Union[str, list[str]]:
        if isinstance(v, list):
            if not v:
                raise ValueError("give at least one control plane URL")
            for url in v:
                cls._control_url(url)
            return v
        return cls._control_url(v)

    @staticmethod
    def _control_url(v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"{v!r} is not an https:// (or loopback http://) URL of a control plane")
        try:
            port = parts.port
        except ValueError:
            port = 0
        if not port:
            raise ValueError(f"{v!r}: give the port, a number from 1 to 65535")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(f"{v!r}: give only scheme, host and port")
        if parts.scheme == "http" and not _is_loopback_host(parts.hostname):
            raise ValueError(f"{v!r}: plain http:// is for a control plane on loopback only; use https://")
        return v


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Config(_Model):
    """A proxy's whole config."""

    admin: Optional[str] = None
    """The admin API's "IP:PORT" (metrics, config, lifecycle); none: no admin API."""
    discovery: Optional[Discovery] = None
    """Services listed without endpoints take theirs from this control plane."""
    state_dir: Optional[str] = None
    """Where the config history is kept; default "<config stem>.state" beside the config (relative paths
    resolve against the config's directory).
    """
    watch: bool = False
    """Reload when the config file, or a file it names, changes."""
    admin_token_file: Optional[str] = None
    """"NAME TOKEN" per line: callers presenting a token may change the proxy from other hosts."""
    reload: Optional[ReloadPolicy] = None
    """Verified reloads: watch the golden metrics after a change and roll back when they worsen."""
    zone: Optional[str] = None
    """This proxy's zone: the cheapest tier for zonal balancing."""
    cluster: Optional[str] = None
    """This proxy's cluster."""
    costs: dict[str, Annotated[int, Field(ge=0, le=_U32_MAX)]] = {}
    """Tier cost per "zone" or "cluster/zone"."""
    identity: Optional[Identity] = None
    """This proxy's workload identity (needed by mTLS listeners and endpoints with an identity)."""
    policy: Policy = Policy()
    """Authorization of inbound requests by the caller's identity, network, method, path and route."""
    egress: Egress = Egress()
    """What transparent outbound traffic to addresses outside the mesh may reach."""
    access_log: Optional[AccessLog] = None
    """Every listener's access log, unless it has its own."""
    tracing: Optional[Tracing] = None
    """Trace context propagation and span export."""
    plugins: list[PluginConfig] = []
    """Python plugins, each with the phases it defines."""
    workers: Optional[int] = Field(default=None, ge=1, le=1024)
    """Data-plane threads; default: the number of cores."""
    listeners: list[Listener] = []
    """The sockets the proxy serves."""
    routes: list[Route] = []
    """Where listeners' requests go; first match wins."""
    services: list[Service] = []
    """Named groups of endpoints that routes send to."""

    _admin = field_validator("admin")(classmethod(lambda cls, v: v if v is None else _check_admin_addr(v)))

    # Where relative file paths (certificates, tokens) are resolved from.
    _base_dir: Optional[str] = PrivateAttr(default=None)
    # The file this config was read from, for error messages.
    _source: Optional[str] = PrivateAttr(default=None)
    # Names of routes that Python plugins apply to (set by the proxy).

    def resolve_path(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() or self._base_dir is None else Path(self._base_dir) / p

    def check_files(self) -> list[tuple[str, str]]:
        """The files the config names, read and checked as they will be used: the admin token
        file parsed, and [identity]'s files readable, PEM, and a key that matches its certificate."""
        problems = self._check_admin_token_file()
        problems += self._check_identity_files() + self._check_server_certificates()
        return problems + self._check_access_logs()

    def _check_server_certificates(self) -> list[tuple[str, str]]:
        """Each edge listener's certificate and key, loaded as its TLS server will load them."""
        from . import _core

        problems = []
        for i, lst in enumerate(self.listeners):
            if lst.certificate is None:
                continue
            where = f"listeners[{i}].certificate"
            paths = {
                "cert": self.resolve_path(lst.certificate.cert),
                "key": self.resolve_path(lst.certificate.key),
            }
            pems = {}
            for field, path in paths.items():
                try:
                    pems[field] = path.read_bytes().decode("latin-1")
                except OSError as e:
                    problems.append((f"{where}.{field}", f"cannot read {path}: {e.strerror or e}"))
            if len(pems) < 2:
                continue
            refused = _core.check_server_certificate(pems["cert"], pems["key"])
            if refused is not None:
                field, reason = refused
                problems.append((f"{where}.{field}", f"{paths[field]}: {reason}"))
        return problems

    def server_certificate_pems(self, certificate: ServerCertificate) -> tuple[str, str]:
        """The certificate chain's and the key's PEM text (their files resolved from the config's
        directory)."""
        return (
            self.resolve_path(certificate.cert).read_bytes().decode("latin-1"),
            self.resolve_path(certificate.key).read_bytes().decode("latin-1"),
        )

    def _check_access_logs(self) -> list[tuple[str, str]]:
        """Each access log file can be appended to, or created in its directory (no file is
        made here: `check` changes nothing)."""
        logs = [("access_log", self.access_log)]
        logs += [(f"listeners[{i}].access_log", lst.access_log) for i, lst in enumerate(self.listeners)]
        problems = []
        for where, log in logs:
            if log is None or log.path == "stdout":
                continue
            path = self.resolve_path(log.path)
            if path.is_dir():
                problems.append((f"{where}.path", f"{path} is a directory"))
            elif path.exists() and not os.access(path, os.W_OK):
                problems.append((f"{where}.path", f"{path} is not writable"))
            elif not path.exists() and not path.parent.is_dir():
                problems.append((f"{where}.path", f"{path.parent} does not exist"))
            elif not path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
                problems.append((f"{where}.path", f"cannot create files in {path.parent}"))
        return problems

    def _check_admin_token_file(self) -> list[tuple[str, str]]:
        if self.admin_token_file is None:
            return []
        from .tokens import TokenFileError, read_token_file

        try:
            read_token_file(self.resolve_path(self.admin_token_file))
        except TokenFileError as e:
            return [("admin_token_file", str(e))]
        return []

    def _check_identity_files(self) -> list[tuple[str, str]]:
        identity = self.identity
        if identity is None:
            return []
        problems: list[tuple[str, str]] = []
        paths: dict[str, Path] = {}
        blocks: dict[str, list[tuple[str, bool]]] = {}
        for field in ("trust_anchors", "cert", "key", "token_file"):
            name = getattr(identity, field)
            if name is None:
                continue
            path = paths[field] = self.resolve_path(name)
            try:
                text = path.read_bytes().decode("latin-1")
            except OSError as e:
                problems.append((f"identity.{field}", f"cannot read {path}: {e.strerror or e}"))
                continue
            if field == "token_file":
                if not text.strip():
                    problems.append(("identity.token_file", f"{path} is empty"))
                continue
            try:
                blocks[field] = _pem_blocks(text)
            except ValueError as e:
                problems.append((f"identity.{field}", f"{path}: {e}"))
        for field in ("trust_anchors", "cert"):
            if field in blocks and not any(kind == "CERTIFICATE" for kind, _ in blocks[field]):
                problems.append(
                    (f"identity.{field}", f"{paths[field]}: no PEM certificate (-----BEGIN CERTIFICATE-----)")
                )
        if "key" in blocks:
            keys = [(kind, encrypted) for kind, encrypted in blocks["key"] if kind.endswith("PRIVATE KEY")]
            if not keys:
                problems.append(
                    ("identity.key", f"{paths['key']}: no PEM private key (-----BEGIN PRIVATE KEY-----)")
                )
            elif keys[0][0] == "ENCRYPTED PRIVATE KEY" or keys[0][1]:
                problems.append(
                    ("identity.key", f"{paths['key']}: an encrypted private key is not supported")
                )
        if problems:
            return problems
        return _check_with_the_core(paths)

    def cross_check(self) -> list[tuple[str, str]]:
        """References between sections, which pydantic cannot see field by field."""
        problems: list[tuple[str, str]] = []
        services = [s.name for s in self.services]
        listeners = [lst.name for lst in self.listeners]
        # Membership by set: a mesh's thousands of routes each name a service.
        service_set, listener_set = set(services), set(listeners)
        for kind, names, path in (("service", services, "services"), ("listener", listeners, "listeners")):
            seen: set[str] = set()
            for i, n in enumerate(names):
                if n in seen:
                    problems.append((f"{path}[{i}].name", f"duplicate {kind} name {n!r}"))
                seen.add(n)
        for i, lst in enumerate(self.listeners):
            for j, earlier in enumerate(self.listeners[:i]):
                if binds_conflict(lst.bind, earlier.bind):
                    problems.append(
                        (
                            f"listeners[{i}].bind",
                            f"{lst.bind} takes the port of listeners[{j}].bind {earlier.bind} "
                            f"(listener {earlier.name!r}); each listener needs its own port",
                        )
                    )
                    break
            if self.admin is not None and binds_conflict(self.admin, lst.bind):
                problems.append(
                    (
                        "admin",
                        f"{self.admin} takes the port of listeners[{i}].bind {lst.bind} "
                        f"(listener {lst.name!r}); the admin API needs its own port",
                    )
                )
            if lst.service is not None and lst.service not in service_set:
                problems.append((f"listeners[{i}].service", unknown("service", lst.service, services)))
            if lst.protocol == "opaque" and lst.service is None:
                problems.append((f"listeners[{i}].service", "an opaque listener needs a target service"))
            if lst.tls in ("mesh", "permissive") and self.identity is None:
                problems.append((f"listeners[{i}].tls", "TLS needs an [identity] section"))
        if self.discovery is not None and any(u.startswith("https:") for u in self.discovery.urls):
            if self.identity is None:
                why = "an https:// control plane takes the proxy's mTLS identity: add [identity]"
                problems.append(("discovery.control", why))
        claimed: dict[str, str] = {}  # virtual address -> the service it names
        for i, s in enumerate(self.services):
            for j, address in enumerate(s.addresses):
                owner = claimed.setdefault(address, s.name)
                if owner != s.name:
                    problems.append((f"services[{i}].addresses[{j}]", f"{address} is service {owner!r}'s"))
            for j, e in enumerate(s.endpoints):
                if e.identity is not None and self.identity is None:
                    problems.append(
                        (f"services[{i}].endpoints[{j}].identity", "mTLS needs an [identity] section")
                    )
        route_names = self.route_names()
        for i, plugin in enumerate(self.plugins):
            for j, name in enumerate(plugin.routes or []):
                if name not in route_names:
                    problems.append((f"plugins[{i}].routes[{j}]", unknown("route", name, route_names)))
        direction = {lst.name: _direction(lst) for lst in self.listeners}
        for i, rule in enumerate(self.policy.rules):
            named = [("listener", rule.listener)] if rule.listener is not None else []
            named += [(f"listeners[{j}]", name) for j, name in enumerate(rule.listeners)]
            for field, name in named:
                if name not in listener_set:
                    problems.append((f"policy.rules[{i}].{field}", unknown("listener", name, listeners)))
                elif direction[name] != "inbound":
                    # Policy decides only what comes in: a rule here would never be applied.
                    why = f"{name!r} is an outbound listener; policy applies to inbound ones (see direction)"
                    problems.append((f"policy.rules[{i}].{field}", why))
            problems += self._policy_route_problems(i, rule, route_names)
        for i, r in enumerate(self.routes):
            if r.listener not in listener_set:
                problems.append((f"routes[{i}].listener", unknown("listener", r.listener, listeners)))
            for j, b in enumerate(r.backends):
                if b.service not in service_set:
                    problems.append(
                        (f"routes[{i}].backends[{j}].service", unknown("service", b.service, services))
                    )
            if r.backends and sum(b.weight for b in r.backends) == 0:
                problems.append((f"routes[{i}].backends", "weights must not all be zero"))
        return problems

    def _policy_route_problems(
        self, i: int, rule: PolicyRule, route_names: list[str]
    ) -> list[tuple[str, str]]:
        """A rule's routes must be routes of its listeners (of any, when it names none) on
        inbound listeners: one it could never see would leave that route to the default."""
        problems: list[tuple[str, str]] = []
        direction = {lst.name: _direction(lst) for lst in self.listeners}
        named = [r.name for r in self.routes if r.name]
        for j, name in enumerate(rule.routes):
            field = f"policy.rules[{i}].routes[{j}]"
            on = [r.listener for r in self.routes if r.name == name]
            if not on and name in route_names:
                why = f"{name!r} is an unnamed route's place: name the route, so the rule stays with it"
                problems.append((field, why))
            elif not on:
                problems.append((field, unknown("route", name, named)))
            elif rule.listener_names() and not set(on) & set(rule.listener_names()):
                names = ", ".join(repr(n) for n in rule.listener_names())
                problems.append((field, f"route {name!r} is on listener {on[0]!r}, not the rule's ({names})"))
            elif all(direction.get(lst) != "inbound" for lst in on):
                why = f"route {name!r} is on outbound listener {on[0]!r}; policy applies to inbound ones"
                problems.append((field, why))
        return problems

    def route_names(self) -> list[str]:
        """Each route's name; an unnamed route is `route-<index>`."""
        return [r.name or f"route-{i}" for i, r in enumerate(self.routes)]

    def to_core(self, plugin_routes: Collection[str] = ()) -> snapshot.Snapshot:
        """The document the Rust core takes: every field, defaults filled, durations in
        milliseconds; `plugin_routes` names the routes plugins apply to. `identity` is None:
        `Proxy` fills it once it holds a certificate."""
        names = self.route_names()
        return {
            "zone": self.zone,
            "cluster": self.cluster,
            "costs": dict(self.costs),
            "workers": self.workers,
            "listeners": [
                _core_listener(
                    lst,
                    self._core_access_log(lst.access_log or self.access_log),
                    self._core_server_certificate(lst.certificate),
                )
                for lst in self.listeners
            ],
            "routes": [
                _core_route(r, names[i], names[i] in plugin_routes) for i, r in enumerate(self.routes)
            ],
            "services": [_core_service(s) for s in self.services],
            "identity": None,
            "policy": {
                "default": self.policy.default,
                "rules": [
                    {
                        "name": rule.name,
                        "listeners": rule.listener_names(),
                        "path_prefix": rule.path_prefix,
                        "routes": list(rule.routes),
                        "methods": list(rule.methods),
                        "identities": list(rule.identities),
                        "networks": list(rule.networks),
                    }
                    for rule in self.policy.rules
                ],
            },
            "egress": {
                "default": self.egress.default,
                "rules": [
                    {
                        "action": rule.action,
                        "networks": list(rule.networks),
                        "ports": [list(_port_range(p)) for p in rule.ports],
                    }
                    for rule in self.egress.rules
                ],
            },
            "tracing": None
            if self.tracing is None
            else {
                "sampling": self.tracing.sampling,
                "otlp": self.tracing.otlp and self.tracing.otlp.removeprefix("http://").rstrip("/"),
                "service_name": self.tracing.service_name,
            },
        }

    def _core_server_certificate(
        self, certificate: Optional[ServerCertificate]
    ) -> Optional[snapshot.ServerCertificate]:
        if certificate is None:
            return None
        cert_pem, key_pem = self.server_certificate_pems(certificate)
        return {"cert_pem": cert_pem, "key_pem": key_pem}

    def _core_access_log(self, log: Optional[AccessLog]) -> Optional[snapshot.AccessLog]:
        if log is None:
            return None
        path = log.path if log.path == "stdout" else str(self.resolve_path(log.path))
        return {"format": log.format, "path": path, "buffer": log.buffer}


def unknown(kind: str, name: str, valid: list[str]) -> str:
    """The reason for a reference to nothing, with what it could have named."""
    choices = ", ".join(valid) if valid else "none defined"
    return f"unknown {kind} {name!r} (valid: {choices})"


def _direction(lst: Listener) -> Literal["inbound", "outbound"]:
    """A listener's direction: as given, else inbound when its name says so or it is an edge."""
    if lst.direction is not None:
        return lst.direction
    # An edge takes callers from outside: its policy rules must apply.
    return "inbound" if "inbound" in lst.name or lst.tls == "server" else "outbound"


def _core_listener(
    lst: Listener, access_log: Optional[snapshot.AccessLog], certificate: Optional[snapshot.ServerCertificate]
) -> snapshot.Listener:
    return {
        "name": lst.name,
        "bind": lst.bind,
        "protocol": lst.protocol,
        "direction": _direction(lst),
        "service": lst.service,
        "detect_timeout_ms": parse_duration(lst.detect_timeout),
        "header_read_timeout_ms": parse_duration(lst.header_read_timeout),
        "idle_timeout_ms": parse_duration(lst.idle_timeout),
        "max_connections": lst.max_connections,
        "tls": lst.tls,
        "server_certificate": certificate,
        "share_port": lst.share_port,
        "trusted_gateways": list(lst.trusted_gateways),
        "transparent": lst.transparent,
        "opaque_ports": list(lst.opaque_ports),
        "access_log": access_log,
    }


def _core_header_ops(ops: Optional[HeaderOps]) -> Optional[snapshot.HeaderOps]:
    if ops is None:
        return None
    return {"add": dict(ops.add), "set": dict(ops.set), "remove": list(ops.remove)}


def _core_route(r: Route, name: str, plugins: bool) -> snapshot.Route:
    retry, redirect, direct = r.retry, r.redirect, r.direct_response
    return {
        "listener": r.listener,
        "name": name,
        "host": r.host,
        "path_prefix": r.path_prefix,
        "headers": dict(r.headers),
        "timeout_ms": None if r.timeout is None else parse_duration(r.timeout),
        "response_timeout_ms": None if r.response_timeout is None else parse_duration(r.response_timeout),
        "retry": None
        if retry is None
        else {
            "on": list(retry.on),
            "limit": retry.limit,
            "budget": retry.budget,
            "min_per_second": retry.min_per_second,
            "ttl_ms": parse_duration(retry.ttl),
        },
        "request_headers": _core_header_ops(r.request_headers),
        "response_headers": _core_header_ops(r.response_headers),
        "rewrite": None if r.rewrite is None else {"path_prefix": r.rewrite.path_prefix},
        "redirect": None
        if redirect is None
        else {
            "status": redirect.status,
            "scheme": redirect.scheme,
            "host": redirect.host,
            "path": redirect.path,
        },
        "direct_response": None
        if direct is None
        else {"status": direct.status, "body": direct.body, "headers": dict(direct.headers)},
        "rate_limit": None
        if r.rate_limit is None
        else {"rps": r.rate_limit.rps, "burst": r.rate_limit.burst},
        "plugins": plugins,
        "backends": [{"service": b.service, "weight": b.weight} for b in r.backends],
    }


def _core_service(s: Service) -> snapshot.Service:
    breaker = s.breaker
    return {
        "name": s.name,
        "balancer": s.balancer,
        "protocol": s.protocol,
        "endpoints": [
            {"addr": e.addr, "zone": e.zone, "cluster": e.cluster, "identity": e.identity}
            for e in s.endpoints
        ],
        "addresses": list(s.addresses),
        "connect_timeout_ms": parse_duration(s.connect_timeout),
        "idle_timeout_ms": parse_duration(s.idle_timeout),
        "zonal": {
            "load_low": s.zonal.load_low,
            "load_high": s.zonal.load_high,
            "dwell_ms": parse_duration(s.zonal.dwell),
        },
        "breaker": None
        if breaker is False
        else {
            "consecutive_failures": breaker.consecutive_failures,
            "min_penalty_ms": parse_duration(breaker.min_penalty),
            "max_penalty_ms": parse_duration(breaker.max_penalty),
            "jitter": breaker.jitter,
            "max_ejection_percent": breaker.max_ejection_percent,
            "panic_threshold_percent": breaker.panic_threshold_percent,
        },
    }


_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)


def _pem_blocks(text: str) -> list[tuple[str, bool]]:
    """Each PEM block's label, and whether it is encrypted; ValueError if one is not base64."""
    out = []
    for m in _PEM_BLOCK.finditer(text):
        lines = m.group(2).strip().splitlines()
        headers = [line for line in lines if ":" in line]  # RFC 1421 headers of legacy encrypted keys
        body = "".join(line.strip() for line in lines if ":" not in line)
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"the {m.group(1)} block is not valid base64") from None
        out.append((m.group(1), any("ENCRYPTED" in h for h in headers)))
    return out


def _check_with_the_core(paths: dict[str, Path]) -> list[tuple[str, str]]:
    """Loads the certificates and the key as the data plane does at start (rustls), so check
    refuses exactly what run would, and run does not load OpenSSL into the sidecar."""
    from . import _core

    def text(field: str) -> Optional[str]:
        return paths[field].read_bytes().decode("latin-1") if field in paths else None

    refused = _core.check_identity(text("trust_anchors") or "", text("cert"), text("key"))
    if refused is None:
        return []
    field, reason = refused
    return [(f"identity.{field}", f"{paths[field]}: {reason}")]


def _alternatives(annotation: Any) -> list[Any]:
    """The types a field may hold: Annotated and Optional unwrapped, a Union's members listed."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Union:
        return [m for alt in get_args(annotation) if alt is not type(None) for m in _alternatives(alt)]
    return [annotation]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _field_names(model: type[BaseModel]) -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        names += [name] + [a for a in (field.alias, field.validation_alias) if isinstance(a, str)]
    return names


def _walk(loc: tuple[Any, ...]) -> tuple[str, Any, list[tuple[str, str]]]:
    """Follows a pydantic error location through the config models: the field path as a user
    writes it, the type found there (None if lost), and the union members the error went
    through, as (path, tag) (pydantic puts a member's tag, such as 'Breaker', in the location)."""
    path: str = ""
    at: Any = Config
    through: list[tuple[str, str]] = []
    for part in loc:
        alternatives = _alternatives(at)
        if isinstance(part, int):
            path += f"[{part}]"
            lists = [get_args(a)[0] for a in alternatives if get_origin(a) is list and get_args(a)]
            at = lists[0] if lists else None
        elif len(alternatives) > 1:  # `part` is the tag of the union member that was tried
            through.append((path, str(part)))
            named = [a for a in alternatives if getattr(a, "__name__", None) == part]
            at = named[0] if named else None
        else:
            path += ("." if path else "") + str(part)
            model: Any = alternatives[0] if alternatives else None
            if _is_model(model):
                field = model.model_fields.get(part)
                at = field.annotation if field is not None else None
            elif get_origin(model) is dict:
                at = get_args(model)[1] if get_args(model) else None
            else:
                at = None
    return path, at, through


@cache
def _field_homes() -> dict[str, tuple[str, ...]]:
    """Field name -> every place in the config it is valid ('routes[]', 'services[].breaker', '')."""
    homes: dict[str, list[str]] = {}

    def visit(model: type[BaseModel], where: str) -> None:
        for name, field in model.model_fields.items():
            for alias in {name, *(a for a in (field.alias, field.validation_alias) if isinstance(a, str))}:
                homes.setdefault(alias, []).append(where)
            path = f"{where}.{name}" if where else name
            for alt in _alternatives(field.annotation):
                if get_origin(alt) is list and get_args(alt) and _is_model(get_args(alt)[0]):
                    visit(get_args(alt)[0], path + "[]")
                elif _is_model(alt):
                    visit(alt, path)

    visit(Config, "")
    return {name: tuple(dict.fromkeys(places)) for name, places in homes.items()}


def _unknown_field(loc: tuple[Any, ...]) -> str:
    """'unknown field', with the valid name it is closest to and where else it is valid."""
    name = str(loc[-1])
    _, parent, _ = _walk(loc[:-1])
    hints = []
    models = [a for a in _alternatives(parent) if _is_model(a)]
    if models:
        close = difflib.get_close_matches(name, _field_names(models[0]), n=1)
        if close:
            hints.append(f"did you mean {close[0]!r}?")
    places = []
    for where in _field_homes().get(name, ()):
        if not where:
            places.append("at the top level")
        elif where.endswith("[]"):
            places.append(f"on {where[:-2].rpartition('.')[2]} ({where}.{name})")
        else:
            places.append(f"in {where}")
    if places:
        hints.append(f"{name!r} belongs {' or '.join(places)}")
    return "unknown field" + ("; " + " ".join(hints) if hints else "")


def _problems(errors: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(field path, reason) for pydantic's errors. When a table fits no member of a union such
    as `breaker = <table> | false`, the errors inside the table are kept and the failed
    `false` is dropped: a table with a typo in it was not meant to be `false`."""
    walked = [(_walk(err["loc"]), err) for err in errors]
    inside: set[str] = set()  # unions with an error inside one of their members' values
    for (path, _, through), _ in walked:
        inside.update(where for where, _ in through if path != where)
    problems = []
    for (path, _, through), err in walked:
        if any(tag.startswith("literal[") and where in inside for where, tag in through):
            continue
        if err["type"] == "extra_forbidden":
            problems.append((path, _unknown_field(err["loc"])))
        else:
            problems.append((path, str(err["msg"]).removeprefix("Value error, ")))
    return problems


def validate(data: dict[str, Any], source: Optional[str] = None) -> Config:
    """Validates a config dict; raises ConfigError naming source, field and reason."""
    if not isinstance(data, dict):
        raise config_error([("", "the config must be a table/mapping at the top level")], source)
    try:
        config = Config.model_validate(data)
    except ValidationError as e:
        raise config_error(_problems(e.errors()), source) from None
    problems = config.cross_check()
    if problems:
        raise config_error(problems, source)
    return config


def load(source: Union[str, Path, dict[str, Any], Config]) -> Config:
    """Loads a config from a TOML or YAML file path, a dict, or a Config."""
    if isinstance(source, Config):
        return source
    if isinstance(source, dict):
        return validate(source)
    path = Path(source)
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise config_error([("", f"cannot read file: {e.strerror or e}")], name) from None
    except UnicodeDecodeError as e:
        raise config_error([("", f"not UTF-8 text (byte {e.start}): {e.reason}")], name) from None
    return loads(text, format_of(path), name=name, base_dir=path.parent)


FORMATS = ("toml", "yaml", "json")


def format_of(path: Path) -> str:
    """The format a config file is read in, by its suffix: YAML for .yaml/.yml, JSON for .json,
    else TOML."""
    if path.suffix in (".yaml", ".yml"):
        return "yaml"
    return "json" if path.suffix == ".json" else "toml"


def loads(text: str, fmt: str, *, name: str, base_dir: Optional[Path] = None) -> Config:
    """Parses and validates config text in `fmt` (toml, yaml or json); `name` is what errors
    call it, `base_dir` where its relative paths resolve."""
    try:
        if fmt == "yaml":
            import yaml

            data = yaml.safe_load(text)
        elif fmt == "json":
            import json

            data = json.loads(text)
        elif fmt == "toml":
            try:
                import tomllib
            except ImportError:  # Python < 3.11
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
        else:
            raise ValueError(f"unknown config format {fmt!r} (valid: {', '.join(FORMATS)})")
    except Exception as e:  # noqa: BLE001 - parser errors vary by library
        raise config_error([("", f"cannot parse: {e}")], name) from None
    if not data:
        raise config_error([("", "the file is empty: no listeners, routes or services to run")], name)
    config = validate(data, name)
    config._base_dir = None if base_dir is None else str(base_dir)
    config._source = name
    return config


def restart_needed(running: Config, new: Config) -> list[tuple[str, str]]:
    """What differs between a running config and a new one that only a restart can apply, as
    `(field path, reason)`: worker threads, the admin API and the identity are set up at start;
    listeners (opened, closed or changed in place), routes, services, policy, plugins and zones
    change on reload."""
    changes: list[tuple[str, str]] = []

    def changed(field: str, old: Any, now: Any) -> None:
        changes.append((field, f"changing it from {old!r} to {now!r} needs a restart"))

    if new.admin != running.admin:
        changed("admin", running.admin, new.admin)
    if new.workers != running.workers:
        changed("workers", running.workers, new.workers)
    if (running.identity is None) != (new.identity is None):
        what = "adding" if running.identity is None else "removing"
        changes.append(("identity", f"{what} [identity] needs a restart"))
    elif running.identity is not None and new.identity is not None:
        old_identity, new_identity = running.identity.model_dump(), new.identity.model_dump()
        for key, value in new_identity.items():
            if value != old_identity[key]:
                changed(f"identity.{key}", old_identity[key], value)
    return changes

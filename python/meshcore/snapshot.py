"""The schema of the document the Rust core accepts (`_core.ProxyCore(json)`): the validated
config, with every default filled in and durations in milliseconds.

`Config.to_core()` builds it; `src/config.rs` reads it. Every key is always present (None is
JSON null): the core has no defaults of its own and refuses a document that lacks a field,
naming it. It crosses the boundary as JSON, once per start or reload: about 40 µs for a small
config and 1 ms for 300 routes (dumps and parse), which is not worth a second conversion path.
"""

from __future__ import annotations

from typing import Literal, Optional, TypedDict

__all__ = [
    "Snapshot",
    "Identity",
    "Policy",
    "PolicyRule",
    "Listener",
    "Route",
    "Retry",
    "HeaderOps",
    "Rewrite",
    "Redirect",
    "DirectResponse",
    "RateLimit",
    "Backend",
    "Service",
    "Endpoint",
    "Zonal",
    "Breaker",
]


class Identity(TypedDict):
    """PEM text, not paths: Python reads the files and hands rotations over."""

    trust_anchors_pem: str
    cert_pem: Optional[str]
    key_pem: Optional[str]
    # Client trust domains accepted; empty means this proxy's own.
    trust_domains: list[str]


class PolicyRule(TypedDict):
    name: Optional[str]
    listeners: list[str]  # empty: every inbound listener
    path_prefix: Optional[str]
    routes: list[str]  # route names it protects
    methods: list[str]
    identities: list[str]
    networks: list[str]


class Policy(TypedDict):
    default: Literal["all-unauthenticated", "all-authenticated", "deny", "audit"]
    rules: list[PolicyRule]


class AccessLog(TypedDict):
    format: Literal["json", "common"]
    # "stdout" or an absolute path.
    path: str
    # Lines waiting for the writer before new ones are dropped.
    buffer: int


class Tracing(TypedDict):
    # The chance that a request without a trace starts one.
    sampling: float
    # "host:port" of an OTLP/HTTP collector; None: propagate only.
    otlp: Optional[str]
    service_name: str


class ServerCertificate(TypedDict):
    cert_pem: str
    key_pem: str


class Listener(TypedDict):
    name: str
    # "ip:port", IPv6 in brackets.
    bind: str
    protocol: Literal["auto", "http1", "http2", "opaque"]
    direction: Literal["inbound", "outbound"]
    service: Optional[str]
    detect_timeout_ms: int
    header_read_timeout_ms: int
    idle_timeout_ms: int
    max_connections: int
    tls: Literal["none", "mesh", "permissive", "server"]
    # An edge listener's certificate chain and key, read from their files.
    server_certificate: Optional[ServerCertificate]
    share_port: bool
    # SPIFFE IDs whose `meshcore-client-id` header names the caller.
    trusted_gateways: list[str]
    # Takes redirected connections, served by their original destination.
    transparent: bool
    # Original destination ports forwarded as TCP without protocol detection.
    opaque_ports: list[int]
    # The listener's own, else the global one; None: no access log.
    access_log: Optional[AccessLog]


class Retry(TypedDict):
    on: list[str]
    limit: int
    budget: float
    min_per_second: int
    ttl_ms: int


class HeaderOps(TypedDict):
    add: dict[str, str]
    set: dict[str, str]
    remove: list[str]


class Rewrite(TypedDict):
    path_prefix: str


class Redirect(TypedDict):
    status: int
    # None keeps the request's own scheme (http), host or path.
    scheme: Optional[str]
    host: Optional[str]
    path: Optional[str]


class DirectResponse(TypedDict):
    status: int
    body: str
    headers: dict[str, str]


class RateLimit(TypedDict):
    rps: float
    burst: int


class Backend(TypedDict):
    service: str
    weight: int


class Route(TypedDict):
    listener: str
    # Always set: an unnamed route is `route-<index>`.
    name: Optional[str]
    host: Optional[str]
    path_prefix: Optional[str]
    headers: dict[str, str]
    timeout_ms: Optional[int]
    response_timeout_ms: Optional[int]
    retry: Optional[Retry]
    request_headers: Optional[HeaderOps]
    response_headers: Optional[HeaderOps]
    rewrite: Optional[Rewrite]
    redirect: Optional[Redirect]
    direct_response: Optional[DirectResponse]
    rate_limit: Optional[RateLimit]
    # Python plugins apply to this route.
    plugins: bool
    backends: list[Backend]


class Endpoint(TypedDict):
    addr: str
    zone: Optional[str]
    cluster: Optional[str]
    # The upstream proxy's SPIFFE ID: traffic to it is mTLS.
    identity: Optional[str]


class Zonal(TypedDict):
    load_low: float
    load_high: float
    dwell_ms: int


class Breaker(TypedDict):
    consecutive_failures: int
    min_penalty_ms: int
    max_penalty_ms: int
    jitter: float
    max_ejection_percent: int
    panic_threshold_percent: int


class Service(TypedDict):
    name: str
    balancer: Literal["peak-ewma", "round-robin", "zonal"]
    protocol: Literal["auto", "http1", "http2"]
    endpoints: list[Endpoint]
    # Virtual addresses "IP:PORT"; an unspecified IP matches any address on the port.
    addresses: list[str]
    connect_timeout_ms: int
    idle_timeout_ms: int
    zonal: Zonal
    # None turns failure accrual off.
    breaker: Optional[Breaker]


class EgressRule(TypedDict):
    action: Literal["allow", "deny"]
    networks: list[str]
    # [first, last] port ranges; empty: every port.
    ports: list[list[int]]


class Egress(TypedDict):
    default: Literal["allow", "deny"]
    rules: list[EgressRule]


class Snapshot(TypedDict):
    zone: Optional[str]
    cluster: Optional[str]
    # Tier cost per "zone" or "cluster/zone".
    costs: dict[str, int]
    # None: one worker per core available to the process.
    workers: Optional[int]
    listeners: list[Listener]
    routes: list[Route]
    services: list[Service]
    # Set by `Proxy` once it holds a certificate; None in `check` and on reload.
    identity: Optional[Identity]
    policy: Policy
    egress: Egress
    tracing: Optional[Tracing]

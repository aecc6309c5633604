"""meshcore's native module: the Rust data plane. Private: use the public API in `meshcore`
(`Proxy`, `meshcore.bench`) instead. Every call returns at once or releases the GIL while
it waits; a panic in Rust comes back as `MeshcoreError`, never as a crash.

`tests/test_stubs.py` checks these stubs against the module with `mypy.stubtest`."""

from typing import TypeAlias, final

__all__ = [
    "BindError",
    "ConfigError",
    "Inherited",
    "LoadRun",
    "MeshcoreError",
    "PLUGIN_DURATION_BUCKETS",
    "PluginError",
    "ProxyCore",
    "Tap",
    "TlsError",
    "__version__",
    "_bench_handshakes",
    "_bench_loop",
    "_bench_start",
    "_panic_for_test",
    "check_identity",
    "check_server_certificate",
    "explain_policy",
    "inherit_sockets",
    "render_plugin_metrics",
]
__version__: str

PLUGIN_DURATION_BUCKETS: tuple[float, ...]
"""Upper bounds in seconds of the `plugin_duration_seconds` buckets, which `HookStats` counts by."""

_HookCounts: TypeAlias = tuple[str, str, int, list[int], float, int]
"""One plugin hook's numbers: (plugin, phase, errors, calls per bucket of
`PLUGIN_DURATION_BUCKETS` (not cumulative), sum of seconds, calls)."""

_PluginReport: TypeAlias = tuple[list[_HookCounts], list[str]]
"""`PluginHost.metrics_report()`: every hook's numbers, and the Prometheus text plugins with a
`metrics()` method wrote themselves (appended as written)."""

class MeshcoreError(Exception):
    """Every error meshcore raises."""

class ConfigError(MeshcoreError):
    """A config the data plane refuses (Python validates first, so this is rare)."""

class BindError(MeshcoreError):
    """A listener's address could not be bound (in use, not local, no permission)."""

class TlsError(MeshcoreError):
    """Certificates, keys or trust anchors the TLS layer cannot use."""

class PluginError(MeshcoreError):
    """A plugin that could not be loaded or run."""

@final
class ProxyCore:
    """One proxy: its listeners, routing table, pools and metrics, run on worker threads."""

    def __new__(cls, config_json: str) -> ProxyCore:
        """Parses `config_json`, a `meshcore.snapshot.Snapshot` as JSON (what
        `Config.to_core()` returns, with `identity` filled in by `Proxy`). Every field must be
        present, None as null: the core has no defaults. Nothing is bound yet.
        Raises ConfigError naming a missing, unknown or mistyped field, or a reference or
        address the core cannot use (which `meshcore.config` refuses first)."""

    def start(
        self, inherited: Inherited | None = None, assignment: dict[str, list[int]] | None = None
    ) -> None:
        """Binds every listener, then starts the workers; returns once they serve. A listener
        named in `assignment` serves on those sockets of `inherited` (taking them) instead of
        binding; more workers than sockets bind more beside them. Raises BindError (a port in
        use, unless `share_port`; an inherited socket bound elsewhere than the config says),
        TlsError, ConfigError, or MeshcoreError for an index taken already or never sent."""

    def stop(self, grace: float) -> None:
        """Stops accepting, lets in-flight requests finish for up to `grace` seconds, then
        closes what is left; returns when the workers have ended."""

    def reload(self, config_json: str) -> None:
        """Swaps in a new routing table, from a `meshcore.snapshot.Snapshot` as JSON (its
        `identity` is ignored: the running certificate stays), without dropping a request.
        Listeners are matched by name and bind: new ones open, removed ones stop accepting
        and drain their connections, changed ones take their new settings for new
        connections, and a renamed one keeps its sockets. Raises ConfigError or BindError,
        and then nothing has changed."""

    def update_endpoints(self, updates_json: str) -> None:
        """Replaces the endpoints of running services in place, from a JSON list of
        [service name, [endpoint as in the snapshot, ...]] pairs: only those services are
        rebuilt; endpoints that stay keep their latency, breaker and connections, and the
        routing table is shared. Raises ConfigError (an unknown service, a bad address: then
        nothing changed) or MeshcoreError if the proxy is not running."""

    def set_plugin_host(self, host: object) -> None:
        """Installs the Python plugin host whose hooks routes marked `plugins` call."""

    def is_running(self) -> bool:
        """Whether `start` has succeeded and `stop` has not been called."""

    def addresses(self) -> list[tuple[str, str]]:
        """(listener name, "ip:port" actually bound), in config order."""

    def listening_sockets(self) -> list[tuple[str, str, int]]:
        """(listener name, configured bind, file descriptor) of every listening socket (one per
        worker per listener), for a process taking over. The descriptors stay the proxy's:
        send them (`socket.send_fds`), never close them."""

    def metrics(self, plugins: _PluginReport | None = None) -> str:
        """The Prometheus text exposition of every family: HTTP, TCP, retries, authorization,
        balancer, identity, and the plugin families from `plugins` when given. Raises
        ValueError if a hook's bucket counts do not match `PLUGIN_DURATION_BUCKETS`."""

    def route_stats(self) -> str:
        """Golden numbers since start, as JSON: `{"buckets_ms": [bounds...], "routes": {name:
        STATS}, "services": {name: STATS}, "authorization": [{"listener", "rule", "decision":
        "allow"|"deny", "count"}]}`, where STATS is `{"responses": n, "failures": n,
        "cross_zone": n, "buckets": [n per bucket, not cumulative; slower than the last bound,
        none]}`. Failures are responses classified "failure" (5xx, errors, gRPC errors);
        cross_zone counts those answered by an endpoint outside the proxy's zone."""

    def count_lifecycle(self, event: str, label: str) -> None:
        """Counts a lifecycle event for `/metrics`: "reload" with its result (as
        `config_reload_total{result}`) or "rollback" with its reason
        (`config_rollback_total{reason}`). Raises ValueError for another event."""

    def endpoints(self) -> str:
        """Balancer state per service and endpoint, as a JSON document (`/endpoints`)."""

    def update_identity(self, cert_pem: str, key_pem: str) -> None:
        """Installs a new workload certificate chain and key (PEM) without a restart.
        Raises TlsError if they are unusable or the proxy has no [identity]."""

    def set_trust_anchors(self, pem: str) -> None:
        """Trusts exactly the anchors in `pem` (one or more certificates) from the next
        handshake on. Raises TlsError if none is usable or the proxy has no [identity]."""

    def identity_info(self) -> str | None:
        """The identity as JSON, or None without one: `spiffe_id`, `not_after` (unix seconds)
        and `chains_to` (SHA-256 of each anchor it leads to) of the certificate in use, and
        `trust_anchors` (each one's `subject`, `sha256`, `not_after`)."""

    def open_connections(self) -> int:
        """Client connections open now."""

    def connection_peak(self) -> tuple[int, int]:
        """(the most client connections open at once since the last call, open now)."""

    def tap(
        self,
        route: str | None = None,
        service: str | None = None,
        authority: str | None = None,
        capacity: int = 1024,
    ) -> Tap:
        """A live feed of the summaries of requests answered from now on, matching every filter
        given (route and service names; an authority with or without its port, any case),
        holding at most `capacity` unread (1 to 65,536): past that, summaries are dropped and
        counted, never waited for. Raises MeshcoreError when 16 taps are open already."""

@final
class Tap:
    """A feed from `ProxyCore.tap`; requests pay for it only while a tap is open."""

    def next(self, timeout: float) -> list[str]:
        """The summaries that came, as JSON objects (one per string, keys: time, listener,
        client, method, path, protocol, authority, status, grpc_status, failed, duration_ms,
        ttfb_ms, bytes, route, service, endpoint, zone, identity, trace_id, retried), at most 256,
        waiting up to `timeout` seconds (without the GIL) for the first; empty if none came.
        Raises MeshcoreError once closed."""

    def dropped(self) -> int:
        """Summaries this tap missed because it was read too slowly."""

    def close(self) -> None:
        """Stops the feed."""

@final
class Inherited:
    """Listening sockets received from the process being replaced (`inherit_sockets`); each
    descriptor is taken once, by `ProxyCore.start` or by `take`."""

    def count(self) -> int:
        """How many descriptors arrived."""

    def take(self, index: int) -> int:
        """Hands descriptor `index` to the caller, who then owns and closes it. Raises
        MeshcoreError if it was taken already or never sent."""

    def control(self) -> int:
        """Hands over the connected Unix stream (a descriptor the caller then owns), for the
        rest of the conversation with the old process. Raises MeshcoreError the second time."""

def inherit_sockets(path: str, hello: bytes) -> tuple[bytes, Inherited]:
    """Connects to the Unix socket at `path` of the process being replaced, sends `hello` (one
    line), and receives its metadata line (JSON; its `"fds"` says how many descriptors follow,
    in batches of at most 253, the first batch with the line) and its descriptors. Waits up to
    30 s for them. Returns the line (without its newline) and the descriptors. Raises
    MeshcoreError if the connection fails, the metadata is not JSON or holds `"error"`, or
    the old process closes first."""

def check_identity(
    trust_anchors_pem: str, cert_pem: str | None = None, key_pem: str | None = None
) -> tuple[str, str] | None:
    """Loads identity PEMs as the data plane does at start: (field, reason) for what it
    refuses ("trust_anchors", "cert" or "key"), else None. A certificate every peer would
    refuse is refused too: one that names no SPIFFE ID, has expired, or chains to none of the
    trust anchors."""

def check_server_certificate(cert_pem: str, key_pem: str) -> tuple[str, str] | None:
    """Loads an edge listener's certificate chain and key as its TLS server does at start:
    (field, reason) for what it refuses ("cert" or "key"), else None."""

def explain_policy(
    policy_json: str,
    listener: str,
    peer: str,
    identity: str | None = None,
    path: str | None = None,
    method: str = "GET",
    routes_json: str = "[]",
    host: str = "",
    headers: list[tuple[str, str]] = ...,
) -> str:
    """How the proxy's authorization decides a request, evaluated by the proxy's own code:
    `policy_json` is `Config.to_core()["policy"]` as JSON; no `path` means an opaque connection.
    The request's route is the first of `routes_json` (`Config.to_core()["routes"]`) on
    `listener` that matches `host`, the path and `headers`, found by the proxy's matcher.
    Returns JSON: `decision` ("allow", "deny", "audit", or "refused" for a path the proxy
    refuses before policy, with `status` and `reason`), `rule` (the label metrics count),
    `route` (or null), `protected_by` (what protects the request, in the order checked:
    "route NAME", then the path prefix; only their rules decided), `tried` (each rule in
    order and the condition it failed: "method", "identity", "network", or null when it
    allowed), `default_decided`, `default` and `path` (normalised, as policy saw it). Raises
    ConfigError for a policy or route the proxy refuses, ValueError for a bad address, method
    or header."""

def render_plugin_metrics(report: _PluginReport) -> str:
    """The plugin families alone (`plugin_errors_total`, `plugin_duration_seconds`, then what
    plugins wrote), for a plugin host without a proxy. Raises ValueError as `metrics` does."""

@final
class LoadRun:
    """A load-generator run on its own thread (`meshcore.bench.run`)."""

    def progress(self) -> tuple[float, int, int]:
        """(seconds elapsed, requests completed, errors) so far."""

    def stop(self) -> None:
        """Ends the run before its duration: each connection stops once its request in flight
        is answered."""

    def wait(self) -> str:
        """Blocks (without the GIL) until the run ends; its report as JSON (`resent` counts
        requests sent again because the server closed a connection without taking them).
        Raises MeshcoreError if the run failed to start."""

def _bench_start(
    url: str,
    rate: float | None,
    duration: float,
    connections: int,
    http2: bool,
    streams: int,
    timeout: float,
    host: str | None = None,
) -> LoadRun:
    """Starts a load-generator run (see `meshcore.bench.run`); `host` is sent as Host (or
    :authority) instead of the URL's. Raises ValueError for a URL it cannot use."""

def _panic_for_test() -> None:
    """Panics inside Rust, for the test that a panic becomes MeshcoreError."""

def _bench_handshakes(
    group: str, anchors_pem: str, chain_pem: str, key_pem: str, expected: str, seconds: float
) -> tuple[int, str]:
    """Full mutual-TLS handshakes between two holders of one identity, in memory on the calling
    thread, for `seconds`, the client offering only `group` ("X25519MLKEM768" or "X25519"), or
    "default", the mesh's own offer: (handshakes, the group the last negotiated). For
    bench/tls_handshake.py. Raises ValueError for another group, MeshcoreError for PEMs it
    cannot use."""

def _bench_loop(what: str, size: int, iterations: int) -> int:
    """Runs an inner loop of the core (balancer picks, metric updates) `iterations` times,
    for the micro-benchmarks in bench/; returns a checksum so the work is not optimised away."""

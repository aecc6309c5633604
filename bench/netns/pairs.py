"""Sidecar pairs with mTLS between them, for bench/netns/latency: meshcore, Envoy and HAProxy.

Each pair is an outbound proxy on the client host, taking plaintext HTTP/1.1 from the load
generator on 127.0.0.1, and an inbound proxy on the server host, on the server's address, taking
mutual TLS 1.3 with HTTP/2 (ALPN h2) from the outbound one and forwarding HTTP/1.1 to the app on
127.0.0.1. Both sides present the certificate issued by meshcore's CA (`make_certs`:
spiffe://bench.local/ns/bench/sa/proxy) and require the peer's to chain to its trust anchor.
The outbound side also checks the inbound's SPIFFE ID where the proxy can (meshcore: endpoint
`identity`; Envoy: a URI SAN matcher); HAProxy verifies the chain only (it matches names against
DNS SANs and the CN, not URI SANs). One worker each: meshcore `workers = 1`, Envoy
`--concurrency 1`, HAProxy `nbthread 1`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from hosts import SPIFFE_ID

PAIRS = ("meshcore", "envoy", "haproxy")


@dataclass
class Certs:
    ca: Path  # the trust anchor
    crt: Path
    key: Path
    combined: Path  # crt + key, as HAProxy reads them


@dataclass
class Pair:
    name: str
    outbound: list[str]  # argv, on the client host
    inbound: list[str]  # argv, on the server host
    outbound_port: int  # on 127.0.0.1 of the client host
    inbound_port: int  # on the server's address


def meshcore_pair(tmp: Path, certs: Certs, server: str, app_port: int, out_port: int, in_port: int) -> Pair:
    identity = {"trust_anchors": str(certs.ca), "cert": str(certs.crt), "key": str(certs.key)}
    inbound = {
        "workers": 1,
        "identity": identity,
        "listeners": [
            {"name": "inbound", "bind": f"0.0.0.0:{in_port}", "tls": "mesh", "direction": "inbound"}
        ],
        "routes": [{"listener": "inbound", "backends": [{"service": "app"}]}],
        "services": [{"name": "app", "protocol": "http1", "endpoints": [{"addr": f"127.0.0.1:{app_port}"}]}],
        "policy": {"default": "all-authenticated"},
    }
    outbound = {
        "workers": 1,
        "identity": identity,
        "listeners": [{"name": "outbound", "bind": f"127.0.0.1:{out_port}"}],
        "routes": [{"listener": "outbound", "backends": [{"service": "api"}]}],
        "services": [{"name": "api", "endpoints": [{"addr": f"{server}:{in_port}", "identity": SPIFFE_ID}]}],
    }
    argv = {}
    for side, cfg in (("in", inbound), ("out", outbound)):
        path = tmp / f"meshcore-{side}.yaml"
        path.write_text(json.dumps(cfg, indent=1))
        argv[side] = [sys.executable, "-m", "meshcore", "run", str(path)]
    return Pair("meshcore", argv["out"], argv["in"], out_port, in_port)


def _envoy_hcm(cluster: str) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager",
            "stat_prefix": cluster,
            "codec_type": "AUTO",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                }
            ],
        },
    }


def _envoy_cluster(name: str, addr: str, port: int, tls: dict | None = None) -> dict:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": addr, "port_value": port}}}}
    cluster: dict = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }
    if tls:
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def envoy_pair(tmp: Path, certs: Certs, server: str, app_port: int, out_port: int, in_port: int) -> Pair:
    tls_type = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
    # Envoy clients default to at most TLS 1.2: both bounds say 1.3.
    common = {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
        "tls_certificates": [
            {"certificate_chain": {"filename": str(certs.crt)}, "private_key": {"filename": str(certs.key)}}
        ],
        "alpn_protocols": ["h2"],
    }
    downstream = {
        "@type": tls_type + "DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {**common, "validation_context": {"trusted_ca": {"filename": str(certs.ca)}}},
    }
    upstream = {
        "@type": tls_type + "UpstreamTlsContext",
        "common_tls_context": {
            **common,
            "validation_context": {
                "trusted_ca": {"filename": str(certs.ca)},
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": SPIFFE_ID}}],
            },
        },
    }
    inbound = {
        "static_resources": {
            "listeners": [
                {
                    "name": "inbound",
                    "address": {"socket_address": {"address": "0.0.0.0", "port_value": in_port}},
                    "filter_chains": [
                        {
                            "filters": [_envoy_hcm("app")],
                            "transport_socket": {
                                "name": "envoy.transport_sockets.tls",
                                "typed_config": downstream,
                            },
                        }
                    ],
                }
            ],
            "clusters": [_envoy_cluster("app", "127.0.0.1", app_port)],
        }
    }
    outbound = {
        "static_resources": {
            "listeners": [
                {
                    "name": "outbound",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": out_port}},
                    "filter_chains": [{"filters": [_envoy_hcm("api")]}],
                }
            ],
            "clusters": [_envoy_cluster("api", server, in_port, upstream)],
        }
    }
    argv = {}
    # Envoys on one machine share /dev/shm across namespaces: each needs its own base id.
    for base_id, (side, cfg) in enumerate((("in", inbound), ("out", outbound)), start=in_port):
        path = tmp / f"envoy-{side}.json"
        path.write_text(json.dumps(cfg, indent=1))
        argv[side] = ["envoy", "-c", str(path), "--concurrency", "1", "--log-level", "error"]
        argv[side] += ["--base-id", str(base_id)]
    return Pair("envoy", argv["out"], argv["in"], out_port, in_port)


def haproxy_pair(tmp: Path, certs: Certs, server: str, app_port: int, out_port: int, in_port: int) -> Pair:
    head = """global
  nbthread 1
  maxconn 8000
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
"""
    tls = f"ssl crt {certs.combined} ca-file {certs.ca} verify required alpn h2"
    inbound = (
        head + f"frontend inbound\n  bind 0.0.0.0:{in_port} {tls}\n  default_backend app\n"
        f"backend app\n  server app 127.0.0.1:{app_port}\n"
    )
    outbound = (
        head + f"frontend outbound\n  bind 127.0.0.1:{out_port}\n  default_backend api\n"
        f"backend api\n  server api {server}:{in_port} {tls}\n"
    )
    argv = {}
    for side, text in (("in", inbound), ("out", outbound)):
        path = tmp / f"haproxy-{side}.cfg"
        path.write_text(text)
        argv[side] = ["haproxy", "-f", str(path), "-db"]
    return Pair("haproxy", argv["out"], argv["in"], out_port, in_port)


BUILDERS = {"meshcore": meshcore_pair, "envoy": envoy_pair, "haproxy": haproxy_pair}

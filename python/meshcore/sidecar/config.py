"""A transparent sidecar's config, for a host whose TCP `meshcore sidecar-init` redirects: what
the namespace tests and `meshcore demo --mesh` share.

    cfg = sidecar_config(
        identity={"trust_anchors": ..., "cert": ..., "key": ...},
        app_ports=[8080],                      # the app behind this sidecar
        services=[{"name": "web", "addresses": ["10.96.0.10:80"],
                   "endpoints": [{"addr": "10.200.1.3:8080", "identity": "spiffe://..."}]}],
        opaque_ports=[5432],
        egress={"default": "allow", "rules": [...]},
    )
    init = sidecar_init_args(proxy_uid=1337, opaque_ports=[5432])   # meshcore sidecar-init's flags

The shape:
- `outbound`, 127.0.0.1:4140, transparent: what the app opens. A service's virtual address is
  balanced over its endpoints, an endpoint's own address goes to it (over mTLS when the endpoint
  names an `identity`: the peer's sidecar), anything else passes through under `egress`.
- `inbound`, 0.0.0.0:4143, transparent, `tls = "mesh"` by default: what peers open to this host.
  Each app port is a service `app-PORT` with the virtual address `0.0.0.0:PORT` (any of this
  host's addresses) and the endpoint 127.0.0.1:PORT, protocol `auto`: the protocol the caller's
  app spoke is restored towards this app (HTTP/1.1, HTTP/2, gRPC).
- `opaque_ports` on both listeners: a server-speaks-first protocol skips detection on the way out
  and, after the mTLS handshake, on the way in.
- the admin API on 127.0.0.1:9990: reached from the host itself (`ip netns exec NS curl ...`),
  never redirected (inbound rules see only traffic from outside, outbound rules skip `lo`).

Why `tls = "mesh"` and not permissive: between sidecars every hop is mTLS, and a caller that is
not meshed should be refused rather than pass unseen; `tls="permissive"` lets such callers in
(their requests counted with `tls="false"`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

__all__ = [
    "OUTBOUND_PORT",
    "INBOUND_PORT",
    "ADMIN",
    "sidecar_config",
    "sidecar_init_args",
    "app_service_name",
]

OUTBOUND_PORT = 4140
INBOUND_PORT = 4143
ADMIN = "127.0.0.1:9990"


def app_service_name(port: int) -> str:
    """The inbound service of the app's `port`; its name in metrics (`dst_service`)."""
    return f"app-{port}"


def sidecar_config(
    identity: Optional[Mapping[str, Any]],
    *,
    app_ports: Iterable[int] = (),
    services: Sequence[Mapping[str, Any]] = (),
    opaque_ports: Iterable[int] = (),
    egress: Optional[Mapping[str, Any]] = None,
    tls: str = "mesh",
    policy: Optional[Mapping[str, Any]] = None,
    admin: Optional[str] = ADMIN,
    zone: Optional[str] = None,
    cluster: Optional[str] = None,
    outbound_port: int = OUTBOUND_PORT,
    inbound_port: int = INBOUND_PORT,
) -> dict[str, Any]:
    """A config (as a dict, for `Proxy` or a JSON file for `meshcore run`) for one host's sidecar.

    `identity`: the `[identity]` table (files or the identity service); None only with `tls =
    "none"`. `services`: the mesh's services this host calls, as config tables (endpoints naming
    the peer sidecar's `identity` are called over mTLS). The config is checked when loaded, as
    any other: a mistake here is a ConfigError naming the field."""
    opaque = sorted(set(opaque_ports))
    app = sorted(set(app_ports))
    cfg: dict[str, Any] = {
        "listeners": [
            {
                "name": "outbound",
                "bind": f"127.0.0.1:{outbound_port}",
                "direction": "outbound",
                "transparent": True,
                "opaque_ports": opaque,
            },
            {
                "name": "inbound",
                "bind": f"0.0.0.0:{inbound_port}",
                "direction": "inbound",
                "transparent": True,
                "opaque_ports": opaque,
                "tls": tls,
            },
        ],
        "services": [
            *(dict(s) for s in services),
            *(
                {
                    "name": app_service_name(port),
                    "protocol": "auto",
                    "addresses": [f"0.0.0.0:{port}"],
                    "endpoints": [{"addr": f"127.0.0.1:{port}"}],
                }
                for port in app
            ),
        ],
    }
    optional = {
        "admin": admin,
        "identity": dict(identity) if identity is not None else None,
        "egress": dict(egress) if egress is not None else None,
        "policy": dict(policy) if policy is not None else None,
        "zone": zone,
        "cluster": cluster,
    }
    cfg.update({k: v for k, v in optional.items() if v is not None})
    return cfg


def sidecar_init_args(
    proxy_uid: int,
    *,
    opaque_ports: Iterable[int] = (),
    skip_ports: Iterable[int] = (),
    outbound_port: int = OUTBOUND_PORT,
    inbound_port: int = INBOUND_PORT,
) -> list[str]:
    """`meshcore sidecar-init`'s arguments matching `sidecar_config` with the same ports."""
    args = ["--proxy-uid", str(proxy_uid), "--outbound-port", str(outbound_port)]
    args += ["--inbound-port", str(inbound_port)]
    for flag, ports in (("--opaque-ports", opaque_ports), ("--skip-ports", skip_ports)):
        listed = ",".join(str(p) for p in sorted(set(ports)))
        if listed:
            args += [flag, listed]
    return args

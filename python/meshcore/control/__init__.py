"""The control plane: services and endpoints pushed to proxies (`meshcore control serve`).

Protocol (firm; scripts and proxies depend on it):

- Transport: gRPC server-streaming over HTTP/2, service ``meshcore.control.v1.Discovery``, method
  ``Subscribe`` (one request, a stream of responses). Messages are JSON objects in UTF-8, no protobuf.
- Request: ``{"proxy": {"id", "version", "zone", "cluster"}, "services": [names] or ["*"],
  "versions": {name: version seen}}``, and optionally ``"epoch"``: the epoch of the snapshot those
  versions came from.
- Stream: the first message comes at once, ``{"kind": "snapshot", "epoch", "revision",
  "resources": [...]}``, then ``{"kind": "delta", "resources": [...]}`` as things change. A resource
  is ``{"type": "service", "name", "version", "exists", "endpoints": [{"addr", "zone", "cluster",
  "identity", "weight", "protocol"}]}``. ``exists: false`` means the service does not exist;
  ``exists: true`` with ``endpoints: []`` means it has no endpoints now (Linkerd's Destination
  semantics). A delta carries the whole new state of each resource that changed, nothing else.
- Versions: a resource's version grows by one on every change of it; the store's revision on every
  change of anything. They count from the store's start, which the ``epoch`` names: on resume with
  the same epoch, the snapshot leaves out the resources whose version the proxy already has (it
  keeps them); with another epoch (the control plane restarted) everything is sent again, and the
  services the proxy holds that are gone come as ``exists: false``.
- Auth: mTLS; the client's certificate must chain to the trust anchors, and its SPIFFE ID (URI SAN)
  is logged with the subscription. The control plane's certificate must name its host (a DNS or IP
  SAN, as any HTTPS server's): gRPC checks it; a proxy with ``[discovery] control_identity`` also
  checks its SPIFFE ID (``server_identity``). Plain ``http://`` is served and accepted on loopback
  only. With ``--identity-ca`` the control plane issues its own certificate from the mesh CA it
  holds (``issued_tls``) and serves the identity service beside the gRPC port.
- Fleet: service ``meshcore.control.v1.Fleet``. ``Report`` (unary): ``{"proxy": {"id", "version",
  "zone", "cluster", "pid", "started_at", "command"}, "config": {"version", "hash", "fleet_version",
  "push"}, "metrics": {"window_s", "responses", "failures", "buckets_ms", "buckets"}, "upgrade":
  {"available", "reason", "resource", "result", "error", "pid"}}`` from each proxy every few
  seconds; ``Status`` (unary): the fleet table; ``Rollout`` (server-streaming): a rollout's
  progress. A config rollout pushes ``{"type": "config", "name": "meshcore.fleet/config", "version",
  "exists": true, "config_version", "format", "text", "rollback_to"}`` on a proxy's Subscribe
  stream, to that proxy only; a version rollout ``{"type": "upgrade", "name":
  "meshcore.fleet/upgrade", "version", "exists": true, "command", "request"}``.
- No polling on the stream. The directory source polls its files once a second: that is how it
  notices an edit, not how proxies learn it.

Modules: ``protocol`` (the wire format), ``store`` (versions), ``sources`` (the adapters, and the
interface to write one), ``documents`` (the directory's file format), ``server`` (the gRPC
service), ``client`` (``Subscription``, what a proxy runs), ``server_identity`` (checking the
control plane's SPIFFE ID), ``issued_tls``, ``cli``; the fleet: ``fleet`` (the table),
``fleet_service`` (its RPCs), ``rollout`` and ``changes`` (what it moves), ``agent`` and
``reporter`` (the proxy's side), ``mesh_cli``.
"""

from __future__ import annotations

__all__ = [
    "protocol",
    "store",
    "sources",
    "documents",
    "server",
    "client",
    "cli",
    "fleet",
    "fleet_service",
    "rollout",
    "agent",
    "reporter",
    "mesh_cli",
]

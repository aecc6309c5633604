"""Hosts in network namespaces; the guide is in `network.py`'s docstring."""

from .network import LATENCY_CLASSES, Bytes, Host, NetnsError, Network, Zone, sweep, unavailable

__all__ = ["Network", "Host", "Zone", "Bytes", "NetnsError", "sweep", "unavailable", "LATENCY_CLASSES"]

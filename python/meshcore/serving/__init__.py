"""Serving an ASGI app from a daemon thread of its own, with the limits a network-facing service
needs: the admin API and the identity service both run on it.

    limits.py    ServerLimits: what one client may take of a service
    listen.py    the listening socket, bound before anything starts (a BindError names the service)
    bounded.py   uvicorn's server and HTTP/1.1 protocol with the deadlines uvicorn lacks
    thread.py    BackgroundServer: the event loop's thread, start and close()

It never changes the process's logging or signal handlers: the host program owns both.
"""

from __future__ import annotations

from .limits import ServerLimits
from .thread import BackgroundServer, current_server_closing

__all__ = ["BackgroundServer", "ServerLimits", "current_server_closing"]

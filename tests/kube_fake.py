"""A fake Kubernetes API server on loopback, for the Kubernetes source and TokenReview tests.

A real HTTPS server (its own CA, bearer-token auth) serving the recorded objects in
tests/data/kube/ as the API does: lists with a resourceVersion, watches as a chunked stream of
JSON lines (replayed from the version asked for, then live), BOOKMARK events, a `410 Gone` ERROR
event once the history is compacted, and TokenReview answers for the recorded tokens. The test
drives it: `apply` a change (delivered to open watches, or only kept for the next list),
`bookmark`, `expire`, `drop_watches`, `stop` and `start` again on the same port.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import queue
import socket
import ssl
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DATA = Path(__file__).parent / "data" / "kube"
ADMIN_TOKEN = "fake-admin-token"
KINDS = {
    "services": ("v1", "Service", "ServiceList"),
    "endpointslices": ("discovery.k8s.io/v1", "EndpointSlice", "EndpointSliceList"),
}
TOKENREVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
# The audience a token is checked against when a TokenReview names none: the API server's own.
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"

Event = Optional[dict[str, Any]]  # None ends the watch


def recorded(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return (obj["metadata"]["namespace"], obj["metadata"]["name"])


def _route(path: str) -> Optional[tuple[str, Optional[str]]]:
    """(plural, namespace or None) for a collection path the fake serves."""
    parts = path.strip("/").split("/")
    for prefix in (["api", "v1"], ["apis", "discovery.k8s.io", "v1"]):
        if parts[: len(prefix)] != prefix:
            continue
        rest = parts[len(prefix) :]
        if len(rest) == 3 and rest[0] == "namespaces":
            namespace, plural = rest[1], rest[2]
        elif len(rest) == 1:
            namespace, plural = None, rest[0]
        else:
            return None
        group = "v1" if prefix[0] == "api" else "discovery.k8s.io/v1"
        return (plural, namespace) if plural in KINDS and KINDS[plural][0] == group else None
    return None


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 it signs: (ca.crt, server.crt, server.key)."""
    now = datetime.now(timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kubernetes-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


class FakeKubeApi:
    def __init__(self, directory: Path):
        self.directory = directory
        self.ca, self._cert, self._key = _tls_files(directory)
        self.lock = threading.Lock()
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        self.version = 0
        for plural in KINDS:
            listed = recorded(f"{plural}.json")
            self.version = max(self.version, int(listed["metadata"]["resourceVersion"]))
            self.objects[plural] = {_key(o): o for o in listed["items"]}
        self.history: dict[str, list[tuple[int, dict[str, Any]]]] = {p: [] for p in KINDS}
        self.oldest = dict.fromkeys(KINDS, self.version)  # a watch from before this gets 410
        self.watches: dict[str, list[queue.Queue[Event]]] = {p: [] for p in KINDS}
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path, query
        self.reviews: dict[str, Any] = recorded("tokenreviews.json")
        self.forbid_tokenreviews = False
        # An API server that ignores spec.audiences answers as if none were asked.
        self.ignore_audiences = False
        self.port = 0
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- running --

    def start(self) -> FakeKubeApi:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._cert, self._key)
        server = _Server(("127.0.0.1", self.port), _handler(self), context)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Down: the listener closed and every open watch ended (the port is kept for `start`)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server.cut_connections()
        self._server = None
        for plural in KINDS:
            self._end_watches(plural, None)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def kubeconfig(self, token: str = ADMIN_TOKEN, name: str = "kubeconfig") -> Path:
        ca = base64.b64encode(self.ca.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url, "certificate-authority-data": ca}}],
            "users": [{"name": "meshcore", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "meshcore"}}],
            "current-context": "fake",
        }
        path = self.directory / name
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    # -- what the test does to the cluster --

    def apply(self, plural: str, kind: str, obj: dict[str, Any], *, deliver: bool = True) -> str:
        """ADDED/MODIFIED/DELETED `obj`: stored with a new resourceVersion, kept in the history and,
        with `deliver`, sent to the open watches. Answers the new resourceVersion."""
        with self.lock:
            self.version += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.version)
            if kind == "DELETED":
                self.objects[plural].pop(_key(obj), None)
            else:
                self.objects[plural][_key(obj)] = obj
            event = {"type": kind, "object": obj}
            self.history[plural].append((self.version, event))
            if deliver:
                for watch in self.watches[plural]:
                    watch.put(event)
            return str(self.version)

    def bookmark(self, plural: str) -> str:
        """A BOOKMARK at the current resourceVersion to the open watches (the recorded event)."""
        with self.lock:
            event = recorded("watch-bookmark.json")
            event["object"]["kind"] = KINDS[plural][1]
            event["object"]["apiVersion"] = KINDS[plural][0]
            event["object"]["metadata"]["resourceVersion"] = str(self.version)
            for watch in self.watches[plural]:
                watch.put(event)
            return str(self.version)

    def expire(self, plural: str) -> None:
        """Compaction: versions before now are gone; the open watches get the recorded 410 ERROR."""
        with self.lock:
            self.oldest[plural] = self.version
            self._end_watches(plural, recorded("watch-gone.json"))

    def drop_watches(self, plural: str) -> None:
        """The open watches end without an error (as at the server's timeout)."""
        with self.lock:
            self._end_watches(plural, None)

    def open_watches(self, plural: str) -> int:
        with self.lock:
            return len(self.watches[plural])

    def requested(self, plural: str, **query: str) -> list[dict[str, str]]:
        """The queries of the requests for `plural` whose parameters include `query`."""
        found = []
        for _, path, params in list(self.requests):
            route = _route(path)
            if route and route[0] == plural and all(params.get(k) == v for k, v in query.items()):
                found.append(params)
        return found

    def _end_watches(self, plural: str, last: Event) -> None:
        for watch in self.watches[plural]:
            if last is not None:
                watch.put(last)
            watch.put(None)
        self.watches[plural] = []

    # -- serving --

    def list_body(self, plural: str, namespace: Optional[str]) -> dict[str, Any]:
        api_version, _, list_kind = KINDS[plural]
        with self.lock:
            items = [o for (ns, _), o in sorted(self.objects[plural].items()) if namespace in (None, ns)]
            return {
                "kind": list_kind,
                "apiVersion": api_version,
                "metadata": {"resourceVersion": str(self.version)},
                "items": copy.deepcopy(items),
            }

    def open_watch(self, plural: str, namespace: Optional[str], since: int) -> queue.Queue[Event]:
        """The events after `since` (or the 410 if it is too old), then the live ones."""
        events: queue.Queue[Event] = queue.Queue()
        with self.lock:
            if since < self.oldest[plural]:
                events.put(recorded("watch-gone.json"))
                events.put(None)
                return events
            for version, event in self.history[plural]:
                if version > since:
                    events.put(event)
            self.watches[plural].append(events)
        return events

    def close_watch(self, plural: str, events: queue.Queue[Event]) -> None:
        with self.lock:
            if events in self.watches[plural]:
                self.watches[plural].remove(events)

    def review(self, spec: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """As the API server answers: a token is valid for the audiences asked (its own when none
        are) that it was minted for, and status.audiences names those."""
        if self.forbid_tokenreviews:
            return 403, recorded("forbidden.json")
        token = str(spec.get("token") or "")
        status = self.reviews.get(token) or recorded("tokenreview-unknown.json")
        asked = [] if self.ignore_audiences else list(spec.get("audiences") or [])
        if status.get("authenticated"):
            valid = [a for a in status["audiences"] if a in (asked or [API_AUDIENCE])]
            if not valid:
                why = f"token audiences {status['audiences']} is invalid for the target audiences"
                status = {"user": {}, "error": f"[invalid bearer token, {why} {asked or [API_AUDIENCE]}]"}
            elif asked:
                status = {**status, "audiences": valid}
        return 201, {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": {"token": token, **({"audiences": asked} if asked else {})},
            "status": status,
        }


class _Server(ThreadingHTTPServer):
    """HTTPS, the handshake in each connection's own thread (in the accepting thread, one client
    that connects and says nothing would stop the server); keeps its connections, so that going
    down cuts the kept-alive ones too."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any, context: ssl.SSLContext) -> None:
        self.context = context
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(10)
        try:
            connection = self.context.wrap_socket(request, server_side=True)
        except OSError:
            return  # a client that gave up before the handshake
        connection.settimeout(None)
        with self.connections_lock:
            self.connections.add(connection)
        try:
            self.RequestHandlerClass(connection, client_address, self)
        finally:
            with self.connections_lock:
                self.connections.discard(connection)
            connection.close()

    def cut_connections(self) -> None:
        with self.connections_lock:
            for connection in self.connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by the peer


def _handler(api: FakeKubeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {ADMIN_TOKEN}":
                return True
            self._send(401, recorded("unauthorized.json"))
            return False

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            api.requests.append(("GET", url.path, query))
            if not self._authorized():
                return
            route = _route(url.path)
            if route is None:
                self._send(404, {"kind": "Status", "code": 404, "message": f"no such collection: {url.path}"})
            elif query.get("watch") in ("true", "1"):
                self._watch(*route, int(query.get("resourceVersion") or 0))
            else:
                self._send(200, api.list_body(*route))

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            api.requests.append(("POST", url.path, {}))
            if not self._authorized():
                return
            if url.path != TOKENREVIEWS:
                self._send(405, {"kind": "Status", "code": 405, "message": "method not allowed"})
                return
            self._send(*api.review(body.get("spec") or {}))

        def _watch(self, plural: str, namespace: Optional[str], since: int) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            events = api.open_watch(plural, namespace, since)
            try:
                while True:
                    event = events.get()
                    if event is None:
                        break
                    obj_ns = (event["object"].get("metadata") or {}).get("namespace")
                    if namespace and obj_ns and obj_ns != namespace:
                        continue
                    line = json.dumps(event).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                pass  # the client went away
            finally:
                api.close_watch(plural, events)
                self.close_connection = True

    return Handler

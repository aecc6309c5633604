"""Zero-downtime upgrade of the process: the running meshcore hands every listening socket, its
admin API's included, to a new process over a Unix socket (file-descriptor passing, as HAProxy and
Envoy's hot restart do). Both serve on the same sockets, so no connection is refused; the new one
says it is ready, the old one drains and exits. The new process may be another installed version.

The conversation, JSON lines on `<state_dir>/upgrade.sock` (mode 0600), protocol 1:

    new -> old   {"protocol": 1, "pid": P, "version": V}                      the hello
    old -> new   {"protocol": 1, "pid": P, "version": V, "fds": n, "sockets": [{"index": i,
                 "kind": "listener" | "admin", "name": N, "bind": B}, ...]} and the n fds
                 (SCM_RIGHTS, at most 253 a message, the first batch with the line)
                 or {"error": reason} and no fds (another upgrade is in progress, ...)
    new -> old   {"ready": true} once it serves, or {"failed": reason}, or it hangs up
    old -> new   {"draining": true}; the old stops (drains for its grace) and exits 0

Until the old has answered "draining", the new is not ready: it prints "meshcore: ready" after.
A new process that fails before then exits non-zero with the reason; the old keeps serving.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import stat
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from .. import _core
from ..errors import MeshcoreError

if TYPE_CHECKING:  # the proxy's module loads the config's, pydantic with it: not for `--help`
    from ..proxy import InheritedSockets, Proxy

__all__ = ["PROTOCOL", "SOCKET_NAME", "Handover", "Outcome", "UpgradeServer", "inherit"]

PROTOCOL = 1
SOCKET_NAME = "upgrade.sock"
MAX_MESSAGE = 64 * 1024
MAX_FDS = 4096  # as many as the core takes in one handover
FDS_PER_MESSAGE = 253  # the kernel's limit (SCM_MAX_FD)
HELLO_TIMEOUT = 10.0  # the new process says hello as soon as it connects
READY_TIMEOUT = 120.0  # it starts (certificates, plugins) and serves within this
ANSWER_TIMEOUT = 10.0  # the old answers "draining" at once


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _decode(line: bytes, what: str) -> dict[str, Any]:
    if not line:
        raise ConnectionError(f"the connection closed before the {what}")
    if not line.endswith(b"\n"):
        raise ValueError(f"the {what} is not one line of at most {MAX_MESSAGE} bytes")
    try:
        message = json.loads(line)
    except ValueError as e:
        raise ValueError(f"the {what} is not JSON: {e}") from None
    if not isinstance(message, dict):
        raise ValueError(f"the {what} is not a JSON object")
    return message


@dataclass
class Outcome:
    """How one upgrade attempt ended, as the old process saw it."""

    pid: Optional[int]  # the new process's, from its hello
    ready: bool
    reason: str = ""


# -- the old side ------------------------------------------------------------------------------


class UpgradeServer:
    """Serves `<state_dir>/upgrade.sock` for a running `proxy`: hands its sockets to one new
    process at a time and calls `on_handover()` once that one is ready (the caller then drains
    and exits). The socket is bound here; `start()` begins answering.

    A socket file nobody answers on is stale and replaced; one that answers belongs to another
    running proxy on the same state dir, which is refused (MeshcoreError), unless `replace` is
    set: the new process of an upgrade takes the path over from the old one it replaces.
    OSError if the directory or socket cannot be made (the proxy can serve without upgrades).
    """

    def __init__(
        self,
        proxy: Proxy,
        path: Path,
        on_handover: Callable[[], None],
        *,
        replace: bool = False,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self._proxy = proxy
        self.path = Path(path)
        self._on_handover = on_handover
        self._ready_timeout = ready_timeout
        self._busy = threading.Lock()  # one upgrade at a time
        self._outcomes: list[Outcome] = []
        self._changed = threading.Condition()
        self._listener = _listen_unix(self.path, replace)
        self._inode = os.stat(self.path).st_ino
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._accept, name="meshcore-upgrade", daemon=True)
        self._accepting = True
        self._closed = False
        self._handed_over = False  # then the socket file is the new process's

    def start(self) -> UpgradeServer:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stops answering; removes the socket file unless a newer process has taken it over."""
        if self._closed:
            return
        self._closed = True
        self._stop_accepting()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5)
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        try:
            if not self._handed_over and os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass

    def wait_for(
        self, pid: int, timeout: Optional[float], or_until: Callable[[], bool] = lambda: False
    ) -> Optional[Outcome]:
        """The outcome of the attempt by process `pid`, once there is one; None at the timeout or
        once `or_until()` is true (looked at whenever `notify()` is called)."""
        with self._changed:
            self._changed.wait_for(lambda: self._outcome_of(pid) is not None or or_until(), timeout)
            return self._outcome_of(pid)

    def notify(self) -> None:
        """Wakes `wait_for` callers (a process they watch has exited)."""
        with self._changed:
            self._changed.notify_all()

    def _stop_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            self._wake_w.send(b"x")

    def _outcome_of(self, pid: int) -> Optional[Outcome]:
        return next((o for o in self._outcomes if o.pid == pid), None)

    def _accept(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while self._accepting:
                ready = {key.fileobj for key, _ in selector.select()}
                if self._wake_r in ready or not self._accepting:
                    return
                try:
                    conn, _ = self._listener.accept()
                except OSError:
                    continue
                threading.Thread(
                    target=self._serve, args=(conn,), name="meshcore-upgrade-peer", daemon=True
                ).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            if not self._busy.acquire(blocking=False):
                # The hello first: answering and closing before it arrives would break the
                # peer's write of it, and it would never read why.
                try:
                    conn.settimeout(HELLO_TIMEOUT)
                    conn.makefile("rb").readline(MAX_MESSAGE)
                except OSError:
                    pass
                _send_quietly(conn, {"error": "another upgrade is in progress"})
                return
            try:
                outcome = self._hand_over(conn)
            finally:
                self._busy.release()
        with self._changed:
            self._outcomes.append(outcome)
            self._changed.notify_all()
        if outcome.ready:
            print(f"meshcore: upgrade: process {outcome.pid} took over; draining", flush=True)
            self._on_handover()
        else:
            print(f"meshcore: upgrade failed: {outcome.reason}; still serving", file=sys.stderr, flush=True)

    def _hand_over(self, conn: socket.socket) -> Outcome:
        pid: Optional[int] = None
        who = "the new process"
        try:
            conn.settimeout(HELLO_TIMEOUT)
            reader = conn.makefile("rb")
            hello = _decode(reader.readline(MAX_MESSAGE), "hello")
            pid = hello.get("pid") if isinstance(hello.get("pid"), int) else None
            who = f"the new process ({pid or 'no pid'}, meshcore {hello.get('version', '?')})"
            if hello.get("protocol") != PROTOCOL:
                reason = f"it speaks upgrade protocol {hello.get('protocol')!r}, this process {PROTOCOL}"
                _send_quietly(conn, {"error": reason})
                return Outcome(pid, False, f"{who}: {reason}")
            meta, fds = self._sockets()
            _send_with_fds(conn, _encode(meta), fds)
            conn.settimeout(self._ready_timeout)
            try:
                answer = _decode(reader.readline(MAX_MESSAGE), "ready message")
            except ConnectionError:
                return Outcome(pid, False, f"{who} hung up before it was ready (see its output)")
            if answer.get("ready") is not True:
                return Outcome(pid, False, f"{who} failed: {answer.get('failed', answer)}")
            conn.settimeout(ANSWER_TIMEOUT)
            conn.sendall(_encode({"draining": True}))
        except socket.timeout:
            return Outcome(pid, False, f"{who} was not ready in time")
        except (OSError, ValueError) as e:
            return Outcome(pid, False, f"{who}: {e}")
        # The new process serves the path from now on; this one no longer answers there.
        self._handed_over = True
        self._stop_accepting()
        return Outcome(pid, True)

    def _sockets(self) -> tuple[dict[str, Any], list[int]]:
        entries: list[dict[str, Any]] = []
        fds: list[int] = []
        for name, bind, fd in self._proxy._core.listening_sockets():
            entries.append({"index": len(fds), "kind": "listener", "name": name, "bind": bind})
            fds.append(fd)
        admin = self._proxy.admin_socket
        if admin is not None:
            entries.append(
                {"index": len(fds), "kind": "admin", "name": "admin", "bind": self._proxy.settings.admin}
            )
            fds.append(admin.fileno())
        if len(fds) > MAX_FDS:
            raise ValueError(f"{len(fds)} listening sockets, more than the {MAX_FDS} one message can carry")
        meta = {
            "protocol": PROTOCOL,
            "pid": os.getpid(),
            "version": _core.__version__,
            "fds": len(fds),
            "sockets": entries,
        }
        return meta, fds


def _listen_unix(path: Path, replace: bool) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise MeshcoreError(f"{path} exists and is not a socket; remove it or choose another state_dir")
        if not replace and _answers(path):
            raise MeshcoreError(
                f"another meshcore is running with the state dir {path.parent} (it answers on {path}); "
                "stop it, give this one another state_dir, or replace it with `meshcore run CONFIG --upgrade`"
            )
        # Stale (left by a process that ended without removing it), or the one being replaced.
        path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)  # before listen(): nobody can connect until it is private
        sock.listen(4)
    except BaseException:
        sock.close()
        raise
    return sock


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    finally:
        probe.close()
    return True


def _send_with_fds(conn: socket.socket, line: bytes, fds: list[int]) -> None:
    # The kernel passes at most 253 descriptors a message: the first batch goes with the line,
    # the others each with a byte the receiver ignores (it counts descriptors up to "fds").
    socket.send_fds(conn, [line], fds[:FDS_PER_MESSAGE])
    for start in range(FDS_PER_MESSAGE, len(fds), FDS_PER_MESSAGE):
        socket.send_fds(conn, [b"\n"], fds[start : start + FDS_PER_MESSAGE])


def _send_quietly(conn: socket.socket, message: dict[str, Any]) -> None:
    try:
        conn.sendall(_encode(message))
    except OSError:
        pass  # the peer went away: nothing to tell


# -- the new side ------------------------------------------------------------------------------


@dataclass
class Handover:
    """The sockets received from the running process, and the conversation with it."""

    path: Path
    meta: dict[str, Any]
    inherited: Any  # _core.Inherited
    control: socket.socket
    taken: set[int] = field(default_factory=set)

    @property
    def old_pid(self) -> Any:
        return self.meta.get("pid")

    def sockets_for(self, config: Any) -> InheritedSockets:
        """What `Proxy.start(inherited=...)` serves on for `config`: each listener takes the sockets
        of the old listener with the same name and the same configured bind (any other binds fresh),
        the admin API the old admin socket if its address is unchanged. Sockets nobody wants are
        closed here; the old process drains them."""
        from ..proxy import InheritedSockets

        entries = self.meta["sockets"]
        assignment: dict[str, list[int]] = {}
        for listener in config.listeners:
            indexes = [
                e["index"]
                for e in entries
                if e["kind"] == "listener" and e["name"] == listener.name and e["bind"] == listener.bind
            ]
            if indexes:
                assignment[listener.name] = indexes
        admin: Optional[socket.socket] = None
        wanted = {i for indexes in assignment.values() for i in indexes}
        for e in entries:
            if e["kind"] == "admin" and config.admin is not None and e["bind"] == config.admin:
                admin = socket.socket(fileno=self._take(e["index"]))
            elif e["index"] not in wanted:
                os.close(self._take(e["index"]))
        inherited = sorted(assignment) + (["the admin API"] if admin is not None else [])
        fresh = [lst.name for lst in config.listeners if lst.name not in assignment]
        if config.admin is not None and admin is None:
            fresh.append("the admin API")
        print(
            f"meshcore: upgrade: taking over from process {self.old_pid} "
            f"(meshcore {self.meta.get('version')}): "
            f"inherited {', '.join(inherited) or 'nothing'}; bound fresh {', '.join(fresh) or 'nothing'}",
            flush=True,
        )
        return InheritedSockets(self.inherited, assignment, admin)

    def ready(self) -> None:
        """Tells the old process this one serves, and waits for its "draining" answer. Raises
        MeshcoreError if it does not answer so: it then keeps serving and this one must stop."""
        try:
            self.control.settimeout(ANSWER_TIMEOUT)
            self.control.sendall(_encode({"ready": True}))
            answer = _decode(self.control.makefile("rb").readline(MAX_MESSAGE), "answer to ready")
        except (OSError, ValueError) as e:
            raise MeshcoreError(f"{self._old} did not confirm the handover: {e}") from None
        finally:
            self.control.close()
        if answer.get("draining") is not True:
            raise MeshcoreError(f"{self._old} refused the handover: {answer}")

    def fail(self, reason: str) -> None:
        """Tells the old process that this one will not be ready (it keeps serving), and hangs up."""
        _send_quietly(self.control, {"failed": reason})
        self.control.close()

    @property
    def _old(self) -> str:
        return f"the running meshcore (process {self.old_pid})"

    def _take(self, index: int) -> int:
        self.taken.add(index)
        return int(self.inherited.take(index))


def inherit(path: Path) -> Handover:
    """Connects to the running meshcore at `path` and receives its listening sockets. Raises
    MeshcoreError with the reason if there is none, or it refuses (the old keeps serving)."""
    hello = _encode({"protocol": PROTOCOL, "pid": os.getpid(), "version": _core.__version__})
    if not os.path.exists(path):
        raise MeshcoreError(
            f"no running meshcore to take over from: nothing at {path} "
            "(is it running with this config, or the same state_dir?)"
        )
    try:
        raw, inherited = _core.inherit_sockets(str(path), hello)
    except (OSError, MeshcoreError) as e:
        raise MeshcoreError(f"cannot take over from the running meshcore: {e}") from None
    control = socket.socket(fileno=inherited.control())
    try:
        meta = _decode(raw if raw.endswith(b"\n") else raw + b"\n", "running meshcore's sockets")
        if "error" in meta:
            raise MeshcoreError(f"the running meshcore at {path} refused the upgrade: {meta['error']}")
        if meta.get("protocol") != PROTOCOL:
            raise MeshcoreError(
                f"the running meshcore at {path} speaks upgrade protocol {meta.get('protocol')!r}, "
                f"this one {PROTOCOL}"
            )
        _check_entries(meta.get("sockets"), inherited.count())
    except (ValueError, MeshcoreError) as e:
        handover = Handover(path, {}, inherited, control)
        handover.fail(str(e))
        raise MeshcoreError(str(e)) from None
    return Handover(path, meta, inherited, control)


def _check_entries(entries: Any, count: int) -> None:
    if not isinstance(entries, list) or not all(
        isinstance(e, dict)
        and e.get("kind") in ("listener", "admin")
        and isinstance(e.get("index"), int)
        and isinstance(e.get("name"), str)
        and isinstance(e.get("bind"), str)
        for e in entries
    ):
        raise ValueError("the running meshcore's list of sockets is malformed")
    if sorted(e["index"] for e in entries) != list(range(count)):
        raise ValueError(f"the running meshcore described {len(entries)} sockets and sent {count}")

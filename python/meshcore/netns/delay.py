"""Holds packets for a fixed time: a constant one-way delay, as `tc netem delay`
gives, for kernels built without netem (this project's CI machines have neither
netem nor prio). A router's iptables rules send packets to NFQUEUE queues; this
process, run inside the router's namespace, binds those queues and lets each
packet go once its queue's delay has passed.

    python -m meshcore.netns.delay 1=1000 2=5000 3=30000   # queue=microseconds

It prints "ready" once every queue is bound. One delay per queue keeps each
queue first-in first-out, so one batch verdict ("accept every packet up to id
N") lets a whole run of packets go: the kernel does the copying, this process
only handles ids (the queues copy no packet data).
"""

from __future__ import annotations

import collections
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Iterator

NETLINK_NETFILTER = 12
NETLINK_NO_ENOBUFS = 5
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
# Packets a queue may hold: 30 ms of a fast benchmark's traffic (netem's own limit is 1000).
QUEUE_MAXLEN = 100_000


def _attr(kind: int, payload: bytes) -> bytes:
    pad = b"\0" * (-len(payload) % 4)
    return struct.pack("=HH", 4 + len(payload), kind) + payload + pad


def _message(msg: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, 0, 0) + body


def _configure(sock: socket.socket, queue: int) -> None:
    """Binds `queue` and asks for ids only; the kernel's answer says whether it worked."""
    for attrs in (
        _attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET)),
        _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
        + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN)),
    ):
        sock.send(_message(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_REQUEST | NLM_F_ACK))
        reply = sock.recv(65536)
        _, kind, _, _, _ = struct.unpack_from("=IHHII", reply)
        error = struct.unpack_from("=i", reply, 16)[0] if kind == NLMSG_ERROR else 0
        if error:
            raise OSError(-error, f"binding NFQUEUE {queue}: {os.strerror(-error)}")


def _packets(buf: bytes) -> Iterator[tuple[int, int]]:
    """(queue, packet id) of each packet message in a netlink read."""
    off = 0
    while off + 16 <= len(buf):
        length, kind, _, _, _ = struct.unpack_from("=IHHII", buf, off)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            queue = struct.unpack_from("!H", buf, off + 18)[0]
            at, end = off + 20, off + length
            while at + 4 <= end:
                alen, atype = struct.unpack_from("=HH", buf, at)
                if atype & 0x7FFF == NFQA_PACKET_HDR:
                    yield queue, struct.unpack_from("!I", buf, at + 4)[0]
                    break
                at += (alen + 3) & ~3
        off += (length + 3) & ~3


def serve(delays_us: dict[int, int]) -> None:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(270, NETLINK_NO_ENOBUFS, 1)  # SOL_NETLINK: a full buffer is not an error
    sock.bind((0, 0))
    for queue in delays_us:
        _configure(sock, queue)
    print("ready", flush=True)
    sock.setblocking(False)
    waiting: dict[int, collections.deque[tuple[float, int]]] = {
        q: collections.deque() for q in delays_us
    }  # (due, packet id), in order
    delay_s = {q: us / 1e6 for q, us in delays_us.items()}
    while True:
        dues = [w[0][0] for w in waiting.values() if w]
        timeout = max(0.0, min(dues) - time.monotonic()) if dues else None
        if select.select([sock], [], [], timeout)[0]:
            now = time.monotonic()
            while True:
                try:
                    buf = sock.recv(1 << 20)
                except BlockingIOError:
                    break
                for queue, packet in _packets(buf):
                    waiting[queue].append((now + delay_s[queue], packet))
        now = time.monotonic()
        for queue, w in waiting.items():
            last = None
            while w and w[0][0] <= now:
                last = w.popleft()[1]
            if last is not None:
                verdict = _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, last))
                sock.send(_message(NFQNL_MSG_VERDICT_BATCH, queue, verdict))


def main(argv: list[str]) -> int:
    try:
        delays = {int(q): int(us) for q, us in (arg.split("=", 1) for arg in argv)}
    except ValueError:
        print(f"usage: python -m meshcore.netns.delay QUEUE=MICROSECONDS ...; got {argv}", file=sys.stderr)
        return 2
    serve(delays)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

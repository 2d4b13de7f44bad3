"""A small TCP proxy for every directed node-to-node link, so the nemesis can cut, delay or
drop traffic one way.

Link (src -> dst) listens on 127.0.0.1:<ephemeral> and forwards to dst's port; src is
started with ``PICKLEDB_PEER_ROUTES={dst_url: "http://127.0.0.1:<proxy port>"}``, so every
request src sends to dst (heartbeats, replication, votes, snapshots, forwarded client
writes and reads) and dst's answers travel through it. Client traffic goes straight to the
nodes.

Per-link state (``LinkState``):
  blocked    black hole in both directions: new connections are accepted but nothing is
             forwarded (src's request times out, as with a real partition); bytes of
             connections open at the time are discarded from then on. On heal every
             connection that lost bytes is closed, so no stream is resumed corrupted.
  drop_resp  black hole for dst's answers only: requests are delivered (and may be
             applied) but src never hears back ("one-way loss").
  delay, jitter  every chunk is delivered delay + U(0, jitter) seconds after it was read,
             in order.
  drop_prob  each chunk, with this probability, resets the whole connection instead.

Everything runs on one asyncio loop in a daemon thread; the control methods are
thread-safe and take effect before they return. Bounded: at most ``max_conns`` open
connections per link (more are refused), chunks of at most 64 KiB, delivery queues of at
most 256 chunks. Loopback only.
"""
from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, replace
from typing import Optional

LOOPBACK = "127.0.0.1"
CHUNK = 65536
QUEUE_CHUNKS = 256


@dataclass
class LinkState:
    blocked: bool = False
    drop_resp: bool = False
    delay: float = 0.0
    jitter: float = 0.0
    drop_prob: float = 0.0

    def is_clean(self) -> bool:
        return self == LinkState()

    def describe(self) -> str:
        parts = []
        if self.blocked:
            parts.append("blocked")
        if self.drop_resp:
            parts.append("drop_resp")
        if self.delay or self.jitter:
            parts.append(f"delay={self.delay:g}+{self.jitter:g}")
        if self.drop_prob:
            parts.append(f"drop={self.drop_prob:g}")
        return ",".join(parts) or "ok"


class _Conn:
    __slots__ = ("writers", "dead", "tasks", "closed")

    def __init__(self):
        self.writers = []
        # direction -> bytes of that direction were discarded: the stream is broken and
        # everything after must be discarded too (and the connection reset on heal)
        self.dead = {"req": False, "resp": False}
        self.tasks = []
        self.closed = False

    @property
    def tainted(self) -> bool:
        return self.dead["req"] or self.dead["resp"]

    def abort(self):
        if self.closed:
            return
        self.closed = True
        for w in self.writers:
            try:
                w.transport.abort()
            except Exception:
                pass
        for t in self.tasks:
            t.cancel()


class Link:
    def __init__(self, net: "ProxyNet", src, dst, target_port: int):
        self.net = net
        self.src = src
        self.dst = dst
        self.target_port = target_port
        self.state = LinkState()
        self.server = None
        self.port: Optional[int] = None
        self.conns: set = set()
        self.stats = {"conns": 0, "refused": 0, "bytes": 0, "discarded": 0, "resets": 0}

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _discard(self, conn, direction) -> bool:
        st = self.state
        if st.blocked:
            conn.dead["req"] = conn.dead["resp"] = True
        elif direction == "resp" and st.drop_resp:
            conn.dead["resp"] = True
        return conn.dead[direction]

    async def _handle(self, reader, writer):
        if len(self.conns) >= self.net.max_conns:
            self.stats["refused"] += 1
            writer.transport.abort()
            return
        conn = _Conn()
        conn.writers.append(writer)
        self.conns.add(conn)
        self.stats["conns"] += 1
        try:
            if self.state.blocked:
                # Accept, never connect upstream, swallow everything until healed.
                conn.dead["req"] = conn.dead["resp"] = True
                while not conn.closed:
                    data = await reader.read(CHUNK)
                    if not data:
                        return
                    self.stats["discarded"] += len(data)
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(LOOPBACK, self.target_port), timeout=2.0)
            except (OSError, asyncio.TimeoutError):
                return      # dst is down: src sees its connection closed
            conn.writers.append(up_writer)
            a = asyncio.ensure_future(self._pump(reader, up_writer, conn, "req"))
            b = asyncio.ensure_future(self._pump(up_reader, writer, conn, "resp"))
            conn.tasks = [a, b]
            await asyncio.wait([a, b])
        except (asyncio.CancelledError, Exception):
            pass
        finally:
            conn.abort()
            self.conns.discard(conn)

    async def _pump(self, reader, writer, conn: _Conn, direction: str):
        queue: asyncio.Queue = asyncio.Queue(QUEUE_CHUNKS)
        deliver = asyncio.ensure_future(self._deliver(queue, writer, conn, direction))
        conn.tasks.append(deliver)
        last_at = 0.0
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if self._discard(conn, direction):
                    self.stats["discarded"] += len(data)
                    continue
                st = self.state
                if st.drop_prob and self.net.rng.random() < st.drop_prob:
                    self.stats["resets"] += 1
                    conn.abort()
                    return
                at = time.monotonic()
                if st.delay or st.jitter:
                    at += st.delay + self.net.rng.random() * st.jitter
                at = max(at, last_at)
                last_at = at
                self.stats["bytes"] += len(data)
                await queue.put((at, data))
            if conn.tainted:
                conn.abort()        # a broken stream is never half-closed gracefully
                return
            await queue.put((None, None))
            await deliver
        except (OSError, asyncio.IncompleteReadError):
            conn.abort()

    async def _deliver(self, queue, writer, conn, direction):
        try:
            while True:
                at, data = await queue.get()
                if data is None:
                    # EOF from the reading side: half-close so answers still flow back.
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                wait = at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self._discard(conn, direction):
                    self.stats["discarded"] += len(data)
                    continue
                writer.write(data)
                await writer.drain()
        except OSError:
            conn.abort()

    def _close_tainted(self):
        for conn in list(self.conns):
            if conn.tainted:
                conn.abort()
                self.conns.discard(conn)


class ProxyNet:
    """All links of one cluster. ``nodes`` are opaque ids (the node URLs)."""

    def __init__(self, seed: int = 0, max_conns: int = 64):
        self.rng = random.Random(seed)
        self.max_conns = max_conns
        self.links: dict = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="nemesis-proxy", daemon=True)
        self._thread.start()
        self._closed = False

    def _run(self):
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro_or_fn, timeout=10.0):
        if asyncio.iscoroutine(coro_or_fn):
            fut = asyncio.run_coroutine_threadsafe(coro_or_fn, self._loop)
        else:
            async def wrapper():
                return coro_or_fn()
            fut = asyncio.run_coroutine_threadsafe(wrapper(), self._loop)
        return fut.result(timeout)

    # ---- setup -------------------------------------------------------------------------
    def add_link(self, src, dst, target_port: int) -> Link:
        link = Link(self, src, dst, target_port)

        async def start():
            link.server = await asyncio.start_server(link._handle, LOOPBACK, 0,
                                                     reuse_address=True)
            link.port = link.server.sockets[0].getsockname()[1]

        self._call(start())
        self.links[(src, dst)] = link
        return link

    def routes_for(self, src) -> dict:
        """PICKLEDB_PEER_ROUTES value for node ``src``."""
        return {dst: link.url for (s, dst), link in self.links.items() if s == src}

    # ---- control (thread-safe) -----------------------------------------------------------
    def set_link(self, src, dst, **changes):
        link = self.links[(src, dst)]

        def apply():
            was_bad = link.state.blocked or link.state.drop_resp
            link.state = replace(link.state, **changes)
            if link.state.blocked:
                for conn in link.conns:
                    conn.dead["req"] = conn.dead["resp"] = True
            if was_bad and not (link.state.blocked or link.state.drop_resp):
                link._close_tainted()

        self._call(apply)

    def set_many(self, pairs, **changes):
        for src, dst in pairs:
            self.set_link(src, dst, **changes)

    def block(self, src, dst):
        self.set_link(src, dst, blocked=True)

    def partition(self, groups):
        """Block every link between different groups (both directions); heal the rest."""
        where = {}
        for gi, g in enumerate(groups):
            for n in g:
                where[n] = gi
        for (s, d) in self.links:
            self.set_link(s, d, blocked=where.get(s) != where.get(d))

    def heal(self):
        """Every link back to a clean state; connections that lost bytes are reset."""
        for (s, d) in self.links:
            self.set_link(s, d, **vars(LinkState()))

    def states(self) -> dict:
        return {k: l.state.describe() for k, l in self.links.items()}

    def stats(self) -> dict:
        return {k: dict(l.stats) for k, l in self.links.items()}

    def close(self):
        if self._closed:
            return
        self._closed = True

        async def shutdown():
            for link in self.links.values():
                if link.server:
                    link.server.close()
                for conn in list(link.conns):
                    conn.abort()
            await asyncio.sleep(0)

        try:
            self._call(shutdown(), timeout=5)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def free_port() -> int:
    from .cluster import _import_harness  # python -m or pytest: the harness is found either way
    return _import_harness().free_ports(1)[0]  # below the ephemeral range: no outgoing connection takes it first

"""The node's HTTP server: waitress 3, with the guards a replicated service needs on one port.

waitress parses requests on one I/O thread (the asyncore loop) and runs the WSGI app on a thread
pool. This module adds, without a thread hop of its own:

* Node-to-node capacity. A request is routed by method and path once its head is parsed: a POST
  to a peer path runs on a small pool of its own, everything else on the client pool. Clients
  that hold every client thread (event streams, forwarded writes) cannot delay replication.
* Deadlines. A request head must be complete `head_timeout` after its first byte (or, for a new
  connection, after the accept); a body must arrive at `min_body_rate` on average after a grace
  of `body_timeout`. Inactivity alone (waitress's channel_timeout) lets a client that sends one
  header line every few seconds hold a connection for ever. Idle keep-alive connections close
  after `idle_timeout`. Nothing is timed while the server itself works on a request.
* Connection limit without lock-out. waitress stops accepting at its connection limit, which
  locks peers out along with everyone else. Here at most `client_connections` connections that
  are not verified peers stay open: a new connection beyond that closes the client connection
  that has waited longest for a request (never one being served, never a peer). When every
  client connection is being served, the new one is kept just long enough to see whether its
  first request is node-to-node; a client request on it gets 503. A connection becomes a
  verified peer when a peer path has answered it 200 (so it passed the app's cluster-secret
  and message checks); peers are not counted.
* Body caps by path: the declared Content-Length is refused before any body is read; a chunked
  body is cut as soon as it passes the cap (its framing counts). The larger node-to-node caps
  apply only to requests that carry the cluster secret, when there is one.
* The server's own answers (400, 408, 413, 431, 500, 501, 503) are the API's JSON errors, and
  an error that closes a connection half-closes it and drains input briefly (a "lingering
  close", as Apache and nginx do), so the client reads the error instead of a reset.
* Response observer (`on_response`): called on the worker thread as each client response starts,
  with the WSGI environ, the status line and the seconds since the request's task started. The
  server already holds all three at that point, so the metrics cost no WSGI middleware frame,
  closure or second start_response on the write path. Node-to-node requests are not observed.
* stop() may be called from a signal handler: it stops accepting, lets running requests finish
  for up to `drain_timeout`, then closes every connection from the I/O thread, so no worker
  writes to a closed descriptor.

* TLS (given a tls.NodeTLS): waitress has none, so the I/O thread speaks it itself, with the
  same channels, so every guard above holds unchanged. An accepted connection's first byte tells
  a TLS handshake from plain HTTP (answered 400 in plain text); the handshake runs non-blocking
  on the I/O thread within the head deadline; decrypted bytes OpenSSL still buffers are read at
  once (poll cannot see them); and only the I/O thread touches a TLS socket (OpenSSL's
  connections are not thread-safe): workers queue their output and wake it. With a cluster CA,
  a node-to-node request on a connection that presented no certificate is refused 403. A plain
  server answers a TLS handshake with a 400 at once, instead of waiting for a request head.
"""
from __future__ import annotations

import functools
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Callable, Mapping

import orjson
from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask
from waitress.utilities import Error, RequestEntityTooLarge, RequestHeaderFieldsTooLarge

if TYPE_CHECKING:
    from tls import NodeTLS

log = logging.getLogger("pickledb_cluster.http")

PEER_CONNECTION_RESERVE = 100  # waitress's own limit, a backstop: clients + verified peers + this
LINGER_BYTES = 4 * 1024 * 1024  # input drained after an error before the connection is closed
OVERFLOW_LOG_SECONDS = 10  # at most one "connection limit reached" (or TLS failure) warning per this many seconds
TLS_RECORD_TYPE_HANDSHAKE = b"\x16"  # the first byte of every TLS connection


@dataclass(frozen=True)
class Limits:
    client_threads: int = 48  # client requests block while their write commits; streams hold one
    peer_threads: int = 8  # a peer sends one request at a time per connection
    client_connections: int = 500
    head_timeout: float = 10.0
    body_timeout: float = 10.0  # grace before min_body_rate applies
    min_body_rate: float = 64 * 1024  # bytes per second, on average over the body
    idle_timeout: float = 60.0  # a keep-alive connection between requests (as before)
    send_timeout: float = 30.0  # an answer the client does not read
    max_head: int = 64 * 1024  # request line and headers
    client_body: int = 1024 * 1024
    linger_timeout: float = 2.0
    drain_timeout: float = 1.0


# Codes of the API's JSON errors for the statuses waitress itself answers with.
ERROR_CODES = {400: "bad_request", 403: "forbidden", 408: "request_timeout", 413: "request_entity_too_large",
               431: "request_header_fields_too_large", 500: "internal_error", 501: "not_implemented",
               503: "too_many_connections"}


def error_response(status: int, message: str, extra_headers: tuple = ()) -> bytes:
    body = orjson.dumps({"error": ERROR_CODES[status], "message": message})
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json",
            f"Content-Length: {len(body)}", "Connection: close", *extra_headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class _RequestParser(HTTPRequestParser):
    """waitress's parser, with the body cap of the request's path and the times its deadlines
    count from."""
    peer_cap: int | None = None  # set for a node-to-node request: its body cap

    def __init__(self, server: "HTTPServer", channel: "_Channel", adj):
        super().__init__(adj)
        self.server = server
        self.channel = channel
        self.started = time.monotonic()  # the first byte of this request
        self.body_started = 0.0
        self.cap = server.limits.client_body

    def parse_header(self, header_plus):
        super().parse_header(header_plus)
        if self.command == "POST":
            cap = self.server.peer_routes.get(self.path)
            authentic = self.server.peer_auth
            if cap is not None and (authentic is None or authentic(self.headers)):
                if not self.channel.certified:
                    self.error = _Forbidden("node-to-node requests must come over TLS with a certificate "
                                            "that chains to the cluster CA (--tls-ca)")
                    self.completed = True
                    return
                self.peer_cap = self.cap = cap

    def received(self, data):
        in_head = self.body_rcv is None and not self.completed
        consumed = super().received(data)
        if self.error is None and self.headers_finished:
            if in_head:
                self.body_started = time.monotonic()
            if self.content_length > self.cap or self.body_bytes_received > self.cap:
                self.error = RequestEntityTooLarge(
                    f"request body is larger than {self.cap} bytes, the limit for {self.command} {self.path}")
                self.completed = True
                self.expect_continue = False  # never invite a body that will be refused
        elif isinstance(self.error, RequestHeaderFieldsTooLarge):
            self.error.body = f"request line and headers are larger than {self.adj.max_request_header_size} bytes"
        return consumed


class _Overloaded(Error):
    code = 503
    reason = "Service Unavailable"


class _Forbidden(Error):
    code = 403
    reason = "Forbidden"


class _ErrorTask(ErrorTask):
    """waitress's own error answers, as the API's JSON error."""

    def execute(self):
        error = self.request.error
        message = error.body if error.code != 500 else "the node hit an unexpected error"
        body = orjson.dumps({"error": ERROR_CODES.get(error.code, "error"), "message": message})
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        if error.code == 503:
            self.response_headers.append(("Retry-After", "1"))
        self.set_close_on_finish()
        self.channel.linger_on_close = True
        self.content_length = len(body)
        self.write(body)


class _Task(WSGITask):
    def service(self):
        self.started = time.perf_counter()
        super().service()
        if self.request.peer_cap is not None and self.status.startswith("200"):
            self.channel.peer = True
            self.channel.provisional = False

    def build_response_header(self):  # once per response, as it starts
        on_response = self.channel.owner.on_response
        if on_response is not None and self.request.peer_cap is None:
            on_response(self.environ, self.status, time.perf_counter() - self.started)
        return super().build_response_header()


class _Channel(HTTPChannel):
    task_class = _Task
    error_task_class = _ErrorTask
    peer = False  # a peer path has answered this connection 200
    provisional = False  # let in over the limit: for a node-to-node request only
    served = False  # at least one request was answered
    linger_on_close = False
    lingering_until: float | None = None
    lingered = 0
    certified = True  # may send node-to-node requests (TLS with a cluster CA: presented a certificate)

    def __init__(self, server: "_Listener", sock, addr, adj, map=None):
        super().__init__(server, sock, addr, adj, map)
        self.owner = server.owner
        self.parser_class = functools.partial(_RequestParser, self.owner, self)
        self.waiting_since = time.monotonic()  # since when this connection waits for the client
        self.owner.admit(self)

    # --------------------------------------------------------------- I/O thread
    def readable(self):
        # HTTPChannel.readable inlined (channel_request_lookahead is 0): called for every
        # connection on every turn of the loop.
        return not (self.will_close or self.close_when_flushed or self.requests or self.total_outbufs_len
                    or self.owner.draining)

    def handle_read(self):
        if self.lingering_until is None:
            return super().handle_read()
        try:
            data = self.socket.recv(65536)
        except OSError:
            data = b""
        self.lingered += len(data)
        if not data or self.lingered > LINGER_BYTES:
            self.close_now()

    def handle_close(self):
        if self.linger_on_close and self.lingering_until is None and self.connected:
            # Half-close after the error answer and drain what the client is still sending:
            # closing with unread input would reset the connection and destroy the answer.
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            else:
                self.lingering_until = time.monotonic() + self.owner.limits.linger_timeout
                self.will_close = self.close_when_flushed = False
                self.request = None
                return
        self.close_now()

    def close_now(self):
        HTTPChannel.handle_close(self)

    def received(self, data):
        if (not self.served and self.request is None and data[:1] == TLS_RECORD_TYPE_HANDSHAKE
                and self.owner.tls is None):
            self.answer_and_close(400, "this port speaks plain HTTP, not TLS: use http://", linger=True)
            return False
        return super().received(data)

    def counts_as_client(self) -> bool:
        return not (self.peer or self.closing())

    def closing(self) -> bool:
        return bool(self.will_close or self.close_when_flushed or self.lingering_until)

    def evictable(self) -> bool:
        return not (self.requests or self.closing())

    def answer_and_close(self, status: int, message: str, linger: bool, extra_headers: tuple = ()):
        """Answer a request the server gives up on (no task runs on this connection)."""
        data = error_response(status, message, extra_headers)
        self.start_send_clock()
        with self.outbuf_lock:
            self.outbufs[-1].append(data)
            self.total_outbufs_len += len(data)
        self.request = None
        self.linger_on_close = linger
        self.close_when_flushed = True

    def evict(self):
        if self.served and self.request is None:
            self.will_close = True  # an idle keep-alive connection: clients expect these to close
        else:
            self.answer_and_close(503, "too many open connections; retry shortly", linger=False,
                                  extra_headers=("Retry-After: 1",))

    def check_deadlines(self, now: float, wall_now: float) -> None:
        limits = self.owner.limits
        if self.lingering_until is not None:
            if now > self.lingering_until:
                self.close_now()
            return
        if self.total_outbufs_len:
            # A client that stops reading its answer: closing also frees a worker blocked on
            # the full output buffer. (waitress's last_activity is wall-clock time.)
            if wall_now - self.last_activity > limits.send_timeout:
                self.close_now()
            return
        if not self.evictable():
            return  # being served, or closing
        request = self.request
        if request is None:
            if now - self.waiting_since > (limits.idle_timeout if self.served else limits.head_timeout):
                self.will_close = True
        elif not request.headers_finished:
            if now - max(request.started, self.waiting_since) > limits.head_timeout:
                self.answer_and_close(408, f"the request head did not arrive within {limits.head_timeout:g} s",
                                      linger=True)
        elif now - max(request.body_started, self.waiting_since) > (
                limits.body_timeout + request.body_bytes_received / limits.min_body_rate):
            self.answer_and_close(408, f"the request body arrives slower than {limits.min_body_rate:g} bytes/s",
                                  linger=True)

    def start_send_clock(self) -> None:
        """send_timeout counts from when there is output to send: waitress's last_activity may
        still be the request's arrival, and a request can wait in the queue longer than that."""
        if not self.total_outbufs_len:
            self.last_activity = time.time()

    # --------------------------------------------------------------- worker threads
    def write_soon(self, data):
        if data:
            self.start_send_clock()  # before the data is queued: the I/O thread checks in between
        return super().write_soon(data)

    def service(self):
        try:
            super().service()
        finally:
            self.served = True
            self.waiting_since = time.monotonic()


class _TLSChannel(_Channel):
    """A connection to the TLS port: plain HTTP or a TLS handshake first, then HTTP over TLS."""
    certified = False
    handshaking = True
    wants_write = False  # the handshake waits until the socket is writable

    def __init__(self, server: "_Listener", sock, addr, adj, map=None):
        super().__init__(server, sock, addr, adj, map)
        self.certified = not self.owner.tls.verifies_peers

    def readable(self):
        return self.handshaking or super().readable()

    def writable(self):
        return self.wants_write or super().writable()

    def handle_read(self):
        if self.handshaking:
            return self.handshake()
        if self.lingering_until is not None:
            return super().handle_read()
        while True:
            try:
                data = self.socket.recv(self.adj.recv_bytes)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return  # a partial record, or a record without data
            except OSError as exc:  # ssl.SSLError included
                log.debug("TLS connection from %s failed: %s", self.addr, exc)
                self.close_now()
                return
            if not data:
                self.handle_close()
                return
            self.last_activity = time.time()
            self.received(data)
            # Decrypted bytes OpenSSL holds back (a record is up to 16 KiB) never wake poll():
            # hand them on now. received() queues requests beyond the first, as for pipelining.
            if not (self.connected and self.socket.pending()):
                return

    def handle_write(self):
        if self.handshaking and not self.closing():
            return self.handshake()
        super().handle_write()

    def evict(self):
        if self.handshaking:
            self.will_close = True  # nothing can be answered before the handshake
        else:
            super().evict()

    def handshake(self):
        if not isinstance(self.socket, ssl.SSLSocket):
            try:
                first = self.socket.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                return
            except OSError:
                first = b""
            if not first:
                self.close_now()
                return
            if first != TLS_RECORD_TYPE_HANDSHAKE:
                self.handshaking = False  # the answer goes out in plain text
                self.answer_and_close(400, "this port speaks HTTPS, not plain HTTP: use https://", linger=True)
                return
            self.socket = self.owner.tls.server_context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False)
        try:
            self.socket.do_handshake()
        except ssl.SSLWantReadError:
            self.wants_write = False
            return
        except ssl.SSLWantWriteError:
            self.wants_write = True
            return
        except OSError as exc:  # ssl.SSLError included: a refused certificate, not TLS at all...
            self.owner.log_limited(f"TLS handshake with {self.addr[0]} failed: {exc}")
            self.close_now()
            return
        self.handshaking = self.wants_write = False
        if not self.certified:
            self.certified = bool(self.socket.getpeercert())  # the CA verified it in the handshake

    def send(self, data, do_close=True):
        try:
            return super().send(data, do_close)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0
        except ssl.SSLError as exc:
            log.debug("TLS connection from %s failed: %s", self.addr, exc)
            self.will_close = True
            return 0

    def _flush_some(self, do_close=True):
        if threading.get_ident() != self.owner.io_thread:
            return False  # a worker's output: the I/O thread sends it (service() wakes it)
        return super()._flush_some(do_close)


class _Listener(TcpWSGIServer):
    """One listening socket of an HTTPServer (a host name may resolve to several addresses)."""
    channel_class = _Channel

    def __init__(self, owner: "HTTPServer", app, map, adj, sockinfo):
        self.owner = owner
        if owner.tls is not None:
            self.channel_class = _TLSChannel
        super().__init__(app, map=map, dispatcher=owner.client_pool, adj=adj, sockinfo=sockinfo)

    def add_task(self, channel):
        request = channel.requests[0]
        if request.peer_cap is not None:
            self.owner.peer_pool.add_task(channel)
        elif channel.provisional and request.error is None:
            # Answered at once, without waiting behind the client work that filled the server.
            request.error = _Overloaded("too many open connections, all busy; retry shortly")
            self.owner.peer_pool.add_task(channel)
        else:
            self.owner.client_pool.add_task(channel)

    def maintenance(self, now):  # every cleanup_interval, from readable(), on the I/O thread
        monotonic_now = time.monotonic()
        for channel in list(self.active_channels.values()):
            channel.check_deadlines(monotonic_now, now)


class _Pool(ThreadedTaskDispatcher):
    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def start_new_thread(self, target, thread_no):
        threading.Thread(target=target, name=f"http-{self.name}-{thread_no}", args=(thread_no,),
                         daemon=True).start()


def _busy(pool: ThreadedTaskDispatcher) -> bool:
    return bool(pool.queue) or pool.active_count > 0


class HTTPServer:
    """Serves `app` on host:port until stop().

    peer_routes maps each node-to-node path (POST only) to its body cap in bytes; those requests
    run on the peer pool. With `peer_auth`, only requests whose head it accepts (it gets waitress's
    header dict: "X-Cluster-Secret" is "X_CLUSTER_SECRET") count as node-to-node; the others are
    client traffic, with the client cap, so an unauthenticated body is never read past 1 MiB and
    never queues in front of a peer. `on_stop` runs on the I/O thread when stopping begins (wake
    long-lived responses there). `on_response(environ, status, seconds)` observes each client
    response as it starts (see the module's docstring). With `tls` the server speaks only HTTPS."""

    def __init__(self, app, host: str, port: int, peer_routes: Mapping[str, int], limits: Limits = Limits(),
                 peer_auth: Callable[[dict], bool] | None = None, on_stop: Callable[[], None] | None = None,
                 ident: str = "pickledb-cluster", tls: "NodeTLS | None" = None,
                 on_response: Callable[[dict, str, float], None] | None = None):
        self.limits = limits
        self.on_response = on_response
        self.tls = tls
        self.io_thread: int | None = None  # the thread in serve_forever
        self.peer_routes = dict(peer_routes)
        self.peer_auth = peer_auth
        self.on_stop = on_stop
        self.stopping = False
        self.draining = False
        self.closed = False
        self.last_overflow_log = self.last_tls_log = -OVERFLOW_LOG_SECONDS
        largest_body = max([limits.client_body, *self.peer_routes.values()])
        # Raises ValueError for a host or port waitress cannot resolve.
        adj = Adjustments(host=host, port=port, ident=ident, threads=limits.client_threads,
                          url_scheme="https" if tls is not None else "http",
                          connection_limit=limits.client_connections + PEER_CONNECTION_RESERVE,
                          cleanup_interval=1,  # how often deadlines are checked
                          max_request_header_size=limits.max_head, max_request_body_size=largest_body + 1,
                          asyncore_use_poll=True)  # select() fails past descriptor 1023
        self.adj = adj
        self.map: dict = {}
        self.client_pool = _Pool("client")
        self.peer_pool = _Pool("peer")
        self.listeners: list[_Listener] = []
        try:
            for sockinfo in adj.listen:
                self.listeners.append(_Listener(self, app, self.map, adj, sockinfo))
        except BaseException:
            wasyncore.close_all(self.map, ignore_all=True)
            raise
        self.port = int(self.listeners[0].effective_port)
        self.client_pool.set_thread_count(limits.client_threads)
        self.peer_pool.set_thread_count(limits.peer_threads)

    def channels(self) -> list[_Channel]:
        return [c for listener in self.listeners for c in list(listener.active_channels.values())]

    def admit(self, newcomer: _Channel) -> None:
        """Keep at most client_connections client connections: close the one that has waited
        longest for a request. If every other one is being served, the newcomer stays only for
        a node-to-node request (waitress's own connection limit bounds how many try)."""
        limit = self.limits.client_connections
        if sum(len(listener.active_channels) for listener in self.listeners) <= limit:
            return
        clients = [c for c in self.channels() if c.counts_as_client()]
        if len(clients) <= limit:
            return
        waiting = [c for c in clients if c.evictable() and not c.provisional and c is not newcomer]
        if waiting:
            min(waiting, key=lambda c: c.waiting_since).evict()
        else:
            newcomer.provisional = True
        now = time.monotonic()
        if now - self.last_overflow_log > OVERFLOW_LOG_SECONDS:
            self.last_overflow_log = now
            log.warning("%d client connections open (the limit): closing the ones that wait longest "
                        "for a request", limit)

    def log_limited(self, message: str) -> None:
        now = time.monotonic()
        if now - self.last_tls_log > OVERFLOW_LOG_SECONDS:
            self.last_tls_log = now
            log.warning("%s", message)

    # ------------------------------------------------------------------ running
    def serve_forever(self) -> None:
        """Runs the I/O loop until stop(), then drains and closes."""
        self.io_thread = threading.get_ident()
        try:
            while not self.stopping:
                wasyncore.poll2(self.adj.asyncore_loop_timeout, self.map)
            self._drain()
        finally:
            self.close()

    def stop(self) -> None:
        """Ask serve_forever to return. Safe from a signal handler and from any thread."""
        self.stopping = True
        if self.closed:  # a closed trigger's descriptor number may belong to another file by now
            return
        for listener in self.listeners:
            try:
                listener.pull_trigger()
            except OSError:
                pass  # closed already

    def _drain(self) -> None:
        for listener in self.listeners:
            wasyncore.dispatcher.close(listener)  # stop accepting; its trigger stays open
        self.draining = True
        if self.on_stop is not None:
            self.on_stop()
        deadline = time.monotonic() + self.limits.drain_timeout
        while (_busy(self.client_pool) or _busy(self.peer_pool)) and time.monotonic() < deadline:
            wasyncore.poll2(0.05, self.map)

    def close(self) -> None:
        """Closes every connection and the listening sockets; idempotent."""
        if self.closed:
            return
        self.closed = True
        self.stopping = True
        for pool in (self.client_pool, self.peer_pool):
            pool.shutdown(timeout=0.2)
        idle = not (self.client_pool.threads or self.peer_pool.threads)
        for channel in self.channels():
            channel.close_now()
        for listener in self.listeners:
            wasyncore.dispatcher.close(listener)
            if idle:  # a worker still running may yet wake the loop through its trigger
                listener.trigger.close()

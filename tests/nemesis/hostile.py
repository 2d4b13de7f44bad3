"""Hostile requests mixed into the traffic, and the oracle for their answers.

Each probe is one request a careless or malicious client (or a web page in a browser) can
send: deep JSON, huge numbers, odd encodings and content types, chunked and oversized
bodies, a body length declared but never sent, garbage and oversized request heads, foreign
``Origin`` and ``Host`` headers, forged node-to-node messages from a foreign origin, URL
tricks in task ids, keys that do not fit in a path segment, ``HEAD /events`` bursts, and slow
clients that send one header line every couple of seconds.

Every probe declares what it may do:

  refuse      it must not take effect: a 4xx JSON error ``{"error", "message"}`` or a
              documented 503 (README's error table), nothing else
  may_accept  a legitimate request in an unusual form: any 2xx (what it wrote must then
              read back exactly: it is in the history, so the lost-write and
              linearizability checkers hold it to that), a 4xx JSON error or a documented
              503
  any         anything but a 5xx other than a documented 503 (and a 4xx must be JSON)

No answer at all counts too, unless the node was stopped meanwhile (or the probe is a slow
client, which the server may cut off). Every key, title and description a probe carries
contains ``hostile``; at the end no replica may hold such data unless a ``may_accept`` probe
carrying it may have taken effect: answered 2xx, ``503 unknown_outcome`` or nothing
(``check_hostile_data``). Node processes that die are reported by ``cluster.ExitWatch``.

``SlowLoris`` is the nemesis's slowloris fault: more unfinished request heads than a node takes
clients, after which an ordinary request must still be answered (``probe_under_attack``).
"""
from __future__ import annotations

import functools
import http.client
import json
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import quote, urlsplit

from .cluster import HttpResult, get_status, http_call
from .history import FAIL, Op
from .workload import MAX_BODY, classify, normalize_result, shrink

MARK = "hostile"
EVIL_ORIGIN = "http://evil.example"
README = Path(__file__).resolve().parents[2] / "README.md"
KNOWN_503 = ("no_leader", "unknown_outcome", "not_committed")


def documented_503_codes(readme: Path = README) -> set:
    """The ``error`` codes README's error table lists with status 503."""
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return set(KNOWN_503)
    codes = set()
    for cell in re.findall(r"^\|\s*503\s*\|([^|\n]*)\|", text, re.M):
        codes.update(re.findall(r"`([a-z_]+)`", cell))      # a row may list several
    return codes or set(KNOWN_503)


@dataclass
class Probe:
    name: str
    expect: str                           # refuse | may_accept | any
    method: str = "GET"
    path: str = "/"
    headers: list = field(default_factory=list)
    body: Optional[bytes] = None
    chunked: bool = False
    declared_length: Optional[int] = None  # announce this Content-Length, send no body
    raw: Optional[bytes] = None           # the whole request, as is
    slow: float = 0.0                     # seconds between header lines
    stream: bool = False                  # read the status only (event streams)
    timeout: float = 12.0
    record: Optional[tuple] = None        # (f, key, value) of the history op it is
    carries: tuple = ()                   # hostile strings it would store if applied
    readback: Optional[str] = None        # after a 2xx: GET this path, expect the value


@dataclass
class Answer:
    sent: bool
    status: Optional[int] = None
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    error: Optional[str] = None
    elapsed: float = 0.0

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def short(self) -> str:
        if self.status is None:
            return f"no answer ({self.error})"
        text = self.body[:120].decode("utf-8", "replace").replace("\n", " ")
        return f"{self.status} {self.headers.get('content-type', '')} {text!r}"


def _head(p: Probe, host: str) -> list:
    lines = [f"{p.method} {p.path} HTTP/1.1"]
    names = {k.lower() for k, _ in p.headers}
    if "host" not in names:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in p.headers]
    lines.append("Connection: close")
    if p.chunked:
        lines.append("Transfer-Encoding: chunked")
    elif p.declared_length is not None:
        lines.append(f"Content-Length: {p.declared_length}")
    elif p.body is not None:
        lines.append(f"Content-Length: {len(p.body)}")
    return lines


def _chunks(body: bytes, size: int = 64 * 1024) -> bytes:
    out = bytearray()
    for i in range(0, len(body), size):
        part = body[i:i + size]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


def send(base_url: str, p: Probe, stop: Optional[threading.Event] = None,
         connect_timeout: float = 1.0) -> Answer:
    """Send ``p`` on a fresh connection; read the answer (status only for streams)."""
    u = urlsplit(base_url)
    t0 = time.monotonic()
    try:
        sock = socket.create_connection((u.hostname, u.port), timeout=connect_timeout)
    except OSError as e:
        return Answer(False, error=f"connect: {type(e).__name__}")
    try:
        sock.settimeout(p.timeout)
        try:
            if p.raw is not None:
                sock.sendall(p.raw)
            else:
                lines = _head(p, u.netloc)
                if p.slow:
                    for line in lines:
                        sock.sendall(line.encode("latin-1") + b"\r\n")
                        if stop is not None and stop.wait(p.slow):
                            return Answer(True, error="stopped")
                    sock.sendall(b"\r\n")
                else:
                    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
                if p.body is not None and p.declared_length is None:
                    sock.sendall(_chunks(p.body) if p.chunked else p.body)
        except OSError as e:       # the server may answer and close before taking it all
            send_error = f"{type(e).__name__} while sending"
        else:
            send_error = None
        resp = http.client.HTTPResponse(sock, method=p.method)
        try:
            resp.begin()
            headers = {k.lower(): v for k, v in resp.getheaders()}
            body = b"" if p.stream and resp.status == 200 else resp.read(4 * MAX_BODY)
        except socket.timeout:
            return Answer(True, error=send_error or "timeout",
                          elapsed=time.monotonic() - t0)
        except (OSError, http.client.HTTPException) as e:
            return Answer(True, error=send_error or f"{type(e).__name__}: {e}"[:100],
                          elapsed=time.monotonic() - t0)
        return Answer(True, resp.status, headers, body, elapsed=time.monotonic() - t0)
    finally:
        sock.close()


def judge(p: Probe, a: Answer, documented_503: set) -> Optional[str]:
    """What is wrong with answer ``a`` to probe ``p`` (None: nothing). A probe that got no
    answer is judged here as such; the caller excuses it when the node was stopped."""
    if not a.sent:
        return None
    if a.status is None:
        if p.slow:
            return None                    # cut off: what a server should do to them
        return f"no answer within {p.timeout:g}s ({a.error})"
    body = a.json()
    is_error = (isinstance(body, dict) and isinstance(body.get("error"), str)
                and isinstance(body.get("message"), str))
    if a.status >= 500:
        if a.status == 503 and (p.method == "HEAD" or  # no body to tell the code
                                is_error and body["error"] in documented_503):
            return None
        return f"answered {a.short()}: a 5xx other than a documented 503"
    if a.status >= 400:
        if p.method == "HEAD" or is_error:
            return None
        return f"answered {a.short()}: a 4xx without the JSON error body"
    if p.expect == "refuse":
        return f"answered {a.short()}: it must be refused"
    if a.status >= 300 and p.expect != "any":
        return f"answered {a.short()}"
    return None


# ------------------------------------------------------------------------------ probes

def _json(value) -> bytes:
    return json.dumps(value).encode()


def _nested(depth: int, leaf="x"):
    value = [leaf]
    for _ in range(depth - 1):
        value = [value]
    return value


def _nested_text(depth: int) -> bytes:
    return b"[" * depth + b'"x"' + b"]" * depth


JSON = ("Content-Type", "application/json")
QUICK = ("text_plain_set", "text_plain_task", "form_set", "multipart_task",
         "no_content_type_set", "cross_origin_json_set", "cross_origin_text_task",
         "cross_origin_delete", "cross_origin_replicate", "foreign_host_set",
         "foreign_host_get", "invalid_utf8_set", "bom_set", "charset_set", "chunked_set",
         "chunked_oversize", "oversize_body", "declared_huge", "garbage_request",
         "huge_header", "huge_int_set", "inf_number_set", "huge_int_completed",
         "deep_json_set", "deep_json_task", "deeper_json_set", "odd_key_set",
         "put_id_query", "delete_id_fragment", "get_dotdot", "put_dotdot", "head_events")


def make_probe(name: str, tag: str, task_id: Optional[str] = None,
               follower: Optional[dict] = None) -> Optional[Probe]:
    """The probe ``name``; ``tag`` makes its keys and titles unique. Probes on an existing
    task need ``task_id``; the forged replication needs ``follower`` (its /status). Returns
    None when what the probe needs is missing."""
    key = f"{MARK}-{tag}-{name}"
    value = f"{MARK}-value-{tag}"
    title = f"{MARK}-{tag}-{name}"

    def set_probe(expect, body_value, headers, body=None, **kw):
        return Probe(name, expect, "POST", "/set", headers,
                     body if body is not None else _json({"key": key, "value": body_value}),
                     record=("set", key, body_value), carries=(key,), **kw)

    def task_probe(expect, headers, body=None, **kw):
        fields = {"title": title}
        return Probe(name, expect, "POST", "/tasks", headers,
                     body if body is not None else _json(fields),
                     record=("create", None, {"title": title, "description": ""}),
                     carries=(title,), **kw)

    if name == "text_plain_set":
        return set_probe("refuse", value, [("Content-Type", "text/plain")])
    if name == "text_plain_task":
        return task_probe("refuse", [("Content-Type", "text/plain;charset=UTF-8")])
    if name == "form_set":
        return set_probe("refuse", value,
                         [("Content-Type", "application/x-www-form-urlencoded")])
    if name == "multipart_task":
        return task_probe("refuse", [("Content-Type", "multipart/form-data; boundary=x")])
    if name == "no_content_type_set":
        return set_probe("refuse", value, [])
    if name == "cross_origin_json_set":
        return set_probe("refuse", value, [JSON, ("Origin", EVIL_ORIGIN)])
    if name == "cross_origin_text_task":
        return task_probe("refuse", [("Content-Type", "text/plain"), ("Origin", EVIL_ORIGIN)])
    if name == "cross_origin_delete":
        if task_id is None:
            return None
        return Probe(name, "refuse", "DELETE", f"/tasks/{task_id}", [("Origin", EVIL_ORIGIN)])
    if name == "cross_origin_replicate":
        if not follower or follower.get("role") != "follower" or not follower.get("leader"):
            return None
        term = follower["term"]
        msg = {"type": "append_req", "from": follower["leader"], "term": term,
               "prev_index": follower["last_log_index"], "prev_term": term,
               "commit": follower["commit_index"], "seq": 1,
               "entries": [[term, {"op": "set", "key": key, "value": "forged"}]]}
        # What a page on another origin can send with fetch(..., {mode: "no-cors"}).
        return Probe(name, "refuse", "POST", "/replicate",
                     [("Content-Type", "text/plain"), ("Origin", EVIL_ORIGIN)], _json(msg),
                     carries=(key,))
    if name == "foreign_host_set":
        return set_probe("refuse", value, [JSON, ("Host", "evil.example")])
    if name == "foreign_host_get":
        return Probe(name, "refuse", "GET", "/jobs", [("Host", "evil.example")])
    if name == "invalid_utf8_set":
        body = b'{"key": "' + key.encode() + b'", "value": "\xff\xfe' + value.encode() + b'"}'
        return set_probe("refuse", value, [JSON], body=body)
    if name == "bom_set":
        return set_probe("may_accept", value, [JSON],
                         body=b"\xef\xbb\xbf" + _json({"key": key, "value": value}))
    if name == "charset_set":
        return set_probe("may_accept", value, [("Content-Type", "application/json; charset=utf-8")])
    if name == "chunked_set":
        return set_probe("may_accept", value, [JSON], chunked=True)
    if name == "chunked_oversize":
        return set_probe("refuse", value + "x" * (MAX_BODY + 500_000), [JSON], chunked=True)
    if name == "oversize_body":
        return set_probe("refuse", value + "x" * (MAX_BODY + 500_000), [JSON])
    if name == "declared_huge":
        # A 200 MB body announced and never sent: it must be refused by its declared
        # length, at once.
        return Probe(name, "refuse", "POST", "/set", [JSON], b"", declared_length=200_000_000,
                     timeout=3.0)
    if name == "garbage_request":
        return Probe(name, "refuse", raw=b"THIS IS NOT HTTP\r\n\r\n", timeout=5.0)
    if name == "huge_header":
        return Probe(name, "refuse", "GET", "/status", [("X-Filler", "a" * 300_000)])
    if name == "huge_int_set":
        return set_probe("may_accept", 18446744073709551616, [JSON])
    if name == "inf_number_set":
        body = b'{"key": "' + key.encode() + b'", "value": 1e400}'
        return set_probe("may_accept", float("inf"), [JSON], body=body)
    if name == "huge_int_completed":
        return task_probe("refuse", [JSON],
                          body=_json({"title": title, "completed": 18446744073709551616}))
    if name == "deep_json_set":
        return set_probe("may_accept", _nested(300, value), [JSON])
    if name == "deep_json_task":
        return task_probe("refuse", [JSON], body=_json({"title": title,
                                                         "description": _nested(300)}))
    if name == "deeper_json_set":
        body = b'{"key": "' + key.encode() + b'", "value": ' + _nested_text(2000) + b"}"
        return Probe(name, "refuse", "POST", "/set", [JSON], body, carries=(key,))
    if name == "odd_key_set":
        odd = f"{key}/a?b#c%d e\u00e9"
        p = Probe(name, "may_accept", "POST", "/set", [JSON], _json({"key": odd, "value": value}),
                  record=("set", odd, value), carries=(odd,))
        p.readback = f"/jobs/{quote(odd, safe='')}"
        return p
    if name in ("put_id_query", "delete_id_fragment", "put_dotdot"):
        if task_id is None:
            return None
        desc = _json({"description": f"{MARK}-{tag}-{name}"})
        if name == "put_id_query":
            return Probe(name, "refuse", "PUT", f"/tasks/{task_id}%3Fx=1", [JSON], desc,
                         carries=(f"{MARK}-{tag}-{name}",))
        if name == "put_dotdot":
            return Probe(name, "refuse", "PUT", f"/tasks/%2e%2e/tasks/{task_id}", [JSON], desc,
                         carries=(f"{MARK}-{tag}-{name}",))
        return Probe(name, "refuse", "DELETE", f"/tasks/{task_id}%23junk")
    if name == "get_dotdot":
        return Probe(name, "refuse", "GET", "/tasks/%2e%2e")
    if name == "head_events":
        return Probe(name, "any", "HEAD", "/events")
    raise ValueError(name)


def slow_probe(name: str, tag: str, gap: float) -> Probe:
    """A slow client: a refused write, or a status read, one header line per ``gap``."""
    filler = [("X-Slow", "." * 20)]
    if name == "slow_text_plain_set":
        key = f"{MARK}-{tag}-{name}"
        value = f"{MARK}-value-{tag}"
        return Probe(name, "refuse", "POST", "/set", [("Content-Type", "text/plain"), *filler],
                     _json({"key": key, "value": value}), slow=gap, timeout=30.0,
                     record=("set", key, value), carries=(key,))
    return Probe(name, "any", "GET", "/status", filler, slow=gap, timeout=30.0)


SLOW = ("slow_text_plain_set", "slow_status")


# ------------------------------------------------------------------------------ traffic

@dataclass
class Sent:
    t: float
    node: str
    probe: Probe
    answer: Answer
    problem: Optional[str]


class HostileTraffic:
    """Two threads next to the workload: one sends quick probes to random nodes, the other
    keeps a few slow clients going. Write probes are recorded in the history (processes
    1000 and 1001) like any client write."""

    HEAD_BURST = 20                    # more than the server's 16 event-stream slots
    PROBLEMS_SHOWN = 3                 # of each probe's wrong answers, in the report
    EVENTS_COOLDOWN = 11.0             # an abandoned stream holds its slot until the next
                                       # keep-alive write (every 10 s)

    def __init__(self, cluster, workload, history, seed: int, slow_clients: int = 4,
                 slow_gap: float = 2.0, think: float = 0.05):
        self.cluster = cluster
        self.wl = workload
        self.history = history
        self.rng = random.Random(f"{seed}/hostile")
        self.slow_rng = random.Random(f"{seed}/hostile/slow")
        self.slow_clients = slow_clients
        self.slow_gap = slow_gap
        self.think = think
        self.documented_503 = documented_503_codes()
        self.stop_event = threading.Event()
        self.sent: list = []
        self.problems: list = []
        self.problem_counts: dict = {}     # probe name -> wrong answers
        self.accepted_marks: set = set()   # hostile strings that may legitimately be stored
        self._n = 0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._guard, args=(self._quick_loop,),
                                         name="hostile-quick", daemon=True),
                        threading.Thread(target=self._guard, args=(self._slow_loop,),
                                         name="hostile-slow", daemon=True)]
        # The event-slot leak needs a burst: one per node at the start, side by side.
        self.threads += [threading.Thread(target=self._guard,
                                          args=(functools.partial(self._events_probe, i),),
                                          name=f"hostile-events-{i}", daemon=True)
                         for i in range(cluster.n)]
        self.error: Optional[str] = None

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self, join_timeout: float = 40.0):
        self.stop_event.set()
        deadline = time.monotonic() + join_timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        stuck = [t.name for t in self.threads if t.is_alive()]
        if stuck:
            raise RuntimeError(f"hostile threads did not stop: {stuck}")

    def _guard(self, loop):
        try:
            loop()
        except Exception:
            import traceback
            self.error = traceback.format_exc()

    def _tag(self) -> str:
        with self._lock:
            self._n += 1
            return str(self._n)

    # -------------------------------------------------------------- one probe
    def fire(self, node_index: int, p: Probe, process: int) -> Sent:
        proc = self.cluster.node(node_index)
        url = self.cluster.urls[node_index]
        starts = proc.starts
        invoke = self.history.now()
        a = send(url, p, self.stop_event)
        complete = self.history.now()
        problem = judge(p, a, self.documented_503)
        if a.error == "stopped":
            problem = None
        elif problem and a.status is None and (proc.starts != starts or not proc.alive()):
            problem = None                 # the node was stopped under it
        if p.record is not None and a.error != "stopped":
            self._record(p, a, url, invoke, complete, process)
        res = HttpResult(a.sent, a.status, a.json() if a.status is not None else None, a.error)
        if p.expect == "may_accept" and classify(res, "set", read=False)[0] != FAIL:
            with self._lock:
                self.accepted_marks.update(p.carries)
        if problem is None and p.readback and a.status is not None and 200 <= a.status < 300:
            problem = self._readback(url, p)
        sent = Sent(invoke, url, p, a, problem)
        with self._lock:
            self.sent.append(sent)
            if problem:
                self._problem(p.name, f"t={invoke:.3f} {p.name} {p.method} {p.path[:60]} "
                                      f"-> {url}: {problem}")
        return sent

    def _problem(self, kind: str, text: str):
        """Keeps the first PROBLEMS_SHOWN of each kind; counts them all (``problem_counts``)."""
        self.problem_counts[kind] = self.problem_counts.get(kind, 0) + 1
        if self.problem_counts[kind] <= self.PROBLEMS_SHOWN:
            self.problems.append(text)

    def _record(self, p: Probe, a: Answer, url: str, invoke: float, complete: float,
                process: int):
        f, key, value = p.record
        res = HttpResult(a.sent, a.status, a.json() if a.status is not None else None,
                         a.error)
        op = Op(id=self.history.new_id(), process=process, f=f, key=key, value=shrink(value),
                node=url, invoke=invoke, complete=complete, status=a.status)
        op.outcome, op.error = classify(res, f, read=False)
        if op.outcome == "ok":
            op.result = normalize_result(f, res)
        self.history.record(op)

    def _readback(self, url: str, p: Probe) -> Optional[str]:
        r = http_call(url, "GET", p.readback, timeout=8.0)
        want = p.record[2]
        if r.status == 200 and isinstance(r.body, dict) and r.body.get("value") == want:
            return None
        if r.status == 503:
            return None                    # no leader right now: nothing learned
        return (f"the write was acknowledged but GET {p.readback} answered {r.status} "
                f"{str(r.body)[:120]}: every storable key must be readable")

    # -------------------------------------------------------------- loops
    def _random_node(self, rng) -> int:
        return rng.randrange(self.cluster.n)

    def _quick_loop(self):
        rng = self.rng
        while not self.stop_event.is_set():
            name = rng.choice(QUICK)
            i = self._random_node(rng)
            follower = None
            if name == "cross_origin_replicate":
                follower = get_status(self.cluster.urls[i])
            p = make_probe(name, self._tag(), self.wl.tasks.pick(rng), follower)
            if p is not None:
                self.fire(i, p, 1000)
            self.stop_event.wait(rng.uniform(0, self.think))

    def _events_probe(self, i: int):
        """HEAD /events HEAD_BURST times, then GET /events must get a stream slot."""
        for _ in range(self.HEAD_BURST):
            s = self.fire(i, make_probe("head_events", self._tag()), 1000)
            if s.answer.status is None or self.stop_event.is_set():
                return
        # Streams that others opened and closed hold their slots until the server next
        # writes to them (a keep-alive within seconds); slots HEAD leaked are never freed.
        deadline = time.monotonic() + self.EVENTS_COOLDOWN
        p = Probe("events_after_heads", "any", "GET", "/events", stream=True)
        s = self.fire(i, p, 1000)
        while True:
            body = s.answer.json() if s.answer.status == 503 else None
            full = isinstance(body, dict) and body.get("error") == "too_many_streams"
            if not full or time.monotonic() > deadline or self.stop_event.wait(0.5):
                break
            s = Sent(self.history.now(), s.node, p, send(s.node, p), None)   # not judged again
        if full and time.monotonic() > deadline:
            with self._lock:
                self._problem("events_leak", 
                    f"t={s.t:.3f} GET /events -> {s.node} answered 503 too_many_streams "
                    f"for {self.EVENTS_COOLDOWN:g} s after {self.HEAD_BURST} HEAD /events, "
                    f"with no stream open: "
                    f"HEAD requests leak event-stream slots")

    def _slow_loop(self):
        """Batches of ``slow_clients`` concurrent slow requests to random nodes."""
        rng = self.slow_rng
        while not self.stop_event.is_set():
            batch = []
            for _ in range(self.slow_clients):
                p = slow_probe(rng.choice(SLOW), self._tag(), self.slow_gap)
                t = threading.Thread(target=self.fire, args=(self._random_node(rng), p, 1001),
                                     daemon=True)
                t.start()
                batch.append(t)
            for t in batch:
                t.join()

    # -------------------------------------------------------------- summary
    def counts(self) -> dict:
        out: dict = {}
        for s in self.sent:
            status = str(s.answer.status) if s.answer.status is not None else (
                "unsent" if not s.answer.sent else "none")
            out.setdefault(s.probe.name, {}).setdefault(status, 0)
            out[s.probe.name][status] += 1
        return out


def _hostile_strings(jobs: dict, tasks: list) -> list:
    found = []
    for k, v in (jobs or {}).items():
        if MARK in str(k) or MARK in json.dumps(v):
            found.append((f"key {k!r}", k))
    for t in tasks or []:
        for f in ("title", "description"):
            if MARK in str(t.get(f)):
                found.append((f"task {t.get('id')} {f} {t.get(f)!r}", t.get(f)))
    return found


def check_hostile_data(replicas: dict, accepted: set) -> list:
    """Problems: hostile data on any replica that no accepted ``may_accept`` probe carried.
    ``replicas``: {name: (jobs dict, tasks list)}."""
    problems = []
    for name, (jobs, tasks) in sorted(replicas.items()):
        for what, mark in _hostile_strings(jobs, tasks):
            if mark not in accepted:
                problems.append(f"{name} holds {what}, written by a hostile request that "
                                f"must not have taken effect")
    return problems


class SlowLoris:
    """``count`` connections to one node that each sent a request line and then trickle one
    header line every ``gap`` seconds, never finishing the head (more connections than a
    node accepts clients: 500). A server must keep answering others: cut slow heads off,
    evict waiting clients for new ones, or answer a documented 503."""

    def __init__(self, url: str, count: int, gap: float = 2.0):
        self.url, self.count, self.gap = url, count, gap
        self.socks: list = []
        self.cut_off = 0                   # connections the server closed
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._trickle, name="slowloris", daemon=True)

    def open(self) -> int:
        u = urlsplit(self.url)
        for _ in range(self.count):
            try:
                s = socket.create_connection((u.hostname, u.port), timeout=1.0)
                s.sendall(f"GET /status HTTP/1.1\r\nHost: {u.netloc}\r\n".encode())
            except OSError:
                break
            self.socks.append(s)
        self.thread.start()
        return len(self.socks)

    def _trickle(self):
        while not self.stop_event.wait(self.gap):
            alive = []
            for s in self.socks:
                try:
                    s.sendall(b"X-Slow: .\r\n")
                    alive.append(s)
                except OSError:
                    self.cut_off += 1
                    s.close()
            self.socks = alive

    def close(self):
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(5)
        for s in self.socks:
            s.close()
        self.socks = []


def probe_under_attack(url: str, documented_503: set, timeout: float = 8.0) -> Optional[str]:
    """A client request to a node under a slow-client attack must still get an answer."""
    p = Probe("request_during_slowloris", "any", "GET", "/status", timeout=timeout)
    a = send(url, p, connect_timeout=2.0)
    if not a.sent:
        return f"could not even connect ({a.error})"
    return judge(p, a, documented_503)

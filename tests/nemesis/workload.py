"""Concurrent clients that record every operation to a ``History``.

Each client is a thread with its own seeded ``random.Random`` (the sequence of operations
it picks is a function of the seed; the interleaving is not). It sends one request at a
time on a fresh connection to a random node (dead and paused ones included), and records
invoke time, completion time and outcome:

  ok       2xx (and 404 for reads: an answer that the thing is absent)
  fail     definitely without effect: connect refused/timed out (never sent), 4xx, a 404
           answer to update/delete, 503 ``no_leader`` or ``not_committed`` (the contract
           says neither was applied)
  unknown  anything else once the request was sent: read timeout, reset, 503
           ``unknown_outcome``, other 5xx

Every write carries an ``Idempotency-Key`` unique to the operation. A write whose answer is
not definite (5xx, a timeout, a reset, a refused connection) is retried with the same key on
another node, with a short back-off, for up to ``retry_for`` seconds: the cluster applies it
at most once and every attempt that gets an answer gets the same one. The operation is
recorded once, from its first invoke to its first definite answer, with every definite answer
(``answers``) for the checkers to compare: a retried write, and a ``repeat_share`` of the
others, is sent once more after its answer, to another node, and must get the same answer. If no attempt got a definite answer the outcome
is unknown, unless no attempt can have been applied (all never sent, ``no_leader`` or
``not_committed``): then it is fail.

Operation mix: ``/set`` on a small key space (so writes contend), ``GET /jobs/<k>`` and
``GET /jobs`` reads (linearizable and stale), task create (unique title per create),
update (unique description per update) and delete on a small pool of recent tasks, and
``GET /tasks/<id>`` / ``GET /tasks`` reads (linearizable and stale). All values written are
unique, which keeps the linearizability search small.

``RETRY_MIX`` adds conditional writes: ``update_if`` and ``delete_if`` send ``If-Match``
with the version the client last saw of the task (from any answer), so clients race on
versions and most lose with 412.

``LARGE_MIX`` adds large entries: ``/set`` values of 900,000 characters or exactly filling
the 1 MiB body cap, and tasks created or updated with 10,000-character descriptions (the
cap), on the same keys and tasks as the small writes. Every string longer than
``SHRINK_OVER`` is recorded as its length and SHA-256 (``shrink``), in arguments and results
alike, so the checkers compare exact contents without megabytes per history line.
"""
from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from typing import Optional

from .cluster import HttpResult, http_call
from .history import FAIL, OK, UNKNOWN, History, Op

# (name, weight)
DEFAULT_MIX = (
    ("set", 20), ("get", 10), ("get_stale", 6), ("get_all", 3), ("get_all_stale", 2),
    ("create", 12), ("update", 12), ("delete", 4),
    ("read_task", 8), ("read_task_stale", 4), ("list", 3), ("list_stale", 2),
)
# Lists are rarer than in DEFAULT_MIX: each returns every task, 10 KB apiece.
LARGE_MIX = (
    ("set", 20), ("get", 10), ("get_stale", 6), ("get_all", 3), ("get_all_stale", 2),
    ("create", 12), ("update", 12), ("delete", 4),
    ("read_task", 8), ("read_task_stale", 4), ("list", 1), ("list_stale", 1),
    ("set_big", 3), ("create_big", 6), ("update_big", 6),
)
# Conditional writes contend on few hot tasks; reads keep the version the clients know fresh.
RETRY_MIX = (
    ("set", 10), ("get", 6), ("create", 12), ("update", 6), ("update_if", 14), ("delete_if", 4),
    ("delete", 2), ("read_task", 10), ("list", 2),
)
DEFINITE_503 = ("no_leader", "not_committed")
MAX_BODY = 1024 * 1024            # the API's body cap
MAX_DESCRIPTION = 10_000          # the API's description cap
BIG_VALUE = 900_000
SHRINK_OVER = 512


def shrink(value):
    """``value`` with every string longer than SHRINK_OVER replaced by its length and
    SHA-256 (a different content gives a different stand-in)."""
    if isinstance(value, str):
        if len(value) <= SHRINK_OVER:
            return value
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:24]
        return f"<{len(value)} chars sha256:{digest}>"
    if isinstance(value, dict):
        return {k: shrink(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shrink(v) for v in value]
    return value


def filler(tag: str, length: int) -> str:
    """A unique string of exactly ``length`` characters that starts with ``tag``."""
    return (tag + ":" + "x" * length)[:length]


def max_set_value_length(key: str) -> int:
    """The value length that makes ``http_call``'s body for /set exactly MAX_BODY bytes."""
    return MAX_BODY - len(json.dumps({"key": key, "value": ""}))


def definite(res: HttpResult) -> bool:
    """An answer that says what happened (2xx, 4xx), as opposed to a 5xx or no answer."""
    return res.status is not None and res.status < 500


def classify(res: HttpResult, f: str, read: bool) -> tuple:
    """(outcome, error text) for one answer."""
    if not res.sent:
        return FAIL, res.error
    if res.status is None:
        return UNKNOWN, res.error
    code = msg = None
    if isinstance(res.body, dict):
        code, msg = res.body.get("error"), res.body.get("message")
    if 200 <= res.status < 300:
        return OK, None
    text = f"{code}: {msg}"[:100] if msg else str(code)
    if res.status == 404:
        if read:
            return OK, None
        return FAIL, code or "not_found"
    if 400 <= res.status < 500:
        return FAIL, f"{res.status} {text}"
    if res.status == 503 and code in DEFINITE_503:
        return FAIL, text
    return UNKNOWN, f"{res.status} {text}"


class TaskPool:
    """Ids of tasks whose create was acknowledged, shared by all clients, with the newest
    version any answer showed of each."""

    def __init__(self, hot: int = 6):
        self._ids: list = []
        self._versions: dict = {}
        self._lock = threading.Lock()
        self.hot = hot

    def saw(self, task) -> None:
        if isinstance(task, dict) and isinstance(task.get("version"), int) and "id" in task:
            with self._lock:
                tid = str(task["id"])
                self._versions[tid] = max(self._versions.get(tid, 0), task["version"])

    def version(self, tid) -> int:
        with self._lock:
            return self._versions.get(tid, 1)

    def add(self, tid):
        with self._lock:
            self._ids.append(tid)

    def pick(self, rng: random.Random) -> Optional[str]:
        with self._lock:
            if not self._ids:
                return None
            if rng.random() < 0.85:
                return rng.choice(self._ids[-self.hot:])
            return rng.choice(self._ids)

    def discard(self, tid):
        with self._lock:
            if tid in self._ids:
                self._ids.remove(tid)

    def __len__(self):
        return len(self._ids)


class Client(threading.Thread):
    def __init__(self, wl: "Workload", process: int):
        super().__init__(name=f"nemesis-client-{process}", daemon=True)
        self.wl = wl
        self.process = process
        self.rng = random.Random(f"{wl.seed}/client/{process}")
        # Retries depend on the faults met: their own generator keeps `rng`'s picks seeded.
        self.retry_rng = random.Random(f"{wl.seed}/retry/{process}")
        self.n = 0
        self.suspect: dict = {}      # node -> monotonic time until which we avoid it
        self.error: Optional[BaseException] = None

    def run(self):
        try:
            while not self.wl.stop_event.is_set():
                self.one()
                self.wl.stop_event.wait(self.rng.uniform(0, self.wl.think))
        except BaseException as e:   # recorded and re-raised by Workload.stop()
            self.error = e

    def pick_node(self) -> str:
        now = time.monotonic()
        urls = self.wl.urls
        good = [u for u in urls if self.suspect.get(u, 0) <= now]
        return self.rng.choice(good or urls)

    def one(self):
        wl, rng = self.wl, self.rng
        self.n += 1
        name = rng.choices(wl.mix_names, weights=wl.mix_weights)[0]
        stale = name.endswith("_stale")
        f = name[:-6] if stale else name
        node = self.pick_node()
        q = "?consistency=stale" if stale else ""
        tag = f"{self.process}:{self.n}"
        key = value = expected = None
        if f == "set":
            key = rng.choice(wl.keys)
            value = f"v{tag}"
            req = ("POST", "/set", {"key": key, "value": value})
        elif f == "get":
            key = rng.choice(wl.keys)
            req = ("GET", f"/jobs/{key}{q}", None)
        elif f == "get_all":
            req = ("GET", f"/jobs{q}", None)
        elif f == "set_big":
            f, key = "set", rng.choice(wl.keys)
            size = BIG_VALUE if rng.random() < 0.5 else max_set_value_length(key)
            value = filler(f"v{tag}", size)
            req = ("POST", "/set", {"key": key, "value": value})
        elif f == "create":
            value = {"title": f"t{tag}", "description": f"d{tag}"}
            req = ("POST", "/tasks", dict(value))
        elif f == "create_big":
            f = "create"
            value = {"title": f"t{tag}", "description": filler(f"d{tag}", MAX_DESCRIPTION)}
            req = ("POST", "/tasks", dict(value))
        elif f == "update_big":
            key = wl.tasks.pick(rng)
            if key is None:
                f = "create"
                value = {"title": f"t{tag}", "description": filler(f"d{tag}", MAX_DESCRIPTION)}
                req = ("POST", "/tasks", dict(value))
            else:
                f = "update"
                value = {"description": filler(f"u{tag}", MAX_DESCRIPTION)}
                req = ("PUT", f"/tasks/{key}", dict(value))
        elif f in ("update", "delete", "read_task", "update_if", "delete_if"):
            key = wl.tasks.pick(rng)
            if key is not None and f.endswith("_if"):
                f, expected = f[:-3], wl.tasks.version(key)
            if key is None:              # nothing created yet: create instead
                f, stale, q = "create", False, ""
                value = {"title": f"t{tag}", "description": f"d{tag}"}
                req = ("POST", "/tasks", dict(value))
            elif f == "update":
                value = {"description": f"u{tag}"}
                req = ("PUT", f"/tasks/{key}", dict(value))
            elif f == "delete":
                req = ("DELETE", f"/tasks/{key}", None)
            else:
                req = ("GET", f"/tasks/{key}{q}", None)
        elif f == "list":
            req = ("GET", f"/tasks{q}", None)
        else:
            raise ValueError(name)
        read = f in ("get", "get_all", "read_task", "list")
        op = Op(id=wl.history.new_id(), process=self.process, f=f, key=key, value=shrink(value),
                node=node, consistency=("stale" if stale else "linearizable") if read else None,
                if_match=expected)
        headers = {}
        if not read:
            op.idem_key = headers["Idempotency-Key"] = f"{wl.seed}-{self.process}-{self.n}"
            op.answers = []
        if expected is not None:
            headers["If-Match"] = f'"{expected}"'
        op.invoke = wl.history.now()
        deadline = time.monotonic() + wl.retry_for
        maybe_applied = False
        while True:
            res = http_call(node, req[0], req[1], req[2], headers, timeout=wl.timeout)
            op.complete = wl.history.now()
            op.status = res.status
            op.outcome, op.error = classify(res, f, read)
            if res.error == "timeout" or (not res.sent):
                self.suspect[node] = time.monotonic() + wl.suspect_for
            if read:
                break
            if definite(res):
                op.answers.append([res.status, shrink(res.body)])
                break
            maybe_applied = maybe_applied or op.outcome == UNKNOWN
            if time.monotonic() >= deadline or wl.stop_event.is_set():
                if maybe_applied:
                    op.outcome = UNKNOWN
                break
            op.attempts += 1
            wl.stop_event.wait(self.retry_rng.uniform(0.05, 0.2))  # back-off before the retry
            node = self.pick_node()
        if not read and definite(res) and (op.attempts > 1 or self.retry_rng.random() < wl.repeat_share):
            # Send it once more, elsewhere: the key must bring back the same answer, not a new write.
            again = http_call(self.pick_node(), req[0], req[1], req[2], headers, timeout=wl.timeout)
            if definite(again):
                op.answers.append([again.status, shrink(again.body)])
        if op.outcome == OK:
            op.result = normalize_result(f, res)
            if f == "create" and isinstance(res.body, dict) and "id" in res.body:
                wl.tasks.add(str(res.body["id"]))
            wl.tasks.saw(res.body)
        elif res.status == 412 and isinstance(res.body, dict):
            wl.tasks.saw(res.body.get("current"))
        if f == "delete" and op.outcome != UNKNOWN and rng.random() < 0.5:
            wl.tasks.discard(key)
        wl.history.record(op)


def normalize_result(f: str, res: HttpResult):
    b = shrink(res.body)
    if f == "get":
        if res.status == 404:
            return {"found": False, "value": None}
        return {"found": True, "value": b.get("value") if isinstance(b, dict) else None}
    if f == "read_task":
        return b if res.status != 404 else None
    if f == "list":
        if isinstance(b, dict):
            return {"tasks": b.get("tasks", []), "total": b.get("total"),
                    "index": b.get("index")}
        return None
    return b


class Workload:
    def __init__(self, urls, history: History, seed: int, clients: int = 8,
                 keys: int = 5, timeout: float = 4.0, think: float = 0.02,
                 suspect_for: float = 1.0, mix=DEFAULT_MIX, retry_for: float = 6.0,
                 repeat_share: float = 0.1):
        self.urls = list(urls)
        self.history = history
        self.seed = seed
        self.keys = [f"k{i}" for i in range(keys)]
        self.timeout = timeout
        self.think = think
        self.suspect_for = suspect_for
        self.retry_for = retry_for
        self.repeat_share = repeat_share
        self.mix_names = [m[0] for m in mix]
        self.mix_weights = [m[1] for m in mix]
        self.tasks = TaskPool()
        self.stop_event = threading.Event()
        self.clients = [Client(self, p) for p in range(clients)]

    def start(self):
        for c in self.clients:
            c.start()

    def stop(self, join_timeout: float = 15.0):
        """Stops issuing; each client finishes (or gives up on) its in-flight request."""
        self.stop_event.set()
        deadline = time.monotonic() + join_timeout
        for c in self.clients:
            c.join(max(0.1, deadline - time.monotonic()))
        stuck = [c.name for c in self.clients if c.is_alive()]
        if stuck:
            raise RuntimeError(f"clients did not stop: {stuck}")
        for c in self.clients:
            if c.error is not None:
                raise c.error

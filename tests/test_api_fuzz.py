"""Property-based fuzzing of the public API against a real 3-node cluster (Hypothesis,
stateful).

Each example is a sequence of API calls, each to a random node (so followers forward):
task create/update/delete/read/list, ``/set``, ``/jobs`` and ``/jobs/<key>`` with valid and
invalid bodies, odd keys, arbitrary JSON values (deep, huge, exotic numbers and strings),
random query strings, the hostile requests of ``nemesis/hostile.py`` (foreign origins and
hosts, non-JSON content types, URL tricks, oversized and chunked bodies, forged node-to-node
messages) and generated raw requests. Properties:

  * every answer is a 2xx, a 4xx with the JSON error body ``{"error", "message"}``, or a 503
    whose code README's error table documents; a 2xx from anything but ``/`` is JSON; every
    request gets an answer;
  * no node process exits;
  * a valid write is accepted (2xx) or answered with a documented 503; an invalid or
    hostile write is refused; a write may be refused only when its value is exotic
    (depth, size, numbers beyond 64 bits, lone surrogates);
  * a model of what was acknowledged holds: a linearizable read from any node answers
    exactly what the model says; after the example, once every node has applied the same
    index, every node holds exactly the model's data, and nothing else carries the
    example's marker (a refused or hostile request never leaves data behind).

Writes answered with an undetermined outcome (``503 unknown_outcome``) make that object
unknown to the model. Every example writes under its own prefix, so examples share the
cluster without seeing each other's data; a node that died in an earlier example is
restarted before the next, so shrinking works.

Bounded for CI: ``FUZZ_EXAMPLES`` examples of at most ``FUZZ_STEPS`` steps, derandomized
(the same cases every run). Longer runs draw a random seed, which Hypothesis prints on
failure (replay with ``--hypothesis-seed=N``):

    PICKLEDB_FUZZ_EXAMPLES=500 pytest tests/test_api_fuzz.py
    PICKLEDB_FUZZ_EXAMPLES=500 PICKLEDB_FUZZ_STEPS=60 pytest tests/test_api_fuzz.py
"""
from __future__ import annotations

import functools
import json
import os
import time
import uuid
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, invariant, precondition,
                                 rule, run_state_machine_as_test)

from harness import Cluster
from nemesis.hostile import (EVIL_ORIGIN, QUICK, Probe, documented_503_codes, judge,
                             make_probe, send)

pytestmark = pytest.mark.cluster

FUZZ_EXAMPLES = int(os.environ.get("PICKLEDB_FUZZ_EXAMPLES", "0")) or None
FUZZ_STEPS = int(os.environ.get("PICKLEDB_FUZZ_STEPS", "0")) or None
CI_EXAMPLES, CI_STEPS = 150, 30
DOC_503 = documented_503_codes()
DEFINITE_503 = ("no_leader", "not_committed")      # the contract: certainly not applied
RUN = uuid.uuid4().hex[:6]
JSON_CT = ("Content-Type", "application/json")
UNKNOWN = object()            # the model does not know (a write with an unknown outcome)
MAX_TITLE, MAX_DESCRIPTION, MAX_KEY = 500, 10_000, 500

# ------------------------------------------------------------------ strategies
NODE = st.integers(0, 2)
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
plain_leaf = (st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
              | st.floats(allow_nan=False, allow_infinity=False) | text)
plain_value = st.recursive(plain_leaf, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(text, inner, max_size=4), max_leaves=10)


def nested(depth: int, leaf="x"):
    value = [leaf]
    for _ in range(depth - 1):
        value = [value]
    return value


# Values a server may refuse (bounded depth and size, exact numbers) but, if it accepts
# them, must store exactly.
exotic_value = st.one_of(
    st.integers(min_value=2**63) | st.integers(max_value=-2**63 - 1),
    st.sampled_from([2**64, 2**64 - 1, -2**63 - 1, 10**30]),
    st.integers(20, 400).map(nested),
    st.text(st.characters(categories=("Cs",)), min_size=1, max_size=3),
    st.integers(10_000, 300_000).map(lambda n: "v" * n),
)
key_suffix = st.one_of(st.from_regex(r"[a-zA-Z0-9_.-]{1,30}", fullmatch=True),
                       st.text(st.characters(blacklist_categories=("Cs",)), min_size=1,
                               max_size=30),
                       st.sampled_from(["a/b", "a/../b", "?x=1", "#frag", "%2F", "%", " ",
                                        "..", "\u00e9\u4e2d\U0001F600", "a\\b"]))
non_string = st.none() | st.booleans() | st.integers() | st.lists(st.integers(), max_size=2)
non_bool = st.sampled_from([0, 1, "true", None, 2**64, [], {}])
CREATE_INVALID = ("no_title", "blank_title", "long_title", "title_type", "long_desc",
                  "desc_type", "completed_type", "unknown_field", "not_object", "bad_json",
                  "empty", "deep")


@st.composite
def create_recipe(draw):
    kind = draw(st.sampled_from(("valid",) * 8 + CREATE_INVALID))
    params = {"suffix": draw(st.text(st.characters(blacklist_categories=("Cs",)),
                                     max_size=40))}
    if kind == "valid":
        if draw(st.booleans()):
            params["description"] = draw(text | st.just("d" * MAX_DESCRIPTION))
        if draw(st.booleans()):
            params["completed"] = draw(st.booleans())
    elif kind == "title_type":
        params["title"] = draw(non_string)
    elif kind == "desc_type":
        params["description"] = draw(non_string | st.just(nested(5)))
    elif kind == "completed_type":
        params["completed"] = draw(non_bool)
    elif kind == "unknown_field":
        params["field"] = draw(text.filter(lambda s: s not in ("title", "description",
                                                               "completed")))
    elif kind == "not_object":
        params["shape"] = draw(st.sampled_from(["list", "string", "number", "null"]))
    elif kind == "bad_json":
        params["how"] = draw(st.sampled_from(["truncated", "trailing", "nan", "single"]))
    return kind, params


def build_create(kind: str, params: dict, marker: str):
    """(body bytes, valid, title) for a create recipe; every body carries ``marker``."""
    title = f"{marker}:{params['suffix']}"[:MAX_TITLE]
    if kind == "valid":
        body = {"title": title}
        body.update({k: params[k] for k in ("description", "completed") if k in params})
        return json.dumps(body).encode(), True, title
    body = {"title": title}
    if kind == "no_title":
        body = {"description": marker}
    elif kind == "blank_title":
        body = {"title": " \t ", "description": marker}
    elif kind == "long_title":
        body = {"title": marker + "t" * MAX_TITLE}
    elif kind == "title_type":
        body = {"title": params["title"], "description": marker}
    elif kind == "long_desc":
        body["description"] = "d" * (MAX_DESCRIPTION + 1)
    elif kind == "desc_type":
        body["description"] = params["description"]
    elif kind == "completed_type":
        body["completed"] = params["completed"]
    elif kind == "unknown_field":
        body[params["field"]] = marker
    elif kind == "not_object":
        body = {"list": [title], "string": title, "number": 7, "null": None}[params["shape"]]
    elif kind == "bad_json":
        raw = json.dumps(body)
        return {"truncated": raw[:-2], "trailing": raw + " x", "nan": raw[:-1] + ', "n": NaN}',
                "single": raw.replace('"', "'")}[params["how"]].encode(), False, title
    elif kind == "empty":
        return b"", False, title
    elif kind == "deep":
        body["description"] = nested(300)
    return json.dumps(body).encode(), False, title


@st.composite
def update_recipe(draw):
    if draw(st.integers(0, 3)) > 0:
        fields = draw(st.fixed_dictionaries({}, optional={
            "title": text.filter(lambda s: s.strip()), "description": text,
            "completed": st.booleans()}).filter(bool))
        return True, fields
    bad = draw(st.sampled_from([{}, {"title": ""}, {"title": 5}, {"completed": "yes"},
                                {"description": None}, {"other": 1},
                                {"description": "d" * (MAX_DESCRIPTION + 1)}]))
    return False, bad


@st.composite
def set_recipe(draw):
    """(kind, key suffix, value): kind is valid, exotic (may be refused) or invalid."""
    kind = draw(st.sampled_from(["valid"] * 6 + ["exotic"] * 3 + ["long_key", "key_type",
                                                                   "no_value", "extra"]))
    suffix = draw(key_suffix)
    value = draw(exotic_value) if kind == "exotic" else draw(plain_value)
    return kind, suffix, value


ODD_CONTENT_TYPES = ("text/plain", "text/plain;charset=UTF-8",
                     "application/x-www-form-urlencoded", "multipart/form-data; boundary=z",
                     None, "application/xml", "application/jsonp", "json")
RAW_PATHS = ("/set", "/tasks", "/tasks/{id}", "/tasks/{id}%3Fx=1", "/tasks/{id}%23x",
             "/tasks/%2e%2e", "/tasks/..%2f..%2fstatus", "//tasks", "/tasks/", "/TASKS",
             "/jobs/{m}", "/jobs/%2e%2e", "/replicate", "/raft/vote", "/heartbeat",
             "/status", "/cluster/status", "/", "/nope/{m}")
# No /events here: a stream the client abandons keeps its slot until the server next writes
# to it, and head_events_then_stream needs free slots.


@st.composite
def raw_recipe(draw):
    return {
        "method": draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                                        "HEAD"])),
        "path": draw(st.sampled_from(RAW_PATHS)),
        "ctype": draw(st.sampled_from(ODD_CONTENT_TYPES + ("application/json",))),
        "origin": draw(st.sampled_from([None, None, EVIL_ORIGIN, "null"])),
        "host": draw(st.sampled_from([None, None, "evil.example", "localhost.evil.example"])),
        "body": draw(st.sampled_from(["json", "bytes", "none", "deep"])),
        "bytes": draw(st.binary(max_size=64)),
        "chunked": draw(st.booleans()),
    }


def canon(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=True)


def step(method):
    """Marks the machine failed when a step raises, so teardown does not pile a second
    report on the first."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self.failed = True
            raise
    return wrapper


# ------------------------------------------------------------------ the machine
class ApiFuzz(RuleBasedStateMachine):
    cluster: Cluster = None
    examples = 0
    streams_opened: list = []           # (monotonic time, node) of every GET /events answered 200
    requests = 0

    tasks = Bundle("tasks")
    keys = Bundle("keys")

    def __init__(self):
        super().__init__()
        type(self).examples += 1
        self.prefix = f"fz{RUN}x{type(self).examples}"
        self.n = 0
        self.model_tasks: dict = {}       # id -> expected fields, UNKNOWN, or None (deleted)
        self.model_keys: dict = {}        # key -> canonical value, or UNKNOWN
        self.maybe_titles: set = set()    # creates whose outcome is unknown
        self.events_probed = False
        self.failed = False
        revive(self.cluster)

    # -------------------------------------------------------------- plumbing
    def url(self, node: int) -> str:
        return self.cluster.nodes[node].url

    def tag(self) -> str:
        self.n += 1
        return f"{self.prefix}.{self.n}"

    def call(self, node: int, method: str, path: str, body: bytes | None = None,
             headers=(JSON_CT,), expect: str = "may_accept", **kw):
        p = Probe("fuzz", expect, method, path, list(headers), body,
                  stream=method == "GET" and path.startswith("/events"), **kw)
        a = send(self.url(node), p)
        type(self).requests += 1
        where = f"{method} {path[:120]} -> node{node} ({self.url(node)})"
        self.no_node_exited()
        assert a.sent, f"{where}: could not connect ({a.error})"
        problem = judge(p, a, DOC_503)
        assert problem is None, f"{where}: {problem}\n  request headers {headers}\n  " \
                                f"request body {(body or b'')[:300]!r}"
        if 200 <= a.status < 300 and path != "/" and method not in ("HEAD", "OPTIONS") \
                and not p.stream:
            assert a.json() is not None, f"{where}: a 2xx that is not JSON: {a.short()}"
        if p.stream and a.status == 200:
            type(self).streams_opened.append((time.monotonic(), node))
        return a

    @staticmethod
    def outcome(a) -> str:
        """applied | refused | unknown for a write's answer."""
        if 200 <= a.status < 300:
            return "applied"
        body = a.json()
        if a.status == 503 and not (isinstance(body, dict) and body.get("error") in DEFINITE_503):
            return "unknown"
        return "refused"

    # -------------------------------------------------------------- tasks
    @rule(target=tasks, node=NODE, recipe=create_recipe())
    @step
    def create_task(self, node, recipe):
        kind, params = recipe
        body, valid, title = build_create(kind, params, self.tag())
        a = self.call(node, "POST", "/tasks", body, expect="may_accept" if valid else "refuse")
        result = self.outcome(a)
        # The bundle gets an id whatever the answer, so later draws do not depend on the
        # server (Hypothesis replays need that); an id nothing created must read as absent.
        missing = uuid.uuid4().hex
        if not valid or result == "refused":
            assert not (valid and a.status < 500), \
                f"a valid create was refused: {a.short()}\n  body {body[:300]!r}"
            self.model_tasks[missing] = None
            return missing
        if result == "unknown":
            self.maybe_titles.add(title)
            self.model_tasks[missing] = None
            return missing
        sent = json.loads(body)
        task = a.json()
        expected = {"title": sent["title"], "description": sent.get("description", ""),
                    "completed": sent.get("completed", False), "version": 1}
        assert {k: task.get(k) for k in expected} == expected, f"create answered {task}"
        self.model_tasks[task["id"]] = expected
        return task["id"]

    @rule(node=NODE, task=tasks, recipe=update_recipe())
    @step
    def update_task(self, node, task, recipe):
        valid, fields = recipe
        expected = self.model_tasks.get(task)
        a = self.call(node, "PUT", f"/tasks/{task}", json.dumps(fields).encode(),
                      expect="may_accept" if valid and expected else "refuse")
        result = self.outcome(a)
        if expected is UNKNOWN:
            return
        if result == "unknown":
            self.model_tasks[task] = UNKNOWN
            return
        if not valid:
            return                            # refused: the oracle in call() saw to that
        if expected is None:
            assert a.status in (404, 503), f"update of a deleted task answered {a.short()}"
            return
        assert result == "applied" or a.status == 503, f"a valid update answered {a.short()}"
        if result == "applied":
            expected = dict(expected, **fields, version=expected["version"] + 1)
            self.model_tasks[task] = expected
            got = a.json()
            assert {k: got.get(k) for k in expected} == expected, f"update answered {got}"

    @rule(node=NODE, task=tasks)
    @step
    def delete_task(self, node, task):
        expected = self.model_tasks.get(task)
        a = self.call(node, "DELETE", f"/tasks/{task}", expect="may_accept")
        result = self.outcome(a)
        if expected is UNKNOWN:
            return
        if result == "unknown":
            self.model_tasks[task] = UNKNOWN
        elif expected is None:
            assert a.status in (404, 503), f"delete of a deleted task answered {a.short()}"
        elif result == "applied":
            assert a.json() == {"deleted": task}, a.short()
            self.model_tasks[task] = None
        else:
            assert a.status == 503, f"delete of an existing task answered {a.short()}"

    @rule(node=NODE, task=tasks, stale=st.booleans())
    @step
    def read_task(self, node, task, stale):
        a = self.call(node, "GET", f"/tasks/{task}" + ("?consistency=stale" if stale else ""))
        expected = self.model_tasks.get(task)
        if stale or expected is UNKNOWN or a.status == 503:
            return
        if expected is None:
            assert a.status == 404, f"a deleted task read as {a.short()}"
        else:
            got = a.json()
            assert a.status == 200 and {k: got.get(k) for k in expected} == expected, \
                f"linearizable read of {task} answered {a.short()}, the model says {expected}"

    @rule(node=NODE, query=st.lists(st.sampled_from(
        ["consistency=stale", "consistency=linearizable", "consistency=bogus", "limit=1",
         "limit=0", "limit=-1", "limit=abc", "limit=99999999999", "offset=3", "offset=-5",
         "offset=1e3", "limit=2&offset=1", "x=%00", "limit=", "%zz"]), max_size=3))
    @step
    def list_tasks(self, node, query):
        a = self.call(node, "GET", "/tasks" + ("?" + "&".join(query) if query else ""))
        if a.status == 200:
            body = a.json()
            assert isinstance(body.get("tasks"), list) and isinstance(body.get("total"), int), \
                f"GET /tasks answered {a.short()}"

    # -------------------------------------------------------------- key-value
    @rule(target=keys, node=NODE, recipe=set_recipe())
    @step
    def set_key(self, node, recipe):
        kind, suffix, value = recipe
        key = f"{self.tag()}-{suffix}"
        body = {"key": key, "value": value}
        if kind == "long_key":
            body["key"] = key + "k" * MAX_KEY
        elif kind == "key_type":
            body["key"] = [key]
        elif kind == "no_value":
            del body["value"]
        elif kind == "extra":
            body["other"] = key
        valid = kind == "valid" and len(key) <= MAX_KEY
        expect = "refuse" if kind not in ("valid", "exotic") or len(key) > MAX_KEY else \
            "may_accept"
        raw = json.dumps(body).encode()
        a = self.call(node, "POST", "/set", raw, expect=expect)
        result = self.outcome(a)
        if valid:
            assert result != "refused" or a.status == 503, \
                f"a valid /set was refused: {a.short()}\n  body {raw[:300]!r}"
        if expect == "refuse" or result == "refused":
            self.model_keys[key] = None       # refused: it must read as absent
            return key
        if result == "unknown":
            self.model_keys[key] = UNKNOWN
            return key
        got = a.json()
        assert isinstance(got, dict) and got.get("key") == key and \
            canon(got.get("value")) == canon(value), \
            f"/set acknowledged {canon(value)[:200]} but answered {a.short()}"
        self.model_keys[key] = canon(value)
        return key

    @rule(node=NODE, key=keys, stale=st.booleans())
    @step
    def get_key(self, node, key, stale):
        path = f"/jobs/{quote(key, safe='')}" + ("?consistency=stale" if stale else "")
        a = self.call(node, "GET", path)
        expected = self.model_keys.get(key)
        if stale or expected is UNKNOWN or a.status == 503:
            return
        if expected is None:
            assert a.status == 404, f"GET {path} of a refused write answered {a.short()}"
            return
        got = a.json()
        assert a.status == 200 and got.get("key") == key and canon(got.get("value")) == expected, \
            f"linearizable GET {path} answered {a.short()}; the model says {expected[:200]}"

    @rule(node=NODE, stale=st.booleans())
    @step
    def get_jobs(self, node, stale):
        a = self.call(node, "GET", "/jobs" + ("?consistency=stale" if stale else ""))
        if stale or a.status != 200:
            return
        jobs = a.json()
        for key, expected in self.model_keys.items():
            if expected is None:
                assert key not in jobs, f"GET /jobs holds {key!r}, whose /set was refused"
            elif expected is not UNKNOWN:
                assert canon(jobs.get(key)) == expected and key in jobs, \
                    f"GET /jobs lacks or changed {key!r}: {canon(jobs.get(key))[:200]}"

    # -------------------------------------------------------------- hostile
    @rule(node=NODE, name=st.sampled_from([n for n in QUICK if n != "head_events"]))
    @step
    def hostile_request(self, node, name):
        live = [t for t, v in self.model_tasks.items() if v not in (None, UNKNOWN)]
        follower = None
        if name == "cross_origin_replicate":
            follower = self.cluster.nodes[node].status()
        p = make_probe(name, self.tag(), live[0] if live else None, follower)
        if p is None:
            return
        a = send(self.url(node), p)
        assert a.sent, f"{name} -> node{node}: could not connect ({a.error})"
        problem = judge(p, a, DOC_503)
        assert problem is None, f"hostile {name} {p.method} {p.path[:100]} -> node{node}: {problem}"
        if p.expect == "may_accept" and p.record and p.record[0] == "set" \
                and (a.status is None or 200 <= a.status < 300):
            key, value = p.record[1], p.record[2]
            self.model_keys[key] = UNKNOWN if a.status is None else canon(value)
            if a.status is not None:
                r = self.call(node, "GET", f"/jobs/{quote(key, safe='')}")
                assert r.status == 503 or (r.status == 200 and canon(r.json().get("value"))
                                           == canon(value)), \
                    f"{name}: /set of {key!r} was acknowledged, GET answered {r.short()}"

    @rule(node=NODE, recipe=raw_recipe())
    @step
    def raw_request(self, node, recipe):
        marker = f"{self.tag()}-hostile"
        live = [t for t, v in self.model_tasks.items() if v not in (None, UNKNOWN)]
        path = recipe["path"].format(id=live[0] if live else "0" * 32, m=quote(marker))
        headers = []
        if recipe["ctype"]:
            headers.append(("Content-Type", recipe["ctype"]))
        if recipe["origin"]:
            headers.append(("Origin", recipe["origin"]))
        if recipe["host"]:
            headers.append(("Host", recipe["host"]))
        body = {"json": json.dumps({"key": marker, "value": marker, "title": marker}).encode(),
                "bytes": marker.encode() + recipe["bytes"], "none": None,
                "deep": b"[" * 300 + json.dumps(marker).encode() + b"]" * 300}[recipe["body"]]
        foreign = recipe["origin"] or recipe["host"]
        odd_body = recipe["ctype"] != "application/json" or recipe["body"] == "bytes"
        # Always hostile, so never a model write: a foreign origin or host, or a body that
        # is not declared JSON where one is expected (a DELETE's body means nothing).
        if not foreign and (recipe["method"] == "DELETE" or not odd_body):
            headers.append(("Origin", EVIL_ORIGIN))
        changes = recipe["method"] in ("POST", "PUT", "DELETE", "PATCH")
        self.call(node, recipe["method"], path, body, headers,
                  expect="refuse" if changes else "any",
                  chunked=recipe["chunked"] and body is not None)

    @precondition(lambda self: not self.events_probed)
    @rule(node=NODE)
    @step
    def head_events_then_stream(self, node):
        """More HEAD /events than there are stream slots, then a stream must still open."""
        self.events_probed = True
        for _ in range(20):
            self.call(node, "HEAD", "/events", headers=(), expect="any")
        # Streams earlier examples opened and closed hold their slots until the server next
        # writes to them, at most until the stream's end (30 s); slots HEAD leaked never free.
        deadline = time.monotonic() + 35
        while True:
            a = self.call(node, "GET", "/events", headers=(), expect="any")
            if a.status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        recent = sum(1 for t, n in self.streams_opened if n == node and t > deadline - 70)
        assert a.status == 200, f"GET /events after 20 HEAD /events answered {a.short()} " \
                                f"for 35 s; this test opened (and closed) {recent} streams " \
                                f"on node{node} in the 35 s before the HEADs"

    # -------------------------------------------------------------- invariants
    @invariant()
    @step
    def no_node_exited(self):
        for n in self.cluster.nodes:
            assert n.alive, f"node {n.url} exited with status {n.proc.returncode}:\n" \
                            f"{n.log_tail(15)}"

    def teardown(self):
        if self.failed:
            return
        self.cluster.wait_converged(timeout=20)
        views = {n.url: node_data(n.url) for n in self.cluster.nodes}
        for url, (jobs, tasks) in views.items():
            for key, expected in self.model_keys.items():
                if expected is None:
                    assert key not in jobs, f"{url} holds {key!r}, whose /set was refused"
                elif expected is not UNKNOWN:
                    assert key in jobs and canon(jobs[key]) == expected, \
                        f"{url} holds {key!r} = {canon(jobs.get(key))[:200]}, " \
                        f"acknowledged {expected[:200]}"
            by_id = {t["id"]: t for t in tasks}
            for tid, expected in self.model_tasks.items():
                if expected is UNKNOWN:
                    continue
                if expected is None:
                    assert tid not in by_id, f"{url} still holds deleted task {tid}"
                else:
                    got = by_id.get(tid)
                    assert got is not None and {k: got.get(k) for k in expected} == expected, \
                        f"{url} holds task {tid} as {got}, acknowledged {expected}"
            # Nothing else of this example: no refused or hostile request left data.
            for key, value in jobs.items():
                if self.prefix in key or self.prefix in json.dumps(value):
                    assert self.model_keys.get(key) is not None, \
                        f"{url} holds {key!r} = {json.dumps(value)[:200]}, which no " \
                        f"acknowledged or undetermined write stored"
            for t in tasks:
                if self.prefix in t.get("title", "") + json.dumps(t.get("description")):
                    assert self.model_tasks.get(t["id"]) is not None or \
                        t["title"] in self.maybe_titles, \
                        f"{url} holds task {t}, which no acknowledged or undetermined " \
                        f"create made"
        mine = {url: self.own(jobs, tasks) for url, (jobs, tasks) in views.items()}
        first_url, first = next(iter(mine.items()))
        for url, view in mine.items():
            assert view == first, f"{url} and {first_url} hold different data of this " \
                                  f"example:\n  {view[:600]}\n  {first[:600]}"

    def own(self, jobs: dict, tasks: list) -> str:
        """This example's part of a node's data, canonical."""
        return canon([{k: v for k, v in jobs.items()
                       if self.prefix in k or self.prefix in json.dumps(v)},
                      sorted((t for t in tasks if self.prefix in json.dumps(t)),
                             key=lambda t: t["id"])])


def node_data(url: str):
    """(jobs, tasks) of a node's own replica (stale reads, every page)."""
    a = send(url, Probe("jobs", "any", "GET", "/jobs?consistency=stale", timeout=15))
    assert a.status == 200, f"{url} GET /jobs?consistency=stale answered {a.short()}"
    tasks, offset = [], 0
    while True:
        r = send(url, Probe("tasks", "any", "GET",
                            f"/tasks?consistency=stale&offset={offset}", timeout=15))
        assert r.status == 200, f"{url} GET /tasks?consistency=stale answered {r.short()}"
        page = r.json()
        tasks += page["tasks"]
        if not page["tasks"] or len(tasks) >= page["total"]:
            return a.json(), tasks
        offset += len(page["tasks"])


def revive(cluster: Cluster):
    """Restart any node an earlier example killed, and wait for a leader."""
    dead = [n for n in cluster.nodes if not n.alive]
    for n in dead:
        n.start()
    if dead:
        cluster.wait_for_leader(timeout=20)


@pytest.fixture(scope="module")
def fuzz_cluster(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("fuzz")) as c:
        c.wait_for_leader()
        yield c


def test_api_fuzz(fuzz_cluster, request):
    ApiFuzz.cluster = fuzz_cluster
    seeded = request.config.getoption("hypothesis_seed", default=None) is not None
    run_state_machine_as_test(ApiFuzz, settings=settings(
        max_examples=FUZZ_EXAMPLES or CI_EXAMPLES,
        stateful_step_count=FUZZ_STEPS or CI_STEPS,
        deadline=None,
        derandomize=not (FUZZ_EXAMPLES or seeded),
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    ))
    print(f"api fuzz: {ApiFuzz.examples} examples, {ApiFuzz.requests} requests")

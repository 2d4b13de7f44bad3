"""/events resumes by log index: every committed change once, in order, across reconnects and
nodes; a resume point the node no longer holds gets a reset event."""
import threading
import time

import orjson
import requests

from harness import Cluster, wait_for
from storage import Storage
from test_api import api_client, assert_error, client, node, running_node, snapshotting_config  # noqa: F401


def parse(text: str) -> list[dict]:
    """The events of an SSE text: [{"id", "event", "data"}], comments and retry lines dropped."""
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":")
                      and not line.startswith("retry:"))
        if fields:
            events.append({"id": int(fields["id"]), "event": fields["event"], "data": orjson.loads(fields["data"])})
    return events


def read_events(client, path: str, count: int, headers=None) -> list[dict]:
    r = client.get(path, headers=headers, buffered=False)
    assert r.status_code == 200, r.get_data()
    text, events = "", []
    chunks = iter(r.response)
    while len(events) < count:
        text += next(chunks).decode()
        events = parse(text)
    r.close()
    return events[:count]


def test_a_resumed_stream_sends_each_change_after_the_index_in_order(client):
    made = [client.post("/tasks", json={"title": f"t{i}"}).get_json() for i in range(3)]
    client.put(f"/tasks/{made[0]['id']}", json={"completed": True})
    client.delete(f"/tasks/{made[1]['id']}")
    client.post("/set", json={"key": "k", "value": [1]})
    events = read_events(client, "/events?since=0", 7)
    changes = [e for e in events if e["event"] == "change"]
    assert [c["data"]["op"] for c in changes] == ["create", "create", "create", "update", "delete", "set"]
    assert [c["id"] for c in changes] == [c["data"]["index"] for c in changes] == list(range(2, 8))
    assert changes[0]["data"]["task"] == made[0] and changes[3]["data"]["task"]["version"] == 2
    assert changes[4]["data"] == {"op": "delete", "id": made[1]["id"], "index": 6}
    assert changes[5]["data"] == {"op": "set", "key": "k", "index": 7}
    assert events[-1]["event"] == "applied" and events[-1]["id"] == 7  # everything up to 7 was sent
    # Last-Event-ID (what EventSource sends on reconnect) wins over ?since.
    resumed = read_events(client, "/events?since=0", 3, headers={"Last-Event-ID": "5"})
    assert [(e["event"], e["id"]) for e in resumed] == [("change", 6), ("change", 7), ("applied", 7)]
    # Live changes follow the backlog.
    r = client.get("/events", headers={"Last-Event-ID": "7"}, buffered=False)
    chunks = iter(r.response)
    assert parse(next(chunks).decode() + next(chunks).decode())[0]["event"] == "applied"
    client.post("/tasks", json={"title": "live"})
    text = ""
    while not any(e["event"] == "change" for e in parse(text)):
        text += next(chunks).decode()
    assert next(e for e in parse(text) if e["event"] == "change")["data"]["task"]["title"] == "live"
    r.close()


def test_an_index_no_longer_kept_gets_a_reset(client, monkeypatch):
    monkeypatch.setattr("task_state.FEED_SIZE", 4)
    for i in range(8):
        client.post("/set", json={"key": "k", "value": i})  # changes at 2..9; the feed keeps 6..9
    first = read_events(client, "/events?since=4", 1)[0]
    assert first["event"] == "reset" and first["id"] == first["data"]["index"] == 9
    assert [e["id"] for e in read_events(client, "/events?since=5", 4)] == [6, 7, 8, 9]


def test_a_malformed_resume_point_is_400(client):
    for path, headers in (("/events?since=-1", None), ("/events?since=x", None),
                          ("/events", {"Last-Event-ID": "1.5"}), ("/events", {"Last-Event-ID": "9" * 30})):
        assert_error(client.get(path, headers=headers), 400, "invalid_request")


class Watcher(threading.Thread):
    """A client following /events across node deaths: it reconnects to the next node with
    Last-Event-ID, as EventSource does, and records every change event."""

    def __init__(self, urls: list[str], since: int):
        super().__init__(daemon=True)
        self.urls, self.last_id = urls, since
        self.changes: list[dict] = []
        self.resets = 0
        self.serving: str | None = None
        self.served_by: list[str] = []
        self.done = threading.Event()

    def run(self):
        turn = 0
        while not self.done.is_set():
            url = self.urls[turn % len(self.urls)]
            turn += 1
            try:
                with requests.get(url + "/events", headers={"Last-Event-ID": str(self.last_id)},
                                  stream=True, timeout=(1, 15)) as r:
                    if r.status_code != 200:
                        continue
                    self.serving = url
                    self.served_by.append(url)
                    self.follow(r)
            except requests.RequestException:
                pass
            self.serving = None

    def follow(self, r):
        fields = {}
        for line in r.iter_lines(chunk_size=None, decode_unicode=True):
            if self.done.is_set():
                return
            if line:
                if not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    fields[name] = value
                continue
            if "event" in fields:
                if fields["event"] == "change":
                    self.changes.append(orjson.loads(fields["data"]))
                elif fields["event"] == "reset":
                    self.resets += 1
                self.last_id = int(fields["id"])
            fields = {}


def test_a_watch_resumed_on_another_node_sees_every_write_once(tmp_path):
    writes, writers = 1000, 16
    with Cluster(tmp_path, n=3, base_port=24020) as cluster:
        leader = cluster.by_url(cluster.wait_for_leader())
        since = leader.status()["applied_index"]
        # The watch starts on the leader, the node whose death also disturbs the writers most.
        watcher = Watcher([leader.url] + [n.url for n in cluster.nodes if n is not leader], since)
        watcher.start()
        wait_for(lambda: watcher.serving == leader.url, 10, "the watch to open")
        answers: dict[int, dict] = {}

        def writer(w):
            for i in range(w, writes, writers):
                for attempt in range(100):  # retry with the same key until a definite answer
                    url = cluster.nodes[(i + attempt) % 3].url
                    try:
                        r = requests.post(url + "/tasks", json={"title": f"w{i}"},
                                          headers={"Idempotency-Key": f"watch-{i}"}, timeout=5)
                        if r.status_code == 201:
                            answers[i] = r.json()
                            break
                    except requests.RequestException:
                        pass
                    time.sleep(0.05)  # back-off before the retry
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        wait_for(lambda: len(watcher.changes) >= writes // 4, 60, "a quarter of the writes on the watch")
        leader.kill9()
        for t in threads:
            t.join(90)
        assert len(answers) == writes
        created = {a["id"] for a in answers.values()}
        try:
            wait_for(lambda: len(watcher.changes) >= writes, 30, "every write on the resumed watch")
        finally:
            watcher.done.set()
        indexes = [c["index"] for c in watcher.changes]
        assert indexes == sorted(set(indexes)), "a change came twice or out of order"
        assert [c["op"] for c in watcher.changes] == ["create"] * writes
        assert [c["id"] for c in watcher.changes if c["id"] in created] == [c["id"] for c in watcher.changes]
        assert {c["id"] for c in watcher.changes} == created and watcher.resets == 0
        assert watcher.served_by[0] == leader.url and len(set(watcher.served_by)) >= 2


def test_after_a_restart_the_feed_is_the_log_since_the_snapshot(tmp_path):
    config = snapshotting_config(tmp_path)
    with running_node(config) as node:
        c = api_client(node)
        for i in range(7):
            c.post("/set", json={"key": "k", "value": i})  # changes at 2..8: one snapshot, at 5 to 8
        wait_for(lambda: node.status()["snapshot_index"] >= 5, 5, "a snapshot and compaction")
    storage = Storage(config.data_dir)
    storage.load()
    snap = storage.snapshot_meta["index"]
    assert 5 <= snap < 8  # one write at a time: the snapshot is taken at 5, and 6..8 are in the log
    storage.close()
    with running_node(config) as node:
        wait_for(lambda: node.status()["applied_index"] >= 9, 5, "the replay")
        c = api_client(node)
        assert read_events(c, f"/events?since={snap - 1}", 1)[0]["event"] == "reset"
        replayed = [e["id"] for e in read_events(c, f"/events?since={snap}", 9 - snap) if e["event"] == "change"]
        assert replayed == list(range(snap + 1, 9))  # 9 is the restarted leader's no-op

"""A page on another origin (another port of 127.0.0.1, as any local web app) sends what a
browser sends without asking: `no-cors` POSTs with a text/plain body. Against a cluster started
without a secret, as the README starts it by hand, nothing may be created and no node's log may
change."""
import http.server
import json
import threading

import pytest
import requests

from harness import Cluster, free_ports, wait_for

pytestmark = pytest.mark.browser

FORGE = """async ([targets, body]) => {
  for (const url of targets) {
    try {
      await fetch(url, {method: 'POST', mode: 'no-cors', headers: {'Content-Type': 'text/plain'}, body});
    } catch (e) { /* a refused request is the point */ }
  }
}"""


class EvilPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<!doctype html><title>elsewhere</title><p>another origin"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def evil_origin():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_ports(1)[0]), EvilPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def open_cluster(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("no-secret"), n=3) as c:
        c.wait_for_leader(30)
        yield c


def stale(node_url, path):
    r = requests.get(f"{node_url}{path}{'&' if '?' in path else '?'}consistency=stale", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def put_key(cluster, key, value):
    """A real write through whichever node leads (retried while an election is under way)."""
    def attempt():
        try:
            r = requests.post(cluster.wait_for_leader() + "/set", json={"key": key, "value": value}, timeout=10)
        except requests.RequestException:
            return False
        return r.status_code == 200
    wait_for(attempt, 20, f"the write of {key}")
    cluster.wait_converged()


def test_no_cors_text_plain_writes_create_nothing(open_cluster, evil_origin, page):
    urls = open_cluster.urls
    page.goto(evil_origin + "/")
    targets = [u + path for u in urls for path in ("/tasks", "/set")]
    page.evaluate(FORGE, [targets, '{"title": "forged", "key": "forged", "value": 1}'])
    page.evaluate(FORGE, [[u + "/set" for u in urls], '{"key": "forged", "value": 1}'])
    page.evaluate(FORGE, [[u + "/tasks" for u in urls], '{"title": "forged"}'])
    put_key(open_cluster, "barrier", 1)
    for url in urls:
        assert stale(url, "/tasks")["total"] == 0
        assert stale(url, "/jobs") == {"barrier": 1}


def test_forged_replication_changes_no_log(open_cluster, evil_origin, page):
    put_key(open_cluster, "before", 1)
    leader = open_cluster.wait_for_leader()
    follower = next(u for u in open_cluster.urls if u != leader)
    view = wait_for(open_cluster.by_url(follower).status, 5, "the follower's status")
    term, last = view["term"], view["last_log_index"]
    forged = {"type": "append_req", "from": leader, "term": term, "prev_index": last, "prev_term": term,
              "entries": [[term, {"op": "set", "key": "forged", "value": "forged"}]],
              "commit": last + 1, "seq": 0, "rid": 1}
    page.goto(evil_origin + "/")
    page.evaluate(FORGE, [[follower + "/replicate"], json.dumps(forged)])
    after = wait_for(open_cluster.by_url(follower).status, 5, "the follower's status")
    assert after["last_log_index"] == last and after["term"] == term, after
    assert "forged" not in stale(follower, "/jobs")
    # The leader's next write lands on every node, the same everywhere.
    put_key(open_cluster, "after", 2)
    jobs = stale(open_cluster.wait_for_leader(), "/jobs")
    assert "forged" not in jobs and jobs["after"] == 2
    wait_for(lambda: all(stale(u, "/jobs") == jobs for u in open_cluster.urls), 5,
             "every node to hold exactly the leader's writes")

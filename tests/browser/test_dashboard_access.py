"""The dashboard on a cluster with client tokens (sign-in, the token kept for the tab only, the
live stream with a token, a read token refused a write, sign-out), and following the membership
(a node that joins appears as a learner or voter and becomes a failover target; a removed one
is dropped)."""
import os

import pytest
import requests
from playwright.sync_api import expect

from auth import create_token
from dashboard_helpers import open_dashboard, task_row
from harness import Cluster, NodeProc, free_ports

pytestmark = pytest.mark.browser

SECRET = "browser-access-secret"
TOKEN_KEY = "pickledb.token"


class TokenNode(NodeProc):
    def command(self):
        return super().command() + ["--auth-file", self.cluster.auth_file]


@pytest.fixture
def token_cluster(tmp_path):
    auth_file = str(tmp_path / "auth.json")
    tokens = {role: create_token(auth_file, f"browser-{role}", role) for role in ("read", "write", "admin")}
    c = Cluster(tmp_path / "cluster", n=3, secret=SECRET, heartbeat=0.1, election=0.6)
    c.auth_file = auth_file
    c.nodes = [TokenNode(c, n.index, n.port) for n in c.nodes]
    for n in c.nodes:
        n.session.headers["Authorization"] = f"Bearer {tokens['read']}"  # the harness's /status
    c.start()
    try:
        c.wait_for_leader(30)
        yield c, tokens
    finally:
        c.stop()


def sign_in(page, token):
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def test_sign_in_stream_and_sign_out_with_tokens(token_cluster, page):
    cluster, tokens = token_cluster
    leader = cluster.wait_for_leader(15)
    headers = {"Authorization": f"Bearer {tokens['write']}"}
    r = requests.post(f"{leader}/tasks", json={"title": "Behind a token"}, headers=headers, timeout=10)
    assert r.status_code == 201, r.text

    page.goto(leader + "/")
    signin = page.locator("#signin")
    expect(signin).to_be_visible()  # the API answered 401
    page.evaluate("window.pickleDashboard.check()")  # one more health check, awaited, while signed out
    expect(page.locator("#failover-banner")).to_be_hidden()  # a node asking for a token is not down
    expect(task_row(page, "Behind a token")).to_have_count(0)
    sign_in(page, "not-a-token")
    expect(page.locator("#signin-error")).to_contain_text("refused")

    sign_in(page, tokens["read"])
    expect(signin).to_be_hidden()
    expect(task_row(page, "Behind a token")).to_be_visible()
    expect(page.locator("#connection")).to_have_attribute("data-mode", "live")  # the stream sends the token
    # Kept for this tab only: never in localStorage, a cookie or the URL.
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == tokens["read"]
    assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []
    assert tokens["read"] not in page.url
    requests.post(f"{leader}/tasks", json={"title": "Seen live"}, headers=headers, timeout=10)
    expect(task_row(page, "Seen live")).to_be_visible(timeout=3000)

    # A read token may not write: the page says so and keeps the text.
    page.get_by_label("New task").fill("Not allowed")
    page.get_by_label("New task").press("Enter")
    expect(page.locator("#write-status")).to_contain_text("Not saved")
    expect(page.get_by_label("New task")).to_have_value("Not allowed")

    # Sign out: the token and what was read with it are forgotten.
    page.get_by_role("button", name="Sign out").click()
    expect(signin).to_be_visible()
    expect(task_row(page, "Behind a token")).to_have_count(0)
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None

    sign_in(page, tokens["write"])
    page.get_by_label("New task").fill("Written with a token")
    page.get_by_label("New task").press("Enter")
    expect(task_row(page, "Written with a token")).to_be_visible()
    r = requests.get(f"{leader}/tasks", headers=headers, timeout=10)
    assert [t["title"] for t in r.json()["tasks"]].count("Written with a token") == 1


def test_the_panel_and_failover_targets_follow_the_membership(own_cluster, page):
    leader = own_cluster.wait_for_leader(15)
    requests.post(f"{leader}/tasks", json={"title": "Before the new node"}, timeout=10)
    open_dashboard(page, leader)
    added = own_cluster.add(join=[leader])
    row = page.locator(f'#cluster-body tr[data-node="{added.url}"]')
    expect(row).to_be_visible(timeout=15_000)
    expect(row.locator("td[data-label=Member]")).to_have_text("voter", timeout=15_000)
    expect(page.locator("#cluster-body tr")).to_have_count(4)

    # The new node is a failover target: with every original node down, the page moves to it
    # (read-only: one of four voters is no majority) and still shows the tasks.
    originals = own_cluster.nodes[:3]
    for n in originals:
        n.kill9()
    expect(page.locator("#connection")).to_have_attribute("data-node", added.url, timeout=15_000)
    expect(task_row(page, "Before the new node")).to_be_visible()

    # Back to a majority; removing a member drops it from the panel.
    for n in originals:
        n.start(wait=False)
    new_leader = own_cluster.wait_for_leader(20)
    removed = next(n for n in originals if n.url not in (leader, new_leader))
    r = requests.delete(f"{new_leader}/cluster/members/{removed.id}", timeout=30)
    assert r.status_code == 200, r.text
    removed.stop()
    expect(page.locator(f'#cluster-body tr[data-node="{removed.url}"]')).to_have_count(0, timeout=15_000)
    expect(page.locator("#cluster-body tr")).to_have_count(3)


def test_a_node_started_with_another_peer_list_is_pointed_out(own_cluster, page):
    leader = own_cluster.wait_for_leader(15)
    victim = next(n for n in own_cluster.nodes if n.url != leader)
    victim.stop()
    victim.extra_args = ["--peers", ",".join(victim.peers + ["http://127.0.0.1:1"])]  # the last --peers wins
    victim.start()
    open_dashboard(page, leader)
    warning = page.locator("#cluster-warning")
    expect(warning).to_contain_text(f"{victim.id} was started with a --peers list that differs")
    expect(warning).to_contain_text("only in --peers: 127.0.0.1:1=http://127.0.0.1:1")
    expect(page.locator("#cluster-body tr")).to_have_count(3)  # the configuration in the log is kept


class TLSNode(NodeProc):
    """A node serving HTTPS, with mutual TLS to its peers."""

    def __init__(self, cluster, index, port, join=None):
        super().__init__(cluster, index, port, join)
        self.url = f"https://127.0.0.1:{port}"
        self.session.trust_env = False  # else $REQUESTS_CA_BUNDLE would replace the test CA
        self.session.verify = cluster.certs["ca"]

    def command(self):
        certs = self.cluster.certs
        return super().command() + ["--tls-cert", certs["cert"], "--tls-key", certs["key"], "--tls-ca", certs["ca"]]


def test_the_dashboard_works_over_https(tmp_path, browser):
    from tls_certs import make_ca, make_node_cert
    directory = str(tmp_path / "certs")
    os.makedirs(directory)
    ca = make_ca(directory)
    cert, key = make_node_cert(directory, "node", "IP:127.0.0.1,DNS:localhost")
    c = Cluster(tmp_path / "cluster", n=3, secret=SECRET, heartbeat=0.1, election=0.6)
    c.certs = {"ca": ca, "cert": cert, "key": key}
    c.nodes = [TLSNode(c, n.index, n.port) for n in c.nodes]
    context = browser.new_context(ignore_https_errors=True)  # the test CA is not in Chromium's store
    try:
        c.start()
        leader = c.wait_for_leader(30)
        assert leader.startswith("https://")
        page = context.new_page()
        open_dashboard(page, leader)
        page.get_by_label("New task").fill("Over HTTPS")
        page.get_by_label("New task").press("Enter")
        expect(task_row(page, "Over HTTPS")).to_be_visible()
        follower = next(u for u in c.urls if u != leader)
        r = requests.post(f"{follower}/tasks", json={"title": "Streamed over HTTPS"}, verify=ca, timeout=10)
        assert r.status_code == 201, r.text
        expect(task_row(page, "Streamed over HTTPS")).to_be_visible(timeout=3000)
        # A node joins over HTTPS (its --join request and the members' URLs are https) and shows up.
        joiner = TLSNode(c, 3, free_ports(1)[0], join=[follower])
        c.nodes.append(joiner)
        joiner.start()
        row = page.locator(f'#cluster-body tr[data-node="{joiner.url}"]')
        expect(row.locator("td[data-label=Member]")).to_have_text("voter", timeout=15_000)
    finally:
        context.close()
        c.stop()

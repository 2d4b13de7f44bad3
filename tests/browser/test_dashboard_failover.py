"""Dashboard failover, read-only mode, fail-back and write retries against real nodes (kill -9)."""
import re
import time

import pytest
import requests
from playwright.sync_api import expect

from dashboard_helpers import Api, open_dashboard, screenshot_path, task_row, wait_until

pytestmark = pytest.mark.browser


def node_index(cluster, url):
    return cluster.urls.index(url)


def wait_healthy(url, timeout=20):
    wait_until(lambda: requests.get(f"{url}/status", timeout=1).ok, timeout, what=f"{url} to answer")


def test_failover_to_live_node_and_fail_back(own_cluster, page, tmp_path):
    api = Api(own_cluster)
    leader = own_cluster.wait_for_leader(15)
    for i in range(3):
        api.create(f"Survives failover {i}")
    # the page talks to the leader, so killing it also leaves the cluster leaderless for a moment
    open_dashboard(page, leader)
    for i in range(3):
        expect(task_row(page, f"Survives failover {i}")).to_be_visible()
    conn, banner = page.locator("#connection"), page.locator("#failover-banner")
    expect(banner).to_be_hidden()

    victim = own_cluster.node(node_index(own_cluster, leader))
    list_loads = []  # after a failover the page resumes the event stream instead of reloading the list
    page.on("request", lambda r: list_loads.append(r.url) if r.method == "GET" and "/tasks?" in r.url else None)
    t0 = time.monotonic()
    victim.kill9()

    # the banner shows and the page moves to a live node, still showing the tasks
    expect(banner).to_be_visible(timeout=5000)
    expect(banner).to_have_attribute("data-kind", "failover")
    expect(banner).to_contain_text(leader)
    expect(conn).not_to_have_attribute("data-node", leader)
    moved_to = conn.get_attribute("data-node")
    assert moved_to in own_cluster.urls and moved_to != leader
    detect_s = time.monotonic() - t0
    expect(conn).to_have_attribute("data-mode", "live")   # the event stream follows to the new node
    for i in range(3):
        expect(task_row(page, f"Survives failover {i}")).to_be_visible()
    expect(page.locator(f'#cluster-body tr[data-node="{leader}"] td[data-label=Health]')).to_have_text("Unreachable")

    # once a leader exists, writes work again from the same page
    new_leader = own_cluster.wait_for_leader(15)
    assert new_leader != leader
    api.create("Written during the failover", node=new_leader)
    expect(task_row(page, "Written during the failover")).to_be_visible()
    title = page.get_by_label("New task")
    expect(title).to_be_enabled(timeout=10_000)
    expect(page.locator("#readonly-notice")).to_be_hidden()
    title.fill("Added after failover")
    title.press("Enter")
    expect(task_row(page, "Added after failover")).to_be_visible()
    expect(title).to_have_value("")
    assert "Added after failover" in {t["title"] for t in api.tasks(node=new_leader)}
    expect(page.locator(f'#cluster-body tr[data-node="{new_leader}"] .tag.leader')).to_be_visible()
    assert list_loads == [], list_loads
    page.screenshot(path=str(screenshot_path(tmp_path, "failover.png")), full_page=True)

    # the home node comes back: the page fails back to it on its own
    victim.start()
    wait_healthy(leader)
    expect(conn).to_have_attribute("data-node", leader, timeout=15_000)
    expect(banner).to_have_attribute("data-kind", "failback")
    expect(banner).to_contain_text("healthy again")
    expect(task_row(page, "Added after failover")).to_be_visible()
    # and it is live again on the home node
    expect(conn).to_have_attribute("data-mode", "live")
    api.create("After fail-back", node=new_leader)
    expect(task_row(page, "After fail-back")).to_be_visible(timeout=3000)
    assert detect_s < 5


def test_no_leader_shows_stale_tasks_read_only(own_cluster, page):
    api = Api(own_cluster)
    leader = own_cluster.wait_for_leader(15)
    home = next(u for u in own_cluster.urls if u != leader)
    api.create("Known before the outage")
    open_dashboard(page, home)
    expect(task_row(page, "Known before the outage")).to_be_visible()

    # take away the majority: the page's own node stays up but can elect no leader
    others = [own_cluster.node(i) for i, u in enumerate(own_cluster.urls) if u != home]
    for n in others:
        n.kill9()

    notice = page.locator("#readonly-notice")
    expect(notice).to_be_visible(timeout=10_000)
    expect(notice).to_contain_text("no leader")
    expect(notice).to_contain_text("stale")
    expect(page.locator("#connection")).to_have_attribute("data-state", "readonly")
    expect(page.locator("#connection")).to_have_attribute("data-node", home)
    expect(page.get_by_label("New task")).to_be_disabled()
    expect(page.get_by_role("button", name="Add", exact=True)).to_be_disabled()
    row = task_row(page, "Known before the outage")
    expect(row).to_be_visible()
    expect(row.get_by_role("checkbox")).to_be_disabled()
    expect(row.get_by_role("button", name=re.compile("^Delete"))).to_be_disabled()

    # quorum is back: writes are enabled again and work
    for n in others:
        n.start()
    own_cluster.wait_for_leader(20)
    expect(notice).to_be_hidden(timeout=10_000)
    page.get_by_label("New task").fill("Written after the outage")
    page.get_by_label("New task").press("Enter")
    expect(task_row(page, "Written after the outage")).to_be_visible()
    assert "Written after the outage" in {t["title"] for t in api.tasks()}


def test_write_that_loses_its_connection_is_retried_once_or_reported(own_cluster, page):
    api = Api(own_cluster)
    leader = own_cluster.wait_for_leader(15)
    open_dashboard(page, leader)
    posts = {"n": 0}

    def commit_then_drop_response(route):
        # the write reaches the cluster, but the browser never sees the answer
        if route.request.method == "POST" and posts["n"] == 0:
            posts["n"] += 1
            route.fetch()
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route(re.compile(r".*/tasks$"), commit_then_drop_response)
    page.get_by_label("New task").fill("Exactly once")
    page.get_by_label("New task").press("Enter")
    expect(task_row(page, "Exactly once")).to_have_count(1)
    expect(page.get_by_label("New task")).to_have_value("")
    assert [t["title"] for t in api.tasks()].count("Exactly once") == 1
    page.unroute(re.compile(r".*/tasks$"))

    def drop_first(route):
        # the connection fails before the request reaches the node: retried once, transparently
        if route.request.method == "POST" and posts["n"] == 1:
            posts["n"] += 1
            route.abort("connectionrefused")
        else:
            route.continue_()

    page.route(re.compile(r".*/tasks$"), drop_first)
    page.get_by_label("New task").fill("Retried once")
    page.get_by_label("New task").press("Enter")
    expect(task_row(page, "Retried once")).to_be_visible()
    assert [t["title"] for t in api.tasks()].count("Retried once") == 1
    page.unroute(re.compile(r".*/tasks$"))

    # every attempt fails: the page says so and keeps the text
    page.route(re.compile(r".*/tasks$"),
               lambda route: route.abort("connectionrefused") if route.request.method == "POST" else route.continue_())
    page.get_by_label("New task").fill("Cannot be saved")
    page.get_by_label("New task").press("Enter")
    status = page.locator("#write-status")
    expect(status).to_have_attribute("data-kind", "error")
    expect(status).to_contain_text("Not saved")
    expect(page.get_by_label("New task")).to_have_value("Cannot be saved")
    assert "Cannot be saved" not in {t["title"] for t in api.tasks()}

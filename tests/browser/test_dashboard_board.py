"""Dashboard task board in a real browser against a real 3-node cluster (cluster secret configured)."""
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import expect

from dashboard_helpers import open_dashboard, screenshot_path, task_row, wait_until

pytestmark = pytest.mark.browser


def follower_of(cluster):
    leader = cluster.wait_for_leader(15)
    return next(u for u in cluster.urls if u != leader)


def server_titles(api):
    return {t["title"]: t for t in api.tasks()}


def test_add_edit_complete_delete(cluster, api, page):
    open_dashboard(page, follower_of(cluster))   # writes from a follower's page reach the leader
    title = page.get_by_label("New task")
    count = page.locator("#task-count")

    # add with Enter (title + description)
    title.fill("Write the release notes")
    page.get_by_label("Description").first.fill("for v2")
    title.press("Enter")
    row = task_row(page, "Write the release notes")
    expect(row).to_be_visible()
    expect(row.locator(".desc")).to_have_text("for v2")
    expect(title).to_have_value("")
    expect(count).to_have_text("1 task: 1 in progress, 0 done")
    task = wait_until(lambda: server_titles(api).get("Write the release notes"), 5, what="task on the server")
    assert task["description"] == "for v2"

    # edit title and description inline; Enter in the title field saves
    row.get_by_role("button", name=re.compile("^Edit")).click()
    edit = row.locator("form.edit")
    expect(edit.get_by_label("Title")).to_be_focused()
    edit.get_by_label("Title").fill("Write the release notes (final)")
    edit.get_by_label("Description").fill("for v2.0.1")
    edit.get_by_label("Title").press("Enter")
    row = task_row(page, "Write the release notes (final)")
    expect(row.locator(".desc")).to_have_text("for v2.0.1")
    expect(row.locator("form.edit")).to_have_count(0)
    wait_until(lambda: (api.get(task["id"]) or {}).get("title") == "Write the release notes (final)", 5,
               what="edited title on the server")

    # Escape cancels an edit without saving
    row.get_by_role("button", name=re.compile("^Edit")).click()
    row.locator("form.edit").get_by_label("Title").fill("not saved")
    row.locator("form.edit").get_by_label("Title").press("Escape")
    expect(row.locator("form.edit")).to_have_count(0)
    expect(row.locator(".title")).to_have_text("Write the release notes (final)")

    # mark done, check the filters, mark undone
    row.get_by_role("checkbox").check()
    expect(row).to_have_class(re.compile(r"\bdone\b"))
    expect(count).to_have_text("1 task: 0 in progress, 1 done")
    wait_until(lambda: (api.get(task["id"]) or {}).get("completed") is True, 5, what="completed on the server")
    page.get_by_role("button", name="In progress", exact=True).click()
    expect(row).to_have_count(0)
    expect(page.locator("#empty-state")).to_have_text("Nothing in progress.")
    page.get_by_role("button", name="Done", exact=True).click()
    expect(row).to_be_visible()
    page.get_by_role("button", name="All", exact=True).click()
    row.get_by_role("checkbox").uncheck()
    expect(row).not_to_have_class(re.compile(r"\bdone\b"))
    wait_until(lambda: (api.get(task["id"]) or {}).get("completed") is False, 5, what="undone on the server")

    # delete asks for confirmation; Cancel keeps it, Delete removes it
    row.get_by_role("button", name=re.compile("^Delete")).click()
    row.get_by_role("button", name="Cancel").click()
    expect(row).to_be_visible()
    row.get_by_role("button", name=re.compile("^Delete")).click()
    row.locator("[data-action=confirm-delete]").click()
    expect(row).to_have_count(0)
    expect(count).to_have_text("0 tasks: 0 in progress, 0 done")
    wait_until(lambda: api.get(task["id"]) is None, 5, what="task deleted on the server")


def test_bulk_add_filters_and_clear_completed(cluster, api, page, tmp_path):
    open_dashboard(page, cluster.wait_for_leader(15))
    page.locator("#bulk summary").click()
    page.get_by_label("Task titles, one per line").fill("Buy milk\n\n  Call Sam  \nShip release\nBook flights\n")
    page.get_by_role("button", name="Add all").click()
    for t in ("Buy milk", "Call Sam", "Ship release", "Book flights"):
        expect(task_row(page, t)).to_be_visible()
    expect(page.get_by_label("Task titles, one per line")).to_have_value("")
    expect(page.locator("#task-count")).to_have_text("4 tasks: 4 in progress, 0 done")
    assert set(server_titles(api)) == {"Buy milk", "Call Sam", "Ship release", "Book flights"}

    task_row(page, "Buy milk").get_by_role("checkbox").check()
    task_row(page, "Call Sam").get_by_role("checkbox").check()
    expect(page.locator("#task-count")).to_have_text("4 tasks: 2 in progress, 2 done")
    page.get_by_role("button", name="Done", exact=True).click()
    expect(page.locator("#task-list li.task")).to_have_count(2)
    page.get_by_role("button", name="In progress", exact=True).click()
    expect(page.locator("#task-list li.task")).to_have_count(2)
    page.get_by_role("button", name="All", exact=True).click()
    expect(page.locator("#task-list li.task")).to_have_count(4)

    # a board screenshot for the docs, with a description and a done task visible
    task_row(page, "Ship release").get_by_role("button", name=re.compile("^Edit")).click()
    form = task_row(page, "Ship release").locator("form.edit")
    form.get_by_label("Description").fill("tag, build, publish")
    form.get_by_role("button", name="Save").click()
    expect(task_row(page, "Ship release").locator(".desc")).to_have_text("tag, build, publish")
    page.screenshot(path=str(screenshot_path(tmp_path, "dashboard.png")), full_page=True)

    page.get_by_role("button", name="Clear completed").click()
    page.get_by_role("button", name="Delete 2").click()
    expect(page.locator("#task-list li.task")).to_have_count(2)
    expect(page.locator("#task-count")).to_have_text("2 tasks: 2 in progress, 0 done")
    wait_until(lambda: set(server_titles(api)) == {"Ship release", "Book flights"}, 5, what="completed tasks deleted")


def test_changes_made_elsewhere_appear_live(cluster, api, page):
    leader = cluster.wait_for_leader(15)
    others = [u for u in cluster.urls if u != leader]
    open_dashboard(page, others[0])
    # created through another node with plain HTTP: visible within a second, no reload
    t0 = time.monotonic()
    task = api.create("Added by curl", "via another node", node=others[1])
    expect(task_row(page, "Added by curl")).to_be_visible(timeout=1500)
    assert time.monotonic() - t0 < 2.0
    # edits, completion and deletion elsewhere show up too
    api.update(task["id"], title="Renamed by curl", completed=True, node=leader)
    expect(task_row(page, "Renamed by curl")).to_have_class(re.compile(r"\bdone\b"), timeout=1500)
    api.delete(task["id"], node=others[1])
    expect(task_row(page, "Renamed by curl")).to_have_count(0, timeout=1500)

    # a change that lands while the user edits the same task is pointed out, the draft is kept
    other = api.create("Being edited", node=leader)
    row = task_row(page, "Being edited")
    row.get_by_role("button", name=re.compile("^Edit")).click()
    row.locator("form.edit").get_by_label("Description").fill("my draft")
    api.update(other["id"], completed=True, node=others[1])
    expect(row.locator("form.edit .err")).to_contain_text("changed elsewhere", timeout=1500)
    expect(row.locator("form.edit").get_by_label("Description")).to_have_value("my draft")
    # Saving is conditional (If-Match): the other change came first, so both versions are shown
    # and the user chooses; nothing is overwritten silently.
    row.locator("form.edit").get_by_role("button", name="Save").click()
    conflict = row.locator("form.edit .conflict")
    expect(conflict).to_contain_text("Someone else changed this task first")
    expect(conflict).to_contain_text("Theirs (v2)")
    expect(conflict).to_contain_text("my draft")
    assert api.get(other["id"])["description"] == "" and api.get(other["id"])["version"] == 2
    conflict.get_by_role("button", name="Save mine anyway").click()
    expect(row.locator(".desc")).to_have_text("my draft")
    assert api.get(other["id"])["version"] == 3
    expect(row).to_have_class(re.compile(r"\bdone\b"))


def test_changes_from_another_browser_appear(cluster, api, page_factory):
    a, b = page_factory(), page_factory()
    leader = cluster.wait_for_leader(15)
    open_dashboard(a, leader)
    open_dashboard(b, next(u for u in cluster.urls if u != leader))
    a.get_by_label("New task").fill("From browser A")
    a.get_by_label("New task").press("Enter")
    expect(task_row(b, "From browser A")).to_be_visible(timeout=1500)
    task_row(b, "From browser A").get_by_role("checkbox").check()
    expect(task_row(a, "From browser A")).to_have_class(re.compile(r"\bdone\b"), timeout=1500)


def test_polling_fallback_when_sse_is_unavailable(cluster, api, page):
    # every /events request is refused the way an overloaded node refuses it
    page.route(re.compile(r".*/events$"), lambda route: route.fulfill(
        status=503, content_type="application/json", body='{"error":"too_many_streams"}'))
    open_dashboard(page, cluster.wait_for_leader(15), live=False)
    expect(page.locator("#connection")).to_have_attribute("data-mode", "polling")
    api.create("Seen by polling")
    expect(task_row(page, "Seen by polling")).to_be_visible(timeout=2500)


def test_task_text_is_rendered_as_text(cluster, api, page):
    open_dashboard(page, cluster.wait_for_leader(15))
    evil = '<img src=x onerror="window.__xss=1;alert(1)">'
    api.create(evil, '<script>window.__xss=2</script><b>bold?</b>')
    row = task_row(page, evil)
    expect(row).to_be_visible()
    expect(row.locator(".title")).to_have_text(evil)
    expect(row.locator(".desc")).to_have_text('<script>window.__xss=2</script><b>bold?</b>')
    # typed into the form, too
    page.get_by_label("New task").fill('"><svg onload="window.__xss=3">')
    page.get_by_label("New task").press("Enter")
    expect(task_row(page, '"><svg onload="window.__xss=3">')).to_be_visible()
    assert page.locator("#task-list img, #task-list script, #task-list svg, #task-list b").count() == 0
    assert page.evaluate("window.__xss") is None
    # the page's own CSP is in force, so even a bug could not run injected script
    csp = page.locator('meta[http-equiv="Content-Security-Policy"]').get_attribute("content")
    assert "unsafe-inline" not in csp and "script-src 'sha256-" in csp


def test_cluster_panel_shows_every_node(cluster, api, page):
    leader = cluster.wait_for_leader(15)
    home = next(u for u in cluster.urls if u != leader)
    open_dashboard(page, home)
    body = page.locator("#cluster-body")
    for url in cluster.urls:
        expect(body.locator(f'tr[data-node="{url}"]')).to_be_visible()
    lead = body.locator(f'tr[data-node="{leader}"]')
    expect(lead).to_have_class("leader")
    expect(lead.locator(".tag.leader")).to_be_visible()
    expect(body.locator(".tag.leader")).to_have_count(1)
    expect(body.locator(f'tr[data-node="{home}"] .tag.here')).to_be_visible()
    expect(body.locator("td[data-label=Health]")).to_have_text(["Healthy"] * 3)
    api.create("bump the commit index")
    expect(lead.locator("td[data-label=Commit]")).to_have_text(re.compile(r"^[1-9]\d*$"), timeout=5000)
    expect(lead.locator("td[data-label=Term]")).to_have_text(re.compile(r"^\d+$"))
    expect(lead.locator("td[data-label=Lag]")).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator("#connection")).to_have_attribute("data-node", home)
    expect(page.locator("#connection-text")).to_contain_text(home)


def test_many_tasks_render_fast(cluster, api, page):
    n = 400
    leader = cluster.wait_for_leader(15)
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda i: api.create(f"Bulk task {i:03d}", node=leader), range(n)))
    # first load of hundreds of rows
    page.goto(leader + "/")
    expect(page.locator("#task-list li.task")).to_have_count(n)
    first = page.evaluate("window.pickleDashboard.state.lastRenderMs")
    assert first < 250, f"first render of {n} tasks took {first:.0f} ms"
    open_dashboard(page, leader)
    expect(page.locator("#task-list li.task")).to_have_count(n)
    expect(page.locator("#task-count")).to_have_text(f"{n} tasks: {n} in progress, 0 done")
    # a full re-render of hundreds of rows stays well inside one frame budget
    full = page.evaluate("""() => { const s = window.pickleDashboard.state;
        const t0 = performance.now(); document.querySelector('[data-filter=done]').click();
        document.querySelector('[data-filter=all]').click(); return [performance.now() - t0, s.lastRenderMs]; }""")
    assert full[0] < 100, f"switching filters over {n} tasks took {full[0]:.0f} ms"
    # a change elsewhere only touches one row and lands quickly
    api.create("One more on top")
    expect(page.locator("#task-list li.task").first.locator(".title")).to_have_text("One more on top", timeout=1500)
    assert page.evaluate("window.pickleDashboard.state.lastRenderMs") < 50


def test_every_task_shows_when_pages_end_at_the_byte_bound(cluster, api, page):
    n, description = 450, "x" * 10_000  # 4.5 MB of tasks: the server ends a 500-task page early
    leader = cluster.wait_for_leader(15)
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda i: api.create(f"Long task {i:03d}", description, node=leader), range(n)))
    first = api.s.get(f"{leader}/tasks?limit=500", timeout=10).json()
    assert len(first["tasks"]) < n and first["next_offset"] == len(first["tasks"])
    open_dashboard(page, leader)
    expect(page.locator("#task-count")).to_have_text(f"{n} tasks: {n} in progress, 0 done")
    expect(task_row(page, "Long task 000")).to_have_count(1)


def test_phone_layout_and_keyboard(cluster, api, page_factory):
    page = page_factory({"width": 375, "height": 740})
    open_dashboard(page, cluster.wait_for_leader(15))
    api.create("A rather long task title that has to wrap on a small phone screen without overflowing", "x" * 80)
    expect(page.locator("#task-list li.task")).to_have_count(1)
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"page scrolls sideways by {overflow}px on a phone"
    # keyboard only: focus the field, type, Enter; Tab reaches the controls of the new row
    page.get_by_label("New task").focus()
    page.keyboard.type("Typed on a phone")
    page.keyboard.press("Enter")
    row = task_row(page, "Typed on a phone")
    expect(row).to_be_visible()
    row.get_by_role("checkbox").focus()
    page.keyboard.press("Space")
    expect(row).to_have_class(re.compile(r"\bdone\b"))
    # every form control has an accessible name
    unnamed = page.evaluate("""() => [...document.querySelectorAll('input, textarea, button')]
        .filter(e => !e.closest('[hidden]') && !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                     && !e.textContent.trim()).map(e => e.outerHTML)""")
    assert unnamed == []

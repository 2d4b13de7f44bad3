"""Fixtures for the dashboard browser tests (headless Chromium via Playwright, real 3-node clusters).

Chromium comes from the system (`/usr/bin/chromium`, override with CHROMIUM or PICKLEDB_CHROMIUM); Playwright's own
browser download is not used. Set PICKLEDB_UPDATE_SCREENSHOTS=1 to refresh docs/dashboard.png and
docs/failover.png; otherwise screenshots go to the test's tmp dir.
"""
import os
import signal
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
for p in (str(ROOT), str(TESTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

from dashboard_helpers import Api  # noqa: E402

CHROMIUM = os.environ.get("PICKLEDB_CHROMIUM") or os.environ.get("CHROMIUM") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-quic", "--no-first-run",
]
SECRET = "browser-tests-cluster-secret"
HEARTBEAT = 0.1
ELECTION = 0.6
TEST_DEADLINE_S = 150          # hard backstop per test; the expect() timeouts are much shorter
UI_TIMEOUT_MS = 10_000

expect.set_options(timeout=UI_TIMEOUT_MS)


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: dashboard tests in a real headless Chromium")


# --- time bound ---------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _deadline(request):
    """Fail (rather than hang) a test that runs past TEST_DEADLINE_S."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def _expired(signum, frame):
        raise TimeoutError(f"{request.node.nodeid} exceeded {TEST_DEADLINE_S}s")

    old = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(TEST_DEADLINE_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --- cluster ------------------------------------------------------------------------------------

def _start_cluster(path):
    from harness import Cluster  # shared harness owned by the server core

    c = Cluster(path, n=3, secret=SECRET, heartbeat=HEARTBEAT, election=ELECTION)
    c.start()
    try:
        c.wait_for_leader(30)
    except BaseException:
        c.stop()
        raise
    return c


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 3-node cluster (with a cluster secret) shared by the tests of one module."""
    c = _start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def own_cluster(tmp_path):
    """A fresh 3-node cluster for tests that kill nodes."""
    c = _start_cluster(tmp_path / "cluster")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def api(cluster):
    a = Api(cluster)
    a.clear()
    return a


# --- browser ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def browser():
    assert Path(CHROMIUM).exists(), f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _new_page(browser, problems, viewport):
    ctx = browser.new_context(viewport=viewport)
    ctx.set_default_timeout(UI_TIMEOUT_MS)
    pg = ctx.new_page()
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("dialog", lambda d: (problems.append(f"unexpected dialog: {d.message}"), d.dismiss()))

    def on_console(m):
        # network errors from a killed node are expected; script errors and CSP violations are not
        if m.type == "error" and ("Content Security Policy" in m.text or "Uncaught" in m.text):
            problems.append(f"console: {m.text}")
    pg.on("console", on_console)
    return ctx, pg


@pytest.fixture
def page_factory(browser):
    """Open extra pages (e.g. a phone-sized one); all are checked for script errors at teardown."""
    problems, ctxs = [], []

    def make(viewport=None):
        ctx, pg = _new_page(browser, problems, viewport or {"width": 1280, "height": 900})
        ctxs.append(ctx)
        return pg

    yield make
    for c in ctxs:
        c.close()
    assert not problems, problems


@pytest.fixture
def page(page_factory):
    return page_factory()



"""The API reference page /docs in real Chromium, served by a real node process."""
import os
import subprocess
import sys

import pytest
import requests

import api_docs
from harness import ROOT, free_ports, wait_for
from test_openapi import documented_operations

pytestmark = pytest.mark.browser


def answers(url) -> bool:
    try:
        return requests.get(url + "/health", timeout=0.5).status_code == 200
    except requests.RequestException:
        return False


def test_docs_page_renders_without_csp_violations_or_external_requests(tmp_path, page):
    """The page loads Swagger UI from the node and renders every operation."""
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "node.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "demo_follower.py"), "--port", str(port),
                                 "--host", "127.0.0.1", "--peers", "", "--data-dir", str(tmp_path / "data")],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or answers(url), 15, "the node to answer")
        assert proc.poll() is None, (tmp_path / "node.log").read_text()
        violations, foreign, failed = [], [], []
        page.on("console", lambda msg: violations.append(msg.text)
                if "Content Security Policy" in msg.text or "Refused to" in msg.text else None)
        page.on("request", lambda req: foreign.append(req.url)
                if not req.url.startswith(url + "/") and not req.url.startswith("data:") else None)
        page.on("requestfailed", lambda req: failed.append(req.url))
        page.goto(url + "/docs")
        page.wait_for_selector(".opblock", timeout=15_000)
        shown = page.locator(".opblock").count()
        expected = len(documented_operations(api_docs.load_document()))
        assert shown == expected, f"{shown} operations shown, {expected} documented"
        page.locator("#operations-tasks-createTask").click()  # expand: renders its schema
        page.wait_for_selector("#operations-tasks-createTask .responses-wrapper", timeout=10_000)
        assert "Idempotency-Key" in page.content()
        assert not violations, violations
        assert not foreign, foreign
        assert not failed, failed
    finally:
        proc.terminate()
        proc.wait(10)

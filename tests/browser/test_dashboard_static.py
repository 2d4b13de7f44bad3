"""Static checks of the dashboard file: strict CSP, no HTML built from data, no external resources."""
import re

import pytest

from csp_hashes import DASHBOARD, expected

pytestmark = pytest.mark.browser

HTML = DASHBOARD.read_text(encoding="utf-8")
SCRIPT = re.search(r"<script>(.*?)</script>", HTML, re.S).group(1)


def test_csp_hashes_match_inline_script_and_style():
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', HTML).group(1)
    script_hash, style_hash = expected(HTML)
    assert f"script-src {script_hash};" in csp, "run: .venv/bin/python tests/browser/csp_hashes.py"
    assert f"style-src {style_hash};" in csp, "run: .venv/bin/python tests/browser/csp_hashes.py"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "default-src 'none'" in csp


def test_no_html_from_strings_and_no_inline_handlers():
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "setAttribute('on", 'setAttribute("on', "createContextualFragment"):
        assert sink not in SCRIPT, sink
    markup = HTML.replace(SCRIPT, "")
    assert not re.search(r"<[^>]+\son[a-z]+\s*=", markup, re.I), "inline event handler attribute"


def test_single_file_without_external_resources():
    assert HTML.count("<script") == 1 and "<script src" not in HTML
    assert not re.search(r'(src|href)="(https?:)?//', HTML), "no CDN or remote resources"
    assert "<link rel=\"stylesheet\"" not in HTML

"""CSP hashes of the dashboard's inline <script> and <style>.

The dashboard ships a strict Content-Security-Policy (no 'unsafe-inline'): the browser only runs the
inline script and style whose SHA-256 is listed. After editing examples/node_dashboard.html run
    .venv/bin/python tests/browser/csp_hashes.py
to refresh the hashes (test_dashboard_static.py checks they match).
"""
import base64
import hashlib
import re
import sys
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "node_dashboard.html"


def _hash(body):
    return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode() + "'"


def expected(html):
    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    style = re.search(r"<style>(.*?)</style>", html, re.S).group(1)
    return _hash(script), _hash(style)


def update(path=DASHBOARD):
    html = path.read_text(encoding="utf-8")
    script, style = expected(html)
    html = re.sub(r"script-src [^;\"]+;", lambda m: f"script-src {script};", html, count=1)
    html = re.sub(r"style-src [^;\"]+;", lambda m: f"style-src {style};", html, count=1)
    path.write_text(html, encoding="utf-8")
    return script, style


if __name__ == "__main__":
    print(*update(Path(sys.argv[1]) if len(sys.argv) > 1 else DASHBOARD))

"""TLS: tls.py's checks of certificates made with the openssl CLI (tests/tls_certs.py runs the
README's commands), the node's HTTPS server in this process (real sockets, real handshakes),
and node processes that refuse to start with a certificate they cannot use, or reload one on
SIGHUP."""
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import types

import pytest
import requests

from harness import ROOT, free_ports, wait_for
from http_server import HTTPServer, Limits
from test_http_server import App, assert_json_error, exchange, post_head, read_response
from tls import NodeTLS, TLSError, load, validate
from tls_certs import make_ca, make_node_cert, make_self_signed, openssl

MiB = 1024 * 1024
PEER_ROUTES = {"/replicate": 4 * MiB}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("certs"))
    make_ca(d)
    make_ca(d, "other")
    c = types.SimpleNamespace(dir=d, ca=os.path.join(d, "ca.crt"), other_ca=os.path.join(d, "other.crt"))
    c.node = make_node_cert(d, "node", "IP:127.0.0.1,DNS:localhost")
    c.second = make_node_cert(d, "second", "IP:127.0.0.1,DNS:localhost")
    c.expired = make_node_cert(d, "expired", "IP:127.0.0.1", expired=True)
    c.foreign = make_node_cert(d, "foreign", "IP:127.0.0.1", ca="other")
    c.elsewhere = make_node_cert(d, "elsewhere", "DNS:elsewhere.example,IP:192.0.2.77")
    c.self_signed = make_self_signed(d, "selfsigned", "IP:127.0.0.1")
    openssl("pkey", "-in", "node.key", "-aes256", "-passout", "pass:secret", "-out", "encrypted.key", cwd=d)
    c.encrypted_key = os.path.join(d, "encrypted.key")
    with open(os.path.join(d, "garbage.pem"), "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    c.garbage = os.path.join(d, "garbage.pem")
    return c


def flags(cert=None, key=None, ca=None, host="127.0.0.1"):
    return types.SimpleNamespace(tls_cert=cert, tls_key=key, tls_ca=ca, host=host)


# ------------------------------------------------------------------ tls.py checks
def test_a_node_certificate_signed_by_the_ca_loads_with_mutual_tls(certs):
    node_tls = load(flags(*certs.node, certs.ca))
    assert node_tls.verifies_peers and node_tls.requests_cert == certs.node
    assert node_tls.requests_verify == certs.ca
    assert node_tls.server_context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert node_tls.client_context.check_hostname and node_tls.client_context.verify_mode == ssl.CERT_REQUIRED
    assert load(flags()) is None  # no --tls-cert: plain HTTP
    assert load(flags(*certs.node, certs.ca, host="0.0.0.0")) is not None  # every address: no name to check


@pytest.mark.parametrize("case, expected", [
    ("expired", "certificate has expired"),
    ("self_signed", "self-signed certificate"),
    ("foreign", "unable to get local issuer certificate"),
    ("elsewhere", "does not name this node's address 127.0.0.1"),
    ("mismatched", "is not the key of --tls-cert"),
    ("missing", "cannot read --tls-cert"),
    ("directory", "cannot read --tls-key"),
    ("garbage", "expected a PEM certificate"),
    ("encrypted", "is encrypted"),
    ("bad_ca", "--tls-ca"),
])
def test_an_unusable_certificate_is_refused_with_one_clear_message(certs, case, expected):
    cert, key = certs.node
    ca = certs.ca
    if case in ("expired", "self_signed", "foreign", "elsewhere"):
        cert, key = getattr(certs, case)
    elif case == "mismatched":
        key = certs.second[1]
    elif case == "missing":
        cert = os.path.join(certs.dir, "no-such.crt")
    elif case == "directory":
        key = certs.dir  # unreadable as a file, even for root
    elif case == "garbage":
        cert = certs.garbage
    elif case == "encrypted":
        key = certs.encrypted_key
    elif case == "bad_ca":
        ca = certs.garbage
    with pytest.raises(TLSError) as refused:
        load(flags(cert, key, ca))
    message = str(refused.value)
    assert expected in message and "\n" not in message, message


def test_flags_that_only_work_together():
    assert validate(flags()) == []
    assert validate(flags("c", "k", "ca")) == []
    assert validate(flags("c")) == ["--tls-cert and --tls-key go together"]
    assert validate(flags(key="k")) == ["--tls-cert and --tls-key go together"]
    assert any("--tls-ca needs --tls-cert" in e for e in validate(flags(ca="ca")))


# ------------------------------------------------------------------ the HTTPS server in this process
@pytest.fixture
def serve_tls(certs):
    """serve_tls(node_tls=None, **limits) -> (server, app): the node's server speaking HTTPS,
    with mutual TLS for peer paths unless given another NodeTLS."""
    running = []

    def start(node_tls=None, **limits):
        app = App()
        node_tls = node_tls or NodeTLS(*certs.node, certs.ca, host="127.0.0.1")
        server = HTTPServer(app, "127.0.0.1", 0, PEER_ROUTES, limits=Limits(**limits), on_stop=app.stopped.set,
                            tls=node_tls)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread, app))
        return server, app
    yield start
    for server, thread, app in running:
        app.gate.set()
        server.stop()
        thread.join(5)
        assert not thread.is_alive()


def api_context(certs) -> ssl.SSLContext:
    """What an API client uses: the CA, no certificate of its own."""
    return ssl.create_default_context(cafile=certs.ca)


def node_context(certs, cert_key=None) -> ssl.SSLContext:
    """What a node uses to call a peer (tls.py's client context)."""
    return NodeTLS(*(cert_key or certs.node), certs.ca).client_context


def tls_exchange(port: int, context: ssl.SSLContext, data: bytes, host: str = "127.0.0.1", timeout: float = 5):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=host) as sock:
            sock.sendall(data)
            return read_response(sock, timeout)


def test_api_clients_need_no_certificate_and_node_to_node_requests_need_the_clusters(serve_tls, certs):
    server, _ = serve_tls()
    status, _, body = tls_exchange(server.port, api_context(certs), b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and json.loads(body)["path"] == "/hello"
    doc = assert_json_error(tls_exchange(server.port, api_context(certs), post_head("/replicate", 2) + b"{}"),
                            403, "forbidden")
    assert "--tls-ca" in doc["message"]
    status, _, body = tls_exchange(server.port, node_context(certs), post_head("/replicate", 2) + b"{}")
    assert status == 200 and json.loads(body) == {"path": "/replicate", "bytes": 2}


def test_a_certificate_from_another_ca_fails_the_handshake(serve_tls, certs, caplog):
    server, _ = serve_tls()
    foreign = ssl.create_default_context(cafile=certs.ca)
    foreign.load_cert_chain(*certs.foreign)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        with foreign.wrap_socket(raw, server_hostname="127.0.0.1") as sock:  # TLS 1.3: the server checks after
            with pytest.raises(ssl.SSLError, match="unknown ca"):
                sock.recv(1)
    wait_for(lambda: "TLS handshake with 127.0.0.1 failed" in caplog.text, 5, "the refusal in the log")


@pytest.mark.parametrize("case, expected", [
    ("expired", "certificate has expired"),
    ("self_signed", "self-signed certificate"),
    ("foreign", "unable to get local issuer certificate"),
    ("elsewhere", "IP address mismatch"),
])
def test_a_node_refuses_a_peer_whose_certificate_it_cannot_verify(serve_tls, certs, case, expected):
    server, _ = serve_tls(NodeTLS(*getattr(certs, case), None))  # a server that skipped the checks
    with pytest.raises(ssl.SSLCertVerificationError) as refused:
        tls_exchange(server.port, node_context(certs), post_head("/replicate", 2) + b"{}")
    assert expected in refused.value.verify_message


def test_plain_http_to_the_https_port_gets_a_400_at_once(serve_tls):
    server, _ = serve_tls()
    started = time.monotonic()
    doc = assert_json_error(exchange(server.port, b"GET /tasks HTTP/1.1\r\nHost: x\r\n\r\n"), 400, "bad_request")
    assert "https://" in doc["message"] and time.monotonic() - started < 1
    response = requests.get(f"http://127.0.0.1:{server.port}/tasks", timeout=5)
    assert response.status_code == 400 and response.json()["error"] == "bad_request"


def test_large_bodies_and_answers_cross_tls_intact(serve_tls, certs):
    server, app = serve_tls()
    body = os.urandom(3 * MiB)  # many TLS records: bytes OpenSSL holds back must be read too
    status, _, answer = tls_exchange(server.port, node_context(certs), post_head("/replicate", len(body)) + body)
    assert status == 200 and json.loads(answer)["bytes"] == len(body)
    app.big = 20  # over waitress's 16 MiB high-water mark: the worker waits for the I/O thread to send
    response = requests.get(f"https://127.0.0.1:{server.port}/big", verify=certs.ca, timeout=10)
    assert response.status_code == 200 and len(response.content) == 20 * MiB


def test_peer_requests_pass_clients_that_hold_every_thread(serve_tls, certs):
    server, app = serve_tls(client_threads=1)
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        with api_context(certs).wrap_socket(raw, server_hostname="127.0.0.1") as blocked:
            blocked.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(lambda: server.client_pool.active_count == 1, 5, "the client thread to block")
            started = time.monotonic()
            status, _, _ = tls_exchange(server.port, node_context(certs), post_head("/replicate", 2) + b"{}")
            assert status == 200 and time.monotonic() - started < 1
            app.gate.set()
            assert read_response(blocked)[0] == 200


def test_a_handshake_that_never_finishes_is_closed_at_the_head_deadline(serve_tls):
    server, _ = serve_tls(head_timeout=1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01\x02")  # the start of a ClientHello, then nothing
        started = time.monotonic()
        assert sock.recv(1024) == b""
        assert 0.8 < time.monotonic() - started < 4
    assert server.channels() == []


def test_a_flood_of_tls_connections_evicts_the_longest_waiting(serve_tls, certs):
    server, _ = serve_tls(client_connections=2)
    context = api_context(certs)
    opened = []
    try:
        for _ in range(2):
            sock = context.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=5),
                                       server_hostname="127.0.0.1")
            sock.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[0] == 200
            opened.append(sock)
        assert tls_exchange(server.port, context, b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
        assert opened[0].recv(1) == b""  # the oldest idle keep-alive connection was closed
        opened[1].sendall(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(opened[1])[0] == 200
    finally:
        for sock in opened:
            sock.close()


def served_subject(port: int, certs) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with api_context(certs).wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            return dict(part[0] for part in sock.getpeercert()["subject"])["commonName"]


def test_reload_serves_the_new_certificate_to_new_connections_and_keeps_the_old_on_error(serve_tls, certs, tmp_path):
    cert, key = str(tmp_path / "live.crt"), str(tmp_path / "live.key")
    shutil.copy(certs.node[0], cert)
    shutil.copy(certs.node[1], key)
    node_tls = NodeTLS(cert, key, certs.ca, host="127.0.0.1")
    server, _ = serve_tls(node_tls)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        with api_context(certs).wrap_socket(raw, server_hostname="127.0.0.1") as kept:
            assert served_subject(server.port, certs) == "node"
            shutil.copy(certs.second[0], cert)
            shutil.copy(certs.second[1], key)
            node_tls.reload()
            assert served_subject(server.port, certs) == "second"
            kept.sendall(b"GET /still HTTP/1.1\r\nHost: x\r\n\r\n")  # opened before: unchanged
            assert read_response(kept)[0] == 200
            shutil.copy(certs.expired[0], cert)
            shutil.copy(certs.expired[1], key)
            assert not node_tls.reload_logged()
            assert served_subject(server.port, certs) == "second"


# ------------------------------------------------------------------ node processes
def node_command(port: int, data_dir: str, *extra: str) -> list[str]:
    peer = free_ports(1)[0]
    return [sys.executable, os.path.join(ROOT, "demo_follower.py"), "--port", str(port), "--host", "127.0.0.1",
            "--peers", f"https://127.0.0.1:{peer}", "--data-dir", data_dir, *extra]


@pytest.mark.parametrize("case", ["missing", "mismatched", "expired", "foreign"])
def test_a_node_with_an_unusable_certificate_does_not_start(certs, tmp_path, case):
    cert, key = certs.node
    if case == "missing":
        key = str(tmp_path / "absent.key")
    elif case == "mismatched":
        key = certs.second[1]
    else:
        cert, key = getattr(certs, case)
    port = free_ports(1)[0]
    data_dir = str(tmp_path / "data")
    done = subprocess.run(node_command(port, data_dir, "--tls-cert", cert, "--tls-key", key, "--tls-ca", certs.ca),
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--tls-" in lines[0], done.stderr
    assert not os.path.exists(data_dir)  # nothing half-started


def test_a_node_reloads_its_certificate_on_sighup(certs, tmp_path):
    cert, key = str(tmp_path / "live.crt"), str(tmp_path / "live.key")
    shutil.copy(certs.node[0], cert)
    shutil.copy(certs.node[1], key)
    port = free_ports(1)[0]
    log_path = tmp_path / "node.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(node_command(port, str(tmp_path / "data"), "--tls-cert", cert, "--tls-key", key,
                                             "--tls-ca", certs.ca), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        def subject():
            try:
                return served_subject(port, certs)
            except OSError:
                return None
        assert wait_for(subject, 15, "the node to serve HTTPS") == "node"
        assert requests.get(f"https://127.0.0.1:{port}/health", verify=certs.ca, timeout=5).status_code == 200
        shutil.copy(certs.second[0], cert)
        shutil.copy(certs.second[1], key)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: subject() == "second", 10, "the new certificate")
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)
    assert "TLS certificate reloaded" in log_path.read_text()

"""Client tokens on real node processes: a follower forwards the caller's identity (never a
client's own claim of one), SIGHUP reloads the auth file, bad auth files and unprotected
non-loopback addresses stop a node at startup, and the token command."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import requests

from auth import CHALLENGE, IDENTITY_HEADER, IDENTITY_SIGNATURE_HEADER, read_auth_file
from harness import NODE_SCRIPT, ROOT, Cluster, NodeProc, wait_for

pytestmark = pytest.mark.cluster

SECRET = "auth-cluster-test-secret"
BASE_PORT = 22000
AUTH_SCRIPT = os.path.join(ROOT, "auth.py")


def add_token(path, name: str, role: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, AUTH_SCRIPT, "add", name, role, "--auth-file", str(path)],
                          capture_output=True, text=True, timeout=30)


class AuthNode(NodeProc):
    def command(self):
        return super().command() + ["--auth-file", self.auth_file]


class AuthCluster(Cluster):
    """Every node has its own copy of the auth file, so one can be changed alone."""

    def __init__(self, root, auth_file: str, reader_token: str, base_port: int = BASE_PORT, secret: str | None = SECRET):
        super().__init__(root, n=3, base_port=base_port, secret=secret, heartbeat=0.1, election=1.5)
        self.nodes = [AuthNode(self, node.index, node.port) for node in self.nodes]
        for node in self.nodes:
            node.auth_file = os.path.join(self.root, f"auth_{node.port}.json")
            shutil.copy(auth_file, node.auth_file)
            node.session.headers["Authorization"] = f"Bearer {reader_token}"  # for the harness's /status


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "auth.json"
    made = {}
    for name, role in (("reader", "read"), ("writer", "write"), ("boss", "admin")):
        result = add_token(path, name, role)
        assert result.returncode == 0, result.stderr
        made[name] = result.stdout.strip()
    return str(path), made


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tokens):
    path, made = tokens
    with AuthCluster(tmp_path_factory.mktemp("auth_cluster"), path, made["reader"]) as c:
        c.wait_for_leader()
        yield c


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def roles(cluster):
    leader = cluster.by_url(cluster.wait_for_leader())
    return leader, [n for n in cluster.nodes if n is not leader]


def rewrite(node, tokens_path, keep: dict, new_digests=()):
    """The node's auth file with only the entries named in `keep`, each with the given role (and
    a digest of another token for the names in `new_digests`), then SIGHUP."""
    entries = [dict(entry, role=keep[entry["name"]], **({"sha256": "f" * 64} if entry["name"] in new_digests else {}))
               for entry in read_auth_file(tokens_path) if entry["name"] in keep]
    with open(node.auth_file + ".new", "w") as f:
        json.dump({"tokens": entries}, f)
    os.chmod(node.auth_file + ".new", 0o600)
    os.replace(node.auth_file + ".new", node.auth_file)
    node.proc.send_signal(signal.SIGHUP)


def test_follower_checks_the_token_and_forwards_the_identity(cluster, tokens):
    _, made = tokens
    leader, (follower, other) = roles(cluster)
    r = requests.post(follower.url + "/tasks", json={"title": "via follower"}, headers=bearer(made["writer"]), timeout=10)
    assert r.status_code == 201, r.text
    task = r.json()
    assert requests.get(f"{other.url}/tasks/{task['id']}", headers=bearer(made["reader"]), timeout=10).json() == task
    r = requests.post(follower.url + "/tasks", json={"title": "no"}, headers=bearer(made["reader"]), timeout=10)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    r = requests.post(follower.url + "/tasks", json={"title": "no"}, timeout=10)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == CHALLENGE
    # A client claiming an identity, to a follower or to the leader, with or without a token.
    for node in (follower, leader):
        for forged in ({IDENTITY_HEADER: "boss:admin", IDENTITY_SIGNATURE_HEADER: "1700000000:00"},
                       {IDENTITY_HEADER: "boss:admin", **bearer(made["reader"])}):
            r = requests.post(node.url + "/tasks", json={"title": "forged"}, headers=forged, timeout=10)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
    titles = [t["title"] for t in requests.get(leader.url + "/tasks", headers=bearer(made["reader"]),
                                               timeout=10).json()["tasks"]]
    assert titles == ["via follower"]


def test_a_node_holding_the_secret_joins_without_a_token(cluster, tokens):
    """--join signs its request with the cluster secret: a new node needs no admin token, and a
    node with another secret is refused."""
    path, made = tokens
    leader, (follower, _) = roles(cluster)

    def member_ids():
        r = requests.get(leader.url + "/cluster/members", headers=bearer(made["reader"]), timeout=5)
        return {m["id"] for m in r.json()["members"]}
    joiner = AuthNode(cluster, 3, BASE_PORT + 20, join=[follower.url])
    joiner.auth_file = os.path.join(cluster.root, "auth_joiner.json")
    shutil.copy(path, joiner.auth_file)
    joiner.session.headers["Authorization"] = f"Bearer {made['reader']}"
    impostor = AuthNode(cluster, 4, BASE_PORT + 21, join=[follower.url])
    impostor.auth_file = joiner.auth_file
    impostor.session.headers["Authorization"] = f"Bearer {made['reader']}"
    impostor.extra_args = ["--cluster-secret", "another secret"]  # the last one given wins
    try:
        joiner.start()
        wait_for(lambda: joiner.id in member_ids(), 30, "the new node to be a member")
        impostor.start()
        wait_for(lambda: "cannot join" in impostor.log_tail(50), 20, "the impostor to be refused")
        assert "HTTP 401" in impostor.log_tail(50) and impostor.id not in member_ids()
        r = requests.delete(f"{leader.url}/cluster/members/{joiner.id}", headers=bearer(made["boss"]), timeout=30)
        assert r.status_code == 200, r.text
    finally:
        joiner.stop()
        impostor.stop()


def test_sighup_reloads_the_auth_file(cluster, tokens):
    path, made = tokens
    leader, (follower, _) = roles(cluster)
    # The leader knows the writer by name but not this token: the follower vouches for the caller,
    # the token itself never reaches the leader.
    rewrite(leader, path, {"reader": "read", "writer": "write", "boss": "admin"}, new_digests={"writer"})
    wait_for(lambda: requests.get(leader.url + "/tasks", headers=bearer(made["writer"]), timeout=5).status_code == 401,
             10, "the leader to reload its auth file")
    r = requests.post(follower.url + "/tasks", json={"title": "vouched"}, headers=bearer(made["writer"]), timeout=10)
    assert r.status_code == 201, r.text
    # The leader drops the writer: a follower still accepts the token but the leader refuses its
    # identity (revocation on the leader reaches forwarded requests too).
    rewrite(leader, path, {"reader": "read", "boss": "admin"})
    wait_for(lambda: requests.get(leader.url + "/tasks", headers=bearer(made["writer"]), timeout=5).status_code == 401,
             10, "the leader to reload its auth file")
    r = requests.post(follower.url + "/tasks", json={"title": "revoked"}, headers=bearer(made["writer"]), timeout=10)
    assert r.status_code == 401, r.text
    # Demoted on the leader only: the lesser role wins.
    rewrite(leader, path, {"reader": "read", "writer": "read", "boss": "admin"})
    wait_for(lambda: requests.get(leader.url + "/tasks", headers=bearer(made["writer"]), timeout=5).status_code == 200,
             10, "the leader to reload its auth file")
    r = requests.post(follower.url + "/tasks", json={"title": "demoted"}, headers=bearer(made["writer"]), timeout=10)
    assert r.status_code == 403, r.text
    # Revoked on the follower: refused there.
    rewrite(follower, path, {"writer": "write", "boss": "admin"})
    wait_for(lambda: requests.get(follower.url + "/tasks?consistency=stale", headers=bearer(made["reader"]),
                                  timeout=5).status_code == 401, 10, "the follower to reload its auth file")
    # A broken file on reload keeps the tokens in effect and logs one error line.
    with open(follower.auth_file, "w") as f:
        f.write("{broken")
    follower.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "not reloaded" in follower.log_tail(200), 10, "the reload error")
    assert follower.log_tail(500).count("auth file not reloaded") == 1
    r = requests.get(follower.url + "/tasks?consistency=stale", headers=bearer(made["boss"]), timeout=5)
    assert r.status_code == 200 and follower.alive
    assert made["boss"] not in follower.log_tail(1000) and made["writer"] not in leader.log_tail(1000)


def test_without_a_secret_the_leader_checks_the_token_again(tmp_path, tokens):
    """Loopback dev mode: no key to sign an identity with, so the token itself is forwarded."""
    path, made = tokens
    with AuthCluster(tmp_path, path, made["reader"], base_port=BASE_PORT + 30, secret=None) as cluster:
        leader, (follower, _) = roles(cluster)
        r = requests.post(follower.url + "/tasks", json={"title": "t"}, headers=bearer(made["writer"]), timeout=10)
        assert r.status_code == 201, r.text
        r = requests.post(follower.url + "/tasks", json={"title": "t"}, headers=bearer(made["reader"]), timeout=10)
        assert r.status_code == 403, r.text
        rewrite(leader, path, {"reader": "read"})
        wait_for(lambda: requests.get(leader.url + "/tasks", headers=bearer(made["writer"]), timeout=5).status_code
                 == 401, 10, "the leader to reload its auth file")
        r = requests.post(follower.url + "/tasks", json={"title": "t"}, headers=bearer(made["writer"]), timeout=10)
        assert r.status_code == 401 and r.json()["message"] == "unknown or revoked token", r.text
        forged = {IDENTITY_HEADER: "boss:admin", IDENTITY_SIGNATURE_HEADER: "1700000000:00"}
        assert requests.get(follower.url + "/tasks", headers=forged, timeout=10).status_code == 401


def start_node(port: int, *extra: str, host: str = "127.0.0.1") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, NODE_SCRIPT, "--port", str(port), "--host", host,
                             "--peers", f"http://127.0.0.1:{port + 1}", "--cluster-secret", SECRET, *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_startup_refuses_bad_auth_files_and_unprotected_addresses(tmp_path, tokens):
    good = tokens[0]
    files = {"missing": tmp_path / "missing.json", "directory": tmp_path}
    for name, content in {"json": "{", "role": '{"tokens": [{"name": "a", "role": "root", "sha256": "%s"}]}' % ("a" * 64),
                          "field": '{"tokens": [{"name": "a", "role": "read"}]}', "open": open(good).read()}.items():
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(content)
        os.chmod(files[name], 0o600)
    os.chmod(files["open"], 0o666)
    cases = {"missing": "does not exist", "directory": "cannot read auth file", "json": "is not valid JSON",
             "role": "'role' must be one of", "field": "exactly the fields name, role, sha256",
             "open": "writable by every user"}
    port = BASE_PORT + 10
    procs = {name: start_node(port + 2 * i, "--data-dir", str(tmp_path / f"d{i}"), "--auth-file", str(files[name]))
             for i, name in enumerate(cases)}
    procs["no auth file"] = start_node(port + 20, "--data-dir", str(tmp_path / "d20"), host="0.0.0.0")
    cases["no auth file"] = "refusing to listen on a non-loopback address without --auth-file"
    insecure = start_node(port + 22, "--data-dir", str(tmp_path / "d22"), "--insecure", host="0.0.0.0")
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=30)
            lines = err.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1, (name, err)
            assert lines[0].startswith("error: ") and cases[name] in lines[0], (name, err)
        assert not os.path.exists(tmp_path / "d0")  # refused before anything was created
        wait_for(lambda: insecure.poll() is not None or requests.get(
            f"http://127.0.0.1:{port + 22}/tasks?consistency=stale", timeout=1).status_code == 200, 15,
            "the --insecure node to serve without tokens")
        assert insecure.poll() is None
    finally:
        for proc in (*procs.values(), insecure):
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


def test_token_command(tmp_path):
    path = tmp_path / "auth.json"
    result = add_token(path, "alice", "write")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token not in result.stderr and token not in path.read_text()
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [(t["name"], t["role"]) for t in read_auth_file(str(path))] == [("alice", "write")]
    again = add_token(path, "alice", "read")
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.strip().splitlines() == [f"error: auth file {path} already has a token named 'alice'"]
    assert add_token(path, "bob", "root").returncode == 2
    assert [t["name"] for t in read_auth_file(str(path))] == ["alice"]

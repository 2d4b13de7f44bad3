"""Client tokens and roles on a real node through Flask's test client: 401/403/429, the
permission of every route in the app's url_map against the contract's table, forwarded
identities, reload, the auth file's checks and the token command's function."""
import argparse
import hashlib
import json
import logging
import os
import re
import stat

import pytest

import auth
from auth import (CHALLENGE, IDENTITY_HEADER, IDENTITY_SIGNATURE_HEADER, AuthFileError, Authenticator,
                  FailureLimiter, client_key, create_token, read_auth_file)
from test_api import api_client, assert_error, node  # noqa: F401 (the fixture)

TOKENS = {"reader": ("read", "r-token-0123456789"), "writer": ("write", "w-token-0123456789"),
          "boss": ("admin", "a-token-0123456789")}
ROLE_ORDER = ("read", "write", "admin")


def write_auth_file(path, tokens=TOKENS) -> str:
    path = str(path)
    with open(path, "w") as f:
        json.dump({"tokens": [{"name": name, "role": role, "sha256": hashlib.sha256(token.encode()).hexdigest()}
                              for name, (role, token) in tokens.items()]}, f)
    os.chmod(path, 0o600)
    return path


def bearer(name: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[name][1]}"}


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def auth_file(tmp_path):
    return write_auth_file(tmp_path / "auth.json")


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def authenticator(auth_file, clock):
    return Authenticator(auth_file, limiter=FailureLimiter(limit=3, window=60, capacity=100, clock=clock))


@pytest.fixture
def client(node, authenticator):  # noqa: F811
    return api_client(node, authenticator=authenticator)


# ------------------------------------------------------------------ the contract's table

OPEN_PATHS = re.compile(r"/|/health|/livez|/readyz|/openapi\.json|/docs.*|/auth/.*")
READ_PATHS = re.compile(r"/tasks.*|/jobs.*|/events|/status|/cluster/status|/heartbeat|/metrics|/cluster/members")


def contract_permission(method: str, rule: str) -> str:
    """CONTRACT.md's permission table; a route it does not classify fails the test."""
    if OPEN_PATHS.fullmatch(rule):
        return "open"
    if (method in ("POST", "DELETE") and re.fullmatch(r"/cluster/members.*", rule)
            or (method, rule) in {("POST", "/cluster/leader"), ("GET", "/cluster/backup"), ("HEAD", "/cluster/backup")}):
        return "admin"
    if method in ("POST", "PUT", "DELETE") and re.fullmatch(r"/tasks.*", rule) or (method, rule) == ("POST", "/set"):
        return "write"
    if method in ("GET", "HEAD") and READ_PATHS.fullmatch(rule):
        return "read"
    raise AssertionError(f"{method} {rule} is not in the contract's permission table: classify it")


def concrete_path(rule) -> str:
    return re.sub(r"<[^>]+>", "x1", rule.rule)


def routes(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted(rule.methods - {"OPTIONS"}):
            yield method, rule


def call(client, method, path, headers=None):
    kwargs = {"json": {}} if method in ("POST", "PUT") else {}
    response = client.open(path, method=method, headers=headers or {}, **kwargs)
    response.close()  # an event stream is never read
    return response


def test_every_route_has_the_contracts_permission(client):
    app = client.application
    seen = 0
    for method, rule in routes(app):
        expected = contract_permission(method, rule.rule)
        assert auth.permission_of(app.view_functions[rule.endpoint]) == (
            expected if method != "HEAD" else contract_permission("GET", rule.rule)), f"{method} {rule.rule}"
        path = concrete_path(rule)
        anonymous = call(client, method, path)
        if expected == "open":
            assert anonymous.status_code not in (401, 403), f"{method} {rule.rule} should be open"
            continue
        assert anonymous.status_code == 401, f"{method} {rule.rule} without a token"
        assert anonymous.headers["WWW-Authenticate"] == CHALLENGE
        for name, (role, _) in TOKENS.items():
            status = call(client, method, path, bearer(name)).status_code
            if ROLE_ORDER.index(role) >= ROLE_ORDER.index(expected):
                assert status not in (401, 403, 429), f"{method} {rule.rule} with a {role} token: {status}"
            else:
                assert status == 403, f"{method} {rule.rule} with a {role} token: {status}"
        seen += 1
    assert seen >= 10  # the app's routes were really walked


def test_missing_unknown_and_forbidden_answers(client):
    body = assert_error(client.get("/tasks"), 401, "unauthorized")
    assert "Bearer" in body["message"]
    r = client.get("/tasks", headers={"Authorization": "Bearer not-a-known-token"})
    assert_error(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"] == CHALLENGE + ', error="invalid_token"'
    r = client.post("/tasks", json={"title": "x"}, headers=bearer("reader"))
    body = assert_error(r, 403, "forbidden")
    assert "reader" in body["message"] and "'write'" in body["message"]
    assert "WWW-Authenticate" not in r.headers
    r = client.post("/tasks", json={"title": "x"}, headers=bearer("writer"))
    assert r.status_code == 201
    assert client.get("/tasks", headers=bearer("reader")).get_json()["total"] == 1


MALFORMED = ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc", "Bearer a b", "Bearer a,b", "Bearer ab=c",
             "Bearer " + "a" * 600, " Bearer abc", "Bearer\tabc", "Bearer abc;", "Bearer r-token-0123456789 x"]


def test_malformed_authorization_headers(client):
    bodies = set()
    for number, value in enumerate(MALFORMED):
        r = client.get("/tasks", headers={"Authorization": value}, environ_base={"REMOTE_ADDR": f"192.0.2.{number}"})
        body = assert_error(r, 401, "unauthorized")
        assert "malformed Authorization header" in body["message"], value
        assert r.headers["WWW-Authenticate"] == CHALLENGE + ', error="invalid_request"'
        bodies.add(r.get_data())
    assert len(bodies) == 1  # the same answer whatever was sent: the header is never echoed


def test_scheme_is_case_insensitive(client):
    assert client.get("/tasks", headers={"Authorization": "bearer " + TOKENS["reader"][1]}).status_code == 200


def test_open_routes_need_no_token(client):
    assert client.get("/health").status_code == 200
    assert client.get("/").status_code == 200


def test_without_an_authenticator_everything_is_open(node):  # noqa: F811
    plain = api_client(node)
    assert plain.post("/tasks", json={"title": "open"}).status_code == 201
    assert plain.get("/status").status_code == 200


def test_cors_preflight_allows_the_authorization_header(client):
    origin = client.node_url
    r = client.options("/tasks", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                          "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status_code == 200
    assert "authorization" in r.headers["Access-Control-Allow-Headers"].lower()
    assert r.headers["Access-Control-Allow-Origin"] == origin


# ------------------------------------------------------------------ failed attempts


def test_failed_attempts_are_limited_per_address(client, clock):
    attacker, other = {"REMOTE_ADDR": "198.51.100.7"}, {"REMOTE_ADDR": "198.51.100.8"}
    for _ in range(10):  # missing tokens are not attempts, successes are not failures
        assert client.get("/tasks", environ_base=attacker).status_code == 401
        assert client.get("/tasks", headers=bearer("reader"), environ_base=attacker).status_code == 200
    for value in ("Bearer wrong-1", "Basic x", "Bearer wrong-2"):
        assert client.get("/tasks", headers={"Authorization": value}, environ_base=attacker).status_code == 401
    r = client.get("/tasks", headers=bearer("reader"), environ_base=attacker)  # even a good token now
    assert_error(r, 429, "too_many_attempts")
    assert r.headers["Retry-After"] == "61"
    assert client.get("/tasks", headers=bearer("reader"), environ_base=other).status_code == 200
    assert client.get("/health", environ_base=attacker).status_code == 200
    clock.now += 30
    assert client.get("/tasks", headers=bearer("reader"), environ_base=attacker).headers["Retry-After"] == "31"
    clock.now += 31
    assert client.get("/tasks", headers=bearer("reader"), environ_base=attacker).status_code == 200


def test_failure_table_is_bounded():
    clock = FakeClock()
    limiter = FailureLimiter(limit=2, window=60, capacity=100, clock=clock)
    for i in range(5000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter.windows) == 100
    limiter.failed("10.9.9.9")
    assert limiter.failed("10.9.9.9") is True and limiter.retry_after("10.9.9.9") == 60


def test_ipv6_clients_are_counted_per_64():
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.1") == client_key("192.0.2.1") == "192.0.2.1"


def test_tokens_are_never_logged(client, caplog):
    caplog.set_level(logging.DEBUG)
    presented = [TOKENS["writer"][1], "guess-0123456789abcdef", "Basic c2VjcmV0LXBhc3N3b3Jk"]
    for value in presented:
        for _ in range(4):  # also past the limit, which logs a line
            client.get("/tasks", headers={"Authorization": value if " " in value else f"Bearer {value}"})
    assert any("failed attempts" in record.getMessage() for record in caplog.records)
    text = "\n".join(record.getMessage() for record in caplog.records) + caplog.text
    for value in presented:
        assert value.split()[-1] not in text


# ------------------------------------------------------------------ forwarded identities


def forwarded_headers(signer, name, role, method, path, client, body=b""):
    return signer.identity_headers(auth.Identity(name, role), method, path, client.node_url.split("//")[1], body)


def test_forwarded_identity_is_accepted_only_when_signed(node, auth_file):  # noqa: F811
    leader = Authenticator(auth_file, "cluster-secret")
    client = api_client(node, authenticator=leader)
    follower = Authenticator(auth_file, "cluster-secret")
    body = json.dumps({"title": "via follower"}).encode()
    headers = forwarded_headers(follower, "writer", "write", "POST", "/tasks", client, body)
    r = client.post("/tasks", data=body, content_type="application/json", headers=headers)
    assert r.status_code == 201, r.get_data(as_text=True)
    # The same signature for another body, another target, or from a node with another secret.
    r = client.post("/tasks", data=b'{"title": "changed"}', content_type="application/json", headers=headers)
    assert_error(r, 401, "unauthorized")
    assert_error(client.get("/tasks", headers=forwarded_headers(follower, "writer", "write", "GET", "/jobs", client)),
                 401, "unauthorized")
    stranger = Authenticator(auth_file, "another-secret")
    assert_error(client.get("/tasks", headers=forwarded_headers(stranger, "boss", "admin", "GET", "/tasks", client)),
                 401, "unauthorized")
    # A client's own identity header, with or without a made-up signature, even next to a good token.
    for forged in ({IDENTITY_HEADER: "boss:admin"},
                   {IDENTITY_HEADER: "boss:admin", IDENTITY_SIGNATURE_HEADER: "1:00"},
                   {IDENTITY_HEADER: "boss:admin", **bearer("boss")}):
        body = assert_error(client.get("/tasks", headers=forged), 401, "unauthorized")
        assert IDENTITY_HEADER in body["message"]


def test_forwarded_identity_expires_and_follows_the_leaders_file(node, tmp_path, monkeypatch):  # noqa: F811
    path = write_auth_file(tmp_path / "auth.json")
    leader = Authenticator(path, "cluster-secret", FailureLimiter(limit=3))
    client = api_client(node, authenticator=leader)
    follower = Authenticator(path, "cluster-secret")
    old = forwarded_headers(follower, "reader", "read", "GET", "/tasks", client)
    assert client.get("/tasks", headers=old).status_code == 200
    real_time = auth.time.time
    monkeypatch.setattr(auth.time, "time", lambda: real_time() + 31)
    assert "old" in assert_error(client.get("/tasks", headers=old), 401)["message"]
    monkeypatch.undo()
    # The leader's file demotes the writer and drops the reader: the lesser role wins.
    write_auth_file(path, {"writer": ("read", TOKENS["writer"][1])})
    assert leader.reload()
    r = client.post("/tasks", json={"title": "x"}, headers=forwarded_headers(
        follower, "writer", "write", "POST", "/tasks", client, b'{"title": "x"}'))
    assert_error(r, 403, "forbidden")
    # Refusing a revoked caller's forwarded identity does not count against the follower's address.
    for _ in range(5):
        assert_error(client.get("/tasks", headers=forwarded_headers(follower, "reader", "read", "GET", "/tasks", client)),
                     401, "unauthorized")
    assert client.get("/tasks", headers=forwarded_headers(follower, "writer", "write", "GET", "/tasks", client)
                      ).status_code == 200


def test_identity_headers_need_a_cluster_secret(client):
    # Without a secret (loopback dev mode) nothing can prove an identity: the token travels instead.
    signer = Authenticator(client.application.extensions["pickledb"].authenticator.path, "s")
    assert_error(client.get("/tasks", headers=forwarded_headers(signer, "boss", "admin", "GET", "/tasks", client)),
                 401, "unauthorized")


# ------------------------------------------------------------------ reload


def test_reload_revokes_and_a_bad_file_keeps_the_old_tokens(client, authenticator, auth_file, caplog):
    assert client.get("/tasks", headers=bearer("writer")).status_code == 200
    write_auth_file(auth_file, {name: TOKENS[name] for name in ("reader", "boss")})
    assert authenticator.reload()
    assert_error(client.get("/tasks", headers=bearer("writer")), 401, "unauthorized")
    with open(auth_file, "w") as f:
        f.write('{"tokens": [')
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="pickledb_cluster.auth"):
        assert authenticator.reload() is False
    assert len(caplog.records) == 1 and "previous tokens stay in effect" in caplog.records[0].getMessage()
    assert client.get("/tasks", headers=bearer("reader")).status_code == 200


# ------------------------------------------------------------------ the auth file


DIGEST = "a" * 64


@pytest.mark.parametrize("content, problem", [
    (b"", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[]", 'must be a JSON object {"tokens"'),
    (b'{"tokens": {}}', 'must be a JSON object {"tokens"'),
    (b'{"tokens": [], "extra": 1}', 'must be a JSON object {"tokens"'),
    (b'{"tokens": ["x"]}', "token 0 must be an object with exactly the fields name, role, sha256"),
    (json.dumps({"tokens": [{"name": "a", "role": "read"}]}).encode(), "exactly the fields"),
    (json.dumps({"tokens": [{"name": "a", "role": "read", "sha256": DIGEST, "x": 1}]}).encode(), "exactly the fields"),
    (json.dumps({"tokens": [{"name": "", "role": "read", "sha256": DIGEST}]}).encode(), "'name' must be"),
    (json.dumps({"tokens": [{"name": "a:b", "role": "read", "sha256": DIGEST}]}).encode(), "'name' must be"),
    (json.dumps({"tokens": [{"name": 5, "role": "read", "sha256": DIGEST}]}).encode(), "'name' must be"),
    (json.dumps({"tokens": [{"name": "a", "role": "root", "sha256": DIGEST}]}).encode(), "'role' must be one of"),
    (json.dumps({"tokens": [{"name": "a", "role": "read", "sha256": "A" * 64}]}).encode(), "64 lowercase hex"),
    (json.dumps({"tokens": [{"name": "a", "role": "read", "sha256": DIGEST[:-1]}]}).encode(), "64 lowercase hex"),
    (json.dumps({"tokens": [{"name": "a", "role": "read", "sha256": DIGEST},
                            {"name": "a", "role": "write", "sha256": "b" * 64}]}).encode(), "appears twice"),
    (json.dumps({"tokens": [{"name": "a", "role": "read", "sha256": DIGEST},
                            {"name": "b", "role": "write", "sha256": DIGEST}]}).encode(), "appears twice"),
])
def test_malformed_auth_files_are_refused(tmp_path, content, problem):
    path = tmp_path / "auth.json"
    path.write_bytes(content)
    with pytest.raises(AuthFileError, match=re.escape(problem)) as caught:
        read_auth_file(str(path))
    assert str(path) in str(caught.value)


def test_missing_unusable_and_world_writable_files_are_refused(tmp_path):
    with pytest.raises(AuthFileError, match="does not exist"):
        read_auth_file(str(tmp_path / "nope.json"))
    with pytest.raises(AuthFileError, match="cannot read auth file"):
        read_auth_file(str(tmp_path))  # a directory
    path = write_auth_file(tmp_path / "auth.json")
    os.chmod(path, 0o606)
    with pytest.raises(AuthFileError, match="writable by every user"):
        read_auth_file(path)
    os.chmod(path, 0o640)
    assert [t["name"] for t in read_auth_file(path)] == list(TOKENS)


def test_create_token_stores_only_the_digest(tmp_path):
    path = str(tmp_path / "new" / "auth.json")
    os.makedirs(os.path.dirname(path))
    token = create_token(path, "alice", "write")
    assert len(token) >= 43 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as f:
        text = f.read()
    assert token not in text
    assert json.loads(text) == {"tokens": [{"name": "alice", "role": "write",
                                            "sha256": hashlib.sha256(token.encode()).hexdigest()}]}
    os.chmod(path, 0o640)
    second = create_token(path, "bob", "admin")
    assert second != token and stat.S_IMODE(os.stat(path).st_mode) == 0o640
    identities = Authenticator(path).by_digest
    assert identities[hashlib.sha256(second.encode()).hexdigest()] == auth.Identity("bob", "admin")
    with pytest.raises(AuthFileError, match="already has a token named 'alice'"):
        create_token(path, "alice", "read")
    with pytest.raises(AuthFileError, match="role must be one of"):
        create_token(path, "carol", "root")
    with pytest.raises(AuthFileError, match="name must be"):
        create_token(path, "carol:x", "read")
    assert sorted(os.listdir(os.path.dirname(path))) == ["auth.json"]  # no temporary file left


def test_startup_needs_an_auth_file_off_loopback(tmp_path):
    def args(**kw):
        return argparse.Namespace(**{"auth_file": None, "insecure": False, "cluster_secret": "s", **kw})
    assert auth.authenticator_from_args(args(), loopback=True) is None
    with pytest.raises(AuthFileError, match="--auth-file.*--insecure"):
        auth.authenticator_from_args(args(), loopback=False)
    assert auth.authenticator_from_args(args(insecure=True), loopback=False) is None
    path = write_auth_file(tmp_path / "auth.json")
    built = auth.authenticator_from_args(args(auth_file=path), loopback=False)
    assert built.signs_identities and len(built.by_digest) == 3

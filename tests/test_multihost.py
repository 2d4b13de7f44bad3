"""Three nodes as three hosts: one network namespace each, joined by veth links to a bridge, on
documentation-range addresses (198.51.100.0/24: CI machines, this one included, may use
192.0.2.0/24 themselves; the test refuses to run on a subnet in use), speaking HTTPS with mutual TLS between nodes.
Clients need a token. Writes, reads, the leader killed, a host cut off by taking its link down
and healed: nothing acknowledged is lost. A peer with a certificate from another CA, a client
without a token and a read token trying to write are refused. Needs root (CI runs
as root); the namespaces, links and bridge go away in a finally, even when the test fails."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from harness import ROOT, wait_for
from tls_certs import make_ca, make_node_cert

PORT = 23500  # the same port on every host, as on real machines
SUBNET = "198.51.100"
BRIDGE_ADDRESS = f"{SUBNET}.1"  # the test (an API client) talks from the root namespace
SECRET = "multihost-secret"
HEARTBEAT, ELECTION = 0.1, 0.6
WRITES_PER_PHASE = 15


def add_token(auth_file: str, name: str, role: str) -> str:
    """A new token from the documented command (it prints the token once, stores its digest)."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "auth.py"), "add", name, role, "--auth-file", auth_file],
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Network:
    """A bridge in the root namespace, and per host a namespace whose veth link ends on it."""

    def __init__(self, hosts: int):
        tag = os.getpid() % 100000
        self.bridge = f"pdbbr{tag}"
        self.namespaces = [f"pdb{tag}h{i}" for i in range(hosts)]
        self.links = [f"pdb{tag}v{i}" for i in range(hosts)]  # the root end of each host's link
        self.addresses = [f"{SUBNET}.{11 + i}" for i in range(hosts)]

    def create(self) -> None:
        in_use = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
        if f" {SUBNET}." in in_use:
            raise RuntimeError(f"{SUBNET}.0/24 is in use on this machine: the test would disturb it")
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for ns, link, address in zip(self.namespaces, self.links, self.addresses):
            ip("netns", "add", ns)
            ip("link", "add", link, "type", "veth", "peer", "name", f"{link}n")
            ip("link", "set", f"{link}n", "netns", ns)
            ip("link", "set", link, "master", self.bridge)
            ip("link", "set", link, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", f"{link}n")
            ip("-n", ns, "link", "set", f"{link}n", "up")

    def cut(self, host: int) -> None:
        ip("link", "set", self.links[host], "down")

    def heal(self, host: int) -> None:
        ip("link", "set", self.links[host], "up")

    def destroy(self) -> None:
        for ns, link in zip(self.namespaces, self.links):
            for args in (("link", "del", link), ("netns", "del", ns)):
                subprocess.run(["ip", *args], capture_output=True, timeout=10)  # whatever exists
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=10)


class Host:
    def __init__(self, net: Network, index: int, root: str, certs: str, auth_file: str, reader: str):
        self.net, self.index = net, index
        self.address = net.addresses[index]
        self.url = f"https://{self.address}:{PORT}"
        self.data_dir = os.path.join(root, f"data{index}")
        self.log_path = os.path.join(root, f"node{index}.log")
        self.cert = (os.path.join(certs, f"node{index}.crt"), os.path.join(certs, f"node{index}.key"))
        self.ca = os.path.join(certs, "ca.crt")
        self.auth_file = auth_file
        self.reader = {"Authorization": f"Bearer {reader}"}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        peers = ",".join(f"https://{a}:{PORT}" for a in self.net.addresses if a != self.address)
        cmd = ["ip", "netns", "exec", self.net.namespaces[self.index],  # execs: the pid is the node's
               sys.executable, os.path.join(ROOT, "demo_follower.py"), "--host", self.address, "--port", str(PORT),
               "--peers", peers, "--data-dir", self.data_dir, "--cluster-secret", SECRET,
               "--tls-cert", self.cert[0], "--tls-key", self.cert[1], "--tls-ca", self.ca,
               "--auth-file", self.auth_file, "--heartbeat-interval", str(HEARTBEAT), "--election-timeout", str(ELECTION)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def status(self) -> dict | None:
        try:
            r = requests.get(self.url + "/status", verify=self.ca, headers=self.reader, timeout=0.5)
            return r.json() if r.status_code == 200 else None
        except requests.RequestException:
            return None

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


def leader_of(hosts: list[Host], exclude: Host | None = None) -> Host | None:
    views = [(h, h.status()) for h in hosts if h is not exclude and h.proc and h.proc.poll() is None]
    leaders = [(v["term"], h) for h, v in views if v and v["is_leader"]]
    return max(leaders, key=lambda x: x[0])[1] if leaders else None


def write(session: requests.Session, host: Host, title: str, timeout: float = 3) -> str | None:
    """POST a task through `host`; its id if acknowledged, None if not (e.g. cut off)."""
    try:
        r = session.post(host.url + "/tasks", json={"title": title}, timeout=timeout)
    except requests.RequestException:
        return None
    return r.json()["id"] if r.status_code == 201 else None


def write_through(session, hosts: list[Host], phase: str, acked: dict) -> None:
    """WRITES_PER_PHASE acknowledged writes, spread over the hosts that are up (retried through
    an election)."""
    for i in range(WRITES_PER_PHASE):
        title = f"{phase}-{i}"

        def attempt():
            host = hosts[i % len(hosts)]
            return write(session, host, title)
        acked[wait_for(attempt, 10, f"write {title} to be acknowledged")] = title


def converged(hosts: list[Host]) -> bool:
    views = [h.status() for h in hosts]
    if not all(views):
        return False
    leaders = [v for v in views if v["is_leader"]]
    return len(leaders) == 1 and all(v["applied_index"] == leaders[0]["commit_index"] for v in views)


def stored_tasks(session, host: Host) -> dict:
    """Every task in `host`'s own state (a stale read: no leader involved)."""
    tasks, offset = {}, 0
    while offset is not None:
        r = session.get(host.url + "/tasks", headers=host.reader, params={"consistency": "stale", "limit": 500, "offset": offset},
                        timeout=5)
        r.raise_for_status()
        doc = r.json()
        tasks.update({t["id"]: t["title"] for t in doc["tasks"]})
        offset = doc["next_offset"]
    return tasks


@pytest.fixture
def network():
    net = Network(3)
    try:
        net.create()
        yield net
    finally:
        net.destroy()


def test_three_hosts_with_mutual_tls_lose_nothing_acknowledged(network, tmp_path):
    certs = str(tmp_path / "certs")
    os.makedirs(certs)
    make_ca(certs)
    make_ca(certs, "other")
    for i, address in enumerate(network.addresses):
        make_node_cert(certs, f"node{i}", f"IP:{address}")
    intruder = make_node_cert(certs, "intruder", f"IP:{BRIDGE_ADDRESS}", ca="other")
    auth_file = str(tmp_path / "auth.json")
    tokens = {role: add_token(auth_file, f"{role}-client", role) for role in ("read", "write")}
    hosts = [Host(network, i, str(tmp_path), certs, auth_file, tokens["read"]) for i in range(3)]
    session = requests.Session()
    session.trust_env = False  # $REQUESTS_CA_BUNDLE would replace the cluster CA
    session.verify = hosts[0].ca
    session.headers["Authorization"] = f"Bearer {tokens['write']}"
    acked: dict[str, str] = {}
    try:
        for h in hosts:
            h.start()
        leader = wait_for(lambda: leader_of(hosts), 20, "a leader over TLS")
        write_through(session, hosts, "first", acked)

        # Clients: no token, 401; a read token may read but not write, 403.
        anonymous = requests.post(hosts[1].url + "/tasks", json={"title": "x"}, verify=hosts[0].ca, timeout=3)
        assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"
        assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
        reader = requests.post(hosts[1].url + "/tasks", json={"title": "x"}, verify=hosts[0].ca, timeout=3,
                               headers=hosts[1].reader)
        assert reader.status_code == 403 and reader.json()["error"] == "forbidden"
        some_id = next(iter(acked))
        assert requests.get(f"{hosts[2].url}/tasks/{some_id}", verify=hosts[0].ca, timeout=3,
                            headers=hosts[2].reader).status_code == 200

        # A peer whose certificate another CA signed: refused in the handshake, and logged.
        with pytest.raises(requests.exceptions.SSLError):
            session.post(leader.url + "/heartbeat", data=b"{}", cert=intruder, timeout=3,
                         headers={"Content-Type": "application/json"})
        wait_for(lambda: f"TLS handshake with {BRIDGE_ADDRESS} failed" in leader.log(), 5, "the refusal logged")
        # Without a certificate, a node-to-node request is refused even with the secret.
        r = session.post(leader.url + "/heartbeat", data=b"{}", timeout=3,
                         headers={"Content-Type": "application/json", "X-PickleDB-Peer": "1"})
        assert r.status_code in (401, 403) and r.json()["error"] in ("unauthorized", "forbidden")

        # The leader dies; the other two elect one and go on; it comes back and catches up.
        leader.kill()
        survivors = [h for h in hosts if h is not leader]
        wait_for(lambda: leader_of(hosts, exclude=leader), 15, "a new leader")
        write_through(session, survivors, "after-kill", acked)
        leader.start()
        wait_for(lambda: converged(hosts), 20, "the restarted node to catch up")

        # A host cut off (its link down): the others go on; healed, it catches up.
        current = wait_for(lambda: leader_of(hosts), 10, "a leader")
        cut = hosts.index(current)
        network.cut(cut)
        others = [h for h in hosts if h is not current]
        wait_for(lambda: leader_of(others), 15, "a leader on the connected side")
        write_through(session, others, "while-cut", acked)
        assert write(session, current, "never-acknowledged", timeout=1) is None  # unreachable from here
        network.heal(cut)
        wait_for(lambda: converged(hosts), 20, "the healed host to catch up")
        write_through(session, hosts, "healed", acked)
        wait_for(lambda: converged(hosts), 20, "every host to apply the last writes")

        for h in hosts:
            stored = stored_tasks(session, h)
            lost = {i: t for i, t in acked.items() if stored.get(i) != t}
            assert not lost, f"{h.url} lost acknowledged writes: {lost}"
        assert len(acked) == 4 * WRITES_PER_PHASE
    except BaseException:
        for h in hosts:
            with contextlib.suppress(OSError):
                print(f"--- {h.url}\n{h.log()[-3000:]}")
        raise
    finally:
        for h in hosts:
            h.kill()

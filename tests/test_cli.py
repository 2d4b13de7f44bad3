"""The node command line (demo_follower.py, run as a user runs it): every expected startup error
ends in one `error:` line on stderr and a non-zero exit, never a traceback. Disk faults use real
file systems mounted for the test (this suite runs as root)."""
import contextlib
import errno
import fcntl
import os
import socket
import subprocess
import sys

import pytest

from harness import NODE_SCRIPT, ROOT, free_ports


def run_node(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, NODE_SCRIPT, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})})


def assert_startup_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == errors[0], result.stderr
    assert fragment in errors[0], errors[0]


@pytest.mark.parametrize("args, fragment", [
    (["--port", "70000"], "--port must be between 1 and 65535"),
    (["--port", "0"], "--port must be between 1 and 65535"),
    (["--peers", "ftp://127.0.0.1:4000"], "must look like http://HOST:PORT"),
    (["--peers", "http://127.0.0.1:99999"], "must look like http://HOST:PORT"),
    (["--peers", "http://127.0.0.1"], "must look like http://HOST:PORT"),
    (["--peers", "http://:4000"], "must look like http://HOST:PORT"),
    (["--peers", "http://127.0.0.1:4000/api"], "must look like http://HOST:PORT"),
    (["--peers", "http://127.0.0.1:4000,http://127.0.0.1:4000"], "lists a URL twice"),
    (["--port", "4001", "--peers", "http://127.0.0.1:4000,http://127.0.0.1:4001"], "not this one"),
    (["--heartbeat-interval", "nan"], "must be positive numbers"),
    (["--node-id", "has space"], "--node-id must be 1-64 characters"),
    (["--node-id", "x" * 65], "--node-id must be 1-64 characters"),
    (["--peers", "a b=http://127.0.0.1:4000"], "peer id 'a b' must be"),
    (["--peers", "a=http://127.0.0.1:4000,a=http://127.0.0.1:4002"], "lists an id twice"),
    (["--port", "4001", "--node-id", "me", "--peers", "me=http://127.0.0.1:4000"], "not this one (id me)"),
    (["--advertise-url", "http://example.com:80/x"], "--advertise-url 'http://example.com:80/x' must look like"),
    (["--join", "nonsense"], "--join URL 'nonsense' must look like"),
    (["--join", ","], "--join needs at least one member URL"),
    (["--learner"], "--learner needs --join"),
], ids=["port-70000", "port-0", "peer-scheme", "peer-port-range", "peer-no-port", "peer-no-host",
        "peer-path", "peer-twice", "peer-self", "nan-timing", "node-id-space", "node-id-long", "peer-id-bad",
        "peer-id-twice", "peer-id-self", "advertise-path", "join-bad", "join-empty",
        "learner-alone"])
def test_invalid_arguments_end_in_one_error_line(args, fragment):
    assert_startup_error(run_node(*args), fragment)


@pytest.mark.parametrize("secret, fragment", [
    ("", "must not be empty"),
    ("two\nlines", "control characters"),
    ("carriage\rreturn", "control characters"),
    ("tab\there", "control characters"),
    ("bell\x07", "control characters"),
    (" padded", "must not start or end with a space"),
], ids=["empty", "lf", "cr", "tab", "control", "space"])
def test_a_secret_that_cannot_travel_in_a_header_is_refused(secret, fragment):
    assert_startup_error(run_node("--cluster-secret", secret), fragment)


def test_a_secret_from_the_environment_is_checked_too():
    assert_startup_error(run_node(env={"PICKLEDB_CLUSTER_SECRET": "two\nlines"}), "control characters")


def test_a_utf8_secret_is_accepted():
    import node_cli
    args = node_cli.parse_args(["--cluster-secret", "pässwörd-秘密"], 4001)
    assert args.cluster_secret == "pässwörd-秘密"


def node_args(tmp_path, data_dir=None, port=None) -> list[str]:
    return ["--port", str(port or free_ports(1)[0]), "--peers", "http://127.0.0.1:1",
            "--data-dir", str(data_dir or tmp_path / "data")]


def test_a_bad_snapshot_interval_in_the_environment(tmp_path):
    result = run_node(*node_args(tmp_path), env={"PICKLEDB_SNAPSHOT_EVERY": "often"})
    assert_startup_error(result, "PICKLEDB_SNAPSHOT_EVERY must be a positive integer")


def test_port_in_use(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert_startup_error(run_node(*node_args(tmp_path, port=port)),
                             f"cannot listen on 127.0.0.1:{port}: Address already in use")


def test_an_address_of_another_machine(tmp_path):
    result = run_node(*node_args(tmp_path), "--host", "192.0.2.1", "--cluster-secret", "s", "--insecure")
    assert_startup_error(result, "cannot listen on 192.0.2.1:")


def test_data_directory_locked_by_another_process(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "LOCK", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert_startup_error(run_node(*node_args(tmp_path, data)), "in use by another process")


@contextlib.contextmanager
def mounted(target, *options: str):
    os.makedirs(target, exist_ok=True)
    subprocess.run(["mount", *options, str(target)], check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True, capture_output=True)


def test_read_only_data_directory(tmp_path):
    data = tmp_path / "data"
    os.makedirs(data / "wal")
    os.makedirs(data / "snap")
    with mounted(data, "--bind", str(data)):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(data)], check=True, capture_output=True)
        assert_startup_error(run_node(*node_args(tmp_path, data)), "Read-only file system")


def test_disk_full_at_startup(tmp_path):
    with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as disk:
        os.makedirs(disk / "data" / "wal")
        os.makedirs(disk / "data" / "snap")
        with open(disk / "filler", "wb", buffering=0) as filler:
            with pytest.raises(OSError) as full:
                while True:
                    filler.write(b"x" * 4096)
            assert full.value.errno == errno.ENOSPC
        assert_startup_error(run_node(*node_args(tmp_path, disk / "data")), "No space left on device")


def test_corrupt_storage(tmp_path):
    from storage import Storage
    data_dir = str(tmp_path / "node")
    storage = Storage(data_dir)
    storage.load()
    for i in range(1, 4):
        storage.append((1, None), [(i, 1, {"op": "set", "key": f"k{i}", "value": "v" * 40})])
    storage.close()
    segment = os.path.join(data_dir, "wal", sorted(os.listdir(os.path.join(data_dir, "wal")))[0])
    with open(segment, "r+b") as f:
        f.seek(40)  # inside the first records, well before the end
        byte = f.read(1)[0]
        f.seek(40)
        f.write(bytes([byte ^ 0x10]))
    port = free_ports(1)[0]
    result = run_node("--port", str(port), "--peers", f"http://127.0.0.1:{free_ports(1)[0]}",
                      "--data-dir", data_dir)
    assert_startup_error(result, "is corrupt at byte")

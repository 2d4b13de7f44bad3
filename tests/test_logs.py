"""logs.py: the node's --log-file (rotated by size) and --log-format json, in-process and in a real node."""
import argparse
import json
import logging
import os
import signal
import subprocess
import sys

import pytest

import logs
from harness import ROOT, free_ports, wait_for


@pytest.fixture
def root_logging():
    """Give the test the root logger and put the previous handlers back afterwards."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    for h in saved:
        root.removeHandler(h)
    yield root
    for h in root.handlers[:]:
        root.removeHandler(h)
        h.close()
    for h in saved:
        root.addHandler(h)
    root.setLevel(level)


def parse(argv):
    parser = argparse.ArgumentParser()
    logs.add_arguments(parser)
    return parser.parse_args(argv)


def test_json_lines_rotate_by_size(tmp_path, root_logging):
    path = tmp_path / "node.log"
    logs.configure(parse(["--log-file", str(path), "--log-max-bytes", "4000", "--log-backups", "2",
                          "--log-format", "json"]), label="27001")
    log = logging.getLogger("pickledb_cluster.test")
    for i in range(300):
        log.info("entry %d with a quote \" and a newline\n inside", i)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["node.log", "node.log.1", "node.log.2"]  # older files were dropped
    records = []
    for name in reversed(names):
        size = (tmp_path / name).stat().st_size
        assert size <= 4000
        records += [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
    assert records[0]["msg"].startswith("entry ") and records[-2]["msg"] == "entry 299 with a quote \" and a newline\n inside"
    last = records[-1]
    assert set(last) == {"ts", "level", "logger", "msg", "node", "exc"}
    assert last["level"] == "ERROR" and last["logger"] == "pickledb_cluster.test" and "ValueError: boom" in last["exc"]
    assert last["ts"].endswith("Z") and last["node"] == "27001"
    numbers = [int(r["msg"].split()[1]) for r in records[:-1]]
    assert numbers == list(range(numbers[0], 300))  # what is kept is contiguous, newest last


def test_text_to_stderr_by_default(capsys, root_logging):
    logs.configure(parse([]), label="27002")
    logging.getLogger("pickledb_cluster.test").warning("hello")
    logging.getLogger("waitress.queue").warning("Task queue depth is 3")  # the node handles its queue
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith("[27002] WARNING pickledb_cluster.test: hello")


def test_unusable_values_are_usage_errors(tmp_path, capsys):
    for argv in (["--log-max-bytes", "0"], ["--log-backups", "-1"], ["--log-format", "xml"]):
        with pytest.raises(SystemExit) as exc:
            parse(argv)
        assert exc.value.code == 2
        assert f"error: argument {argv[0]}: " in capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(logs.LogSetupError, match="cannot open log file .*: No such file or directory"):
        logs.configure(parse(["--log-file", str(tmp_path / "missing" / "node.log")]))


@pytest.mark.cluster
def test_node_logs_json_to_its_file_and_errors_in_one_line(tmp_path):
    port = free_ports(1)[0]
    log_path = tmp_path / "node.log"
    cmd = [sys.executable, os.path.join(ROOT, "demo_follower.py"), "--port", str(port), "--peers", "",
           "--data-dir", str(tmp_path / "data"), "--heartbeat-interval", "0.1", "--election-timeout", "0.6"]
    bad = subprocess.run(cmd + ["--log-file", str(tmp_path / "no" / "node.log")], capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == f"error: cannot open log file {tmp_path / 'no' / 'node.log'}: No such file or directory\n"

    proc = subprocess.Popen(cmd + ["--log-file", str(log_path), "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def lines():
            return [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
        wait_for(lambda: any("serving" in r["msg"] for r in lines()), 15, "the node to log that it serves")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0 and out == "" and err == ""  # everything went to the file
    records = lines()
    assert records[-1]["msg"].endswith("stopped") and records[-1]["logger"] == "pickledb_cluster.node"
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
